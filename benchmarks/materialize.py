"""Materialization throughput of the features step against the Feast CLI (the anchor), side by side.

Both materialize the same window of the same generated repository into a fresh SQLite online store and a fresh
file registry, so both do the full work: the step in-process (``FeatureStore.materialize_incremental``, as the
step runs it), the anchor as ``feast materialize-incremental END`` in a subprocess from this venv. The CLI figure
includes Python start-up and ``import feast``; the start-up of ``feast feature-views list`` in the same repository
is printed beside it. Afterwards ``get_online_features`` must return identical values from both online stores.
Run: ``python benchmarks/materialize.py [--rows 200000]``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from kfp_mlops.components.features import core
from kfp_mlops.components.ingest.core import ingest
from kfp_mlops.components.shared.config import PipelineConfig, parse_config
from kfp_mlops.components.shared.splits import SplitPaths
from kfp_mlops.sample_data import sample_config, write_sample_data

FEAST = str(Path(sys.executable).with_name("feast"))


def config_for(source: str) -> PipelineConfig:
    return parse_config(sample_config(source))


def splits_under(directory: Path) -> SplitPaths:
    return SplitPaths(*(str(directory / name) for name in ("train", "validation", "test")))


def prepare_repository(config: PipelineConfig, inputs: SplitPaths, repo: Path):
    """The step's repository (files + apply), not materialized: what the CLI run starts from."""
    splits, columns = core.read_splits(inputs, config.schema_)
    source = core.feature_source(splits, columns)
    entity, data_source, view = core.feast_objects(config.features, columns)
    store = core.open_store(config.features, str(repo))
    core.write_repository(str(repo), config.features, columns, source)
    store.apply([entity, data_source, view])
    return store, source, columns


def cli_seconds(arguments: list[str], repo: Path) -> float:
    started = time.perf_counter()
    subprocess.run([FEAST, *arguments], cwd=repo, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def online(store, columns: core.FeatureColumns, view: str, entities: list) -> dict:
    return store.get_online_features(
        features=[f"{view}:{f}" for f in columns.features], entity_rows=[{columns.entity: e} for e in entities]
    ).to_dict()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--sample", type=int, default=1_000, help="entities compared online after both runs")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-materialize-") as tmp:
        work = Path(tmp)
        config = config_for(write_sample_data(str(work / "raw"), rows=args.rows, seed=0))
        inputs = splits_under(work / "ingested")
        ingest(config, inputs)

        started = time.perf_counter()
        step = core.build_feature_sets(config, inputs, str(work / "step-repo"), splits_under(work / "step-out"))
        build_seconds = time.perf_counter() - started

        store, source, columns = prepare_repository(config, inputs, work / "cli-repo")
        end = step.materialized_to
        cli_total = cli_seconds(["materialize-incremental", end], work / "cli-repo")
        cli_startup = cli_seconds(["feature-views", "list"], work / "cli-repo")
        start, cli_end = store.get_feature_view(config.features.view).materialization_intervals[-1]
        cli_rows = len(core.entities_between(source, columns, start, cli_end))

        entities = core.entities_between(source, columns, start, cli_end).to_pylist()
        picked = [entities[i] for i in np.unique(np.linspace(0, len(entities) - 1, args.sample).astype(int))]
        step_store = core.open_store(config.features, str(work / "step-repo"))
        identical = online(step_store, columns, config.features.view, picked) == online(
            store, columns, config.features.view, picked
        )

        print(
            f"{args.rows:,} sample rows -> {sum(step.rows.values()):,} rows after ingest, "
            f"{len(columns.features)} features, window {step.materialized_from} .. {end}"
        )
        print(
            f"step build (read, apply, 3 point-in-time joins, materialize, online check, write): {build_seconds:.1f} s"
        )
        print(
            f"step  in-process materialize_incremental: {step.rows_materialized:>8,} rows in "
            f"{step.materialize_seconds:6.2f} s = {step.materialize_rows_per_second:>9,.0f} rows/s"
        )
        cli_rate, cli_net_rate = cli_rows / cli_total, cli_rows / max(cli_total - cli_startup, 1e-9)
        print(
            f"anchor feast materialize-incremental:    {cli_rows:>8,} rows in {cli_total:6.2f} s = "
            f"{cli_rate:>9,.0f} rows/s (start-up {cli_startup:.1f} s; without it {cli_net_rate:,.0f} rows/s)"
        )
        print(
            f"step/anchor rows/s: {step.materialize_rows_per_second / cli_rate:.2f}x "
            f"(without CLI start-up {step.materialize_rows_per_second / cli_net_rate:.2f}x)"
        )
        print(f"online values of {len(picked):,} entities identical after both: {identical}")
        if not identical or cli_rows != step.rows_materialized:
            raise SystemExit("the two materializations differ")


if __name__ == "__main__":
    main()
