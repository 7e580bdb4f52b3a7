"""Features: turn the ingested splits into a Feast feature repository, register it, materialize the latest values
into the online store and write point-in-time correct train/validation/test sets. No KFP here: paths and values.

The repository (``repo_dir``) is what a person or the ``feast`` CLI needs: ``feature_store.yaml``, ``features.py``
(the definitions, for reading and for ``feast apply``), ``data/<view>.parquet`` (the offline source: every split's
entity, timestamp and feature columns) and, with the embedded defaults, ``registry.db`` (Feast's file registry) and
``online.db`` (SQLite online store). Every path in it is relative, so the folder can be copied and used elsewhere.

Secrets never enter a file: ``feature_store.yaml`` names the environment variables (``${FEAST_REGISTRY_URL}``),
which Feast expands when it loads the file; this step resolves the same variables in memory.

Order of work: read and check the splits; check the view already registered, if any; write the repository and
apply; point-in-time join of every split and value checks; materialize incrementally; compare online with offline;
write the three outputs together. A failure writes no output and removes a repository this call created.

Over 500 lines on purpose: the repository it writes, Feast's apply, the point-in-time sets and the
materialization share one FeatureStore and its config; the next split would be the repository writer.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml

from kfp_mlops.components.shared import storage
from kfp_mlops.components.shared.artifacts import write_tables_atomically
from kfp_mlops.components.shared.config import FeaturesConfig, PipelineConfig, SchemaConfig
from kfp_mlops.components.shared.errors import InputError
from kfp_mlops.components.shared.layout import FEATURE_STORE_YAML
from kfp_mlops.components.shared.splits import TIMESTAMP_TYPE, SplitPaths, feature_columns, read_split

if TYPE_CHECKING:
    from feast import Entity, FeatureStore, FeatureView, FileSource

DEFINITIONS_FILE = "features.py"
DATA_DIR = "data"
REGISTRY_FILE = "registry.db"
ONLINE_STORE_FILE = "online.db"
_ROW = "__kfp_mlops_row"
_ARROW_TYPE_OF = {"Int64": pa.int64(), "Float64": pa.float64(), "String": pa.string()}


class OnlineOfflineMismatchError(RuntimeError):
    """The online store does not serve the latest offline value of a feature."""


@dataclass(frozen=True)
class FeatureColumns:
    """Column roles of the splits, the Feast type of every feature (Int64, Float64 or String) and of the entity
    key (INT64 or STRING)."""

    entity: str
    timestamp: str
    label: str
    features: tuple[str, ...]
    feature_types: dict[str, str]
    entity_type: str

    @property
    def entity_arrow_type(self) -> pa.DataType:
        return pa.int64() if self.entity_type == "INT64" else pa.string()


@dataclass(frozen=True)
class Materialization:
    """One ``materialize_incremental`` call: the window Feast recorded and the entity rows written online."""

    start: datetime
    end: datetime
    rows: int
    seconds: float

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


@dataclass
class FeaturesResult:
    """What the step registered, materialized, checked and wrote; the component records it as metadata."""

    project: str
    view: str
    entity: str
    features: list[str]
    feature_types: dict[str, str]
    repo_dir: str
    online_store: str
    registry: str
    views: int  # feature views materialized
    rows_materialized: int  # entity rows written online by this call: one per entity with a row in the window
    materialize_seconds: float
    materialize_rows_per_second: float
    materialized_from: str  # the window of this call (ISO 8601); empty-handed reruns report the previous end twice
    materialized_to: str
    online_entities_checked: int
    rows: dict[str, int] = field(default_factory=dict)  # split -> rows written


def build_feature_sets(
    config: PipelineConfig, inputs: SplitPaths, repo_dir: str, outputs: SplitPaths
) -> FeaturesResult:
    """Generate and apply the feature repository, materialize, and write point-in-time correct splits.

    Raises InputError (naming split, file, column, row or value) for bad input and OnlineOfflineMismatchError when
    the online store disagrees with the offline data; either way no output is written.
    """
    features_config = config.features
    splits, columns = read_splits(inputs, config.schema_)
    source = feature_source(splits, columns)
    entity, data_source, view = feast_objects(features_config, columns)
    repo_existed = os.path.exists(repo_dir)
    store = open_store(features_config, repo_dir)
    try:
        check_registered_view(store, features_config, repo_dir, view)
        write_repository(repo_dir, features_config, columns, source)
        store.apply([entity, data_source, view])
        joined = {}
        for name, table in splits.items():
            joined[name] = point_in_time_join(store, view.name, columns, table)
            given = table if config.schema_.missing_values == "impute" else None
            check_joined_values(name, joined[name], columns, source, view.ttl, given)
        end = pc.max(source[columns.timestamp]).as_py() + timedelta(microseconds=1)
        materialization = materialize(store, view.name, source, columns, end)
        checked = check_online(store, view.name, source, columns, features_config.online_check_entities)
        write_tables_atomically({path: joined[name] for name, path in outputs.items()})
    except BaseException:
        if not repo_existed:
            shutil.rmtree(repo_dir, ignore_errors=True)
        raise
    return FeaturesResult(
        project=features_config.project,
        view=view.name,
        entity=columns.entity,
        features=list(columns.features),
        feature_types=dict(columns.feature_types),
        repo_dir=repo_dir,
        online_store=features_config.online_store.type,
        registry=features_config.registry.type,
        views=1,
        rows_materialized=materialization.rows,
        materialize_seconds=round(materialization.seconds, 3),
        materialize_rows_per_second=round(materialization.rows_per_second, 1),
        materialized_from=materialization.start.isoformat(),
        materialized_to=materialization.end.isoformat(),
        online_entities_checked=checked,
        rows={name: table.num_rows for name, table in joined.items()},
    )


# --- input -----------------------------------------------------------------------------------------------------


def read_splits(inputs: SplitPaths, schema: SchemaConfig) -> tuple[dict[str, pa.Table], FeatureColumns]:
    """Read the three splits, check them and return them as (entity, timestamp, features, label) with the types
    Feast stores (int64, float64, string; timestamps in µs UTC)."""
    raw = {name: read_split(path, name) for name, path in inputs.items()}
    roles = (schema.entity, schema.timestamp, schema.label)
    features = feature_columns(schema.features, raw["train"].column_names, *roles)
    if not features:
        raise InputError(f"train split {inputs.train}: no feature columns besides {list(roles)}")
    entity_types, feature_types = {}, {}
    for name, table in raw.items():
        path = getattr(inputs, name)
        missing = [c for c in [*roles, *features] if c not in table.column_names]
        if missing:
            raise InputError(f"{name} split {path}: missing column(s) {missing}; it has {table.column_names}")
        entity_types[name] = _entity_type(name, path, schema.entity, table.schema.field(schema.entity).type)
        timestamp_type = table.schema.field(schema.timestamp).type
        if not pa.types.is_timestamp(timestamp_type) or timestamp_type.tz is None:
            raise InputError(
                f"{name} split {path}: column {schema.timestamp!r} must hold timestamps with a timezone, not "
                f"{timestamp_type}"
            )
        feature_types[name] = {f: _feature_type(name, path, f, table.schema.field(f).type) for f in features}
    _same_types_in_every_split({n: {schema.entity: t} for n, t in entity_types.items()})
    _same_types_in_every_split(feature_types)
    columns = FeatureColumns(
        entity=schema.entity,
        timestamp=schema.timestamp,
        label=schema.label,
        features=tuple(features),
        feature_types=feature_types["train"],
        entity_type=entity_types["train"],
    )
    tables = {}
    for name, table in raw.items():
        typed = {
            columns.entity: table[columns.entity].cast(columns.entity_arrow_type),
            columns.timestamp: pc.cast(table[columns.timestamp], TIMESTAMP_TYPE, safe=False),  # ns -> µs
            **{f: table[f].cast(_ARROW_TYPE_OF[columns.feature_types[f]]) for f in features},
            columns.label: table[columns.label],
        }
        tables[name] = pa.table(typed)
    return tables, columns


def _entity_type(split: str, path: str, column: str, arrow_type: pa.DataType) -> str:
    if pa.types.is_integer(arrow_type):
        return "INT64"
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return "STRING"
    raise InputError(f"{split} split {path}: entity column {column!r} must hold integers or strings, not {arrow_type}")


def _feature_type(split: str, path: str, column: str, arrow_type: pa.DataType) -> str:
    if pa.types.is_integer(arrow_type) or pa.types.is_boolean(arrow_type):
        return "Int64"
    if pa.types.is_floating(arrow_type) or pa.types.is_decimal(arrow_type):
        return "Float64"
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type) or pa.types.is_dictionary(arrow_type):
        return "String"
    raise InputError(
        f"{split} split {path}: feature column {column!r} holds {arrow_type}; a feature must be numeric or a string"
    )


def _same_types_in_every_split(types: dict[str, dict[str, str]]) -> None:
    for column, expected in types["train"].items():
        for split, found in types.items():
            if found[column] != expected:
                raise InputError(
                    f"column {column!r} is {expected} in the train split but {found[column]} in the {split} split"
                )


def feature_source(splits: dict[str, pa.Table], columns: FeatureColumns) -> pa.Table:
    """The offline source: the splits' (entity, timestamp, features) rows, exact duplicates removed, sorted by
    (timestamp, entity). Two rows of one entity at one timestamp with different feature values make the
    point-in-time value undefined: that raises InputError."""
    keys = [columns.entity, columns.timestamp]
    union = pa.concat_tables(t.select([*keys, *columns.features]) for t in splits.values())
    unique = union.group_by(union.column_names, use_threads=False).aggregate([])
    per_key = unique.group_by(keys, use_threads=False).aggregate([([], "count_all")])
    conflicts = per_key.filter(pc.greater(per_key["count_all"], 1))
    if conflicts.num_rows:
        entity, timestamp = conflicts[columns.entity][0].as_py(), conflicts[columns.timestamp][0].as_py()
        raise InputError(
            f"column {columns.entity!r}: entity {entity!r} has {conflicts['count_all'][0].as_py()} rows at "
            f"{timestamp.isoformat()} with different feature values ({conflicts.num_rows} such entity/timestamp "
            "pair(s)): a point-in-time join needs one feature row per entity and timestamp"
        )
    return unique.sort_by([(columns.timestamp, "ascending"), (columns.entity, "ascending")])


# --- the feature repository ------------------------------------------------------------------------------------


def feature_store_settings(config: FeaturesConfig, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The ``feature_store.yaml`` document. Without ``environ``, secrets are ``${VAR}`` placeholders (what the
    file holds; Feast expands them when it loads the file); with it, their values (only ever held in memory)."""
    if config.online_store.type == "redis":
        connection = _secret(config.online_store.connection_string_env, "Redis connection string", environ)
        online_store: dict[str, Any] = {"type": "redis", "connection_string": connection}
    else:
        online_store = {"type": "sqlite", "path": ONLINE_STORE_FILE}
    if config.registry.type == "sql":
        url = _secret(config.registry.url_env, "SQLAlchemy URL of the Feast registry", environ)
        registry: dict[str, Any] = {"registry_type": "sql", "path": url}
    else:
        registry = {"registry_type": "file", "path": REGISTRY_FILE}
    return {
        "project": config.project,
        "provider": "local",
        "registry": registry,
        "online_store": online_store,
        "offline_store": {"type": "file"},
        "entity_key_serialization_version": 3,
    }


