"""Ingest: read CSV/Parquet from any supported URI, validate against the config schema, drop exact duplicate rows,
split deterministically, and write train/validation/test Parquet files. No KFP here: paths and values only.

The task (``schema.task`` resolved to binary, multiclass or regression) is decided over every row of every file,
and the label checked for it. The checks of what the data means (duplicated or nested columns, float entity ids, a
label unfit for the task, types that differ between files, future timestamps, contradictory labels) live in
``checks``. Every check runs before anything is written; outputs go to temporary names and are renamed together at
the end, so bad input leaves no partial output.

Over 500 lines on purpose: reading, each validation rule and the split work on one table in one pass, and
every rule's message names file, column, row and value; splitting them would pass the table around.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kfp_mlops.components.ingest import checks
from kfp_mlops.components.shared import storage
from kfp_mlops.components.shared.artifacts import write_tables_atomically
from kfp_mlops.components.shared.config import PipelineConfig, SchemaConfig, SplitConfig
from kfp_mlops.components.shared.datafiles import format_of, resolve_files, row_label
from kfp_mlops.components.shared.errors import InputError
from kfp_mlops.components.shared.splits import SPLITS, TIMESTAMP_TYPE, SplitPaths, feature_columns
from kfp_mlops.components.shared.tabular import category_values

_TOP_VALUES = 5


@dataclass
class IngestResult:
    """What ingest read, dropped and wrote; the component records it as artifact metadata."""

    files: list[str]
    content_hash: str
    bytes_read: int
    rows_read: int
    duplicates_dropped: int
    conflicting_labels_dropped: int  # rows of one entity and timestamp with another label (keep_latest)
    features: list[str]
    categorical: list[str]
    rows: dict[str, int] = field(default_factory=dict)
    statistics: dict[str, dict[str, Any]] = field(default_factory=dict)  # split -> column -> stats
    missing: dict[str, int] = field(default_factory=dict)  # feature -> missing values over every split
    missing_policy: str = "impute"
    warnings: list[str] = field(default_factory=list)  # e.g. a label class missing from validation or test
    task: str = ""  # binary, multiclass or regression: what schema.task resolved to over every row
    task_reason: str = ""  # why, e.g. "label 'y' is floating-point with fractions (in a.parquet); schema.task: auto"


def ingest(config: PipelineConfig, outputs: SplitPaths) -> IngestResult:
    """Read, validate, deduplicate, split and write; raises InputError naming file/column/row/value."""
    files = resolve_files(config.data.source, config.data.format)
    schema = config.schema_
    if schema.task == "regression":
        _check_split_for_task("regression", schema, config.split)  # before reading: a config error
    digest = hashlib.sha256()
    tables, bytes_read, features, origin = [], 0, schema.features, []
    types = checks.ColumnTypes()
    for uri in files:
        data = storage.read_bytes(uri)
        bytes_read += len(data)
        digest.update(hashlib.sha256(data).digest())
        raw = checks.read_table(uri, data, format_of(uri, config.data.format))
        if features is None:
            features = feature_columns(None, raw.column_names, schema.entity, schema.timestamp, schema.label)
        tables.append(_validate(uri, raw, schema, features))
        types.add(uri, raw.schema, tables[-1].schema)
        origin.append((uri, raw.num_rows))
    labels = [(uri, part[schema.label]) for (uri, _), part in zip(origin, tables, strict=True)]
    task, task_reason = checks.label_task(schema.task, labels, schema.label, schema.max_classes)
    _check_split_for_task(task, schema, config.split)
    categorical = list(schema.categorical)
    table = pa.concat_tables(tables, promote_options="permissive")
    rows_read = table.num_rows
    table, conflicts = checks.resolve_conflicting_labels(
        table, schema.entity, schema.timestamp, schema.label, schema.conflicting_labels, origin
    )
    table = sort_and_deduplicate(table, schema)
    splits = split(table, schema, config.split)
    warnings = []
    if task != "regression":
        check_label_classes(splits, schema.label)
        warnings = class_coverage_warnings(splits, schema.label, config.split)
    result = IngestResult(
        files=files,
        content_hash=f"sha256:{digest.hexdigest()}",
        bytes_read=bytes_read,
        rows_read=rows_read,
        duplicates_dropped=rows_read - conflicts - table.num_rows,
        conflicting_labels_dropped=conflicts,
        features=list(features or []),
        categorical=categorical,
        rows={name: part.num_rows for name, part in splits.items()},
        statistics={name: column_statistics(part, schema, categorical, task) for name, part in splits.items()},
        missing={name: table[name].null_count for name in features or []},
        missing_policy=schema.missing_values,
        warnings=warnings,
        task=task,
        task_reason=task_reason,
    )
    write_tables_atomically({path: splits[name] for name, path in outputs.items()})
    return result


def _check_split_for_task(task: str, schema: SchemaConfig, config: SplitConfig) -> None:
    if task == "regression" and config.stratify:
        raise InputError(
            f"split.stratify: true splits within each label class, but label {schema.label!r} is a regression target "
            f"(schema.task: {schema.task}) and has no classes: set split.stratify: false"
        )


def _validate(uri: str, table: pa.Table, schema: SchemaConfig, features: list[str]) -> pa.Table:
    """Check one file and return it with normalised columns, in the order entity, timestamp, features, label."""
    if table.num_rows == 0:
        raise InputError(f"{uri}: no data rows")
    expected = [schema.entity, schema.timestamp, *features, schema.label]
    missing = [c for c in [*expected, *schema.categorical] if c not in table.column_names]
    if missing:
        raise InputError(f"{uri}: missing column(s) {missing}; the file has {table.column_names}")
    extra = [c for c in table.column_names if c not in expected]
    if extra and not schema.allow_extra_columns:
        raise InputError(
            f"{uri}: unexpected column(s) {extra}; list them in schema.features or set schema.allow_extra_columns"
        )
    roles = {schema.entity: "entity", schema.timestamp: "timestamp", schema.label: "label"}
    checks.check_not_nested(uri, table, roles | {name: "feature" for name in features})
    columns = {}
    entity = table[schema.entity]
    _no_nulls(uri, schema.entity, entity, "entity id is null or NaN")
    checks.check_entity_ids(uri, schema.entity, entity)
    columns[schema.entity] = entity
    columns[schema.timestamp] = _timestamps(uri, schema.timestamp, table[schema.timestamp])
    checks.check_not_in_future(uri, schema.timestamp, columns[schema.timestamp], schema.max_future_days)
    for name in features:
        if name in schema.categorical:
            columns[name] = category_values(table[name])  # an empty string is a missing category
        else:
            columns[name] = _numeric(uri, name, table[name])  # NaN becomes null: one spelling of "missing"
        if schema.missing_values == "error":
            _no_nulls(uri, name, columns[name], "value is missing (schema.missing_values is error; impute fills it)")
    label = table[schema.label]
    _no_nulls(uri, schema.label, label, "label is null or NaN")
    columns[schema.label] = label
    return pa.table(columns)


def _first_index(mask: pa.ChunkedArray | pa.Array) -> int:
    return int(pc.index(mask, True).as_py())


def _no_nulls(uri: str, column: str, values: pa.ChunkedArray, problem: str) -> None:
    missing = pc.is_null(values, nan_is_null=True)
    if pc.any(missing).as_py():
        raise InputError(f"{uri}: column {column!r} {row_label(uri, _first_index(missing))}: {problem}")


def _first_failing_cast(values: pa.ChunkedArray, target: pa.DataType) -> int:
    """Index of the first value that does not cast to ``target`` (bisects chunks; runs only on the error path)."""
    flat = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    lo, hi = 0, len(flat)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        try:
            flat.slice(lo, mid - lo).cast(target)
            lo = mid
        except pa.ArrowException:
            hi = mid
    return lo


def _numeric(uri: str, column: str, values: pa.ChunkedArray) -> pa.ChunkedArray:
    """Integers stay integers; floats keep their type with NaN as null; infinity is an error."""
    if pa.types.is_integer(values.type):
        return values
    if pa.types.is_null(values.type):
        return values.cast(pa.float64())
    if pa.types.is_boolean(values.type):
        return values.cast(pa.int64())
    if pa.types.is_floating(values.type):
        return _finite_or_null(uri, column, values)
    if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
        raise InputError(f"{uri}: column {column!r} is a numeric feature but holds {values.type}")
    try:
        return _finite_or_null(uri, column, values.cast(pa.float64()))
    except pa.ArrowException:
        index = _first_failing_cast(values, pa.float64())
        value = values[index].as_py()
        raise InputError(
            f"{uri}: column {column!r} {row_label(uri, index)}: value {value!r} is not numeric "
            "(list the column in schema.categorical if it is a category)"
        ) from None


def _finite_or_null(uri: str, column: str, values: pa.ChunkedArray) -> pa.ChunkedArray:
    infinite = pc.fill_null(pc.is_inf(values), False)
    if pc.any(infinite).as_py():
        index = _first_index(infinite)
        raise InputError(
            f"{uri}: column {column!r} {row_label(uri, index)}: value {values[index].as_py()} is not finite"
        )
    return pc.if_else(pc.is_nan(values), pa.scalar(None, values.type), values)


_ZONE_SUFFIX = re.compile(r"(Z|[+-]\d{2}(:?\d{2})?)$")


def _timestamps(uri: str, column: str, values: pa.ChunkedArray) -> pa.ChunkedArray:
    if pa.types.is_timestamp(values.type):
        if values.type.tz is None:
            raise InputError(
                f"{uri}: column {column!r} holds timestamps without a timezone ({values.type}); store them in UTC"
            )
        converted = pc.cast(values, TIMESTAMP_TYPE, safe=False)  # nanoseconds truncate to microseconds
    elif pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        try:
            converted = values.cast(TIMESTAMP_TYPE)
        except pa.ArrowException:
            index = _first_failing_cast(values, TIMESTAMP_TYPE)
            value = values[index].as_py()
            problem = "has no timezone" if _parses_without_zone(value) else "is not an ISO 8601 timestamp"
            raise InputError(f"{uri}: column {column!r} {row_label(uri, index)}: value {value!r} {problem}") from None
    else:
        raise InputError(f"{uri}: column {column!r} must hold timestamps, not {values.type}")
    missing = pc.is_null(converted)
    if pc.any(missing).as_py():
        raise InputError(f"{uri}: column {column!r} {row_label(uri, _first_index(missing))}: timestamp is null")
    return converted


def _parses_without_zone(value: str) -> bool:
    try:
        pa.scalar(value).cast(pa.timestamp("us"))
    except pa.ArrowException:
        return False
    return not _ZONE_SUFFIX.search(value.strip())


def sort_and_deduplicate(table: pa.Table, schema: SchemaConfig) -> pa.Table:
    """Sort by (timestamp, entity, every other column) and keep one row of each run of identical rows.

    One sort serves both the time split and de-duplication: identical rows end up adjacent, so comparing each row
    with the previous one finds every exact duplicate (nulls and NaNs compare equal to themselves).
    """
    keys = [
        schema.timestamp,
        schema.entity,
        *(c for c in table.column_names if c not in (schema.timestamp, schema.entity)),
    ]
    ordered = table.take(pc.sort_indices(table, sort_keys=[(k, "ascending") for k in keys]))
    n = ordered.num_rows
    same_as_previous = np.ones(max(n - 1, 0), dtype=bool)
    for name in keys:
        column = ordered[name].combine_chunks()
        current, previous = column.slice(1), column.slice(0, n - 1)
        equal = pc.or_kleene(pc.equal(current, previous), pc.and_(pc.is_null(current), pc.is_null(previous)))
        if pa.types.is_floating(column.type):
            equal = pc.or_kleene(equal, pc.and_(pc.is_nan(current), pc.is_nan(previous)))
        same_as_previous &= pc.fill_null(equal, False).to_numpy(zero_copy_only=False)
        if not same_as_previous.any():
            return ordered
    return ordered.filter(pa.array(np.concatenate([[True], ~same_as_previous])))


def split(table: pa.Table, schema: SchemaConfig, config: SplitConfig) -> dict[str, pa.Table]:
    """Deterministic split of a table sorted by ``sort_and_deduplicate``: by time (the latest rows to test) or by
    a seeded hash of the entity id; ``config.stratify``: that rule within each label class."""
    if config.stratify:
        return _split_stratified(table, schema, config)
    if config.by == "time":
        return _split_by_time(table, schema, config)
    return _split_by_entity(table, schema, config)


def _split_by_time(table: pa.Table, schema: SchemaConfig, config: SplitConfig) -> dict[str, pa.Table]:
    n = table.num_rows
    n_test = int(n * config.test)
    n_validation = int(n * config.validation)
    n_train = n - n_test - n_validation
    needed = _rows_needed(config)
    if min(n_train, n_validation, n_test) < 1:
        raise InputError(
            f"{n} rows after removing duplicates are too few for the split "
            f"(validation {config.validation}, test {config.test}): it needs at least {needed}"
        )
    return {
        "train": table.slice(0, n_train),
        "validation": table.slice(n_train, n_validation),
        "test": table.slice(n_train + n_validation),
    }


def _rows_needed(config: SplitConfig) -> int:
    fractions = [config.validation, config.test, 1 - config.validation - config.test]
    return int(np.ceil(1 / min(fractions) + 1e-9)) + 1


def entity_buckets(entities: pa.ChunkedArray, seed: int) -> np.ndarray:
    """A stable value in [0, 1) per row from blake2b of (seed, entity id): same entity, same bucket, every run."""
    unique = pc.unique(entities)
    return _buckets_of(unique, seed)[pc.index_in(entities, value_set=unique).to_numpy()]


def _buckets_of(unique: pa.Array, seed: int) -> np.ndarray:
    scale = float(2**64)
    return np.array(
        [
            int.from_bytes(hashlib.blake2b(f"{seed}:{value}".encode(), digest_size=8).digest(), "big") / scale
            for value in unique.to_pylist()
        ],
        dtype=np.float64,
    )


def _split_by_entity(table: pa.Table, schema: SchemaConfig, config: SplitConfig) -> dict[str, pa.Table]:
    bucket = entity_buckets(table[schema.entity], config.seed)
    masks = {
        "test": bucket < config.test,
        "validation": (bucket >= config.test) & (bucket < config.test + config.validation),
        "train": bucket >= config.test + config.validation,
    }
    parts = {name: table.filter(pa.array(masks[name])) for name in SPLITS}
    empty = [name for name in SPLITS if parts[name].num_rows == 0]
    if empty:
        entities = len(pc.unique(table[schema.entity]))
        raise InputError(
            f"{table.num_rows} rows from {entities} entities are too few for an entity_hash split: "
            f"the {', '.join(empty)} split(s) would be empty"
        )
    return parts


MIN_STRATUM = 3  # rows (entities) a class needs for stratify to give it one in each split


def stratum_counts(size: int, config: SplitConfig) -> tuple[int, int]:
    """(validation, test) rows (or entities) of one class of ``size``: the configured shares, rounded, at least one
    each when the class has ``MIN_STRATUM``, and always leaving one for train."""
    if size < MIN_STRATUM:
        return 0, 0
    test = max(1, round(size * config.test))
    validation = max(1, round(size * config.validation))
    while test + validation >= size:  # keep a training row: shrink the larger share
        if validation >= test and validation > 1:
            validation -= 1
        else:
            test -= 1
    return validation, test


def _split_stratified(table: pa.Table, schema: SchemaConfig, config: SplitConfig) -> dict[str, pa.Table]:
    """Each label class split on its own by the configured rule. By time: each class's latest rows go to test,
    the ones before them to validation (rows of a class stay in time order; the splits overlap in time). By entity
    hash: entities take the class of their latest row and each class's entities, ordered by their bucket, are cut
    by count, so an entity stays in one split."""
    labels = table[schema.label]
    classes = pc.unique(labels)
    codes = pc.index_in(labels, value_set=classes).to_numpy()
    assigned = np.zeros(table.num_rows, dtype=np.int8)  # 0 train, 1 validation, 2 test
    if config.by == "time":
        for code in range(len(classes)):
            rows = np.flatnonzero(codes == code)  # in time order: the table is sorted by timestamp
            validation, test = stratum_counts(len(rows), config)
            assigned[rows[len(rows) - test :]] = 2
            assigned[rows[len(rows) - test - validation : len(rows) - test]] = 1
    else:
        entities = pc.unique(table[schema.entity])
        owner = pc.index_in(table[schema.entity], value_set=entities).to_numpy()
        latest = np.full(len(entities), -1)
        np.maximum.at(latest, owner, np.arange(table.num_rows))
        entity_class, bucket = codes[latest], _buckets_of(entities, config.seed)
        per_entity = np.zeros(len(entities), dtype=np.int8)
        for code in range(len(classes)):
            members = np.flatnonzero(entity_class == code)
            members = members[np.argsort(bucket[members], kind="stable")]
            validation, test = stratum_counts(len(members), config)
            per_entity[members[:test]] = 2
            per_entity[members[test : test + validation]] = 1
        assigned = per_entity[owner]
    parts = {name: table.filter(pa.array(assigned == i)) for i, name in enumerate(SPLITS)}
    empty = [name for name in SPLITS if parts[name].num_rows == 0]
    if empty:
        raise InputError(
            f"{table.num_rows} rows are too few for a stratified split: the {', '.join(empty)} split(s) would be "
            f"empty (a class needs {MIN_STRATUM} rows{' of distinct entities' if config.by != 'time' else ''} to "
            "reach every split)"
        )
    return parts


def class_coverage_warnings(splits: dict[str, pa.Table], label: str, config: SplitConfig) -> list[str]:
    """One warning per label class missing from a split, saying what follows. Missing from validation or test: the
    class is left out of that split's averaged metrics (precision/recall/F1 macro, ROC AUC one-vs-rest). Missing
    from train (found only later): training refuses the data, since the model cannot learn the class (a warning
    here, not an error: the monitoring pipeline's drift check, which needs no label, still runs on such a window)."""
    counts = {name: dict(Counter(part[label].to_pylist())) for name, part in splits.items()}
    warnings = []
    for value in sorted({v for c in counts.values() for v in c}, key=lambda v: (str(type(v)), v)):
        where = {name: counts[name].get(value, 0) for name in SPLITS}
        remedy = (
            f"it has fewer than {MIN_STRATUM} {'rows' if config.by == 'time' else 'entities'} to reach every split"
            if config.stratify
            else "set split.stratify: true to keep every class in every split"
        )
        if where["train"] == 0:
            found = ", ".join(f"{rows} in {name}" for name, rows in where.items() if rows)
            warnings.append(
                f"split: class {value!r} of {label!r} has no rows in the train split ({found}): training will refuse "
                f"the data (the model cannot learn a class it never saw); {remedy}, or remove those rows"
            )
            continue
        absent = [name for name in ("validation", "test") if where[name] == 0]
        if not absent:
            continue
        warnings.append(
            f"split: class {value!r} of {label!r} has no rows in the {' and '.join(absent)} split "
            f"({sum(where.values())} rows in all, {where['train']} in train): "
            f"{' and '.join(absent)} metrics leave it out (precision/recall/F1 macro averages and ROC AUC one-vs-rest "
            f"over the classes present); {remedy}"
        )
    return warnings


def check_label_classes(splits: dict[str, pa.Table], label: str) -> None:
    """Training needs two classes in the train split and evaluation two in the test split (ROC AUC)."""
    for name in ("train", "test"):
        values = pc.unique(splits[name][label]).to_pylist()
        if len(values) < 2:
            raise InputError(
                f"{name} split: column {label!r} holds a single class {values} in its {splits[name].num_rows} rows; "
                f"training and evaluation need two: add rows of another class, or change split.by or split.test"
            )


def column_statistics(
    table: pa.Table, schema: SchemaConfig, categorical: list[str], task: str = ""
) -> dict[str, dict[str, Any]]:
    """Per-column statistics, JSON-serialisable: numeric moments, category counts, timestamp range, label balance
    (a regression label's moments)."""
    stats: dict[str, dict[str, Any]] = {}
    for name in table.column_names:
        values = table[name]
        entry: dict[str, Any] = {"type": str(values.type), "count": len(values), "nulls": values.null_count}
        if name == schema.timestamp:
            entry |= {"min": _iso(pc.min(values)), "max": _iso(pc.max(values))}
        elif name == schema.entity:
            entry["distinct"] = pc.count_distinct(values).as_py()
        elif (name == schema.label and task != "regression") or name in categorical:
            counts = pc.value_counts(values).to_pylist()
            top = sorted(counts, key=lambda c: (-c["counts"], str(c["values"])))[:_TOP_VALUES]
            entry |= {
                "distinct": len(counts),
                "top": [{"value": _plain(c["values"]), "count": c["counts"]} for c in top],
            }
        else:
            floats = values.cast(pa.float64())
            finite = pc.filter(floats, pc.is_finite(floats))
            extremes = pc.min_max(finite)
            entry |= {
                "nan": int(pc.sum(pc.is_nan(floats)).as_py() or 0),
                "mean": _round(pc.mean(finite)),
                "std": _round(pc.stddev(finite)),
                "min": _round(extremes["min"]),
                "max": _round(extremes["max"]),
            }
        stats[name] = entry
    return stats


def render_summary(result: IngestResult, config: PipelineConfig) -> str:
    """A Markdown summary for the Kubeflow UI: task, splits, label balance (or a regression label's moments), data
    hash, per-column statistics."""
    schema = config.schema_
    lines = [
        "# Ingest summary",
        "",
        f"- Source: `{config.data.source}` ({len(result.files)} file(s), {result.bytes_read:,} bytes)",
        f"- Content hash: `{result.content_hash}`",
        f"- Task: {result.task} ({result.task_reason})",
        f"- Rows read: {result.rows_read:,}; exact duplicates dropped: {result.duplicates_dropped:,}"
        + (f"; conflicting labels dropped: {n:,}" if (n := result.conflicting_labels_dropped) else ""),
        f"- Split: by {config.split.by}{', stratified by label' if config.split.stratify else ''} "
        f"(validation {config.split.validation}, test {config.split.test}, seed {config.split.seed})",
        "",
        f"| split | rows | {'label mean, std' if result.task == 'regression' else 'label balance'} |",
        "|---|---:|---|",
    ]
    for name in SPLITS:
        label = result.statistics[name][schema.label]
        total = max(label["count"], 1)
        balance = ", ".join(f"{t['value']}: {t['count'] / total:.1%}" for t in label.get("top", []))
        if "mean" in label:
            balance = f"{label['mean']}, {label['std']}"
        lines.append(f"| {name} | {result.rows[name]:,} | {balance} |")
    if result.warnings:
        lines += ["", *(f"- **Warning**: {warning}" for warning in result.warnings)]
    lines += _missing_section(result)
    lines += ["", "## Columns (train split)", "", "| column | type | nulls | summary |", "|---|---|---:|---|"]
    for column, entry in result.statistics["train"].items():
        if "mean" in entry:
            summary = f"mean {entry['mean']}, std {entry['std']}, min {entry['min']}, max {entry['max']}"
        elif "top" in entry:
            summary = f"{entry['distinct']} distinct; top: " + ", ".join(f"{t['value']}" for t in entry["top"])
        elif "min" in entry:
            summary = f"{entry['min']} … {entry['max']}"
        else:
            summary = f"{entry.get('distinct', 0):,} distinct"
        lines.append(f"| {column} | {entry['type']} | {entry['nulls']} | {summary} |")
    return "\n".join(lines) + "\n"


def _missing_section(result: IngestResult) -> list[str]:
    total = result.rows_read - result.duplicates_dropped
    gaps = {name: count for name, count in result.missing.items() if count}
    if not gaps:
        return ["", "No missing feature values."]
    action = (
        "imputed with the training median (numeric) or the reserved category (categorical), in the model too"
        if result.missing_policy == "impute"
        else "rejected"
    )
    lines = ["", f"## Missing values ({action})", "", "| column | missing | share |", "|---|---:|---:|"]
    lines += [f"| {name} | {count:,} | {count / max(total, 1):.1%} |" for name, count in gaps.items()]
    return lines


def _plain(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, bool)) or value is None else str(value)


def _round(scalar: pa.Scalar) -> float | None:
    value = scalar.as_py()
    return None if value is None else round(float(value), 6)


def _iso(scalar: pa.Scalar) -> str | None:
    value = scalar.as_py()
    return None if value is None else value.isoformat()
