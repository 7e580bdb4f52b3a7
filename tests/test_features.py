"""Features step on real Feast (file offline store, SQLite and Redis online stores, file and SQL registries) over
sample data written by the ingest step: outputs, point-in-time correctness, online == offline, idempotent reruns,
bad input, and no secret in any file."""

from __future__ import annotations

import runpy
import secrets
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml

from kfp_mlops.components.features import core, executor
from kfp_mlops.components.ingest.core import ingest
from kfp_mlops.components.shared.config import parse_config
from kfp_mlops.components.shared.errors import InputError
from kfp_mlops.components.shared.splits import SPLITS, SplitPaths
from kfp_mlops.sample_data import CATEGORICAL, ENTITY, LABEL, NUMERIC, TIMESTAMP, make_sample_table

FEATURES = NUMERIC + CATEGORICAL
REDIS_ENV = "FEAST_REDIS_CONNECTION_STRING"
REGISTRY_ENV = "FEAST_REGISTRY_URL"


def make_config(
    source: str = "unused", features: list[str] | None = None, missing_values: str = "impute", **feature_settings
):
    features = FEATURES if features is None else features
    return parse_config(
        {
            "data": {"source": source},
            "schema": {
                "entity": ENTITY,
                "timestamp": TIMESTAMP,
                "label": LABEL,
                "features": features,
                "categorical": [c for c in CATEGORICAL if c in features],
                "missing_values": missing_values,
            },
            "features": feature_settings,
        }
    )


def split_paths(directory: Path) -> SplitPaths:
    return SplitPaths(*(str(directory / name) for name in SPLITS))


def read(paths: SplitPaths) -> dict[str, pa.Table]:
    return {name: pq.read_table(path) for name, path in paths.items()}


def write_splits(directory: Path, tables: dict[str, pa.Table]) -> SplitPaths:
    directory.mkdir(parents=True, exist_ok=True)
    for name, table in tables.items():
        pq.write_table(table, directory / name)
    return split_paths(directory)


def latest_offline(tables: dict[str, pa.Table]) -> pd.DataFrame:
    """The latest row of every entity over all splits, computed independently of the step (pandas)."""
    frame = pd.concat([t.to_pandas() for t in tables.values()])
    return frame.sort_values(TIMESTAMP).groupby(ENTITY).last()


def online_values(store, entities: list[int], view: str = "features") -> pd.DataFrame:
    response = store.get_online_features(
        features=[f"{view}:{f}" for f in FEATURES], entity_rows=[{ENTITY: e} for e in entities]
    )
    return pd.DataFrame(response.to_dict()).set_index(ENTITY)