def _secret(variable: str, what: str, environ: Mapping[str, str] | None) -> str:
    if environ is None:
        return f"${{{variable}}}"
    value = environ.get(variable, "")
    if not value:
        raise InputError(f"environment variable {variable} is not set: it must hold the {what}")
    return value


def render_feature_store_yaml(config: FeaturesConfig) -> str:
    header = (
        "# Generated by the kfp-mlops features step. ${VARIABLES} are read from the environment when Feast loads\n"
        "# this file: secrets are never written here.\n"
    )
    return header + yaml.safe_dump(feature_store_settings(config), sort_keys=False)


def open_store(config: FeaturesConfig, repo_dir: str, environ: Mapping[str, str] | None = None) -> FeatureStore:
    """A FeatureStore on ``repo_dir`` configured like feature_store.yaml, secrets resolved from ``environ``
    (default: the process environment). Creates nothing on disk by itself."""
    from feast import FeatureStore, RepoConfig

    settings = feature_store_settings(config, os.environ if environ is None else environ)
    return FeatureStore(repo_path=repo_dir, config=RepoConfig(repo_path=Path(repo_dir), **settings))


def feast_objects(config: FeaturesConfig, columns: FeatureColumns) -> tuple[Entity, FileSource, FeatureView]:
    """The entity, the file source and the feature view, exactly as ``features.py`` defines them."""
    from feast import Entity, FeatureView, Field, FileSource, ValueType, types

    entity = Entity(name=columns.entity, join_keys=[columns.entity], value_type=ValueType[columns.entity_type])
    source = FileSource(name=f"{config.view}_source", path=_data_path(config), timestamp_field=columns.timestamp)
    view = FeatureView(
        name=config.view,
        entities=[entity],
        ttl=timedelta(days=config.ttl_days),
        schema=[Field(name=f, dtype=getattr(types, columns.feature_types[f])) for f in columns.features],
        source=source,
        online=True,
    )
    return entity, source, view


