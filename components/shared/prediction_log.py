"""The prediction log: what was predicted, for which entity at which time, by which model. Batch inference
(components/inference/) and ``kfp-mlops predict --log`` write it; the performance check (components/performance/)
reads it back and joins it with the labels that arrive later.

Layout: ``<log>/date=YYYY-MM-DD/part-<writer>-<batch>.parquet``, partitioned by the UTC date of each row's
timestamp (Hive style: Spark, Trino, DuckDB and pyarrow.dataset read it as a column). ``writer`` is the KFP run id
(or ``predict-<time>-<random>`` for an online prediction), ``batch`` the batch's number: a retried task rewrites the
same files with the same rows, so nothing is ever duplicated. Each file is written whole (local: a temporary name,
then a rename; S3/GCS: one upload), so a reader never sees a partial file.

Columns: the schema's entity and timestamp columns (names as in the training data, so labels join on them), the
model's raw features, then ``LOG_COLUMNS``: the probabilities (classification, in the model's class order), the
predicted class as text (classification) or value (regression), and who predicted: model name, Triton version (0: the
package scored in-process), the registry's version ("" if none), the package URI, the run id and when.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterable
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from kfp_mlops.components.shared import storage
from kfp_mlops.components.shared.errors import InputError

PROBABILITIES = "probabilities"  # list<float32>, the model's classes in order; null for regression
PREDICTED = "predicted"  # string: the predicted class; null for regression
PREDICTION = "prediction"  # float64: a regression model's value; null for classification
MODEL_NAME = "model_name"
MODEL_VERSION = "model_version"  # int64: Triton's version; 0 when the package was scored in-process
REGISTRY_VERSION = "registry_version"  # string: the MLflow registry's version, "" when none
MODEL_URI = "model_uri"  # the model package's URI: the identity the performance check groups by
RUN_ID = "run_id"
PREDICTED_AT = "predicted_at"  # timestamp[us, UTC]
LOG_FIELDS = [
    pa.field(PROBABILITIES, pa.list_(pa.float32())),
    pa.field(PREDICTED, pa.string()),
    pa.field(PREDICTION, pa.float64()),
    pa.field(MODEL_NAME, pa.string()),
    pa.field(MODEL_VERSION, pa.int64()),
    pa.field(REGISTRY_VERSION, pa.string()),
    pa.field(MODEL_URI, pa.string()),
    pa.field(RUN_ID, pa.string()),
    pa.field(PREDICTED_AT, pa.timestamp("us", tz="UTC")),
]
LOG_COLUMNS = [f.name for f in LOG_FIELDS]
TIMESTAMP_TYPE = pa.timestamp("us", tz="UTC")
_PARTITION = re.compile(r"(?:^|/)date=(\d{4}-\d{2}-\d{2})/")
_SAFE_WRITER = re.compile(r"[^A-Za-z0-9_.-]+")


def _utc(values: pa.ChunkedArray | pa.Array, what: str) -> pa.ChunkedArray | pa.Array:
    if not pa.types.is_timestamp(values.type):
        raise InputError(f"{what}: expected a timestamp column, got {values.type}")
    if values.type.tz is None:  # naive times are read as UTC, as ingest reads them
        return pc.assume_timezone(values.cast(pa.timestamp("us")), "UTC")
    return values.cast(TIMESTAMP_TYPE)


def check_log_table(table: pa.Table, entity: str, timestamp: str, where: str) -> pa.Table:
    """``table`` with its timestamp in UTC microseconds, after checking it has the entity, timestamp and log
    columns; else an InputError naming ``where`` and what is missing."""
    missing = [c for c in (entity, timestamp, *LOG_COLUMNS) if c not in table.column_names]
    if missing:
        raise InputError(f"{where}: not a prediction log: missing column(s) {', '.join(missing)}")
    position = table.column_names.index(timestamp)
    return table.set_column(position, timestamp, _utc(table.column(timestamp), f"{where}: column {timestamp!r}"))


def write_batch(log: str, table: pa.Table, timestamp: str, writer: str, batch: int) -> list[str]:
    """Write one batch of predictions (entity, timestamp, features and ``LOG_COLUMNS``) under ``log``, one file per
    date it spans; returns the files' URIs. Rewriting the same (writer, batch) replaces the same files."""
    if not table.num_rows:
        return []
    position = table.column_names.index(timestamp)
    table = table.set_column(position, timestamp, _utc(table.column(timestamp), f"column {timestamp!r}"))
    dates = pc.strftime(table.column(timestamp), format="%Y-%m-%d")
    name = _SAFE_WRITER.sub("-", writer).strip("-") or "writer"
    written = []
    for date in sorted(pc.unique(dates).to_pylist()):
        part = table.filter(pc.equal(dates, date))
        buffer = io.BytesIO()
        pq.write_table(part, buffer, compression="zstd")
        uri = f"{log.rstrip('/')}/date={date}/part-{name}-{batch:05d}.parquet"
        storage.write_bytes(uri, buffer.getvalue())
        written.append(uri)
    return written


