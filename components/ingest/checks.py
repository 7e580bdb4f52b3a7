"""Ingest's checks of what the table means, beyond each value's type: duplicated column names, nested columns,
float entity ids, the task and its label (a classifier's label that looks continuous or has too many classes, a
regression label that is not a finite number), one column typed differently in two files, timestamps in the
future, and contradictory labels for one entity and timestamp. Each raises InputError naming file, column, row and
value, before anything is written. ``core`` calls them; they take Arrow values and settings, not config.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from kfp_mlops.components.shared.datafiles import parse_table, row_label
from kfp_mlops.components.shared.errors import InputError
from kfp_mlops.components.shared.tabular import Task, looks_continuous

_EXAMPLES = 3


def read_table(uri: str, data: bytes, fmt: str) -> pa.Table:
    """``parse_table``, refusing a column named twice (in a CSV header or a Parquet schema) by its name: Arrow
    reads such a CSV (the column then looks missing) and fails on such a Parquet file (it looks unreadable)."""
    if fmt == "parquet" and data:
        try:
            names = pq.ParquetFile(pa.BufferReader(data)).schema_arrow.names
        except (pa.ArrowException, OSError):
            names = []  # parse_table names the unreadable file
        _unique_names(uri, names)
    table = parse_table(uri, data, fmt)
    _unique_names(uri, table.column_names)
    return table


def _unique_names(uri: str, names: list[str]) -> None:
    twice = sorted(name for name, count in Counter(names).items() if count > 1)
    if twice:
        raise InputError(
            f"{uri}: column name(s) {twice} appear more than once in the header; rename or drop the copies"
        )


def check_not_nested(uri: str, table: pa.Table, roles: dict[str, str]) -> None:
    """List, struct and map columns have no single value per row: refused as entity, timestamp, label or feature."""
    for column, role in roles.items():
        kind = table.schema.field(column).type
        if pa.types.is_nested(kind):
            raise InputError(
                f"{uri}: column {column!r} (the {role}) holds nested values ({kind}); it needs one plain value per "
                "row (a number, string or timestamp): flatten it into columns of their own"
            )


def check_entity_ids(uri: str, column: str, values: pa.ChunkedArray) -> None:
    """Entity ids must be integers or strings. Floats are refused even when integral: 17.0 and 17 would hash
    to different entities (the entity split) and key different rows in the feature store, and ids above 2**53
    lose digits; a float id column is usually an integer one read with a missing value."""
    if not pa.types.is_floating(values.type):
        return
    fractional = pc.fill_null(pc.not_equal(pc.floor(values), values), False)
    index = int(pc.index(fractional, True).as_py()) if pc.any(fractional).as_py() else 0
    raise InputError(
        f"{uri}: column {column!r} {row_label(uri, index)}: entity id {values[index].as_py()!r} is a float "
        f"({values.type}); entity ids must be integers or strings (17.0 and 17 would be two entities): "
        "write the column as integers"
    )


def label_task(
    requested: str, labels: list[tuple[str, pa.ChunkedArray]], column: str, max_classes: int
) -> tuple[Task, str]:
    """The task and why, from ``schema.task`` and the label of every row of every file (``labels``: (file, label
    column) in file order), by ``tabular.resolve_task``'s rule: regression when requested, or under ``auto`` when
    a floating-point label holds a value with a fraction (``looks_continuous``); else binary or multiclass by the
    number of classes. Then checks the label for that task: a regression label must be a finite number in every
    row; a classifier's must not look continuous (``LabelClasses``)."""
    continuous = next((uri for uri, values in labels if looks_continuous(values)), "")
    if requested == "regression" or (requested == "auto" and continuous):
        for uri, values in labels:
            check_regression_label(uri, column, values)
        if requested == "regression":
            return "regression", "schema.task: regression"
        return "regression", f"label {column!r} is floating-point with fractions (in {continuous}); schema.task: auto"
    classes = LabelClasses(column, max_classes, requested)
    for uri, values in labels:
        classes.add(uri, values)
    count = len(classes.first_seen)
    task: Task = "binary" if count <= 2 else "multiclass"
    why = "floating-point with whole numbers only" if any(pa.types.is_floating(v.type) for _, v in labels) else ""
    return task, f"label {column!r} has {count} classes{f', {why}' if why else ''}; schema.task: {requested}"