def _data_path(config: FeaturesConfig) -> str:
    return f"{DATA_DIR}/{config.view}.parquet"


def render_definitions(config: FeaturesConfig, columns: FeatureColumns) -> str:
    """``features.py``: the objects of ``feast_objects`` as readable Python, for people and ``feast apply``."""
    used_types = sorted(set(columns.feature_types.values()))
    fields = "\n".join(f"        Field(name={f!r}, dtype={columns.feature_types[f]})," for f in columns.features)
    return f'''"""Feast definitions generated by the kfp-mlops features step from the pipeline config.

The step applies these same objects in-process; `feast apply` in this folder registers them too.
"""

from datetime import timedelta

from feast import Entity, FeatureView, Field, FileSource, ValueType
from feast.types import {", ".join(used_types)}

entity = Entity(name={columns.entity!r}, join_keys=[{columns.entity!r}], value_type=ValueType.{columns.entity_type})

source = FileSource(
    name={f"{config.view}_source"!r},
    path={_data_path(config)!r},
    timestamp_field={columns.timestamp!r},
)

feature_view = FeatureView(
    name={config.view!r},
    entities=[entity],
    ttl=timedelta(days={config.ttl_days}),
    schema=[
{fields}
    ],
    source=source,
    online=True,
)
'''


def write_repository(repo_dir: str, config: FeaturesConfig, columns: FeatureColumns, source: pa.Table) -> None:
    """Write the offline source, feature_store.yaml and features.py into ``repo_dir``, each atomically."""
    repo = Path(repo_dir)
    with storage.atomic_local_path(repo / _data_path(config)) as path:
        pq.write_table(source, path)
    with storage.atomic_local_path(repo / FEATURE_STORE_YAML) as path:
        path.write_text(render_feature_store_yaml(config))
    with storage.atomic_local_path(repo / DEFINITIONS_FILE) as path:
        path.write_text(render_definitions(config, columns))


