"""How long each step image takes to import its step, and how that compares with the same imports on the host.

For each step of ``make images-local``: ``kfp_mlops/image_probe.py`` (what ``make test-images`` runs in every image:
the step's own modules, then every top-level module of every library its extra requires) runs

- ``host`` (the anchor): in this checkout's venv, one fresh process per round;
- ``first``: in the image, once, right after asking the kernel to drop its page cache (``/proc/sys/vm/drop_caches``,
  as root; ``?`` where it cannot), as a pod's first start on a node that just pulled the image. In this sandbox the
  drop seems to change little; the first probes after a build read 12-28 s on the CI machine (2 cores, busy);
- ``warm``: in the image again, ``--rounds`` more times, the median.

The probe's own clock (``import_seconds``) is what is compared; the container's start is not in it. This is a
measurement, not a test: no budget fails a run (the probe's seconds depend on the page cache and the machine's load,
not only on the image).

Measured 2026-12-02 on 2 cores, idle but for the benchmark, ``python benchmarks/images.py --rounds 3``::

    step        host (anchor)           first            warm
    ingest               2.71    2.63 ( 1.0x)    1.80 ( 0.7x)
    features             9.26    7.06 ( 0.8x)    4.79 ( 0.5x)
    train                5.29    5.81 ( 1.1x)    3.43 ( 0.6x)
    evaluate             3.13    3.43 ( 1.1x)    2.09 ( 0.7x)
    quantize             3.08    3.07 ( 1.0x)    2.05 ( 0.7x)
    deploy               2.68    2.58 ( 1.0x)    1.59 ( 0.6x)
    drift                6.87    6.55 ( 1.0x)    5.00 ( 0.7x)

The images import faster than the host's venv (which holds every step's libraries and the test tools).

Run: ``python benchmarks/images.py [--rounds 3] [--steps ingest,features]`` (needs ``make images-local``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from kfp_mlops import containers, image_checks
from kfp_mlops.components.shared.images import STEPS, ImageConfig

PROBE = Path(image_checks.__file__).with_name("image_probe.py")


def host_seconds(step: str) -> float:
    result = subprocess.run([sys.executable, str(PROBE), step], capture_output=True, text=True, check=True)
    line = next(x for x in result.stdout.splitlines() if x.startswith("KFP_MLOPS_PROBE "))
    return json.loads(line.split(" ", 1)[1])["import_seconds"]


def image_seconds(engine: containers.Engine, step: str, image: str) -> float:
    report = image_checks.probe(engine, step, image)
    if report.error or "import_seconds" not in report.report:
        raise SystemExit(f"{step}: {report.error or report.problems()}")
    return report.report["import_seconds"]


def drop_page_cache() -> bool:
    try:
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", default=",".join(STEPS))
    args = parser.parse_args()
    engine, images = containers.detect(), ImageConfig(registry=containers.LOCAL_REGISTRY)
    print(f"import of the step (image_probe.py's clock), seconds; warm and host: median of {args.rounds} round(s)")
    print(f"{'step':<10}{'host (anchor)':>15}{'first':>16}{'warm':>16}")
    for step in args.steps.split(","):
        dropped = drop_page_cache()
        first = image_seconds(engine, step, images.ref(step))
        warm, host = [], []
        for _ in range(args.rounds):
            warm.append(image_seconds(engine, step, images.ref(step)))
            host.append(host_seconds(step))
        anchor, warm_s = statistics.median(host), statistics.median(warm)
        first_cell = f"{first:6.2f} ({first / anchor:4.1f}x)" + ("" if dropped else "?")
        print(f"{step:<10}{anchor:>15.2f}{first_cell:>16}{f'{warm_s:6.2f} ({warm_s / anchor:4.1f}x)':>16}")
    print("(first: right after asking to drop the page cache; '?' where it could not be asked)")


if __name__ == "__main__":
    main()