def files_under(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> SplitPaths:
    """Train/validation/test Parquet files written by the ingest step from 3,000 sample rows."""
    directory = tmp_path_factory.mktemp("ingested")
    pq.write_table(make_sample_table(rows=3_000, seed=3), directory / "raw.parquet")
    paths = split_paths(directory / "splits")
    ingest(make_config(str(directory / "raw.parquet")), paths)
    return paths


@dataclass
class Built:
    result: core.FeaturesResult
    repo: Path
    outputs: SplitPaths


@pytest.fixture(scope="module")
def built(inputs, tmp_path_factory) -> Built:
    directory = tmp_path_factory.mktemp("built")
    outputs = split_paths(directory / "out")
    result = core.build_feature_sets(make_config(), inputs, str(directory / "repo"), outputs)
    return Built(result, directory / "repo", outputs)


def test_outputs_carry_every_input_row_with_its_features_in_config_order(built, inputs):
    ingested = read(inputs)
    for name, table in read(built.outputs).items():
        assert table.column_names == [ENTITY, TIMESTAMP, *FEATURES, LABEL]
        assert table.schema.field(TIMESTAMP).type == pa.timestamp("us", tz="UTC")
        # every row joins its own feature row: the point-in-time value at its own timestamp
        assert table.equals(ingested[name].select(table.column_names)), name
    assert built.result.rows == {name: t.num_rows for name, t in ingested.items()}
    entities = pc.count_distinct(pa.concat_tables(ingested.values())[ENTITY]).as_py()
    assert built.result.rows_materialized == entities
    assert built.result.materialize_rows_per_second > 0
    assert built.result.views == 1
    assert built.result.online_entities_checked == 50
    assert built.result.feature_types["plan"] == "String" and built.result.feature_types["age"] == "Float64"


def test_online_store_serves_the_latest_offline_value_of_every_entity(built, inputs):
    from feast import FeatureStore

    store = FeatureStore(repo_path=str(built.repo))  # through Feast's own loader of feature_store.yaml
    expected = latest_offline(read(inputs))
    served = online_values(store, expected.index.tolist())
    pd.testing.assert_frame_equal(served[FEATURES], expected[FEATURES], check_dtype=False)


def test_point_in_time_join_takes_the_value_known_at_each_timestamp_never_a_later_one(built):
    from feast import FeatureStore

    store = FeatureStore(repo_path=str(built.repo))
    columns = core.FeatureColumns(ENTITY, TIMESTAMP, LABEL, tuple(FEATURES), built.result.feature_types, "INT64")
    source = pq.read_table(built.repo / "data" / "features.parquet").to_pandas()
    counts = source.groupby(ENTITY)[TIMESTAMP].count()
    entity = int(counts[counts >= 2].index[0])
    first, second = source[source[ENTITY] == entity].sort_values(TIMESTAMP).iloc[:2].itertuples()
    between = first.event_timestamp + (second.event_timestamp - first.event_timestamp) / 2
    rows = pa.table(
        {
            ENTITY: pa.array([entity, entity, entity], pa.int64()),
            TIMESTAMP: pa.array(
                [between, second.event_timestamp, first.event_timestamp - timedelta(seconds=1)],
                pa.timestamp("us", tz="UTC"),
            ),
            LABEL: [0, 1, 0],
        }
    )
    joined = core.point_in_time_join(store, "features", columns, rows).to_pylist()
    assert joined[0]["monthly_charges"] == first.monthly_charges  # between the two: the earlier value
    assert joined[1]["monthly_charges"] == second.monthly_charges  # at the second row's own timestamp
    assert joined[2]["monthly_charges"] is None  # before any feature row: nothing known yet
    with pytest.raises(InputError, match=r"train split: column 'age' row 3: value null after the point-in-time join"):
        core.check_joined_values("train", core.point_in_time_join(store, "features", columns, rows), columns)


def test_a_later_feature_row_is_not_joined_to_an_earlier_entity_row(tmp_path, inputs):
    ingested = read(inputs)
    train, test = ingested["train"], ingested["test"]
    entity = train[ENTITY][0].as_py()
    later = test.slice(0, 1).set_column(0, ENTITY, pa.array([entity], pa.int64()))
    later = later.set_column(later.column_names.index("age"), "age", pa.array([99.0]))
    assert later[TIMESTAMP][0].as_py() > train[TIMESTAMP][0].as_py()
    paths = write_splits(tmp_path / "in", {**ingested, "test": pa.concat_tables([test, later])})
    core.build_feature_sets(make_config(), paths, str(tmp_path / "repo"), split_paths(tmp_path / "out"))
    out = read(split_paths(tmp_path / "out"))
    train_rows = out["train"].filter(pc.equal(out["train"][ENTITY], entity)).to_pylist()
    assert 99.0 not in [row["age"] for row in train_rows]
    assert train_rows[0]["age"] == train["age"][0].as_py()
    assert out["test"].to_pylist()[-1]["age"] == 99.0


def test_rerun_is_idempotent_same_outputs_same_online_values_nothing_rematerialized(tmp_path, inputs):
    from feast import FeatureStore

    repo, outputs = tmp_path / "repo", split_paths(tmp_path / "out")
    first = core.build_feature_sets(make_config(), inputs, str(repo), outputs)
    entities = latest_offline(read(inputs)).index.tolist()
    before_online = online_values(FeatureStore(repo_path=str(repo)), entities)
    before_files = {name: Path(p).read_bytes() for name, p in outputs.items()}
    before_repo = {p: p.read_bytes() for p in files_under(repo) if p.suffix in (".parquet", ".yaml", ".py")}
    intervals = FeatureStore(repo_path=str(repo)).get_feature_view("features").materialization_intervals

    second = core.build_feature_sets(make_config(), inputs, str(repo), outputs)
    store = FeatureStore(repo_path=str(repo))
    assert second.rows == first.rows and second.rows_materialized == 0 and first.rows_materialized > 0
    assert {name: Path(p).read_bytes() for name, p in outputs.items()} == before_files
    assert {p: p.read_bytes() for p in before_repo} == before_repo
    assert store.get_feature_view("features").materialization_intervals == intervals
    pd.testing.assert_frame_equal(online_values(store, entities), before_online)
    for table in read(outputs).values():
        keys = table.select([ENTITY, TIMESTAMP])
        assert keys.group_by(keys.column_names).aggregate([]).num_rows == table.num_rows
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(SPLITS)


def test_features_py_defines_the_objects_the_step_applies(built):
    namespace = runpy.run_path(str(built.repo / "features.py"))
    columns = core.FeatureColumns(ENTITY, TIMESTAMP, LABEL, tuple(FEATURES), built.result.feature_types, "INT64")
    entity, source, view = core.feast_objects(make_config().features, columns)
    assert namespace["entity"] == entity
    assert namespace["source"] == source
    assert namespace["feature_view"] == view


def test_executor_records_metadata_and_metrics(tmp_path, inputs):
    def artifact(path: Path) -> SimpleNamespace:
        logged: dict[str, float] = {}
        return SimpleNamespace(path=str(path), metadata={}, logged=logged, log_metric=logged.__setitem__)

    splits = {name: artifact(Path(path)) for name, path in inputs.items()}
    outputs = {name: artifact(tmp_path / f"{name}_features") for name in SPLITS}
    repo, metrics = artifact(tmp_path / "feature_repo"), artifact(tmp_path / "metrics")
    document = yaml.safe_load(make_config().to_yaml())
    del document["schema"]["features"]  # features default to every column besides entity, timestamp and label
    executor.run(yaml.safe_dump(document), *splits.values(), repo, *outputs.values(), metrics)
    assert repo.metadata["features"] == FEATURES
    assert repo.metadata["feature_view"] == "features" and repo.metadata["project"] == "kfp_mlops"
    assert repo.metadata["online_store"] == "sqlite" and repo.metadata["registry"] == "file"
    assert (tmp_path / "feature_repo" / repo.metadata["feature_store_yaml"]).is_file()
    assert outputs["test"].metadata["rows"] == pq.read_metadata(outputs["test"].path).num_rows
    assert outputs["train"].metadata["categorical"] == CATEGORICAL
    assert set(metrics.logged) == {
        "rows_materialized",
        "materialize_seconds",
        "materialize_rows_per_second",
        "views",
        "rows_train",
        "rows_validation",
        "rows_test",
        "online_entities_checked",
    }
    assert metrics.logged["online_entities_checked"] == 50.0


def test_component_compiles_with_its_image_and_artifacts(tmp_path):
    from kfp import compiler

    from kfp_mlops.components.features.component import build
    from kfp_mlops.components.shared.images import ImageConfig

    compiler.Compiler().compile(build(ImageConfig(registry="r.example/x", tag="t1")), str(tmp_path / "c.yaml"))
    spec = yaml.safe_load((tmp_path / "c.yaml").read_text())
    component = spec["components"]["comp-features"]
    assert sorted(component["inputDefinitions"]["artifacts"]) == ["test", "train", "validation"]
    assert sorted(component["outputDefinitions"]["artifacts"]) == [
        "feature_repo",
        "metrics",
        "test_features",
        "train_features",
        "validation_features",
    ]
    container = spec["deploymentSpec"]["executors"]["exec-features"]["container"]
    assert container["image"] == "r.example/x/kfp-mlops-features:t1"
    assert "pip install" not in " ".join(container["command"])


# --- secrets: named in feature_store.yaml, expanded by Feast, never written ----------------------------------------


def test_feature_store_yaml_names_variables_that_feast_expands_and_holds_no_secret(tmp_path, monkeypatch):
    from feast.repo_config import load_repo_config

    connection, url = (
        f"127.0.0.1:6390,password={secrets.token_hex(8)}",
        f"sqlite:///{tmp_path}/reg-{secrets.token_hex(8)}.db",
    )
    monkeypatch.setenv(REDIS_ENV, connection)
    monkeypatch.setenv(REGISTRY_ENV, url)
    config = make_config(online_store={"type": "redis"}, registry={"type": "sql"}).features
    text = core.render_feature_store_yaml(config)
    assert connection not in text and url not in text
    assert "${FEAST_REDIS_CONNECTION_STRING}" in text and "${FEAST_REGISTRY_URL}" in text
    (tmp_path / "feature_store.yaml").write_text(text)
    loaded = load_repo_config(tmp_path, tmp_path / "feature_store.yaml")  # what `feast` CLI users get
    assert loaded.online_store.connection_string == connection
    assert loaded.registry.path == url
    in_memory = core.open_store(config, str(tmp_path)).config
    assert in_memory.online_store.connection_string == connection and in_memory.registry.path == url


def test_unset_secret_variable_fails_naming_it_and_writes_nothing(tmp_path, inputs, monkeypatch):
    monkeypatch.delenv(REDIS_ENV, raising=False)
    config = make_config(online_store={"type": "redis"})
    with pytest.raises(InputError, match=r"environment variable FEAST_REDIS_CONNECTION_STRING is not set"):
        core.build_feature_sets(config, inputs, str(tmp_path / "repo"), split_paths(tmp_path / "out"))
    assert not (tmp_path / "repo").exists() and not (tmp_path / "out").exists()


# --- bad input: a clear message naming split/column/row/value, and no output at all --------------------------------


def _with_value(table: pa.Table, column: str, row: int, value) -> pa.Table:
    values = table[column].to_pylist()
    values[row] = value
    return table.set_column(table.column_names.index(column), column, pa.array(values, table[column].type))


def _conflicting_duplicate(tables: dict[str, pa.Table]) -> dict[str, pa.Table]:
    train = tables["train"]
    twin = _with_value(train.slice(5, 1), "age", 0, train["age"][5].as_py() + 1)
    return {**tables, "train": pa.concat_tables([train, twin])}


BAD_INPUTS = {
    "NaN in a feature": (
        lambda t: {**t, "validation": _with_value(t["validation"], "age", 16, float("nan"))},
        r"validation split: column 'age' row 17: value nan after the point-in-time join \(customer_id \d+ at ",
    ),
    "infinity in a feature": (
        lambda t: {**t, "test": _with_value(t["test"], "monthly_charges", 3, float("inf"))},
        r"test split: column 'monthly_charges' row 4: value inf after the point-in-time join",
    ),
    "null category": (
        lambda t: {**t, "train": _with_value(t["train"], "plan", 0, None)},
        r"train split: column 'plan' row 1: value null after the point-in-time join",
    ),
    "empty split": (
        lambda t: {**t, "validation": t["validation"].slice(0, 0)},
        r"validation split .*/validation: no rows",
    ),
    "missing feature column": (
        lambda t: {**t, "test": t["test"].drop_columns(["support_calls"])},
        r"test split .*/test: missing column\(s\) \['support_calls'\]",
    ),
    "feature that is neither numeric nor text": (
        lambda t: {name: table.append_column("tags", pa.array([[1]] * table.num_rows)) for name, table in t.items()},
        r"train split .*: feature column 'tags' holds list<\w+: int64>; a feature must be numeric or a string",
    ),
    "feature typed differently in two splits": (
        lambda t: {
            **t,
            "test": t["test"].set_column(3, "tenure_months", t["test"]["tenure_months"].cast(pa.float64())),
        },
        r"column 'tenure_months' is Int64 in the train split but Float64 in the test split",
    ),
    "two different feature rows for one entity and timestamp": (
        _conflicting_duplicate,
        r"column 'customer_id': entity \d+ has 2 rows at \S+ with different feature values",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS), ids=list(BAD_INPUTS))
def test_bad_input_fails_with_a_clear_message_and_no_output(tmp_path, inputs, case):
    """Under schema.missing_values: error (ingest normally rejects missing values first; the step holds the
    policy on its own too)."""
    make, message = BAD_INPUTS[case]
    paths = write_splits(tmp_path / "in", make(read(inputs)))
    features = FEATURES + ["tags"] if "tags" in pq.read_schema(paths.train).names else FEATURES
    config = make_config(features=features, missing_values="error")
    with pytest.raises(InputError, match=message):
        core.build_feature_sets(config, paths, str(tmp_path / "repo"), split_paths(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "repo").exists()


def test_registered_view_without_a_configured_feature_fails_naming_feature_and_view(tmp_path, inputs):
    """The registry already holds the view without support_calls: the step refuses to redefine it."""
    repo = tmp_path / "repo"
    narrower = [f for f in FEATURES if f != "support_calls"]
    core.build_feature_sets(make_config(features=narrower), inputs, str(repo), split_paths(tmp_path / "first"))
    before = {p: p.read_bytes() for p in files_under(repo)}
    with pytest.raises(
        InputError,
        match=r"feature view 'features' of project 'kfp_mlops' is already registered and it lacks configured "
        r"feature\(s\) \['support_calls'\]",
    ):
        core.build_feature_sets(make_config(), inputs, str(repo), split_paths(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
    assert {p: p.read_bytes() for p in files_under(repo)} == before


def test_shared_sql_registry_with_a_per_run_sqlite_online_store_is_refused(tmp_path, inputs, monkeypatch):
    monkeypatch.setenv(REGISTRY_ENV, f"sqlite:///{tmp_path}/registry.db")
    with pytest.raises(InputError, match=r"features.online_store.type: sqlite .* features.registry.type sql"):
        config = make_config(registry={"type": "sql"})
        core.build_feature_sets(config, inputs, str(tmp_path / "repo"), split_paths(tmp_path / "out"))
    assert list(tmp_path.iterdir()) == []


def test_online_value_that_differs_from_the_latest_offline_value_is_reported(tmp_path, inputs):
    from feast import FeatureStore

    repo = tmp_path / "repo"
    result = core.build_feature_sets(make_config(), inputs, str(repo), split_paths(tmp_path / "out"))
    source = pq.read_table(repo / "data" / "features.parquet")
    latest = source.sort_by(TIMESTAMP).to_pandas().groupby(ENTITY).last().reset_index()
    tampered = latest.iloc[[0]].assign(age=-1.0, **{TIMESTAMP: latest[TIMESTAMP].iloc[0] + timedelta(seconds=1)})
    store = FeatureStore(repo_path=str(repo))
    store.write_to_online_store("features", tampered)
    columns = core.FeatureColumns(ENTITY, TIMESTAMP, LABEL, tuple(FEATURES), result.feature_types, "INT64")
    entity, offline_age = int(tampered[ENTITY].iloc[0]), latest["age"].iloc[0]
    with pytest.raises(
        core.OnlineOfflineMismatchError,
        match=rf"for customer_id {entity}, feature 'age': online -1.0, offline {offline_age}",
    ):
        core.check_online(store, "features", source, columns, entities=len(latest))


# --- Redis online store against a real redis-server -----------------------------------------------------------------


@pytest.mark.servers
def test_redis_online_store_serves_the_offline_values_and_no_file_holds_the_connection_string(
    redis_server, tmp_path, inputs, monkeypatch, capfd
):
    monkeypatch.setenv(REDIS_ENV, redis_server.connection_string)
    config = make_config(project="redis_test", online_store={"type": "redis"})
    repo, outputs = tmp_path / "repo", split_paths(tmp_path / "out")
    first = core.build_feature_sets(config, inputs, str(repo), outputs)
    assert first.online_store == "redis" and first.online_entities_checked == 50

    expected = latest_offline(read(inputs))
    served = online_values(core.open_store(config.features, str(repo)), expected.index.tolist())
    pd.testing.assert_frame_equal(served[FEATURES], expected[FEATURES], check_dtype=False)

    second = core.build_feature_sets(config, inputs, str(repo), outputs)
    assert second.rows_materialized == 0
    again = online_values(core.open_store(config.features, str(repo)), expected.index.tolist())
    pd.testing.assert_frame_equal(again, served)

    for path in [*files_under(repo), *(Path(p) for _, p in outputs.items())]:
        content = path.read_bytes()
        assert redis_server.password.encode() not in content, path
        assert f"127.0.0.1:{redis_server.port}".encode() not in content, path
    assert "${FEAST_REDIS_CONNECTION_STRING}" in (repo / "feature_store.yaml").read_text()
    captured = capfd.readouterr()
    assert redis_server.password not in captured.out + captured.err


@pytest.mark.servers
def test_shared_postgresql_registry_and_redis_a_later_run_reuses_the_materialization_and_refuses_a_narrower_view(
    redis_server, postgres_registry_url, tmp_path, inputs, monkeypatch, capfd
):
    """The cluster set-up: every run has its own repository; the SQL registry (a real PostgreSQL) and Redis are
    shared between runs."""
    monkeypatch.setenv(REDIS_ENV, redis_server.connection_string)
    monkeypatch.setenv(REGISTRY_ENV, postgres_registry_url)
    shared = {"project": "cluster_test", "online_store": {"type": "redis"}, "registry": {"type": "sql"}}
    narrower = make_config(features=[f for f in FEATURES if f != "support_calls"], **shared)
    first = core.build_feature_sets(narrower, inputs, str(tmp_path / "run1"), split_paths(tmp_path / "out1"))
    second = core.build_feature_sets(narrower, inputs, str(tmp_path / "run2"), split_paths(tmp_path / "out2"))
    assert first.rows_materialized > 0 and second.rows_materialized == 0
    assert second.online_entities_checked == 50  # run2 checks Redis against its own offline copy
    assert read(split_paths(tmp_path / "out1")) == read(split_paths(tmp_path / "out2"))
    with pytest.raises(InputError, match=r"feature view 'features' of project 'cluster_test' .* \['support_calls'\]"):
        core.build_feature_sets(make_config(**shared), inputs, str(tmp_path / "run3"), split_paths(tmp_path / "out3"))
    assert not (tmp_path / "run3").exists() and not (tmp_path / "out3").exists()
    registry_password = postgres_registry_url.split(":")[2].split("@")[0]
    for path in files_under(tmp_path):
        assert registry_password.encode() not in path.read_bytes(), path
    captured = capfd.readouterr()
    assert registry_password not in captured.out + captured.err


def test_missing_values_in_the_data_pass_through_as_null_under_impute_and_infinity_still_fails(tmp_path, inputs):
    tables = read(inputs)
    tables["validation"] = _with_value(tables["validation"], "age", 16, float("nan"))
    tables["train"] = _with_value(tables["train"], "plan", 0, None)
    paths = write_splits(tmp_path / "in", tables)
    outputs = split_paths(tmp_path / "out")
    core.build_feature_sets(make_config(), paths, str(tmp_path / "repo"), outputs)
    written = read(outputs)
    assert written["validation"]["age"][16].as_py() is None and written["train"]["plan"][0].as_py() is None
    assert written["validation"]["age"].null_count == 1 and written["train"]["plan"].null_count == 1
    tables["test"] = _with_value(tables["test"], "monthly_charges", 3, float("inf"))
    paths = write_splits(tmp_path / "in2", tables)
    with pytest.raises(InputError, match=r"test split: column 'monthly_charges' row 4: value inf after the point-in"):
        core.build_feature_sets(make_config(), paths, str(tmp_path / "repo2"), split_paths(tmp_path / "out2"))