def check_registered_view(store: FeatureStore, config: FeaturesConfig, repo_dir: str, wanted: FeatureView) -> None:
    """A view the registry already holds (a rerun, or a shared cluster registry) must have exactly the configured
    entity and features: this step never silently changes the schema others serve from."""
    from feast.errors import FeatureViewNotFoundException

    if config.registry.type == "file" and not (Path(repo_dir) / REGISTRY_FILE).exists():
        return  # nothing registered yet (and opening a file registry would create it)
    try:
        registered = store.get_feature_view(config.view)
    except FeatureViewNotFoundException:
        return
    have = {f.name: str(f.dtype) for f in registered.features}
    want = {f.name: str(f.dtype) for f in wanted.features}
    problems = []
    missing = [name for name in want if name not in have]
    if missing:
        problems.append(f"it lacks configured feature(s) {missing}")
    extra = [name for name in have if name not in want]
    if extra:
        problems.append(f"it has feature(s) {extra} that the config does not list")
    problems += [
        f"feature {name!r} is {have[name]} there but {want[name]} in the input"
        for name in want
        if name in have and have[name] != want[name]
    ]
    if sorted(registered.join_keys) != sorted(wanted.entities):  # this step names each entity after its join key
        problems.append(f"its join keys are {registered.join_keys}, the config's entity is {wanted.entities}")
    if problems:
        raise InputError(
            f"feature view {config.view!r} of project {config.project!r} is already registered and "
            f"{'; '.join(problems)} (registered features: {sorted(have)}). Change a registered view on purpose "
            "with `feast apply`, or set features.view to a new name"
        )


