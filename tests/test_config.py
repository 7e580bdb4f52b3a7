"""Pipeline config: validation messages name the key; YAML text, a file URI and an object URI all load."""

from __future__ import annotations

import copy

import pytest
import yaml

from kfp_mlops.components.shared import storage
from kfp_mlops.components.shared.config import load_config, parse_config
from kfp_mlops.components.shared.errors import ConfigError

VALID = {
    "data": {"source": "s3://bucket/raw/"},
    "schema": {"entity": "id", "timestamp": "ts", "label": "y", "features": ["a", "b"], "categorical": ["b"]},
}


def with_(section: str, **values):
    document = {key: dict(value) for key, value in VALID.items()}
    document.setdefault(section, {}).update(values)
    return document


def test_defaults_fill_the_split_section():
    config = parse_config(VALID)
    assert (config.split.by, config.split.validation, config.split.test, config.split.seed) == ("time", 0.15, 0.15, 0)
    assert config.data.format is None


def test_the_data_sanity_settings_are_optional():
    schema = parse_config(VALID).schema_
    assert (schema.max_classes, schema.conflicting_labels, schema.max_future_days) == (50, "error", 1.0)


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (with_("data", compression="zstd"), r"data\.compression: unknown key"),
        ({**VALID, "extras": {}}, r"extras: unknown key"),
        (with_("split", by="random"), r"split\.by: Input should be 'time' or 'entity_hash'"),
        (with_("split", validation=0.5, test=0.5), r"split: Value error, validation \+ test must be below 1"),
        (with_("split", test=0), r"split\.test: Input should be greater than 0"),
        (with_("schema", categorical=["c"]), r"categorical columns \['c'\] are not in features"),
        (with_("schema", features=["a", "y"]), r"column 'y' is the label and cannot also be a feature"),
        (with_("schema", label="id"), r"entity, timestamp and label must be different columns"),
        ({"schema": VALID["schema"]}, r"data: Field required"),
        (with_("data", format="json"), r"data\.format: Input should be 'parquet' or 'csv'"),
        (with_("schema", max_classes=1), r"schema\.max_classes: Input should be greater than or equal to 2"),
        (
            with_("schema", conflicting_labels="first"),
            r"schema\.conflicting_labels: Input should be 'error' or 'keep_latest'",
        ),
        (with_("schema", max_future_days=-1), r"schema\.max_future_days: Input should be greater than or equal to 0"),
    ],
)
def test_invalid_config_names_the_key(document, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(document)


def test_top_level_must_be_a_mapping():
    with pytest.raises(ConfigError, match="expected a mapping at the top level, got list"):
        load_config("- a\n- b\n")


def test_yaml_text_loads_and_data_source_overrides():
    text = yaml.safe_dump(VALID)
    assert load_config(text).data.source == "s3://bucket/raw/"
    assert load_config(text, data_source="gs://other/x.csv").data.source == "gs://other/x.csv"


def test_config_file_by_path_and_file_uri(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(VALID))
    assert load_config(str(path)) == load_config(f"file://{path}") == parse_config(VALID)


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"config file .*nope\.yaml does not exist"):
        load_config(str(tmp_path / "nope.yaml"))


def test_invalid_yaml_is_reported():
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config("data: {source: [unclosed\nschema: x\n")


@pytest.mark.servers
def test_config_from_s3(s3):
    storage.write_bytes(s3.uri("configs/training.yaml"), yaml.safe_dump(VALID).encode())
    assert load_config(s3.uri("configs/training.yaml")) == parse_config(VALID)


def test_round_trip_through_yaml():
    config = parse_config(VALID)
    assert parse_config(yaml.safe_load(config.to_yaml())) == config


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("data_source", "pipeline parameter data_source is '{{\\$.pipeline_root}}/raw': an unresolved placeholder"),
        ("config", "pipeline parameter config is '{{\\$.pipeline_root}}/c.yaml': an unresolved placeholder"),
        ("train.checkpoint_dir", "config: train.checkpoint_dir is '{{\\$.pipeline_root}}/ckpt': an unresolved"),
    ],
)
def test_a_storage_location_holding_an_unresolved_placeholder_fails_naming_it(where, message):
    """The KFP backend passes {{$.pipeline_root}} on as literal text (driver/resolve.go): never a relative path."""
    document = copy.deepcopy(VALID)
    text = yaml.safe_dump(document)
    if where == "data_source":
        call = lambda: load_config(text, data_source="{{$.pipeline_root}}/raw")  # noqa: E731
    elif where == "config":
        call = lambda: load_config("{{$.pipeline_root}}/c.yaml")  # noqa: E731
    else:
        document["train"] = {"checkpoint_dir": "{{$.pipeline_root}}/ckpt"}
        call = lambda: load_config(yaml.safe_dump(document))  # noqa: E731
    with pytest.raises(ConfigError, match=message):
        call()


@pytest.mark.parametrize(
    ("task", "sections", "message"),
    [
        ("regression", {"evaluate": {"min_metrics": {"roc_auc": 0.6}}},
         r"^config: evaluate\.min_metrics gates on roc_auc, which a regression model does not have \(schema\.task: "
         r"regression\); its metrics are mse, rmse, mae, r2$"),
        ("regression", {"quantize": {"max_metric_drop": {"accuracy": 0.01}}}, r"quantize\.max_metric_drop gates on"),
        ("classification", {"evaluate": {"max_metrics": {"mse": 3.0}}}, r"evaluate\.max_metrics gates on mse, which a "
                                                                          r"classification model does not have"),
    ],
)  # fmt: skip
def test_a_gate_on_a_metric_the_stated_task_never_computes_is_refused_when_the_config_is_read(task, sections, message):
    document = {**VALID, "schema": {**VALID["schema"], "task": task}, **sections}
    with pytest.raises(ConfigError, match=message):
        parse_config(document)
    auto = parse_config({**document, "schema": {**VALID["schema"], "task": "auto"}})  # decided at ingest: judged then
    assert auto.schema_.task == "auto"
    fitting = {"regression": {"r2": 0.5}, "classification": {"roc_auc": 0.6}}[task]
    assert parse_config({**VALID, "schema": {**VALID["schema"], "task": task},
                         "evaluate": {"min_metrics": fitting}}).evaluate.min_metrics == fitting  # fmt: skip