def check_regression_label(uri: str, column: str, values: pa.ChunkedArray) -> None:
    """A regression label is a number (integer or float) in every row, finite and present."""
    if not _numeric(values):
        index = _first_not_numeric(values)
        raise InputError(
            f"{uri}: column {column!r} {row_label(uri, index)}: label {values[index].as_py()!r} is not a number "
            f"(the column is {values.type}); schema.task: regression needs a numeric label: write the column as "
            "numbers, or set schema.task: classification (or auto) to predict classes"
        )
    floats = values.cast(pa.float64())
    bad = pc.invert(pc.fill_null(pc.is_finite(floats), False))
    if pc.any(bad).as_py():
        index = int(pc.index(bad, True).as_py())
        raise InputError(
            f"{uri}: column {column!r} {row_label(uri, index)}: regression label {values[index].as_py()!r} is not a "
            "finite number (missing, NaN or infinite); remove the row or fill in the value"
        )


@dataclass
class LabelClasses:
    """The label's classes over every file, each with the file and row it first occurs in; refuses a label that
    looks continuous (a float with a fraction) or has more than ``max_classes`` classes. ``requested``: the
    ``schema.task`` setting, named in the refusal."""

    column: str
    max_classes: int
    requested: str = "classification"
    first_seen: dict[object, tuple[str, int]] = field(default_factory=dict)

    def add(self, uri: str, values: pa.ChunkedArray) -> None:
        unique = pc.unique(values)
        if pa.types.is_floating(values.type):
            fractional = pc.fill_null(pc.not_equal(pc.floor(values), values), False)
            if pc.any(fractional).as_py():
                index = int(pc.index(fractional, True).as_py())
                self._refuse(
                    f"{len(unique):,} distinct values in {uri}, such as {values[index].as_py()!r} "
                    f"({row_label(uri, index)}), not all whole numbers",
                    "give class ids (integers or strings), bin the target into classes, or set schema.task: "
                    "regression (or auto) to predict the number",
                )
        for value in unique.to_pylist():
            if value not in self.first_seen:
                self.first_seen[value] = (uri, int(pc.index(values, value).as_py()))
                if len(self.first_seen) > self.max_classes:
                    self._refuse(
                        f"more than schema.max_classes ({self.max_classes}) distinct values, such as "
                        + ", ".join(f"{v!r} ({f}, {row_label(f, i)})" for v, (f, i) in self._examples(value)),
                        "bin the target into classes, "
                        + ("set schema.task: regression to predict the number, " if _numeric(values) else "")
                        + "or raise schema.max_classes if there really are that many",
                    )

    def _examples(self, last: object) -> list[tuple[object, tuple[str, int]]]:
        return [*list(self.first_seen.items())[: _EXAMPLES - 1], (last, self.first_seen[last])]

    def _refuse(self, why: str, remedy: str) -> None:
        raise InputError(
            f"label {self.column!r} looks continuous: {why}; schema.task: {self.requested} trains a classifier, "
            f"whose classes are a few label values: {remedy}"
        )


def _numeric(values: pa.ChunkedArray) -> bool:
    return pa.types.is_integer(values.type) or pa.types.is_floating(values.type)


def _first_not_numeric(values: pa.ChunkedArray) -> int:
    """The first row whose text does not parse as a number (the first row when every one does)."""
    for index, value in enumerate(values.to_pylist()):
        try:
            float(value)
        except (TypeError, ValueError):
            return index
    return 0


def _kind(kind: pa.DataType) -> str:
    """Types that concatenate into one column compare equal: every number, both string widths."""
    if pa.types.is_integer(kind) or pa.types.is_floating(kind):
        return "number"
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return "string"
    return str(kind)