# --- offline: point-in-time join -------------------------------------------------------------------------------


def point_in_time_join(store: FeatureStore, view: str, columns: FeatureColumns, rows: pa.Table) -> pa.Table:
    """``rows`` (entity, timestamp, …, label) with, for each row, the latest value of every feature at or before
    its timestamp (within the view's ttl; null when there is none), as (entity, timestamp, features, label) in
    the order of ``rows``.

    Feast's file offline store keeps one result per (entity, timestamp) and drops entity rows that have no
    feature row in time, so the join asks for each distinct key once and maps the answer back to every row here.
    """
    keys = [columns.entity, columns.timestamp]
    distinct = rows.select(keys).group_by(keys, use_threads=False).aggregate([])
    job = store.get_historical_features(
        entity_df=distinct.to_pandas(), features=[f"{view}:{f}" for f in columns.features]
    )
    answered = job.to_arrow()
    found = pa.table(
        {
            columns.entity: answered[columns.entity].cast(columns.entity_arrow_type),
            columns.timestamp: pc.cast(answered[columns.timestamp], TIMESTAMP_TYPE),
            **{f: _typed(answered[f], columns.feature_types[f]) for f in columns.features},
        }
    )
    numbered = rows.select([*keys, columns.label]).append_column(_ROW, pa.array(np.arange(rows.num_rows)))
    joined = numbered.join(found, keys=keys, join_type="left outer", use_threads=False).sort_by(_ROW)
    return joined.select([*keys, *columns.features, columns.label])


def _typed(values: pa.ChunkedArray, feast_type: str) -> pa.ChunkedArray:
    """Feast hands integer features back as float64 when one is missing: restore the type, NaN becoming null."""
    target = _ARROW_TYPE_OF[feast_type]
    if pa.types.is_floating(values.type) and pa.types.is_integer(target):
        values = pc.if_else(pc.is_nan(values), pa.scalar(None, values.type), values)
    return values.cast(target)


def check_joined_values(
    split: str,
    table: pa.Table,
    columns: FeatureColumns,
    source: pa.Table | None = None,
    ttl: timedelta | None = None,
    given: pa.Table | None = None,
) -> None:
    """Every feature of every row must have a value after the join: no null, NaN or infinity — except, when the
    rows as ``given`` to the join are passed (schema.missing_values: impute), a value those rows already lacked.

    Feast hands a NaN back as null: given the offline ``source`` (and the view's ``ttl``), the message tells a NaN
    or null in the data apart from a row that had no feature row in time."""
    for name in columns.features:
        values = table[name]
        bad = pc.is_null(values, nan_is_null=True)
        if given is not None:
            bad = pc.and_(bad, pc.invert(pc.is_null(given[name], nan_is_null=True)))
        if pa.types.is_floating(values.type):
            bad = pc.or_(bad, pc.fill_null(pc.is_inf(values), False))
        if not pc.any(bad).as_py():
            continue
        row = int(pc.index(bad, True).as_py())
        value = values[row].as_py()
        entity, timestamp = table[columns.entity][row].as_py(), table[columns.timestamp][row].as_py()
        where = f"{split} split: column {name!r} row {row + 1}"
        key = f"{columns.entity} {entity!r} at {timestamp.isoformat()}"
        if value is None and source is not None:
            found, value = _value_as_of(source, columns, name, entity, timestamp, ttl)
            if not found:
                within = f" within the ttl of {ttl.days} days" if ttl else ""
                raise InputError(
                    f"{where}: no value after the point-in-time join: no feature row for {key} or before{within}"
                )
        raise InputError(f"{where}: value {'null' if value is None else value} after the point-in-time join ({key})")


def _value_as_of(
    source: pa.Table, columns: FeatureColumns, feature: str, entity: Any, timestamp: datetime, ttl: timedelta | None
) -> tuple[bool, Any]:
    """(found, value): the feature's value in the latest source row of ``entity`` at or before ``timestamp``."""
    timestamps = source[columns.timestamp]
    mask = pc.and_(
        pc.equal(source[columns.entity], entity), pc.less_equal(timestamps, pa.scalar(timestamp, TIMESTAMP_TYPE))
    )
    if ttl:
        mask = pc.and_(mask, pc.greater_equal(timestamps, pa.scalar(timestamp - ttl, TIMESTAMP_TYPE)))
    rows = source.filter(mask).sort_by(columns.timestamp)
    return (True, rows[feature][-1].as_py()) if rows.num_rows else (False, None)


