"""The entities to predict for, streamed in batches: from ``inference.entities`` (Parquet or CSV files behind a URI,
the schema's entity column and, optionally, its timestamp column) or, when that is empty, every entity of the
Feast feature view's offline source. Each batch is an Arrow table (entity, timestamp) of at most ``batch_rows``
rows, the entity typed as the Feast entity (int64 or string), the timestamp UTC; memory is bounded by the batch,
not by the file. Malformed input is an InputError naming the file, the column and the row."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from kfp_mlops.components.shared import storage
from kfp_mlops.components.shared.datafiles import format_of, resolve_files, row_label
from kfp_mlops.components.shared.errors import InputError
from kfp_mlops.components.shared.prediction_log import TIMESTAMP_TYPE

CSV_BLOCK_BYTES = 8 << 20


@contextlib.contextmanager
def local_copy(uri: str) -> Iterator[Path]:
    """A local path of ``uri``: itself, or a temporary download (removed on exit), so files are read in pieces."""
    if not storage.is_remote(uri):
        yield Path(storage.parse(uri).key)
        return
    with tempfile.TemporaryDirectory(prefix="kfp-mlops-entities-") as directory:
        path = Path(directory) / Path(storage.parse(uri).key).name
        storage.download_file(uri, path)
        yield path


def _record_batches(uri: str, path: Path, fmt: str, columns: list[str], batch_rows: int) -> Iterator[pa.RecordBatch]:
    try:
        if fmt == "parquet":
            yield from pq.ParquetFile(path).iter_batches(batch_size=batch_rows, columns=columns)
        else:
            convert = pacsv.ConvertOptions(include_columns=columns, strings_can_be_null=True)
            reader = pacsv.open_csv(path, read_options=pacsv.ReadOptions(block_size=CSV_BLOCK_BYTES),
                                    convert_options=convert)  # fmt: skip
            yield from reader
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"entities file {uri}: not a readable {fmt.upper()} file ({exc})") from None


def _file_columns(uri: str, path: Path, fmt: str) -> list[str]:
    if path.stat().st_size == 0:
        raise InputError(f"entities file {uri}: file is empty (0 bytes)")
    try:
        if fmt == "parquet":
            return pq.read_schema(path).names
        with path.open("rb") as handle:
            return pacsv.open_csv(handle).schema.names
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"entities file {uri}: not a readable {fmt.upper()} file ({exc})") from None


def _convert(values: pa.Array, target: pa.DataType) -> pa.Array:
    """``values`` as ``target``: timestamps in UTC (naive ones, and ISO 8601 text without an offset, read as UTC);
    ids as the entity's type (a float id only when whole)."""
    if pa.types.is_timestamp(target):
        if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
            try:
                return values.cast(target)  # with an offset
            except pa.ArrowInvalid:
                values = values.cast(pa.timestamp("us"))
        if not pa.types.is_timestamp(values.type):
            raise pa.ArrowInvalid(f"{values.type} is not a time")
        if values.type.tz is None:
            return pc.assume_timezone(values.cast(pa.timestamp("us")), "UTC")
        return values.cast(target)
    if pa.types.is_integer(target) and pa.types.is_floating(values.type):
        if not pc.all(pc.equal(pc.floor(values), values)).as_py():
            raise pa.ArrowInvalid("not whole")
    return values.cast(target)


def _first_bad(values: pa.Array, target: pa.DataType) -> int:
    """The index of the first value that does not convert to ``target``."""
    for index in range(len(values)):
        try:
            _convert(values.slice(index, 1), target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return index
    return 0


def _typed(uri: str, values: pa.Array, column: str, target: pa.DataType, offset: int, what: str) -> pa.Array:
    if values.null_count:
        index = pc.index(pc.is_null(values), True).as_py()
        raise InputError(f"entities file {uri}: column {column!r}, {row_label(uri, offset + index)}: no {what}")
    try:
        return _convert(values, target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        index = _first_bad(values, target)
        value = values[index].as_py()
        raise InputError(
            f"entities file {uri}: column {column!r}, {row_label(uri, offset + index)}: {value!r} is not a {what} "
            f"({target})"
        ) from None


def read_entities(
    uri: str, entity: str, timestamp: str, entity_type: pa.DataType, as_of: datetime, batch_rows: int
) -> Iterator[pa.Table]:
    """Batches of (entity, timestamp) from the files ``uri`` names; rows without their own timestamp column take
    ``as_of``. Raises InputError for a file without the entity column or with a malformed value."""
    pending: list[pa.Table] = []
    held = 0
    for file_uri in resolve_files(uri, what="inference.entities"):
        fmt = format_of(file_uri, what="inference.entities (a .parquet or .csv file)")
        with local_copy(file_uri) as path:
            names = _file_columns(file_uri, path, fmt)
            if entity not in names:
                raise InputError(
                    f"entities file {file_uri}: no column {entity!r} (the schema's entity); its columns: {names}"
                )
            own_time = timestamp in names
            offset = 0
            for batch in _record_batches(file_uri, path, fmt, [entity, *([timestamp] if own_time else [])],
                                         batch_rows):  # fmt: skip
                ids = _typed(file_uri, batch.column(entity), entity, entity_type, offset, "entity id")
                if own_time:
                    times = _typed(file_uri, batch.column(timestamp), timestamp, TIMESTAMP_TYPE, offset, "timestamp")
                else:
                    times = pa.array([as_of] * batch.num_rows, TIMESTAMP_TYPE)
                offset += batch.num_rows
                pending.append(pa.table({entity: ids, timestamp: times}))
                held += batch.num_rows
                while held >= batch_rows:
                    table = pa.concat_tables(pending)
                    yield table.slice(0, batch_rows)
                    rest = table.slice(batch_rows)
                    pending, held = ([rest] if rest.num_rows else []), rest.num_rows
    if held:
        yield pa.concat_tables(pending)


def view_entities(
    source_path: Path, entity: str, timestamp: str, entity_type: pa.DataType, as_of: datetime, batch_rows: int
) -> Iterator[pa.Table]:
    """Every distinct entity of the feature view's offline source (a Parquet file), at ``as_of``, in batches."""
    try:
        ids = pq.read_table(source_path, columns=[entity]).column(entity)
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"the feature view's offline source {source_path}: cannot read {entity!r} ({exc})") from None
    distinct = pc.unique(ids.combine_chunks()).cast(entity_type).sort()
    for start in range(0, len(distinct), batch_rows):
        part = distinct.slice(start, batch_rows)
        yield pa.table({entity: part, timestamp: pa.array([as_of] * len(part), TIMESTAMP_TYPE)})