@dataclass
class ColumnTypes:
    """Each column's type in the first file that had it; a later file with another kind of type is refused,
    naming the column, both types and both files (instead of Arrow's error at concatenation)."""

    seen: dict[str, tuple[str, pa.DataType, str]] = field(default_factory=dict)  # column -> (kind, raw type, uri)

    def add(self, uri: str, raw: pa.Schema, normalised: pa.Schema) -> None:
        for name in normalised.names:
            kind = _kind(normalised.field(name).type)
            first = self.seen.setdefault(name, (kind, raw.field(name).type, uri))
            if first[0] != kind:
                raise InputError(
                    f"column {name!r} is {first[1]} in {first[2]} but {raw.field(name).type} in {uri}: every file of "
                    "data.source needs the same column types; rewrite one of them"
                )


def check_not_in_future(uri: str, column: str, values: pa.ChunkedArray, max_future_days: float) -> None:
    """A timestamp more than ``max_future_days`` ahead of now is a wrong clock or unit (seconds read as ms)."""
    now = dt.datetime.now(dt.UTC)
    limit = pa.scalar(now + dt.timedelta(days=max_future_days), values.type)
    late = pc.greater(values, limit)
    if pc.any(late).as_py():
        index = int(pc.index(late, True).as_py())
        raise InputError(
            f"{uri}: column {column!r} {row_label(uri, index)}: timestamp {values[index].as_py().isoformat()} is "
            f"more than {max_future_days:g} day(s) after now ({now.isoformat(timespec='seconds')}): check the "
            "clock or unit that wrote it, or raise schema.max_future_days"
        )


def resolve_conflicting_labels(
    table: pa.Table, entity: str, timestamp: str, label: str, policy: str, origin: list[tuple[str, int]]
) -> tuple[pa.Table, int]:
    """Rows of one entity and timestamp with different labels. ``error``: refused naming the entity, timestamp,
    both labels and both rows. ``keep_latest``: each such group keeps its last row in file order; returns the table
    and how many rows it dropped. ``origin``: (file, rows) of each file in the order concatenated."""
    n = table.num_rows
    if n < 2:
        return table, 0
    order = pc.sort_indices(table, sort_keys=[(entity, "ascending"), (timestamp, "ascending")])  # stable
    keys = table.select([entity, timestamp, label]).take(order)
    same_key = np.ones(n - 1, dtype=bool)
    for name in (entity, timestamp):
        column = keys[name].combine_chunks()
        same_key &= pc.fill_null(pc.equal(column.slice(1), column.slice(0, n - 1)), False).to_numpy(False)
    labels = keys[label].combine_chunks()
    differs = pc.fill_null(pc.not_equal(labels.slice(1), labels.slice(0, n - 1)), False).to_numpy(False)
    conflict = same_key & differs
    if not conflict.any():
        return table, 0
    rows = order.to_numpy()
    if policy == "error":
        at = int(np.flatnonzero(conflict)[0])
        first, second = (_where(int(rows[i]), origin) for i in (at, at + 1))
        raise InputError(
            f"entity {keys[entity][at].as_py()!r} at {keys[timestamp][at].as_py().isoformat()} has two labels: "
            f"{labels[at].as_py()!r} ({first}) and {labels[at + 1].as_py()!r} ({second}) in column {label!r}; "
            "fix the data, or set schema.conflicting_labels: keep_latest to keep the last row in file order"
        )
    group = np.concatenate([[0], np.cumsum(~same_key)])
    conflicting = np.isin(group, group[1:][conflict])
    last_of_group = np.concatenate([~same_key, [True]])
    keep = np.ones(n, dtype=bool)
    keep[rows[conflicting & ~last_of_group]] = False
    return table.filter(pa.array(keep)), int(n - keep.sum())


def _where(index: int, origin: list[tuple[str, int]]) -> str:
    for uri, rows in origin:
        if index < rows:
            return f"{uri} {row_label(uri, index)}"
        index -= rows
    raise IndexError(index)
