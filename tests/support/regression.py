"""A regression model trained for real (one CPU worker, two epochs) on the sample data with a float label, and its
train/validation/test splits: shared by the evaluate and quantize tests, trained once per session."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from support.configs import pipeline_config

LABEL = "next_month_spend"  # monthly_charges * 3 plus noise: a fraction in most rows
ROWS = 3_000


def regression_table(rows: int = ROWS, seed: int = 0) -> pa.Table:
    """The sample table with ``churned`` replaced by a float label that the features predict well."""
    from kfp_mlops.sample_data import make_sample_table

    table = make_sample_table(rows, seed)
    noise = np.random.default_rng(seed).normal(0.0, 5.0, table.num_rows)
    label = table["monthly_charges"].to_numpy() * 3 + noise
    return table.drop_columns(["churned"]).append_column(LABEL, pa.array(label))


@functools.cache
def trained_regression(directory: Path):
    """(config, SplitPaths, package directory) of a regression model trained in ``directory``; the splits are the
    table's rows in order, 70/15/15."""
    from kfp_mlops.components.shared.splits import SplitPaths
    from kfp_mlops.components.train.core import train

    table = regression_table()
    directory.mkdir(parents=True, exist_ok=True)
    cuts = [0, int(table.num_rows * 0.7), int(table.num_rows * 0.85), table.num_rows]
    files = [str(directory / f"{name}.parquet") for name in ("train", "validation", "test")]
    for path, start, stop in zip(files, cuts[:-1], cuts[1:], strict=True):
        pq.write_table(table.slice(start, stop - start), path)
    paths = SplitPaths(*files)
    config = pipeline_config(directory, schema={"label": LABEL, "task": "regression"},
                             train={"epochs": 2, "workers": 1, "micro_batch_size": 64})  # fmt: skip
    train(config, paths.train, paths.validation, str(directory / "model"), str(directory / "ckpt"))
    return config, paths, directory / "model"
