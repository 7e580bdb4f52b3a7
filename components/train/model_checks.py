"""The model contract checked on CPU in prepare-training, before any GPU is held: the entry point builds a Module
with trainable parameters, a training batch goes forward and backward with the output shape the task needs and
finite values, and the serving head exports to ONNX (opset fixed, dynamic batch) and matches PyTorch on a batch of
another size. Each failure is a ``ModelContractError`` naming the entry point and what was expected."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import torch

from kfp_mlops.components.shared.config import ModelSpecConfig
from kfp_mlops.components.shared.model_package import output_names
from kfp_mlops.components.shared.tabular import Preprocessing
from kfp_mlops.components.train.model import (
    ONNX_OPSET,
    ModelContractError,
    ServingHead,
    build_model,
    export_onnx,
    training_loss,
)

CHECK_ROWS = 8  # the batch traced for the export; parity is checked on a batch of another size
PARITY_ROWS = 3
PARITY_TOLERANCE = 1e-4  # probabilities, or predictions in standard deviations of the label


@dataclass(frozen=True)
class ModelCheck:
    parameters: int
    onnx_max_abs_diff: float


def check_model(model: ModelSpecConfig, preprocessing: Preprocessing, arrays: dict[str, np.ndarray]) -> ModelCheck:
    """Build ``model`` for ``preprocessing`` and check the contract on the first training rows of ``arrays``."""

    name = f"train.model.entry_point {model.entry_point!r}"
    torch.manual_seed(0)
    network = build_model(model.entry_point, model.options, preprocessing)
    parameters = sum(p.numel() for p in network.parameters() if p.requires_grad)
    if parameters == 0:
        raise ModelContractError(f"{name}: the network has no trainable parameters")
    numeric = torch.from_numpy(arrays["train_numeric"][:CHECK_ROWS])
    categorical = torch.from_numpy(arrays["train_categorical"][:CHECK_ROWS])
    target = torch.from_numpy(arrays["train_y"][:CHECK_ROWS])
    rows = len(target)
    network.train()
    try:
        output = network(numeric, categorical)
    except Exception as exc:
        raise ModelContractError(
            f"{name}: forward(numeric float32 [{rows}, {len(preprocessing.numeric)}], categorical int64 "
            f"[{rows}, {len(preprocessing.categorical)}]) failed: {type(exc).__name__}: {exc}"
        ) from None
    _check_output(name, output, preprocessing, rows)
    try:
        training_loss(output, target, preprocessing.task).backward()
    except Exception as exc:
        raise ModelContractError(f"{name}: the backward pass failed: {type(exc).__name__}: {exc}") from None
    diff = _check_export(name, ServingHead(network, preprocessing).eval(), numeric, categorical, preprocessing)
    return ModelCheck(parameters, diff)


def _check_output(name: str, output: Any, preprocessing: Preprocessing, rows: int) -> None:

    regression = preprocessing.task == "regression"
    expected = f"[{rows}, 1] or [{rows}]" if regression else f"[{rows}, {preprocessing.outputs}]"
    what = "one value per row (regression)" if regression else f"one logit per class ({preprocessing.outputs})"
    if not isinstance(output, torch.Tensor):
        raise ModelContractError(f"{name}: forward returned a {type(output).__name__}; expected a tensor {expected}")
    shape = tuple(output.shape)
    fits = shape in ((rows, 1), (rows,)) if regression else shape == (rows, preprocessing.outputs)
    if not fits:
        raise ModelContractError(f"{name}: forward returned shape {list(shape)}; expected {expected}: {what}")
    if not output.is_floating_point():
        raise ModelContractError(f"{name}: forward returned {output.dtype}; expected floating-point values")
    if not torch.isfinite(output).all():
        raise ModelContractError(f"{name}: forward returned non-finite values (NaN or inf) on the first training rows")


def _check_export(name: str, head: Any, numeric: Any, categorical: Any, preprocessing: Preprocessing) -> float:

    output = output_names(preprocessing.task)[0]
    with tempfile.TemporaryDirectory(prefix="kfp-mlops-model-check-") as tmp:
        path = str(Path(tmp) / "core.onnx")
        try:
            export_onnx(head, numeric, categorical, path, output)
            session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ModelContractError(
                f"{name}: the network cannot be exported to ONNX (opset {ONNX_OPSET}, TorchScript exporter, dynamic "
                f"batch): {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
            ) from None
        feeds = {value.name: value for value in session.get_inputs()}
        inputs = {"numeric": numeric[:PARITY_ROWS].numpy(), "categorical": categorical[:PARITY_ROWS].numpy()}
        try:
            (actual,) = session.run([output], {key: inputs[key] for key in feeds})
        except Exception as exc:
            raise ModelContractError(
                f"{name}: the exported graph fails on a batch of {PARITY_ROWS} rows (traced on {CHECK_ROWS}): is a "
                f"shape fixed to the traced batch? {type(exc).__name__}: {exc}"
            ) from None
    with torch.no_grad():
        expected = head(numeric[:PARITY_ROWS], categorical[:PARITY_ROWS]).numpy()
    scale = preprocessing.label_std if preprocessing.task == "regression" else 1.0
    diff = float(np.abs(actual - expected).max() / scale) if actual.shape == expected.shape else float("inf")
    if not np.isfinite(diff) or diff > PARITY_TOLERANCE:
        raise ModelContractError(
            f"{name}: the exported ONNX graph differs from PyTorch on a batch of {PARITY_ROWS} rows (traced on "
            f"{CHECK_ROWS}): shape {list(actual.shape)} vs {list(expected.shape)}, max difference {diff:.2e} "
            f"(> {PARITY_TOLERANCE}); an operation the exporter traced as a constant or a shape tied to the batch"
        )
    return diff
