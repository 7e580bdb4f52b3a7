"""Drift verdicts against Evidently 0.7's DataDriftPreset on the same data, and against the numpy sort floor.

Data: ``--rows`` rows (default 1,000,000) in each of a reference and a current frame, 12 numeric and 8 categorical
columns (nulls, integers with few values, binary and many-category columns; some columns drifted), written to
Parquet here. Each contender runs in its own child process, which reads the files before the clock starts:

- ``ours``: ``stats.table_drift`` on the Arrow tables (every verdict, all rows), median of ``--repeat`` runs,
  alternating with the anchor, ``floor``: ``np.sort`` of every numeric column of both frames (float64 arrays made
  beforehand), the least any sort-based exact test costs. Alternating keeps the ratio honest on a busy machine.
  Working memory: tracemalloc's peak during one more run (numpy's allocations; Arrow's are small here).
- ``evidently``: ``Report([DataDriftPreset()], include_tests=True).run(...)`` on pandas frames of the same tables
  (one run); its memory: the peak RSS and its rise over the loaded frames.
- ``step``: the whole ``check_drift`` (read both Parquet files, verdicts, Evidently HTML report of a 20,000-row
  sample, summary), one run, Evidently's import timed apart.

Run: ``python benchmarks/drift.py [--rows 1000000] [--repeat 3] [--skip-evidently]``.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from kfp_mlops.components.drift.stats import STAT_TESTS

NUMERIC = [f"n{i}" for i in range(12)]
CATEGORICAL = [f"c{i}" for i in range(8)]


def frame(rows: int, drifted: bool, seed: int) -> pa.Table:
    """12 numeric and 8 categorical columns; ``drifted`` shifts n0, n1, n6, c0 and c3."""
    rng = np.random.default_rng(seed)
    shift = 1.0 if drifted else 0.0
    columns: dict[str, pa.Array | np.ndarray] = {}
    for i in range(12):
        if i == 6:  # integers with few values (Evidently tests them like categories)
            values = rng.integers(0, 4 + int(shift), rows)
        elif i == 7:  # integer counts, no nulls
            values = rng.poisson(30, rows)
        elif i == 8:  # heavy tail
            values = rng.lognormal(3, 1, rows)
        else:
            values = rng.normal(10.0 + (0.4 * shift if i in (0, 1) else 0.0), 2.0, rows)
        if i in (0, 2):  # nulls
            columns[f"n{i}"] = pa.array(values, mask=rng.random(rows) < 0.02)
        else:
            columns[f"n{i}"] = values
    levels = {0: 5, 1: 2, 2: 3, 3: 1000, 4: 12, 5: 2, 6: 40, 7: 7}
    for i, k in levels.items():
        weights = np.linspace(1.0, 2.0, k)
        if drifted and i in (0, 3):
            weights = weights[::-1]
        codes = rng.choice(k, rows, p=weights / weights.sum())
        names = np.array([f"v{j}" for j in range(k)], dtype=object)
        columns[f"c{i}"] = pa.array(names[codes], type=pa.string(), mask=rng.random(rows) < 0.01 if i == 2 else None)
    return pa.table(columns)


def rss_mib() -> float:
    """This process's peak resident memory so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def seconds(run) -> tuple[float, object]:
    start = time.perf_counter()
    result = run()
    return time.perf_counter() - start, result


def ours(work: Path, repeat: int) -> dict:
    from kfp_mlops.components.drift import stats

    reference, current = pq.read_table(work / "reference.parquet"), pq.read_table(work / "current.parquet")
    arrays = [t[n].to_numpy().astype(np.float64) for t in (reference, current) for n in NUMERIC]

    def floor() -> None:
        for values in arrays:
            np.sort(values)

    def verdicts() -> stats.DatasetDrift:
        return stats.table_drift(reference, current, NUMERIC, CATEGORICAL)

    stats.table_drift(reference.slice(0, 2000), current.slice(0, 2000), NUMERIC, CATEGORICAL)  # imports
    floors, runs, result = [], [], None
    for _ in range(repeat):
        floors.append(seconds(floor)[0])
        elapsed, result = seconds(verdicts)
        runs.append(elapsed)
    tracemalloc.start()
    verdicts()
    working = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return {
        "seconds": statistics.median(runs),
        "floor_seconds": statistics.median(floors),
        "rss_mib": rss_mib(),
        "working_mib": working,
        "verdicts": {c.column: c.drifted for c in result.columns},
        "tests": {c.column: STAT_TESTS[c.method].display_name for c in result.columns},
    }


