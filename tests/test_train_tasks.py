"""Training for each task and network: a regression model with the FT-Transformer under ZeRO-2 and activation
checkpointing, trained with real DeepSpeed (2 CPU processes, gloo), exported as the serving graph's ``prediction``."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import TRAIN_SETTINGS
from support.configs import pipeline_config

from kfp_mlops.components.shared.config import TrainConfig
from kfp_mlops.components.shared.model_package import Predictor
from kfp_mlops.components.shared.tabular import Preprocessing
from kfp_mlops.components.train.core import train


@pytest.fixture(scope="module")
def regression_splits(tmp_path_factory):
    """The sample customers with a continuous label (spend, in cents: a float with fractions, so schema.task auto
    reads it as regression), split 70/15/15 in row order."""
    from kfp_mlops.components.shared.splits import SplitPaths
    from kfp_mlops.sample_data import make_sample_table

    work = tmp_path_factory.mktemp("regression")
    table = make_sample_table(4_000, seed=3)
    rng = np.random.default_rng(3)
    charges, support = table["monthly_charges"].to_numpy(), table["support_calls"].to_numpy()
    spend = (3 * charges * (1 - 0.08 * support) + rng.normal(0, 10, table.num_rows)).round(2)
    table = table.drop_columns(["churned"]).append_column("spend", pa.array(spend))
    config = pipeline_config("unused", schema={"label": "spend"})
    paths = SplitPaths(*(str(work / name) for name in ("train", "validation", "test")))
    train_rows, validation_rows = int(table.num_rows * 0.7), int(table.num_rows * 0.15)
    pq.write_table(table.slice(0, train_rows), paths.train)
    pq.write_table(table.slice(train_rows, validation_rows), paths.validation)
    pq.write_table(table.slice(train_rows + validation_rows), paths.test)
    return config, paths


def test_an_ft_transformer_regression_model_trains_under_zero_2_with_activation_checkpointing_and_serves_its_prediction(
    regression_splits, tmp_path
):
    from kfp_mlops.components.train.model import ServingHead, build_model

    config, paths = regression_splits
    options = {"d_token": 32, "n_blocks": 2, "heads": 4, "activation_checkpointing": True}
    settings = TRAIN_SETTINGS | {"epochs": 6, "model": {"entry_point": "ft_transformer", "options": options}}
    config = config.model_copy(update={"train": TrainConfig(**settings)})
    model_dir = tmp_path / "model"
    result = train(config, paths.train, paths.validation, str(model_dir), str(tmp_path / "ckpt"))
    assert result.metrics["zero_stage"] == 2 and result.metrics["world_size"] == 2
    model_config = json.loads((model_dir / "model_config.json").read_text())
    assert model_config["task"] == "regression" and model_config["classes"] == []
    assert model_config["architecture"]["entry_point"] == "ft_transformer"
    assert model_config["architecture"]["parameters"] > 10_000
    session = onnxruntime.InferenceSession(str(model_dir / "model.onnx"))
    assert [output.name for output in session.get_outputs()] == ["prediction"]
    # the serving graph on raw rows agrees with PyTorch, in the label's units, and has learned the target
    validation = pq.read_table(paths.validation)
    predictions, values = Predictor(model_dir).predict(validation)
    assert predictions.shape == (validation.num_rows, 1) and values.dtype == np.float32
    preprocessing = Preprocessing.load(model_dir)
    network = build_model("ft_transformer", options, preprocessing)
    network.load_state_dict(torch.load(model_dir / "weights.pt"))
    with torch.no_grad():
        expected = ServingHead(network, preprocessing).eval()(
            torch.from_numpy(preprocessing.numeric_matrix(validation)),
            torch.from_numpy(preprocessing.categorical_matrix(validation)),
        )
    np.testing.assert_allclose(predictions, expected.numpy(), rtol=1e-4, atol=1e-3)
    truth = validation["spend"].to_numpy()
    r2 = 1 - ((truth - values) ** 2).sum() / ((truth - truth.mean()) ** 2).sum()
    assert r2 > 0.5, r2
