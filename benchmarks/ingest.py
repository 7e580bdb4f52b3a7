"""Ingest throughput against a bare ``pyarrow.parquet.read_table`` of the same object (the anchor), side by side.

Ingest does far more than the anchor (validation, type normalisation, de-duplication, split, statistics, three
Parquet writes); the ratio says what that costs. Run: ``python benchmarks/ingest.py [--rows 1000000]``.
Sources: the local disk and a real SeaweedFS S3 server started here.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from kfp_mlops import local_services
from kfp_mlops.components.ingest.core import ingest
from kfp_mlops.components.shared import storage
from kfp_mlops.components.shared.config import parse_config
from kfp_mlops.components.shared.splits import SplitPaths
from kfp_mlops.sample_data import sample_config, write_sample_data


def timed(run: Callable[[], object], repeat: int) -> float:
    """Median wall time of ``repeat`` runs after one warm-up."""
    run()
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def config_for(source: str):
    return parse_config(sample_config(source))


def report(where: str, rows: int, size: int, anchor: float, ours: float) -> None:
    print(
        f"{where:<6} anchor read_table {rows / anchor:>12,.0f} rows/s {size / anchor / 1e6:>8.1f} MB/s | "
        f"ingest {rows / ours:>10,.0f} rows/s {size / ours / 1e6:>8.1f} MB/s | ingest/anchor time {ours / anchor:5.1f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        work = Path(tmp)
        uri = write_sample_data(str(work / "data"), rows=args.rows, seed=0)
        size = os.path.getsize(uri)
        outputs = SplitPaths(*(str(work / "out" / n) for n in ("train", "validation", "test")))
        print(f"{args.rows:,} rows, {size / 1e6:.1f} MB Parquet; median of {args.repeat} runs after a warm-up")

        anchor = timed(lambda: pq.read_table(uri), args.repeat)
        ours = timed(lambda: ingest(config_for(uri), outputs), args.repeat)
        report("local", args.rows, size, anchor, ours)

        with local_services.seaweedfs_s3(work / "s3", bucket="bench") as s3:
            os.environ.update(s3.env)
            storage.reset_clients()
            storage.upload_file(uri, s3.uri("data/churn.parquet"))
            filesystem = pafs.S3FileSystem(
                access_key=s3.env["AWS_ACCESS_KEY_ID"],
                secret_key=s3.env["AWS_SECRET_ACCESS_KEY"],
                endpoint_override=s3.env["AWS_ENDPOINT_URL"],
                region="us-east-1",
            )
            anchor = timed(lambda: pq.read_table("bench/data/churn.parquet", filesystem=filesystem), args.repeat)
            ours = timed(lambda: ingest(config_for(s3.uri("data/")), outputs), args.repeat)
            report("s3", args.rows, size, anchor, ours)


if __name__ == "__main__":
    main()