def evidently(work: Path) -> dict:
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    definition = DataDefinition(numerical_columns=NUMERIC, categorical_columns=CATEGORICAL)
    reference = pq.read_table(work / "reference.parquet").to_pandas()
    current = pq.read_table(work / "current.parquet").to_pandas()
    loaded = rss_mib()
    elapsed, snapshot = seconds(
        lambda: Report([DataDriftPreset()], include_tests=True).run(
            Dataset.from_pandas(current, data_definition=definition),
            Dataset.from_pandas(reference, data_definition=definition),
        )
    )
    document = snapshot.dict()
    prefix = "Value Drift for column "
    return {
        "seconds": elapsed,
        "rss_mib": rss_mib(),
        "rise_mib": rss_mib() - loaded,
        "verdicts": {t["name"][len(prefix) :]: t["status"] == "FAIL" for t in document["tests"] if prefix in t["name"]},
        "tests": {m["config"]["column"]: m["config"]["method"] for m in document["metrics"] if "column" in m["config"]},
    }


def step(work: Path) -> dict:
    from kfp_mlops.components.drift.core import check_drift
    from kfp_mlops.components.shared.config import DriftConfig

    imported, _ = seconds(lambda: __import__("evidently.presets"))
    elapsed, result = seconds(
        lambda: check_drift(
            str(work / "reference.parquet"), str(work / "current.parquet"), DriftConfig(), NUMERIC, CATEGORICAL,
            str(work / "r.html"), str(work / "s.md"),
        )
    )  # fmt: skip
    return {
        "seconds": elapsed,
        "import_seconds": imported,
        "rss_mib": rss_mib(),
        "verdicts": {c.column: c.drifted for c in result.columns},
    }


def run_child(contender: str, work: Path, repeat: int) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", contender, "--work", str(work), "--repeat", str(repeat)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3, help="runs of ours and of the floor (median)")
    parser.add_argument("--skip-evidently", action="store_true", help="only this step and the floor")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        import warnings

        warnings.simplefilter("ignore")
        work = Path(args.work)
        result = {"ours": lambda: ours(work, args.repeat), "evidently": lambda: evidently(work),
                  "step": lambda: step(work)}[args.child]()  # fmt: skip
        print(json.dumps(result))
        return

    with tempfile.TemporaryDirectory(prefix="bench-drift-") as tmp:
        work = Path(tmp)
        pq.write_table(frame(args.rows, False, seed=1), work / "reference.parquet")
        pq.write_table(frame(args.rows, True, seed=2), work / "current.parquet")
        print(f"{args.rows:,} rows × {len(NUMERIC)} numeric + {len(CATEGORICAL)} categorical columns in each frame")
        mine = run_child("ours", work, args.repeat)
        whole = run_child("step", work, args.repeat)
        print(f"sort floor  {mine['floor_seconds']:8.2f} s  (median of {args.repeat}, alternating with ours)")
        print(f"ours        {mine['seconds']:8.2f} s  = {mine['seconds'] / mine['floor_seconds']:.2f}x the floor; "
              f"working memory {mine['working_mib']:.0f} MiB, peak RSS {mine['rss_mib']:.0f} MiB "
              "(both frames and the floor's arrays loaded)")  # fmt: skip
        print(f"step        {whole['seconds']:8.2f} s  (read, verdicts, HTML report, summary; Evidently's import "
              f"{whole['import_seconds']:.1f} s more), peak RSS {whole['rss_mib']:.0f} MiB")  # fmt: skip
        print(f"drifted columns: {sorted(c for c, d in mine['verdicts'].items() if d)}")
        agree = sum(whole["verdicts"][c] == d for c, d in mine["verdicts"].items())
        print(f"step verdicts agreeing with ours: {agree} of {len(mine['verdicts'])}")
        if args.skip_evidently:
            return
        theirs = run_child("evidently", work, args.repeat)
        print(f"evidently   {theirs['seconds']:8.2f} s  = {theirs['seconds'] / mine['seconds']:.1f}x ours; "
              f"peak RSS {theirs['rss_mib']:.0f} MiB (+{theirs['rise_mib']:.0f} MiB over its frames)")  # fmt: skip
        verdicts = sum(theirs["verdicts"].get(c) == d for c, d in mine["verdicts"].items())
        tests = sum(theirs["tests"].get(c) == t for c, t in mine["tests"].items())
        print(f"verdicts agreeing with Evidently: {verdicts} of {len(mine['verdicts'])}; "
              f"test choices: {tests} of {len(mine['tests'])}")  # fmt: skip


if __name__ == "__main__":
    main()
