"""What the deploy lease and the serving record's compare-and-swap cost, against plain writes (the anchor), on local
disk and on a real SeaweedFS S3 started here (fake-gcs-server with ``--gcs``).

Per backend, alternating in rounds so that a busy machine slows both sides alike:

- ``write``: ``storage.write_bytes`` of a 300-byte JSON object (the anchor: what the record cost before);
- ``cas``: ``storage.read_versioned`` + ``storage.write_if`` of the same object (the record's write now);
- ``lease``: a whole lease cycle of one deployment (acquire, four renewals as in a one-replica deployment, release).

Prints the median milliseconds and the ratio to ``write``. A deployment takes tens of seconds (a Triton load and
verification), so the lease's cost is to be read against that.

Run: ``python benchmarks/lease.py [--repeat 50] [--gcs]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from kfp_mlops import local_services
from kfp_mlops.components.deploy.lease import Lease
from kfp_mlops.components.shared import storage

RECORD = b'{"model": "s3://runs/abc/model", "metrics": {"roc_auc": 0.73}, "deployment": {"version": 3}}' * 3


def measure(root: str, repeat: int) -> dict[str, float]:
    """Median milliseconds of each operation under ``root``."""
    counter = iter(range(10**9))

    def write() -> None:
        storage.write_bytes(f"{root}/plain.json", RECORD)

    def cas() -> None:
        current = storage.read_versioned(f"{root}/record.json")
        storage.write_if(f"{root}/record.json", RECORD, current.version if current else None)

    def lease() -> None:
        held = Lease(root, f"model-{next(counter)}", "benchmark", lease_seconds=600)
        held.acquire(wait_seconds=0)
        for _renewal in range(4):
            held.renew()
        held.release()

    operations: dict[str, Callable[[], None]] = {"write": write, "cas": cas, "lease": lease}
    times: dict[str, list[float]] = {name: [] for name in operations}
    for _round in range(repeat):
        for name, operation in operations.items():
            started = time.perf_counter()
            operation()
            times[name].append((time.perf_counter() - started) * 1000)
    return {name: statistics.median(values) for name, values in times.items()}


def report(backend: str, medians: dict[str, float]) -> None:
    anchor = medians["write"]
    cells = "  ".join(f"{name} {ms:7.2f} ms ({ms / anchor:4.1f}x)" for name, ms in medians.items())
    print(f"{backend:6s} {cells}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--gcs", action="store_true", help="fake-gcs-server too (needs its wrapper installed)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        report("local", measure(str(Path(workdir) / "local"), args.repeat))
        with local_services.seaweedfs_s3(Path(workdir) / "s3", bucket="bench") as service:
            os.environ.update(service.env)
            storage.reset_clients()
            report("s3", measure(service.uri("lease"), args.repeat))
        if args.gcs:
            import sys

            sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
            from support.services import fake_gcs

            with fake_gcs(Path(workdir) / "gcs", bucket="bench") as service:
                os.environ.update(service.env)
                storage.reset_clients()
                report("gcs", measure(service.uri("lease"), args.repeat))


if __name__ == "__main__":
    main()
