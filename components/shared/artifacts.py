"""Helpers that publish a step's results on KFP artifacts (duck-typed: ``.path``, ``.metadata``, ``.log_metric``).

Artifact metadata and Metrics are serialised as a protobuf ``Struct`` (the local runner) and read back as strict
JSON (the cluster's launcher): neither holds NaN or infinity. Every step writes them through ``update_metadata``
and ``log_metrics``, which refuse a non-finite number anywhere in the tree, naming its path, before anything is
written; an undefined value is recorded as undefined with its reason instead (see ``metrics.Scores``).
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np

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


class NonFiniteMetadataError(ValueError):
    """A NaN or infinity on its way into artifact metadata or Metrics (a bug in the step, never bad input)."""


def check_finite(tree: Any, where: str = "metadata") -> None:
    """Raise NonFiniteMetadataError naming the first path (``where.key[2].name``) in ``tree`` (dicts, lists,
    tuples, scalars; numpy scalars too) that holds NaN or infinity."""
    if isinstance(tree, Mapping):
        for key, value in tree.items():
            check_finite(value, f"{where}.{key}")
    elif isinstance(tree, list | tuple):
        for position, value in enumerate(tree):
            check_finite(value, f"{where}[{position}]")
    elif isinstance(tree, float | np.floating) and not math.isfinite(tree):
        raise NonFiniteMetadataError(
            f"{where} is {float(tree)}: artifact metadata holds finite numbers only (protobuf Struct and strict JSON "
            "have no NaN or infinity); record an undefined value with its reason instead"
        )


def update_metadata(artifact: Any, values: Mapping[str, Any], name: str = "") -> None:
    """``artifact.metadata.update(values)`` after ``check_finite`` on all of it (nothing is written if it fails)."""
    check_finite(dict(values), f"{name or getattr(artifact, 'name', '') or 'artifact'}.metadata")
    artifact.metadata.update(values)


def log_metrics(metrics_artifact: Any, values: Mapping[str, float | int], name: str = "metrics") -> None:
    """Log each value on a Metrics artifact; refuses them all if one is not a finite number."""
    check_finite(dict(values), name)
    for key, value in values.items():
        metrics_artifact.log_metric(key, float(value))


def write_tables_atomically(targets: dict[str, pa.Table]) -> None:
    """Write each table to a temporary Parquet file beside its target (in parallel: encoding releases the GIL),
    then rename them all: a failure leaves all outputs or none."""
    import pyarrow.parquet as pq

    with contextlib.ExitStack() as stack:
        temporaries = {path: stack.enter_context(storage.atomic_local_path(path)) for path in targets}
        with ThreadPoolExecutor(max_workers=max(len(targets), 1)) as pool:
            list(pool.map(lambda path: pq.write_table(targets[path], temporaries[path]), targets))
