"""Helpers that publish a step's results on KFP artifacts (duck-typed: ``.path``, ``.metadata``, ``.log_metric``)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any


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
