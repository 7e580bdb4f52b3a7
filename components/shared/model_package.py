"""The model package contract: what a model directory holds, the served graph's tensor names, the model config,
and how any step (evaluate, quantize, deploy, serving, drift) turns raw rows into the graph's inputs.

A model directory (the train step's ``model`` artifact; quantize writes the same layout):
``model.onnx`` (the serving graph: raw features in, ``probabilities`` and ``label`` out, or for a regression model
``prediction``), ``model_config.json`` (task, features, classes, decision threshold, training settings),
``preprocessing.json`` (medians, vocabularies),
``pipeline_config.yaml`` (the whole config the model came from) and, from training, ``weights.pt``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, model_validator

from kfp_mlops.components.shared import storage
from kfp_mlops.components.shared.tabular import MISSING_CATEGORY, category_values

ONNX_FILE = "model.onnx"
WEIGHTS_FILE = "weights.pt"
MODEL_CONFIG_FILE = "model_config.json"
PIPELINE_CONFIG_FILE = "pipeline_config.yaml"
NUMERIC_INPUT = "numeric"  # FP32 [N, len(numeric)], raw values; NaN = missing
CATEGORICAL_INPUT = "categorical"  # STRING (Triton BYTES) [N, len(categorical)], raw values; "" = missing
PROBABILITIES_OUTPUT = "probabilities"  # FP32 [N, len(classes)]
LABEL_OUTPUT = "label"  # [N, 1]: the predicted class (INT64 or STRING) under the decision threshold
PREDICTION_OUTPUT = "prediction"  # FP32 [N, 1]: a regression model's predicted value, in the label's units


def output_names(task: str) -> list[str]:
    """The serving graph's outputs for a model of ``task``: the first one is what metrics and parity checks read."""
    return [PREDICTION_OUTPUT] if task == "regression" else [PROBABILITIES_OUTPUT, LABEL_OUTPUT]


class ModelConfig(BaseModel):
    """``model_config.json``: what a reader of the package needs besides the graph."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    features: list[str]
    numeric: list[str]
    categorical: list[str]
    label: str
    classes: list[str | int]  # empty for regression
    entity: str
    timestamp: str
    decision_threshold: float = Field(0.5, gt=0, lt=1)  # binary models; 0.5 (unused) for the others
    task: Literal["binary", "multiclass", "regression"] = "binary"
    missing_values: Literal["impute", "error"] = "impute"
    precision: str = "fp32"  # of the graph's weights: fp32, int8 (dynamic or static QDQ) or fp16
    architecture: dict[str, Any] = {}
    train: dict[str, Any] = {}  # the train section as configured
    batching: dict[str, Any] = {}  # the effective micro-batch, accumulation and workers
    deepspeed: dict[str, Any] = {}
    data: dict[str, Any] = {}  # content hash and row counts of the training data

    @model_validator(mode="before")
    @classmethod
    def _task_of_older_packages(cls, document: Any) -> Any:
        """A package written before ``task`` existed is a classifier: binary or multiclass by its classes."""
        if isinstance(document, dict) and "task" not in document:
            document = {**document, "task": "binary" if len(document.get("classes", [])) <= 2 else "multiclass"}
        return document

    @property
    def regression(self) -> bool:
        return self.task == "regression"

    @property
    def outputs(self) -> list[str]:
        return output_names(self.task)

    @property
    def inputs(self) -> list[str]:
        return [
            name for name, columns in ((NUMERIC_INPUT, self.numeric), (CATEGORICAL_INPUT, self.categorical)) if columns
        ]


def read_model_config(model_dir: str | Path) -> ModelConfig:
    """The package's model config; ``model_dir`` is a local directory or a URI (s3://, gs://)."""
    try:
        return ModelConfig.model_validate_json(
            storage.read_bytes(storage.parse(model_dir).child(MODEL_CONFIG_FILE).uri)
        )
    except FileNotFoundError:
        raise FileNotFoundError(f"{model_dir} is not a model package: {MODEL_CONFIG_FILE} is missing") from None


