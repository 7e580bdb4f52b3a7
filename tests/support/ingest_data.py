"""What the ingest tests share: the sample config on a source, the output split paths, Parquet and CSV writers, and
table edits (a column replaced, one value set)."""

from __future__ import annotations

import io
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from kfp_mlops.components.shared.config import PipelineConfig, parse_config
from kfp_mlops.components.shared.splits import SplitPaths
from kfp_mlops.sample_data import sample_config


def make_config(source, **overrides) -> PipelineConfig:
    """The sample config on ``source`` with a time split, its sections updated by ``overrides``."""
    document = sample_config(str(source), split={"by": "time", "validation": 0.15, "test": 0.15, "seed": 0})
    for section, values in overrides.items():
        document[section] = {**document[section], **values}
    return parse_config(document)


def outputs(directory: Path) -> SplitPaths:
    return SplitPaths(*(str(directory / "out" / name) for name in ("train", "validation", "test")))


def write_parquet(path: Path, table: pa.Table) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


def with_column(table: pa.Table, column: str, values) -> pa.Table:
    index = table.column_names.index(column)
    return table.set_column(index, column, pa.array(values) if not isinstance(values, pa.Array) else values)


def with_value(table: pa.Table, column: str, row: int, value, type_=None) -> pa.Table:
    values = table[column].to_pylist()
    values[row] = value
    return with_column(table, column, pa.array(values, type_ or table[column].type))


def csv_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pacsv.write_csv(table, sink)
    return sink.getvalue()


def parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def float_label(schema: pa.Schema) -> pa.Schema:
    return pa.schema([f.with_type(pa.float64()) if f.name == "churned" else f for f in schema])
