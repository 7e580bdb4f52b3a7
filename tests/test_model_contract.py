"""The model contract (components/train/model.py, model_checks.py): built-in and user networks are checked on CPU in
prepare-training, and each way of breaking the contract fails there, naming the entry point, before any worker
starts and without output."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from support.configs import pipeline_config

from kfp_mlops.components.shared.config import ModelSpecConfig
from kfp_mlops.components.shared.errors import ConfigError
from kfp_mlops.components.train import core
from kfp_mlops.components.train.model import ModelContractError

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "custom_model"


def with_model(config, entry_point: str, options: dict | None = None, **schema):
    model = ModelSpecConfig(entry_point=entry_point, options=options or {})
    updates = {"train": config.train.model_copy(update={"model": model})}
    if schema:
        updates["schema_"] = config.schema_.model_copy(update=schema)
    return config.model_copy(update=updates)


def prepare(config, paths, output: Path):
    return core.prepare(config, paths.train, paths.validation, str(output))


@pytest.fixture
def example_importable(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLE))
    yield
    for name in [name for name in sys.modules if name.startswith("tabular_resnet")]:
        del sys.modules[name]


@pytest.mark.parametrize(
    ("entry_point", "options"),
    [("mlp", {"hidden_layers": [16]}), ("ft_transformer", {"d_token": 32, "n_blocks": 2, "heads": 4}),
     ("tabular_resnet.model:build", {"width": 16, "blocks": 1})],
)  # fmt: skip
def test_built_in_and_example_networks_pass_the_contract_and_record_their_size(
    ingested, tmp_path, example_importable, entry_point, options
):
    config, paths = ingested
    prepared = prepare(with_model(config, entry_point, options), paths, tmp_path / "prepared")
    summary = json.loads((tmp_path / "prepared" / core.PREPARED_SUMMARY).read_text())
    assert prepared.parameters == summary["parameters"] > 100
    assert summary["task"] == "binary" and prepared.preprocessing.task == "binary"


BROKEN = [
    ("support.no_such_module:build", "module 'support.no_such_module' cannot be imported (ModuleNotFoundError"),
    ("support.models:missing", "module 'support.models' has no 'missing'"),
    ("support.models:NOT_A_FUNCTION", "'NOT_A_FUNCTION' is not callable (a int); expected a function returning"),
    ("support.models:returns_a_dict", "returned a dict; expected a torch.nn.Module"),
    ("support.models:fails_to_build", "failed when called with the feature spec and train.model.options {}: "
                                      "RuntimeError: CUDA is required"),
    ("support.models:no_parameters", "the network has no trainable parameters"),
    ("support.models:one_output_too_many", "forward returned shape [8, 3]; expected [8, 2]: one logit per class (2)"),
    ("support.models:nan_outputs", "forward returned non-finite values (NaN or inf) on the first training rows"),
    ("support.models:unexportable", "cannot be exported to ONNX (opset 17"),
    ("support.models:batch_fixed_shape", "the exported graph fails on a batch of 3 rows (traced on 8)"),
]  # fmt: skip


@pytest.mark.parametrize(("entry_point", "message"), BROKEN, ids=[entry.split(":")[1] for entry, _ in BROKEN])
def test_a_network_breaking_the_contract_fails_prepare_training_naming_the_entry_point(
    ingested, tmp_path, entry_point, message
):
    config, paths = ingested
    with pytest.raises(ModelContractError) as failure:
        prepare(with_model(config, entry_point), paths, tmp_path / "prepared")
    assert f"train.model.entry_point {entry_point!r}" in str(failure.value)
    assert message in str(failure.value)
    assert not (tmp_path / "prepared").exists()  # nothing written: the workers never start


def test_an_unknown_option_names_the_options_given(ingested, tmp_path):
    config, paths = ingested
    with pytest.raises(ModelContractError, match=r"'mlp' failed when called .* \{'width': 3\}: TypeError: .*width"):
        prepare(with_model(config, "mlp", {"width": 3}), paths, tmp_path / "prepared")


def test_a_regression_network_must_return_one_value_per_row(ingested, tmp_path):
    config, paths = ingested
    # the churn flag as a regression target: numeric, so schema.task regression accepts it; 2 outputs are refused
    broken = with_model(config, "support.models:one_output_too_many", task="regression")
    with pytest.raises(ModelContractError, match=r"shape \[8, 2\]; expected \[8, 1\] or \[8\]: one value per row"):
        prepare(broken, paths, tmp_path / "prepared")
    prepared = prepare(with_model(config, "mlp", task="regression"), paths, tmp_path / "prepared")
    assert prepared.preprocessing.task == "regression" and prepared.preprocessing.classes == []


def test_a_string_label_cannot_be_a_regression_target(tmp_path):
    table = pa.table({"id": [1, 2, 3, 4], "ts": [1, 2, 3, 4], "x": [0.1, 0.2, 0.3, 0.4], "y": ["a", "b", "a", "b"]})
    for split in ("train", "validation"):
        pq.write_table(table, tmp_path / split)
    config = pipeline_config("unused").model_copy(update={"schema_": pipeline_config("unused").schema_.model_copy(
        update={"entity": "id", "timestamp": "ts", "label": "y", "features": ["x"], "categorical": [],
                "task": "regression"})})  # fmt: skip
    with pytest.raises(Exception, match=r"label 'y' is string, not a number: schema.task regression"):
        core.prepare(config, str(tmp_path / "train"), str(tmp_path / "validation"), str(tmp_path / "out"))


@pytest.mark.parametrize(
    ("train", "message"),
    [({"hidden_layers": [8]}, "hidden_layers moved to train.model.options"),
     ({"model": {"entry_point": "my model"}}, "is neither a built-in architecture"),
     ({"model": {"entry_point": "pkg.module:"}}, "is not of the form 'package.module:function'")],
)  # fmt: skip
def test_model_settings_are_checked_when_the_config_is_read(train, message):
    with pytest.raises(ConfigError, match=message):
        pipeline_config("unused", train=train)


def test_an_unknown_built_in_name_lists_the_built_in_architectures(ingested, tmp_path):
    config, paths = ingested
    with pytest.raises(ModelContractError, match=r"'resnet' is not a built-in architecture \(mlp, ft_transformer\)"):
        prepare(with_model(config, "resnet"), paths, tmp_path / "prepared")
