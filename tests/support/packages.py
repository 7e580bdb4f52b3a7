"""Model packages derived from the trained one by editing its ONNX graph (other weights, noise, NaN), and a regression
package built without training (a least-squares linear core in the serving graph)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pyarrow as pa
from onnx import TensorProto, helper, numpy_helper

from kfp_mlops.components.shared import model_package, serving_graph
from kfp_mlops.components.shared.tabular import Preprocessing


def edited_package(source: Path, target: Path, edit: Callable[[onnx.GraphProto], None]) -> Path:
    """A copy of the package at ``source`` in ``target`` with ``edit`` applied to its graph."""
    shutil.copytree(source, target)
    model = onnx.load(str(target / "model.onnx"))
    edit(model.graph)
    onnx.save(model, str(target / "model.onnx"))
    return target


def halve_weights(graph: onnx.GraphProto) -> None:
    """Another model: every float weight matrix halved."""
    for index, tensor in enumerate(graph.initializer):
        array = numpy_helper.to_array(tensor)
        if array.ndim == 2 and array.dtype == np.float32:
            graph.initializer[index].CopyFrom(numpy_helper.from_array(array * 0.5, tensor.name))


REGRESSION_LABEL = "spend_next_90d"  # a made-up float target: 3 × monthly_charges plus noise


def with_regression_label(table: pa.Table, seed: int = 0) -> pa.Table:
    """``table`` with ``REGRESSION_LABEL`` added (float64 with fractions: ``schema.task: auto`` reads it as one)."""
    charges = table["monthly_charges"].cast(pa.float64()).to_numpy(zero_copy_only=False)
    noise = np.random.default_rng(seed).normal(0.0, 5.0, table.num_rows)
    return table.append_column(REGRESSION_LABEL, pa.array(np.nan_to_num(charges) * 3 + noise + 0.25))


def regression_package(target: Path, train: pa.Table, features: list[str], categorical: list[str], entity: str,
                       timestamp: str) -> Path:  # fmt: skip
    """A regression model package without training: a linear core fitted by least squares on the standardised
    features of ``train`` (with ``REGRESSION_LABEL`` added), composed into the serving graph with the package's
    ``preprocessing.json`` and ``model_config.json``, as the train step lays them out. Its one output is
    ``prediction`` [N, 1] in the label's units."""
    train = with_regression_label(train)
    preprocessing = Preprocessing.fit(train, features, categorical, REGRESSION_LABEL, task="regression")
    means, stds = np.array(preprocessing.means, np.float32), np.array(preprocessing.stds, np.float32)
    design = np.concatenate(
        [(preprocessing.numeric_matrix(train) - means) / stds, preprocessing.categorical_matrix(train)], axis=1
    ).astype(np.float32)
    design = np.concatenate([design, np.ones((len(design), 1), np.float32)], axis=1)
    solution, *_ = np.linalg.lstsq(design, preprocessing.labels(train, "train"), rcond=None)
    weight, bias = solution[:-1].reshape(-1, 1).astype(np.float32), solution[-1:].astype(np.float32)
    k, m = len(preprocessing.numeric), len(preprocessing.categorical)
    tensors = {"means": means.reshape(1, k), "stds": stds.reshape(1, k), "weight": weight, "bias": bias,
               "label_std": np.array([preprocessing.label_std], np.float32),
               "label_mean": np.array([preprocessing.label_mean], np.float32)}  # fmt: skip
    nodes = [
        helper.make_node("Sub", ["numeric", "means"], ["centred"]),
        helper.make_node("Div", ["centred", "stds"], ["standardised"]),
        helper.make_node("Cast", ["categorical"], ["codes"], to=TensorProto.FLOAT),
        helper.make_node("Concat", ["standardised", "codes"], ["features"], axis=1),
        helper.make_node("MatMul", ["features", "weight"], ["product"]),
        helper.make_node("Add", ["product", "bias"], ["standardised_prediction"]),
        helper.make_node("Mul", ["standardised_prediction", "label_std"], ["scaled"]),
        helper.make_node("Add", ["scaled", "label_mean"], [model_package.PREDICTION_OUTPUT]),
    ]
    core = helper.make_model(
        helper.make_graph(
            nodes,
            "linear_regression",
            [
                helper.make_tensor_value_info("numeric", TensorProto.FLOAT, ["N", k]),
                helper.make_tensor_value_info("categorical", TensorProto.INT64, ["N", m]),
            ],
            [helper.make_tensor_value_info(model_package.PREDICTION_OUTPUT, TensorProto.FLOAT, ["N", 1])],
            [numpy_helper.from_array(array, name) for name, array in tensors.items()],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    core.ir_version = 8
    target.mkdir(parents=True)
    onnx.save(serving_graph.compose(core, preprocessing, 0.5), str(target / model_package.ONNX_FILE))
    preprocessing.save(target)
    config = model_package.ModelConfig(features=preprocessing.features, numeric=preprocessing.numeric,
                                       categorical=preprocessing.categorical, label=REGRESSION_LABEL, classes=[],
                                       entity=entity, timestamp=timestamp, task="regression")  # fmt: skip
    model_package.write_model_config(target, config)
    return target