def write_model_config(model_dir: str | Path, config: ModelConfig) -> None:
    (Path(model_dir) / MODEL_CONFIG_FILE).write_text(config.model_dump_json(indent=2))


def raw_inputs(
    rows: pa.Table | Mapping[str, Sequence[Any]], numeric: Sequence[str], categorical: Sequence[str]
) -> dict[str, np.ndarray]:
    """The serving graph's inputs from raw rows (a table, or columns as lists, e.g. Feast online features):
    numeric as float32 with NaN for a missing value, categorical as strings with "" for a missing value."""
    columns = rows if isinstance(rows, Mapping) else {name: rows[name] for name in rows.column_names}
    missing = [name for name in [*numeric, *categorical] if name not in columns]
    if missing:
        raise KeyError(f"feature column(s) {missing} are missing; the model takes {[*numeric, *categorical]}")
    feeds: dict[str, np.ndarray] = {}
    if numeric:
        feeds[NUMERIC_INPUT] = np.stack([_floats(columns[name]) for name in numeric], axis=1)
    if categorical:
        feeds[CATEGORICAL_INPUT] = np.stack([_strings(columns[name]) for name in categorical], axis=1)
    return feeds


def _floats(values: Any) -> np.ndarray:
    if isinstance(values, pa.ChunkedArray | pa.Array):
        return values.cast(pa.float64()).to_numpy(zero_copy_only=False).astype(np.float32)
    return np.array([np.nan if v is None else v for v in values], dtype=np.float32)


def _strings(values: Any) -> np.ndarray:
    """Categories as the vocabularies hold them (``tabular.category_values``: booleans "true"/"false"), every missing
    spelling (null, None, NaN, "") as "", the serving graph's missing category."""
    if not isinstance(values, pa.ChunkedArray | pa.Array):
        values = list(values)
        try:
            values = pa.array(values, from_pandas=True)
        except (pa.ArrowException, TypeError, ValueError):  # mixed Python types: one at a time
            values = pa.array([_category_text(v) for v in values], pa.string())
    strings = category_values(values).to_pylist()
    return np.array([MISSING_CATEGORY if v is None else v for v in strings], dtype=object)


def _category_text(value: Any) -> str | None:
    """One Python value as ``category_values`` spells it (bool "true"/"false", NaN missing)."""
    if value is None or (isinstance(value, float) and value != value):
        return None
    if isinstance(value, bool | np.bool_):
        return "true" if value else "false"
    return pa.array([value]).cast(pa.string())[0].as_py()


class Predictor:
    """The package's serving graph in onnxruntime: raw rows in, probabilities and labels out (regression: the
    predictions [N, 1] and the same values as [N])."""

    def __init__(self, model_dir: str | Path, onnx_file: str = ONNX_FILE, threads: int = 0):
        import onnxruntime

        self.model_dir = Path(model_dir)
        self.config = read_model_config(model_dir)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        self.session = onnxruntime.InferenceSession(
            str(self.model_dir / onnx_file), options, providers=["CPUExecutionProvider"]
        )

    def feeds(self, rows: pa.Table | Mapping[str, Sequence[Any]]) -> dict[str, np.ndarray]:
        return raw_inputs(rows, self.config.numeric, self.config.categorical)

    def run(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        if self.config.regression:
            (prediction,) = self.session.run([PREDICTION_OUTPUT], feeds)
            return prediction, prediction[:, 0]
        probabilities, labels = self.session.run([PROBABILITIES_OUTPUT, LABEL_OUTPUT], feeds)
        return probabilities, labels[:, 0]

    def predict(self, rows: pa.Table | Mapping[str, Sequence[Any]]) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities [N, classes], labels [N]); regression: (predictions [N, 1], predictions [N])."""
        return self.run(self.feeds(rows))
