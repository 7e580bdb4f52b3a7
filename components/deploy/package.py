"""The model package as the deploy step reads it: its Triton config, its content hash, the files of a version
directory, and its own outputs on the verification rows (the reference Triton must match)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kfp_mlops.components.deploy.errors import DeployError, Stage
from kfp_mlops.components.shared import layout, model_package, triton_config
from kfp_mlops.components.shared.config import DeployConfig
from kfp_mlops.components.shared.splits import read_split
from kfp_mlops.components.shared.tabular import Preprocessing


def model_config(
    name: str, onnx_path: str | Path, settings: DeployConfig, gpu: bool, version: int | None = None
) -> triton_config.ModelConfig:
    """The Triton config of the package: tensors from the ONNX signature, ``platform: onnxruntime_onnx`` (or the
    local python backend), KIND_GPU (device 0 of the pod) or KIND_CPU instances, dynamic batching, and a version
    policy that serves exactly ``version``."""
    kind = settings.instance_kind if settings.instance_kind != "auto" else ("gpu" if gpu else "cpu")
    group = {"kind": "KIND_GPU", "gpus": [0]} if kind == "gpu" else {"kind": "KIND_CPU"}
    return triton_config.config_for_onnx(
        name,
        onnx_path,
        backend="python" if settings.backend == "python" else None,
        max_batch_size=settings.max_batch_size,
        dynamic_batching={
            "preferred_batch_size": settings.preferred_batch_sizes,
            "max_queue_delay_microseconds": settings.max_queue_delay_microseconds,
        },
        instance_group=[{**group, "count": settings.instance_count}],
        version_policy={"specific": [version]} if version else None,
    )


@dataclass(frozen=True)
class Package:
    model_dir: str
    onnx_path: Path
    content_hash: str  # of model.onnx and model_config.json
    config: model_package.ModelConfig
    serving: triton_config.ModelConfig  # the served config without version policy
    backend: str

    @classmethod
    def read(cls, model_dir: str, settings: DeployConfig, gpu: bool) -> Package:
        onnx_path = Path(model_dir) / model_package.ONNX_FILE
        try:
            config = model_package.read_model_config(model_dir)
            digest = hashlib.sha256()
            for name in (model_package.ONNX_FILE, model_package.MODEL_CONFIG_FILE):
                digest.update(name.encode() + b"\0" + (Path(model_dir) / name).read_bytes() + b"\0")
            serving = model_config(settings.model_name, onnx_path, settings, gpu)
        except Exception as exc:  # a missing file, an unreadable graph, a signature Triton cannot serve
            raise DeployError(Stage.PACKAGE, f"model package {model_dir}: {type(exc).__name__}: {exc}") from None
        return cls(model_dir, onnx_path, f"sha256:{digest.hexdigest()}", config, serving, settings.backend)

    def files(self) -> dict[str, Path]:
        """A version directory's files besides the marker."""
        return layout.version_files(self.onnx_path, python_backend=self.backend == "python")

    def config_for(self, name: str, version: int) -> triton_config.ModelConfig:
        return self.serving.model_copy(
            update={"name": name, "version_policy": triton_config.VersionPolicy(specific=[version])}
        )


@dataclass(frozen=True)
class Reference:
    """The verification rows as Triton inputs, and the package's own outputs on them: ``values`` is the graph's first
    output (``outputs[0]``: probabilities [N, classes], or a regression model's prediction [N, 1]) and ``labels``
    the predicted classes (empty for regression). ``scale`` divides a difference before ``verify.atol`` bounds it:
    1 for probabilities, the training label's standard deviation (``preprocessing.json`` ``label_std``) for a
    prediction in the label's units, so one atol means the same share of the target's spread for every label."""

    inputs: dict[str, np.ndarray]
    outputs: list[str]  # the package's graph outputs (ModelConfig.outputs), what verification asks Triton for
    values: np.ndarray
    labels: list[Any]
    decision_threshold: float
    scale: float = 1.0

    @classmethod
    def compute(cls, package: Package, validation_path: str, rows: int, batch_size: int) -> Reference:
        """The package's outputs in the batches verification sends (``batch_size`` rows each, one request at a
        time, so Triton runs each alone): an int8_dynamic model quantizes activations per batch, so a row's
        outputs depend on the rows it is run with."""
        config = package.config
        try:
            table = read_split(validation_path, "validation")
            table = table.slice(0, min(rows, table.num_rows))
            predictor = model_package.Predictor(package.model_dir)
            inputs = predictor.feeds(table)
            batches = [
                predictor.run({key: value[start : start + batch_size] for key, value in inputs.items()})
                for start in range(0, table.num_rows, batch_size)
            ]
            values = np.concatenate([batch[0] for batch in batches])
            labels = [] if config.regression else layout.decode_labels(np.concatenate([batch[1] for batch in batches]))
            scale = label_scale(package.model_dir) if config.regression else 1.0
        except Exception as exc:
            raise DeployError(
                Stage.PACKAGE,
                f"reference outputs of {package.model_dir} on {validation_path}: {type(exc).__name__}: {exc}",
            ) from None
        return cls(inputs, config.outputs, values, labels, config.decision_threshold, scale)

    @property
    def rows(self) -> int:
        return len(self.values)

    @property
    def regression(self) -> bool:
        return self.outputs == [model_package.PREDICTION_OUTPUT]

    def excused(self, row: int, atol: float) -> bool:
        """A label may differ where the reference sits within ``atol`` of the decision boundary."""
        p = self.values[row]
        if len(p) == 2:
            return abs(float(p[1]) - self.decision_threshold) <= atol
        top = np.sort(p)[-2:]
        return float(top[1] - top[0]) <= 2 * atol


def label_scale(model_dir: str | Path) -> float:
    """A regression package's unit of difference: the standard deviation of the training labels, which
    ``preprocessing.json`` keeps (``label_std``; 1 where it is not positive)."""
    std = float(Preprocessing.load(model_dir).label_std)
    return std if std > 0 else 1.0