# --- online: materialization and check -------------------------------------------------------------------------


def materialize(
    store: FeatureStore, view: str, source: pa.Table, columns: FeatureColumns, end: datetime
) -> Materialization:
    """``materialize_incremental`` up to ``end`` (Feast's window includes both of its ends).

    Incremental: the window starts where the last one ended (the first one ``ttl`` before now); a rerun for a window
    already materialized writes nothing and leaves the registry as it was. ``rows`` counts the entity rows written
    online: one per entity with a row in the window (its latest)."""
    previous_end = store.get_feature_view(view).most_recent_end_time
    if previous_end is not None and previous_end >= end:
        return Materialization(start=previous_end, end=previous_end, rows=0, seconds=0.0)
    started = time.perf_counter()
    store.materialize_incremental(end_date=end, feature_views=[view])
    seconds = time.perf_counter() - started
    start, end = store.get_feature_view(view).materialization_intervals[-1]
    return Materialization(
        start=start, end=end, rows=len(entities_between(source, columns, start, end)), seconds=seconds
    )


def entities_between(source: pa.Table, columns: FeatureColumns, start: datetime, end: datetime) -> pa.Array:
    """The distinct entities with a row in [start, end], sorted."""
    timestamps = source[columns.timestamp]
    inside = pc.and_(
        pc.greater_equal(timestamps, pa.scalar(start, TIMESTAMP_TYPE)),
        pc.less_equal(timestamps, pa.scalar(end, TIMESTAMP_TYPE)),
    )
    return pc.unique(source[columns.entity].filter(inside)).sort()


def check_online(store: FeatureStore, view: str, source: pa.Table, columns: FeatureColumns, entities: int) -> int:
    """Compare ``get_online_features`` with the latest offline row of up to ``entities`` entities (evenly spread
    over the sorted ids of those materialized so far); returns how many were checked."""
    intervals = store.get_feature_view(view).materialization_intervals
    if entities == 0 or not intervals:
        return 0
    start, end = min(s for s, _ in intervals), max(e for _, e in intervals)
    candidates = entities_between(source, columns, start, end)
    if len(candidates) == 0:
        return 0
    sample = candidates.take(
        pa.array(
            np.unique(np.linspace(0, len(candidates) - 1, min(entities, len(candidates))).round().astype(np.int64))
        )
    )
    expected = latest_rows(source, columns, sample, start, end)
    online = store.get_online_features(
        features=[f"{view}:{f}" for f in columns.features],
        entity_rows=[{columns.entity: entity} for entity in sample.to_pylist()],
    ).to_dict()
    for index, entity in enumerate(sample.to_pylist()):
        offline = expected[entity]
        for name in columns.features:
            if online[name][index] != offline[name]:
                raise OnlineOfflineMismatchError(
                    f"online store disagrees with the offline data for {columns.entity} {entity!r}, feature "
                    f"{name!r}: online {online[name][index]!r}, offline {offline[name]!r} (latest offline row at "
                    f"{offline[columns.timestamp].isoformat()})"
                )
    return len(sample)


def latest_rows(
    source: pa.Table, columns: FeatureColumns, entities: pa.Array, start: datetime, end: datetime
) -> dict[Any, dict[str, Any]]:
    """For each entity, its latest source row in [start, end] as a dict: what the online store must serve."""
    timestamps = source[columns.timestamp]
    mask = pc.and_(
        pc.is_in(source[columns.entity], value_set=entities),
        pc.and_(
            pc.greater_equal(timestamps, pa.scalar(start, TIMESTAMP_TYPE)),
            pc.less_equal(timestamps, pa.scalar(end, TIMESTAMP_TYPE)),
        ),
    )
    latest: dict[Any, dict[str, Any]] = {}
    for row in source.filter(mask).sort_by(columns.timestamp).to_pylist():
        latest[row[columns.entity]] = row
    return latest


# --- outputs ---------------------------------------------------------------------------------------------------
