"""The split contract between steps: split names, where each split's file is, its timestamp type, how a step reads
a split, and which columns are features when the config lists none."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from kfp_mlops.components.shared.errors import InputError

SPLITS = ("train", "validation", "test")
TIMESTAMP_TYPE = pa.timestamp("us", tz="UTC")  # every split stores event times as µs in UTC


@dataclass(frozen=True)
class SplitPaths:
    """Where the three splits are (local paths, e.g. KFP ``Input/Output[Dataset].path``)."""

    train: str
    validation: str
    test: str

    def items(self) -> list[tuple[str, str]]:
        return [(name, getattr(self, name)) for name in SPLITS]


def read_split(path: str, name: str) -> pa.Table:
    """One split's Parquet file; a missing, unreadable or empty file raises InputError naming split and path."""
    try:
        table = pq.read_table(path)
    except FileNotFoundError:
        raise InputError(f"{name} split {path}: file does not exist") from None
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"{name} split {path}: not a readable Parquet file ({exc})") from None
    if table.num_rows == 0:
        raise InputError(f"{name} split {path}: no rows")
    return table


def feature_columns(
    configured: list[str] | None, columns: Iterable[str], entity: str, timestamp: str, label: str
) -> list[str]:
    """The configured features, or (none configured) every column that is not entity, timestamp or label."""
    if configured is not None:
        return list(configured)
    return [c for c in columns if c not in (entity, timestamp, label)]
