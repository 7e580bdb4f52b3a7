"""Helpers that publish a step's results on KFP artifacts (duck-typed: ``.path``, ``.metadata``, ``.log_metric``)."""

from __future__ import annotations

import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa


def write_text_atomically(path: str | os.PathLike[str], text: str) -> None:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def log_metrics(metrics_artifact: Any, values: dict[str, float | int]) -> None:
    for name, value in values.items():
        metrics_artifact.log_metric(name, float(value))


def write_tables_atomically(targets: dict[str, pa.Table]) -> None:
    """Write each table to a temporary Parquet file beside its target (in parallel: encoding releases the GIL),
    then rename them all: a failure leaves all outputs or none."""
    import pyarrow.parquet as pq

    temporaries = {
        path: os.path.join(os.path.dirname(path) or ".", f".{os.path.basename(path)}.tmp") for path in targets
    }
    try:
        for path in targets:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        with ThreadPoolExecutor(max_workers=max(len(targets), 1)) as pool:
            list(pool.map(lambda path: pq.write_table(targets[path], temporaries[path]), targets))
        for path, tmp in temporaries.items():
            os.replace(tmp, path)
    finally:
        for tmp in temporaries.values():
            Path(tmp).unlink(missing_ok=True)
