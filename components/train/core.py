"""Train in two parts. ``prepare`` (a CPU task) checks the inputs and settings, fits preprocessing on the training
split and writes the arrays; ``train_prepared`` (the accelerator task) picks the devices and fits the batching to the
data (``devices``), launches the DeepSpeed workers (``launch``), then publishes: exports the best weights as the
serving graph (raw features in), checks it against PyTorch on raw validation rows and writes the model package.
Paths and values only; no KFP.

The workers are started with ``torch.distributed.run``: one per GPU on the node, or ``train.workers`` CPU
processes with gloo. Checkpoints go to ``checkpoint_dir`` (a path, or an s3:// / gs:// URI synced both ways), so a
retried task resumes from the latest one instead of starting over; a failure a retry would repeat is recorded there
so that the retry fails at once.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from kfp_mlops.components.shared import serving_graph, storage
from kfp_mlops.components.shared.config import PipelineConfig, TrainConfig
from kfp_mlops.components.shared.errors import InputError
from kfp_mlops.components.shared.model_package import (
    ONNX_FILE,
    PIPELINE_CONFIG_FILE,
    WEIGHTS_FILE,
    ModelConfig,
    output_names,
    raw_inputs,
    write_model_config,
)
from kfp_mlops.components.shared.splits import feature_columns, read_split
from kfp_mlops.components.shared.tabular import Preprocessing, Task, resolve_task
from kfp_mlops.components.train.deepspeed_config import build_deepspeed_config, resolve_precision
from kfp_mlops.components.train.devices import (
    Batching,
    ClusterContext,
    Devices,
    choose_devices,
    trainjob_storage_error,
)
from kfp_mlops.components.train.launch import (
    DeterministicTrainingError,
    log,
    raise_recorded_failure,
    record_failure,
    run_workers,
)
from kfp_mlops.components.train.worker_spec import PREPARED_ARRAYS, WorkerSpec

PREPARED_SUMMARY = "prepared.json"
VALIDATION_SAMPLE = "validation_sample.parquet"  # raw rows: the serving graph is checked against PyTorch on them
ONNX_TOLERANCE = 1e-4
_SAMPLE_ROWS = 512


@dataclass
class TrainResult:
    metrics: dict[str, Any]
    deepspeed_config: dict[str, Any]
    onnx_max_abs_diff: float
    batching: Batching | None = None


@dataclass(frozen=True)
class Prepared:
    """What ``prepare`` wrote: the preprocessing fitted on the train split and the row counts."""

    directory: Path
    preprocessing: Preprocessing
    rows: dict[str, int]
    parameters: int = 0  # trainable parameters of the network

    @classmethod
    def load(cls, directory: str | Path) -> Prepared:
        directory = Path(directory)
        summary = json.loads((directory / PREPARED_SUMMARY).read_text())
        return cls(directory, Preprocessing.load(directory), summary["rows"], summary.get("parameters", 0))


def check_training_inputs(
    tables: dict[str, pa.Table], features: list[str], categorical: list[str], label: str, requested: str
) -> Task:
    """Fail before any worker starts: missing columns, infinite features, a label that does not fit the task (one
    class, or not a number for regression; a regression label's missing or infinite values fail when the targets
    are read). Returns the task ``requested`` (schema.task) resolves to on the train and validation labels. Missing
    feature values (null, NaN) are imputed (schema.missing_values: impute; ingest already rejected them under
    ``error``)."""
    for name, table in tables.items():
        missing = [c for c in [*features, label] if c not in table.column_names]
        if missing:
            raise InputError(f"{name} split: missing column(s) {missing}")
        for column in features:
            if column in categorical:
                continue
            values = table[column].cast(pa.float64())
            infinite = pc.fill_null(pc.is_inf(values), False)
            if pc.any(infinite).as_py():
                row = int(pc.index(infinite, True).as_py())
                raise InputError(
                    f"{name} split: column {column!r} row {row + 1}: value {values[row].as_py()} is not finite"
                )
    labels = pa.chunked_array([*tables["train"][label].chunks, *tables["validation"][label].chunks])
    task = resolve_task(requested, labels, label)
    classes = pc.unique(tables["train"][label]).to_pylist()
    if task != "regression" and len(classes) < 2:
        raise InputError(f"train split: column {label!r} holds a single class {classes}; a classifier needs two")
    return task


def prepare(
    config: PipelineConfig,
    train_path: str,
    validation_path: str,
    output_dir: str,
    gpus_per_node: int | None = None,
    checkpoint_dir: str = "",
    task: str = "",
) -> Prepared:
    """Check the training inputs and settings, fit preprocessing on the train split, check the model contract
    (``model_checks``: the entry point's network trains a batch and exports) and write the arrays the workers
    train on. Cheap and CPU-only: every deterministic input, config or model error surfaces here, before a GPU is
    held. ``gpus_per_node`` (when known) checks the precision against the device. ``task``: what ingest resolved
    ``schema.task: auto`` to over every row (empty: resolved here, on the train and validation labels)."""
    from kfp_mlops.components.train.model_checks import check_model

    schema, settings = config.schema_, config.train
    tables = {"train": read_split(train_path, "train"), "validation": read_split(validation_path, "validation")}
    features = feature_columns(schema.features, tables["train"].column_names, schema.entity, schema.timestamp,
                               schema.label)  # fmt: skip
    requested = "regression" if task == "regression" and schema.task == "auto" else schema.task
    resolved = check_training_inputs(tables, features, schema.categorical, schema.label, requested)
    if gpus_per_node == 0:
        resolve_precision(settings.precision, "cpu")
    if settings.nodes > 1 and checkpoint_dir and not storage.is_remote(checkpoint_dir):
        raise trainjob_storage_error(checkpoint_dir)
    preprocessing = Preprocessing.fit(tables["train"], features, schema.categorical, schema.label, resolved)
    arrays = {}
    for name, table in tables.items():
        arrays[f"{name}_numeric"] = preprocessing.numeric_matrix(table)
        arrays[f"{name}_categorical"] = preprocessing.categorical_matrix(table)
        arrays[f"{name}_y"] = preprocessing.labels(table, f"{name} split")
    checked = check_model(settings.model, preprocessing, arrays)
    target = Path(output_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".prepared-", dir=target.parent))
    try:
        np.savez(staging / PREPARED_ARRAYS, **arrays)
        preprocessing.save(staging)
        pq.write_table(tables["validation"].slice(0, _SAMPLE_ROWS), staging / VALIDATION_SAMPLE)
        rows = {name: table.num_rows for name, table in tables.items()}
        summary = {"rows": rows, "features": features, "task": resolved, "parameters": checked.parameters}
        (staging / PREPARED_SUMMARY).write_text(json.dumps(summary))
        _replace_directory(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return Prepared(target, preprocessing, rows, checked.parameters)


def train(
    config: PipelineConfig,
    train_path: str,
    validation_path: str,
    model_dir: str,
    checkpoint_dir: str,
    log_path: str | None = None,
    cluster: ClusterContext | None = None,
    task: str = "",
) -> TrainResult:
    """``prepare`` then ``train_prepared``, in one call (local runs, tests and benchmarks)."""
    with tempfile.TemporaryDirectory(prefix="kfp-mlops-prepared-") as prepared:
        gpus = None if cluster is None else cluster.gpus_per_node
        prepare(config, train_path, validation_path, prepared, gpus, checkpoint_dir if cluster else "", task)
        return train_prepared(config, prepared, model_dir, checkpoint_dir, log_path, cluster)


def train_prepared(
    config: PipelineConfig,
    prepared_dir: str,
    model_dir: str,
    checkpoint_dir: str,
    log_path: str | None = None,
    cluster: ClusterContext | None = None,
) -> TrainResult:
    """Train with DeepSpeed on ``prepare``'s output and write ``model_dir`` (see ``model_package``).

    ``train.nodes > 1`` runs the workers as a Kubeflow Trainer TrainJob (``cluster`` says how); the data, the
    checkpoints and the result then travel through object storage next to ``checkpoint_dir``."""
    started = _process_start()
    raise_recorded_failure(checkpoint_dir)
    settings = config.train
    prepared = Prepared.load(prepared_dir)
    devices = choose_devices(settings, prepared.rows["train"], checkpoint_dir, cluster)
    _log_devices(log_path, prepared.rows["train"], devices)
    batching = devices.batching
    deepspeed_config = build_deepspeed_config(
        settings.model_copy(update={"micro_batch_size": batching.micro_batch_size,
                                    "gradient_accumulation_steps": batching.gradient_accumulation_steps}),
        devices.world_size, devices.device, batching.steps_per_epoch * settings.epochs, devices.bf16_supported,
    )  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="kfp-mlops-train-") as tmp:
        work = Path(tmp)
        spec = WorkerSpec(
            train=settings,
            deepspeed=deepspeed_config,
            arrays=str(Path(prepared_dir) / PREPARED_ARRAYS),
            preprocessing_dir=str(prepared_dir),
            output_dir=str(work / "output"),
            process_started=started,
        )
        run_workers(spec, work, checkpoint_dir, devices.world_size, cluster, log_path)
        metrics = json.loads((work / "output" / "metrics.json").read_text())
        diff = _publish(config, prepared, work / "output" / WEIGHTS_FILE, model_dir, checkpoint_dir, batching,
                        deepspeed_config)  # fmt: skip
    return TrainResult(metrics, deepspeed_config, diff, batching)


def _log_devices(log_path: str | None, rows: int, devices: Devices) -> None:
    batching = devices.batching
    log(log_path, f"[train] {rows:,} training rows, {devices.world_size} worker(s) on {devices.device}: "
                  f"micro_batch_size {batching.micro_batch_size}, gradient_accumulation_steps "
                  f"{batching.gradient_accumulation_steps}, {batching.steps_per_epoch} steps per epoch")  # fmt: skip
    for adjustment in batching.adjustments:
        log(log_path, f"[train] adjusted to the data: {adjustment}")


def _publish(
    config: PipelineConfig,
    prepared: Prepared,
    weights: Path,
    model_dir: str,
    checkpoint_dir: str,
    batching: Batching,
    deepspeed_config: dict[str, Any],
) -> float:
    """Export ``weights`` as the serving graph, check it against PyTorch (a mismatch is recorded beside the
    checkpoints: a retry repeats it) and write the model package to ``model_dir`` whole. Returns the difference."""
    preprocessing, settings = prepared.preprocessing, config.train
    arrays = dict(np.load(prepared.directory / PREPARED_ARRAYS))
    sample = pq.read_table(prepared.directory / VALIDATION_SAMPLE)
    Path(model_dir).parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".model-", dir=Path(model_dir).parent))
    try:
        try:
            diff, threshold = _export(preprocessing, settings, weights, staging, arrays, sample)
        except DeterministicTrainingError as exc:
            record_failure(checkpoint_dir, json.dumps({"error": str(exc)}).encode())
            raise
        write_model_config(staging, _model_config(config, prepared, threshold, batching, deepspeed_config))
        (staging / PIPELINE_CONFIG_FILE).write_text(config.to_yaml())  # the whole config this model came from
        preprocessing.save(staging)
        _replace_directory(staging, Path(model_dir))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return diff


def _model_config(
    config: PipelineConfig, prepared: Prepared, threshold: float, batching: Batching, deepspeed_config: dict[str, Any]
) -> ModelConfig:
    """The model card: the columns and classes, how the model was built, trained and batched, on how many rows."""
    preprocessing, schema, settings = prepared.preprocessing, config.schema_, config.train
    return ModelConfig(
        features=preprocessing.features,
        numeric=preprocessing.numeric,
        categorical=preprocessing.categorical,
        label=preprocessing.label,
        classes=preprocessing.classes,
        entity=schema.entity,
        timestamp=schema.timestamp,
        decision_threshold=threshold,
        task=preprocessing.task,
        missing_values=schema.missing_values,
        architecture={
            "entry_point": settings.model.entry_point,
            "options": settings.model.options,
            "parameters": prepared.parameters,
        },
        train=settings.model_dump(),
        batching=batching.as_dict(),
        deepspeed=deepspeed_config,
        data={"rows": prepared.rows},
    )


def _process_start() -> float:
    """When this process started (the KFP task's executor): start-up time is measured from it."""
    import psutil

    return psutil.Process(os.getpid()).create_time()


def f1_optimal_threshold(positive_probability: np.ndarray, is_positive: np.ndarray) -> float:
    """The decision threshold with the best F1 on these rows (binary models; validation split, never test)."""
    order = np.argsort(-positive_probability, kind="stable")
    hits = np.cumsum(is_positive[order])
    predicted = np.arange(1, len(order) + 1)
    f1 = 2 * hits / (predicted + max(int(is_positive.sum()), 1))
    best = int(np.argmax(f1))
    return float(np.clip(positive_probability[order][best], 1e-6, 1 - 1e-6))


def _export(
    preprocessing: Preprocessing, settings: TrainConfig, weights: Path, target: Path, arrays: dict, sample: pa.Table
) -> tuple[float, float]:
    """Write the weights and the serving graph (``serving_graph.compose`` around the exported network), then
    check train/serve consistency: the serving graph on raw validation rows must match PyTorch on the same rows
    preprocessed for training (max abs diff below ONNX_TOLERANCE; regression: in standard deviations of the label).
    Returns that difference and the F1-optimal decision threshold on the validation split (0.5 for the others)."""
    import onnx
    import onnxruntime
    import torch

    from kfp_mlops.components.train.model import ServingHead, build_model, export_onnx

    network = build_model(settings.model.entry_point, settings.model.options, preprocessing)
    network.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    model = ServingHead(network, preprocessing).eval()
    output = output_names(preprocessing.task)[0]
    shutil.copyfile(weights, target / WEIGHTS_FILE)
    numeric = torch.from_numpy(preprocessing.numeric_matrix(sample))
    categorical = torch.from_numpy(preprocessing.categorical_matrix(sample))
    core_path = target / "core.onnx"
    export_onnx(model, numeric, categorical, str(core_path), output)
    core = onnx.load(str(core_path))
    core_path.unlink()
    threshold = 0.5
    if len(preprocessing.classes) == 2:
        with torch.no_grad():
            validation = model(torch.from_numpy(arrays["validation_numeric"]),
                               torch.from_numpy(arrays["validation_categorical"]))[:, 1].numpy()  # fmt: skip
        threshold = f1_optimal_threshold(validation, arrays["validation_y"] == 1)
    served = serving_graph.compose(core, preprocessing, threshold)
    onnx.save(served, str(target / ONNX_FILE))
    with torch.no_grad():
        expected = model(numeric, categorical).numpy()
    session = onnxruntime.InferenceSession(str(target / ONNX_FILE), providers=["CPUExecutionProvider"])
    (actual,) = session.run([output], raw_inputs(sample, preprocessing.numeric, preprocessing.categorical))
    scale = preprocessing.label_std if preprocessing.task == "regression" else 1.0
    diff = float(np.abs(actual - expected).max() / scale)
    if not np.isfinite(diff) or diff > ONNX_TOLERANCE:
        raise DeterministicTrainingError(
            f"the serving graph of train.model.entry_point {settings.model.entry_point!r} differs from PyTorch by "
            f"{diff:.2e} (> {ONNX_TOLERANCE}) on raw validation rows"
        )
    return diff, threshold


def _replace_directory(staging: Path, target: Path) -> None:
    """Move a fully written directory into place (a retry replaces a previous attempt's output whole)."""
    if target.exists():
        shutil.rmtree(target)
    os.replace(staging, target)