def partition_date(uri: str) -> str | None:
    """The ``date=`` partition a log file is in (YYYY-MM-DD), None outside one."""
    found = _PARTITION.search(storage.parse(uri).key)
    return found.group(1) if found else None


def log_files(log: str, since: datetime | None = None, until: datetime | None = None) -> list[str]:
    """The log's Parquet files, skipping date partitions wholly outside [since, until]."""
    try:
        uris = [u for u in storage.list_uris(log) if u.endswith(".parquet")]
    except FileNotFoundError:
        uris = []
    first = since.astimezone(UTC).date().isoformat() if since else None
    last = until.astimezone(UTC).date().isoformat() if until else None
    kept = []
    for uri in uris:
        date = partition_date(uri)
        if date is not None and ((first and date < first) or (last and date > last)):
            continue
        kept.append(uri)
    return kept


def read_log(
    log: str, entity: str, timestamp: str, since: datetime | None = None, until: datetime | None = None
) -> tuple[pa.Table, list[str]]:
    """Every prediction of the log with ``since <= timestamp <= until`` (UTC; None: unbounded), and the files read.
    An empty window gives an empty table with the log's columns; a file that is not a prediction log is an
    InputError naming it."""
    files = log_files(log, since, until)
    tables = [_read_file(uri, entity, timestamp) for uri in files]
    if not tables:
        return empty_log(entity, timestamp), files
    table = pa.concat_tables(tables, promote_options="permissive")
    mask = None
    times = table.column(timestamp)
    for bound, compare in ((since, pc.greater_equal), (until, pc.less_equal)):
        if bound is not None:
            test = compare(times, pa.scalar(bound.astimezone(UTC), TIMESTAMP_TYPE))
            mask = test if mask is None else pc.and_(mask, test)
    return (table.filter(mask) if mask is not None else table), files


def _read_file(uri: str, entity: str, timestamp: str) -> pa.Table:
    try:
        table = pq.read_table(pa.BufferReader(storage.read_bytes(uri)))
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"prediction log file {uri}: not a readable Parquet file ({exc})") from None
    return check_log_table(table, entity, timestamp, f"prediction log file {uri}")


def empty_log(entity: str, timestamp: str, entity_type: pa.DataType | None = None) -> pa.Table:
    fields = [pa.field(entity, entity_type or pa.string()), pa.field(timestamp, TIMESTAMP_TYPE), *LOG_FIELDS]
    return pa.Table.from_pylist([], schema=pa.schema(fields))


def log_columns(
    rows: int,
    *,
    probabilities: Iterable | None,
    predicted: Iterable | None,
    prediction: Iterable | None,
    model_name: str,
    model_version: int,
    registry_version: str,
    model_uri: str,
    run_id: str,
    predicted_at: datetime | None = None,
) -> dict[str, pa.Array]:
    """``LOG_COLUMNS`` for ``rows`` predictions: the per-row outputs (None: nulls) and the model's identity."""
    at = (predicted_at or datetime.now(UTC)).astimezone(UTC)

    def per_row(values: Iterable | pa.Array | None, kind: pa.DataType) -> pa.Array:
        if isinstance(values, pa.Array):  # already columnar (e.g. a batch's probabilities): cast, not copied row by row
            return values.cast(kind)
        return pa.nulls(rows, kind) if values is None else pa.array(values, kind)

    def constant(value, kind: pa.DataType) -> pa.Array:
        return pa.array([value] * rows, kind)

    return {
        PROBABILITIES: per_row(probabilities, pa.list_(pa.float32())),
        PREDICTED: per_row(predicted, pa.string()),
        PREDICTION: per_row(prediction, pa.float64()),
        MODEL_NAME: constant(model_name, pa.string()),
        MODEL_VERSION: constant(int(model_version), pa.int64()),
        REGISTRY_VERSION: constant(registry_version, pa.string()),
        MODEL_URI: constant(model_uri, pa.string()),
        RUN_ID: constant(run_id, pa.string()),
        PREDICTED_AT: constant(at, TIMESTAMP_TYPE),
    }
