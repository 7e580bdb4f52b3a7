"""Train: check the inputs, fit preprocessing on the training split, launch the DeepSpeed workers, then export the
best weights to ONNX and check the export with onnxruntime. Paths and values only; no KFP.

The step launches its workers itself with ``torch.distributed.run``: one per GPU on the node, or ``train.workers``
CPU processes with gloo. Checkpoints go to ``checkpoint_dir`` (a path, or an s3:// / gs:// URI synced both ways),
so a retried task resumes from the latest one instead of starting over.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from kfp_mlops.components.shared import storage
from kfp_mlops.components.shared.config import PipelineConfig
from kfp_mlops.components.shared.errors import ConfigError, InputError
from kfp_mlops.components.shared.tabular import Preprocessing
from kfp_mlops.components.train import checkpoints
from kfp_mlops.components.train.deepspeed_config import build_deepspeed_config

ONNX_FILE = "model.onnx"
WEIGHTS_FILE = "weights.pt"
MODEL_CONFIG_FILE = "model_config.json"
PIPELINE_CONFIG_FILE = "pipeline_config.yaml"
ONNX_TOLERANCE = 1e-4


class TrainingError(RuntimeError):
    """The worker processes failed; the message carries the end of their log."""


@dataclass(frozen=True)
class ClusterContext:
    """What a multi-node TrainJob needs from the pipeline: its image, run, GPUs and scheduling, and the Secret
    with object-storage credentials (referenced, never copied). ``api_client`` is for tests; None: in-cluster."""

    image: str
    run_id: str
    gpus_per_node: int = 1
    gpu_resource: str = "nvidia.com/gpu"
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)
    storage_secret: str = ""
    api_client: Any = None


@dataclass
class TrainResult:
    metrics: dict[str, Any]
    deepspeed_config: dict[str, Any]
    onnx_max_abs_diff: float


def read_split(path: str, name: str) -> pa.Table:
    table = pq.read_table(path)
    if table.num_rows == 0:
        raise InputError(f"{name} split ({path}) is empty")
    return table


def check_training_inputs(tables: dict[str, pa.Table], features: list[str], categorical: list[str], label: str) -> None:
    """Fail before any worker starts: missing columns, one-class labels, NaN/inf features."""
    for name, table in tables.items():
        missing = [c for c in [*features, label] if c not in table.column_names]
        if missing:
            raise InputError(f"{name} split: missing column(s) {missing}")
        for column in features:
            if column in categorical:
                continue
            values = table[column].cast(pa.float64())
            bad = pc.invert(pc.fill_null(pc.is_finite(values), False))
            if pc.any(bad).as_py():
                row = int(pc.index(bad, True).as_py())
                raise InputError(
                    f"{name} split: column {column!r} row {row + 1}: value {values[row].as_py()} is not finite"
                )
    classes = pc.unique(tables["train"][label]).to_pylist()
    if len(classes) < 2:
        raise InputError(f"train split: column {label!r} holds a single class {classes}; a classifier needs two")


_GPU_PROBE = "import torch; n = torch.cuda.device_count(); print(n, int(n > 0 and torch.cuda.is_bf16_supported()))"


def device_and_world_size(requested_workers: int) -> tuple[str, int, bool]:
    """(device, worker processes, bf16 supported): one process per GPU, else ``workers`` CPU processes (default 2).
    The GPUs are probed in a child process, so this launcher holds no CUDA context (memory) on GPU 0."""
    probe = subprocess.run([sys.executable, "-c", _GPU_PROBE], capture_output=True, text=True, check=True)
    gpus, bf16 = (int(value) for value in probe.stdout.split()[-2:])
    if gpus:
        return "cuda", min(requested_workers or gpus, gpus), bool(bf16)
    return "cpu", requested_workers or 2, False


def train(
    config: PipelineConfig,
    train_path: str,
    validation_path: str,
    model_dir: str,
    checkpoint_dir: str,
    log_path: str | None = None,
    cluster: ClusterContext | None = None,
) -> TrainResult:
    """Train with DeepSpeed and write ``model_dir``: ONNX model, weights, preprocessing and model config.

    ``train.nodes > 1`` runs the workers as a Kubeflow Trainer TrainJob (``cluster`` says how); the data, the
    checkpoints and the result then travel through object storage next to ``checkpoint_dir``."""
    schema, settings = config.schema_, config.train
    tables = {"train": read_split(train_path, "train"), "validation": read_split(validation_path, "validation")}
    features = schema.features or [
        c for c in tables["train"].column_names if c not in (schema.entity, schema.timestamp, schema.label)
    ]
    check_training_inputs(tables, features, schema.categorical, schema.label)
    if settings.nodes > 1:
        if cluster is None or not storage.is_remote(checkpoint_dir):
            raise ConfigError(
                "train.nodes > 1 runs a TrainJob: it needs the cluster context and checkpoint_dir on object storage "
                f"(s3:// or gs://), got {checkpoint_dir!r}"
            )
        device, world_size, bf16_supported = _trainjob_devices(settings, cluster)
    else:
        device, world_size, bf16_supported = device_and_world_size(settings.workers)
    per_rank_batches = tables["train"].num_rows // (settings.micro_batch_size * world_size)
    if per_rank_batches < settings.gradient_accumulation_steps:
        raise InputError(
            f"train split has {tables['train'].num_rows} rows: too few for micro_batch_size "
            f"{settings.micro_batch_size} × gradient_accumulation_steps {settings.gradient_accumulation_steps} "
            f"× {world_size} workers"
        )
    steps_per_epoch = per_rank_batches // settings.gradient_accumulation_steps
    deepspeed_config = build_deepspeed_config(
        settings, world_size, device, steps_per_epoch * settings.epochs, bf16_supported
    )
    preprocessing = Preprocessing.fit(tables["train"], features, schema.categorical, schema.label)

    with tempfile.TemporaryDirectory(prefix="kfp-mlops-train-") as tmp:
        work = Path(tmp)
        preprocessing.save(work)
        arrays = {}
        for name, table in tables.items():
            arrays[f"{name}_numeric"] = preprocessing.numeric_matrix(table)
            arrays[f"{name}_categorical"] = preprocessing.categorical_matrix(table)
            arrays[f"{name}_y"] = preprocessing.labels(table, name)
        np.savez(work / "arrays.npz", **arrays)
        spec = {
            "train": settings.model_dump(),
            "deepspeed": deepspeed_config,
            "arrays": str(work / "arrays.npz"),
            "preprocessing_dir": str(work),
            "checkpoint_every_steps": settings.checkpoint_every_steps,
            "output_dir": str(work / "output"),
        }
        if settings.nodes > 1:
            _run_as_trainjob(work, spec, checkpoint_dir, settings, cluster, log_path)
        else:
            local_checkpoints, checkpoint_uri = _checkpoint_location(checkpoint_dir, work)
            spec |= {"checkpoint_dir": str(local_checkpoints), "checkpoint_uri": checkpoint_uri}
            (work / "spec.json").write_text(json.dumps(spec))
            _launch_workers(work / "spec.json", world_size, log_path)
        metrics = json.loads((work / "output" / "metrics.json").read_text())
        Path(model_dir).parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".model-", dir=Path(model_dir).parent))
        try:
            diff, threshold = _export(preprocessing, settings, work / "output" / WEIGHTS_FILE, staging, arrays)
            model_config = {
                "features": preprocessing.features,
                "numeric": preprocessing.numeric,
                "categorical": preprocessing.categorical,
                "label": preprocessing.label,
                "classes": preprocessing.classes,
                "entity": schema.entity,
                "timestamp": schema.timestamp,
                "architecture": {
                    "hidden_layers": settings.hidden_layers,
                    "dropout": settings.dropout,
                    "embedding_dim": settings.embedding_dim,
                },
                "train": settings.model_dump(),
                "deepspeed": deepspeed_config,
                "onnx": {"file": ONNX_FILE, "inputs": ["numeric", "categorical"], "output": "probabilities"},
                "decision_threshold": threshold,
            }
            (staging / MODEL_CONFIG_FILE).write_text(json.dumps(model_config, indent=2))
            (staging / PIPELINE_CONFIG_FILE).write_text(config.to_yaml())  # the whole config this model came from
            preprocessing.save(staging)
            _replace_directory(staging, Path(model_dir))
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return TrainResult(metrics, deepspeed_config, diff)


def checkpoint_dir_for(run_id: str, pipeline_root: str, configured: str = "") -> str:
    """Where a run's checkpoints live: ``<configured or <pipeline root>/checkpoints>/<run id>/train``, the same for
    every retry of the task and never shared by two runs (a run must not resume another's model)."""
    base = configured or storage.parse(pipeline_root).child("checkpoints").uri
    return storage.parse(base).child(f"{run_id}/train").uri


def _checkpoint_location(checkpoint_dir: str, work: Path) -> tuple[Path, str]:
    """A local directory the workers write, plus the remote URI it mirrors (downloaded first, to resume)."""
    if not storage.is_remote(checkpoint_dir):
        local = Path(storage.parse(checkpoint_dir).key)
        local.mkdir(parents=True, exist_ok=True)
        return local, ""
    local = work / "checkpoints"
    local.mkdir()
    checkpoints.download_latest(checkpoint_dir, local)
    return local, checkpoint_dir


def _trainjob_devices(settings, cluster: ClusterContext) -> tuple[str, int, bool]:
    """TrainJob nodes: one worker per GPU (bf16 assumed: the GPU pools we target are Ampere or newer), else
    ``train.workers`` CPU processes per node."""
    if cluster.gpus_per_node > 0 and cluster.gpu_resource:
        return "cuda", settings.nodes * cluster.gpus_per_node, True
    return "cpu", settings.nodes * (settings.workers or 2), False


def pod_namespace(default: str = "default") -> str:
    path = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
    return path.read_text().strip() if path.exists() else default


def _run_as_trainjob(work: Path, spec: dict, checkpoint_uri: str, settings, cluster, log_path: str | None) -> None:
    """Stage the arrays, preprocessing and spec next to the checkpoints, run the TrainJob (torchrun on every node
    starts the same worker module), then fetch the result into ``work/output``."""
    from kfp_mlops.components.train.trainjob import TrainJobSpec, run_trainjob

    stage = storage.parse(checkpoint_uri.rstrip("/") + "-job")
    storage.upload_file(work / "arrays.npz", stage.child("arrays.npz").uri)
    storage.upload_file(work / "preprocessing.json", stage.child("preprocessing.json").uri)
    remote_spec = spec | {
        "arrays": stage.child("arrays.npz").uri,
        "preprocessing": stage.child("preprocessing.json").uri,
        "checkpoint_uri": checkpoint_uri,
        "output_uri": stage.child("output").uri,
    }
    storage.write_bytes(stage.child("spec.json").uri, json.dumps(remote_spec).encode())
    secret_env = (
        {key: (cluster.storage_secret, key) for key in storage.CREDENTIAL_SECRET_KEYS} if cluster.storage_secret else {}
    )
    processes = cluster.gpus_per_node if cluster.gpus_per_node > 0 else (settings.workers or 2)
    job = TrainJobSpec.for_kfp_task(
        run_id=cluster.run_id,
        task_name="train",
        namespace=settings.namespace or pod_namespace(),
        image=cluster.image,
        command=["torchrun", "-m", "kfp_mlops.components.train.worker", stage.child("spec.json").uri],
        num_nodes=settings.nodes,
        processes_per_node=processes,
        gpu_resource=cluster.gpu_resource if cluster.gpus_per_node > 0 else "",
        env={"PYTHONUNBUFFERED": "1"},
        secret_env=secret_env,
        node_selector=cluster.node_selector,
        tolerations=cluster.tolerations,
        runtime_ref=settings.runtime,
    )
    result = run_trainjob(job, api_client=cluster.api_client, poll_seconds=10 if cluster.api_client is None else 0.2)
    message = f"[train] TrainJob {result.namespace}/{result.name}: {result.state} after {result.seconds:.0f}s\n"
    sys.stdout.write(message)
    if log_path:
        with open(log_path, "a", encoding="utf-8") as log:
            log.write(message)
    storage.copy_tree(stage.child("output").uri, str(work / "output"))


def _launch_workers(spec_path: Path, world_size: int, log_path: str | None) -> None:
    """``torch.distributed.run`` with one process per worker; its output is streamed and kept in ``log_path``.
    SIGTERM (a cancelled or pre-empted KFP task) is passed on to the workers."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={world_size}",
        "-m",
        "kfp_mlops.components.train.worker",
        str(spec_path),
    ]  # fmt: skip  (--standalone: a local rendezvous on a port it picks itself)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "PYTHONUNBUFFERED": "1"}
    tail: list[str] = []
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace", env=env
    )
    previous = signal.signal(signal.SIGTERM, lambda *_: process.send_signal(signal.SIGTERM))
    try:
        with open(log_path or os.devnull, "a", encoding="utf-8") as log:
            for line in process.stdout:
                sys.stdout.write(line)
                log.write(line)
                tail = (tail + [line.rstrip()])[-40:]
        code = process.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)
        if process.poll() is None:  # interrupted while streaming: never leave workers behind
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
    if code != 0:
        raise TrainingError(f"training workers exited with {code}; last lines:\n" + "\n".join(tail))


def f1_optimal_threshold(positive_probability: np.ndarray, is_positive: np.ndarray) -> float:
    """The decision threshold with the best F1 on these rows (binary models; validation split, never test)."""
    order = np.argsort(-positive_probability, kind="stable")
    hits = np.cumsum(is_positive[order])
    predicted = np.arange(1, len(order) + 1)
    f1 = 2 * hits / (predicted + max(int(is_positive.sum()), 1))
    best = int(np.argmax(f1))
    return float(np.clip(positive_probability[order][best], 1e-6, 1 - 1e-6))


def _export(preprocessing: Preprocessing, settings, weights: Path, target: Path, arrays: dict) -> tuple[float, float]:
    """Save the weights and an ONNX export with a dynamic batch axis. Returns max |onnxruntime - torch| on
    validation rows (must stay below ONNX_TOLERANCE) and the F1-optimal decision threshold on the validation split
    (0.5 for more than two classes)."""
    import onnxruntime
    import torch

    from kfp_mlops.components.train.model import ProbabilityModel, TabularClassifier

    classifier = TabularClassifier(preprocessing, settings.hidden_layers, settings.dropout, settings.embedding_dim)
    classifier.load_state_dict(torch.load(weights, map_location="cpu"))
    model = ProbabilityModel(classifier).eval()
    shutil.copyfile(weights, target / WEIGHTS_FILE)
    numeric = torch.from_numpy(arrays["validation_numeric"][:512])
    categorical = torch.from_numpy(arrays["validation_categorical"][:512])
    torch.onnx.export(
        model,
        (numeric, categorical),
        str(target / ONNX_FILE),
        input_names=["numeric", "categorical"],
        output_names=["probabilities"],
        dynamic_axes={"numeric": {0: "batch"}, "categorical": {0: "batch"}, "probabilities": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    with torch.no_grad():
        expected = model(numeric, categorical).numpy()
    session = onnxruntime.InferenceSession(str(target / ONNX_FILE), providers=["CPUExecutionProvider"])
    feeds = {i.name: {"numeric": numeric, "categorical": categorical}[i.name].numpy() for i in session.get_inputs()}
    (actual,) = session.run(["probabilities"], feeds)
    diff = float(np.abs(actual - expected).max())
    if not np.isfinite(diff) or diff > ONNX_TOLERANCE:
        raise TrainingError(f"ONNX export differs from PyTorch by {diff:.2e} (> {ONNX_TOLERANCE}) on validation rows")
    if len(preprocessing.classes) != 2:
        return diff, 0.5
    with torch.no_grad():
        numeric = torch.from_numpy(arrays["validation_numeric"])
        probabilities = model(numeric, torch.from_numpy(arrays["validation_categorical"]))[:, 1].numpy()
    return diff, f1_optimal_threshold(probabilities, arrays["validation_y"] == 1)


def _replace_directory(staging: Path, target: Path) -> None:
    """Move a fully written directory into place (a retry replaces a previous attempt's output whole)."""
    if target.exists():
        shutil.rmtree(target)
    os.replace(staging, target)
