"""Helpers that publish a step's results on KFP artifacts (duck-typed: ``.path``, ``.metadata``, ``.log_metric``)."""

from __future__ import annotations

import contextlib
import os
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from kfp_mlops.components.shared import storage

if TYPE_CHECKING:
    import pyarrow as pa


def write_text_atomically(path: str | os.PathLike[str], text: str) -> None:
    with storage.atomic_local_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


def dataset_metadata(schema: Any, rows: int, features: list[str], categorical: list[str], content_hash: str) -> dict:
    """What every tabular Dataset artifact records: its rows, the column roles and the raw data's content hash."""
    return {
        "rows": rows,
        "entity": schema.entity,
        "timestamp": schema.timestamp,
        "label": schema.label,
        "features": features,
        "categorical": categorical,
        "content_hash": content_hash,
    }


def log_metrics(metrics_artifact: Any, values: dict[str, float | int]) -> None:
    for name, value in values.items():
        metrics_artifact.log_metric(name, float(value))


def write_tables_atomically(targets: dict[str, pa.Table]) -> None:
    """Write each table to a temporary Parquet file beside its target (in parallel: encoding releases the GIL),
    then rename them all: a failure leaves all outputs or none."""
    import pyarrow.parquet as pq

    with contextlib.ExitStack() as stack:
        temporaries = {path: stack.enter_context(storage.atomic_local_path(path)) for path in targets}
        with ThreadPoolExecutor(max_workers=max(len(targets), 1)) as pool:
            list(pool.map(lambda path: pq.write_table(targets[path], temporaries[path]), targets))
