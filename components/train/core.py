"""Train in two parts. ``prepare`` (a CPU task) checks the inputs and settings, fits preprocessing on the training
split and writes the arrays; ``train_prepared`` (the accelerator task) fits the batching to the data, launches the
DeepSpeed workers, then exports the best weights as the serving graph (raw features in) and checks it against
PyTorch on raw validation rows. Paths and values only; no KFP.

The workers are started with ``torch.distributed.run``: one per GPU on the node, or ``train.workers`` CPU
processes with gloo. Checkpoints go to ``checkpoint_dir`` (a path, or an s3:// / gs:// URI synced both ways), so a
retried task resumes from the latest one instead of starting over; a failure a retry would repeat is recorded there
so that the retry fails at once.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from kfp_mlops.components.shared import serving_graph, storage
from kfp_mlops.components.shared.cancellation import on_sigterm
from kfp_mlops.components.shared.cluster import pod_namespace
from kfp_mlops.components.shared.config import PipelineConfig, TrainConfig
from kfp_mlops.components.shared.errors import ConfigError, InputError
from kfp_mlops.components.shared.model_package import (
    ONNX_FILE,
    PIPELINE_CONFIG_FILE,
    PROBABILITIES_OUTPUT,
    WEIGHTS_FILE,
    ModelConfig,
    raw_inputs,
    write_model_config,
)
from kfp_mlops.components.shared.splits import feature_columns, read_split
from kfp_mlops.components.shared.tabular import FILE_NAME as PREPROCESSING_FILE
from kfp_mlops.components.shared.tabular import Preprocessing
from kfp_mlops.components.train import checkpoints
from kfp_mlops.components.train.deepspeed_config import build_deepspeed_config, resolve_precision

PREPARED_ARRAYS = "arrays.npz"
PREPARED_SUMMARY = "prepared.json"
VALIDATION_SAMPLE = "validation_sample.parquet"  # raw rows: the serving graph is checked against PyTorch on them
ONNX_TOLERANCE = 1e-4
MIN_STEPS_PER_EPOCH = 8  # the micro-batch shrinks for small data so an epoch still takes this many steps
_SAMPLE_ROWS = 512


class TrainingError(RuntimeError):
    """The worker processes failed; the message carries the end of their log."""


class DeterministicTrainingError(TrainingError):
    """A failure that a retry would repeat (training diverged, the export disagrees with PyTorch): recorded beside
    the checkpoints so that a retried attempt of the task fails at once instead of holding its GPUs again."""


@dataclass(frozen=True)
class ClusterContext:
    """What a multi-node TrainJob needs from the pipeline: its image, run, GPUs and scheduling, and the Secret
    with object-storage credentials (referenced, never copied). ``api_client`` is for tests; None: in-cluster."""

    image: str
    run_id: str
    gpus_per_node: int = 1
    gpu_resource: str = "nvidia.com/gpu"
    cpu: str = ""  # per TrainJob node (Kubernetes quantities); empty: the runtime's default
    memory: str = ""
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)
    storage_secret: str = ""
    api_client: Any = None


@dataclass(frozen=True)
class Batching:
    """The batch settings training runs with: the configured ones, shrunk to fit small data."""

    micro_batch_size: int
    gradient_accumulation_steps: int
    workers: int
    steps_per_epoch: int
    adjustments: tuple[str, ...] = ()  # what was shrunk and why, for the log and the model card

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"adjustments": list(self.adjustments)}


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

    @classmethod
    def load(cls, directory: str | Path) -> Prepared:
        directory = Path(directory)
        summary = json.loads((directory / PREPARED_SUMMARY).read_text())
        return cls(directory, Preprocessing.load(directory), summary["rows"])


def check_training_inputs(tables: dict[str, pa.Table], features: list[str], categorical: list[str], label: str) -> None:
    """Fail before any worker starts: missing columns, one-class labels, infinite features. Missing values (null,
    NaN) are imputed (schema.missing_values: impute; ingest already rejected them under ``error``)."""
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


def effective_batching(rows: int, settings: TrainConfig, workers: int, nodes: int = 1) -> Batching:
    """Fit the configured batching to ``rows`` training rows: every rank gets at least one micro-batch (gradient
    accumulation shrinks first, then the local workers; a TrainJob's node count is kept), and the micro-batch
    shrinks (never grows) so an epoch keeps ``MIN_STEPS_PER_EPOCH`` optimizer steps where the data allows."""
    adjustments = []
    accumulation = settings.gradient_accumulation_steps
    if rows < workers * nodes * accumulation:
        fitted = max(1, rows // (workers * nodes))
        adjustments.append(f"gradient_accumulation_steps {accumulation} -> {fitted} ({rows} training rows)")
        accumulation = fitted
    if rows < workers * nodes and nodes == 1:
        adjustments.append(f"workers {workers} -> {rows} ({rows} training rows)")
        workers = rows
    world = workers * nodes
    if rows < world * accumulation:
        raise InputError(f"train split has {rows} rows: too few for {world} worker processes")
    micro = min(settings.micro_batch_size, max(1, rows // (world * accumulation * MIN_STEPS_PER_EPOCH)))
    if micro < settings.micro_batch_size:
        adjustments.append(
            f"micro_batch_size {settings.micro_batch_size} -> {micro} ({rows} training rows, {world} worker(s), "
            f"at least {MIN_STEPS_PER_EPOCH} steps per epoch)"
        )
    steps = rows // (micro * world) // accumulation
    return Batching(micro, accumulation, workers, steps, tuple(adjustments))


def prepare(
    config: PipelineConfig,
    train_path: str,
    validation_path: str,
    output_dir: str,
    gpus_per_node: int | None = None,
    checkpoint_dir: str = "",
) -> Prepared:
    """Check the training inputs and settings, fit preprocessing on the train split and write the arrays the
    workers train on. Cheap and CPU-only: every deterministic input or config error surfaces here, before a GPU
    is held. ``gpus_per_node`` (when known) checks the precision against the device."""
    schema, settings = config.schema_, config.train
    tables = {"train": read_split(train_path, "train"), "validation": read_split(validation_path, "validation")}
    features = feature_columns(schema.features, tables["train"].column_names, schema.entity, schema.timestamp,
                               schema.label)  # fmt: skip
    check_training_inputs(tables, features, schema.categorical, schema.label)
    if gpus_per_node == 0:
        resolve_precision(settings.precision, "cpu")
    if settings.nodes > 1 and checkpoint_dir and not storage.is_remote(checkpoint_dir):
        raise ConfigError(
            "train.nodes > 1 runs a TrainJob: it needs the cluster context and checkpoint_dir on object storage "
            f"(s3:// or gs://), got {checkpoint_dir!r}"
        )
    preprocessing = Preprocessing.fit(tables["train"], features, schema.categorical, schema.label)
    arrays = {}
    for name, table in tables.items():
        arrays[f"{name}_numeric"] = preprocessing.numeric_matrix(table)
        arrays[f"{name}_categorical"] = preprocessing.categorical_matrix(table)
        arrays[f"{name}_y"] = preprocessing.labels(table, f"{name} split")
    target = Path(output_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".prepared-", dir=target.parent))
    try:
        np.savez(staging / PREPARED_ARRAYS, **arrays)
        preprocessing.save(staging)
        pq.write_table(tables["validation"].slice(0, _SAMPLE_ROWS), staging / VALIDATION_SAMPLE)
        rows = {name: table.num_rows for name, table in tables.items()}
        (staging / PREPARED_SUMMARY).write_text(json.dumps({"rows": rows, "features": features}))
        _replace_directory(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return Prepared(target, preprocessing, rows)


def train(
    config: PipelineConfig,
    train_path: str,
    validation_path: str,
    model_dir: str,
    checkpoint_dir: str,
    log_path: str | None = None,
    cluster: ClusterContext | None = None,
) -> TrainResult:
    """``prepare`` then ``train_prepared``, in one call (local runs, tests and benchmarks)."""
    with tempfile.TemporaryDirectory(prefix="kfp-mlops-prepared-") as prepared:
        gpus = None if cluster is None else cluster.gpus_per_node
        prepare(config, train_path, validation_path, prepared, gpus, checkpoint_dir if cluster else "")
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
    _raise_recorded_failure(checkpoint_dir)
    settings = config.train
    prepared = Prepared.load(prepared_dir)
    if settings.nodes > 1:
        if cluster is None or not storage.is_remote(checkpoint_dir):
            raise ConfigError(
                "train.nodes > 1 runs a TrainJob: it needs the cluster context and checkpoint_dir on object storage "
                f"(s3:// or gs://), got {checkpoint_dir!r}"
            )
        device, world_size, bf16_supported = _trainjob_devices(settings, cluster)
        batching = effective_batching(prepared.rows["train"], settings, world_size // settings.nodes, settings.nodes)
    else:
        device, workers, bf16_supported = device_and_world_size(settings.workers)
        batching = effective_batching(prepared.rows["train"], settings, workers)
        world_size = batching.workers
    _log(log_path, f"[train] {prepared.rows['train']:,} training rows, {world_size} worker(s) on {device}: "
                   f"micro_batch_size {batching.micro_batch_size}, gradient_accumulation_steps "
                   f"{batching.gradient_accumulation_steps}, {batching.steps_per_epoch} steps per epoch")  # fmt: skip
    for adjustment in batching.adjustments:
        _log(log_path, f"[train] adjusted to the data: {adjustment}")
    deepspeed_config = build_deepspeed_config(
        settings.model_copy(update={"micro_batch_size": batching.micro_batch_size,
                                    "gradient_accumulation_steps": batching.gradient_accumulation_steps}),
        world_size, device, batching.steps_per_epoch * settings.epochs, bf16_supported,
    )  # fmt: skip
    preprocessing = prepared.preprocessing
    with tempfile.TemporaryDirectory(prefix="kfp-mlops-train-") as tmp:
        work = Path(tmp)
        spec = {
            "train": settings.model_dump(),
            "deepspeed": deepspeed_config,
            "arrays": str(Path(prepared_dir) / PREPARED_ARRAYS),
            "preprocessing_dir": str(prepared_dir),
            "checkpoint_every_steps": settings.checkpoint_every_steps,
            "output_dir": str(work / "output"),
            "process_started": started,
        }
        try:
            if settings.nodes > 1:
                _run_as_trainjob(work, spec, checkpoint_dir, settings, cluster, log_path)
            else:
                local_checkpoints, checkpoint_uri = _checkpoint_location(checkpoint_dir, work)
                spec |= {"checkpoint_dir": str(local_checkpoints), "checkpoint_uri": checkpoint_uri}
                (work / "spec.json").write_text(json.dumps(spec))
                _launch_workers(work / "spec.json", world_size, log_path)
        except (TrainingError, RuntimeError):
            failure = _worker_failure(work, checkpoint_dir, settings.nodes > 1)
            if failure is None:
                raise
            _record_failure(checkpoint_dir, failure)
            raise DeterministicTrainingError(json.loads(failure)["error"]) from None
        metrics = json.loads((work / "output" / "metrics.json").read_text())
        arrays = dict(np.load(Path(prepared_dir) / PREPARED_ARRAYS))
        sample = pq.read_table(Path(prepared_dir) / VALIDATION_SAMPLE)
        Path(model_dir).parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".model-", dir=Path(model_dir).parent))
        try:
            try:
                diff, threshold = _export(preprocessing, settings, work / "output" / WEIGHTS_FILE, staging, arrays,
                                          sample)  # fmt: skip
            except DeterministicTrainingError as exc:
                _record_failure(checkpoint_dir, json.dumps({"error": str(exc)}).encode())
                raise
            schema = config.schema_
            model_config = ModelConfig(
                features=preprocessing.features,
                numeric=preprocessing.numeric,
                categorical=preprocessing.categorical,
                label=preprocessing.label,
                classes=preprocessing.classes,
                entity=schema.entity,
                timestamp=schema.timestamp,
                decision_threshold=threshold,
                missing_values=schema.missing_values,
                architecture={
                    "hidden_layers": settings.hidden_layers,
                    "dropout": settings.dropout,
                    "embedding_dim": settings.embedding_dim,
                },  # fmt: skip
                train=settings.model_dump(),
                batching=batching.as_dict(),
                deepspeed=deepspeed_config,
                data={"rows": prepared.rows},
            )
            write_model_config(staging, model_config)
            (staging / PIPELINE_CONFIG_FILE).write_text(config.to_yaml())  # the whole config this model came from
            preprocessing.save(staging)
            _replace_directory(staging, Path(model_dir))
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return TrainResult(metrics, deepspeed_config, diff, batching)


def _process_start() -> float:
    """When this process started (the KFP task's executor): start-up time is measured from it."""
    import psutil

    return psutil.Process(os.getpid()).create_time()


def _log(log_path: str | None, message: str) -> None:
    print(message, flush=True)
    if log_path:
        with open(log_path, "a", encoding="utf-8") as log:
            log.write(message + "\n")


def _worker_failure(work: Path, checkpoint_dir: str, trainjob: bool) -> bytes | None:
    """The deterministic failure rank 0 recorded before the workers exited, if any."""
    try:
        if trainjob:
            return storage.read_bytes(_job_stage(checkpoint_dir).child("output").child(checkpoints.FAILURE_MARKER).uri)
        return (work / "output" / checkpoints.FAILURE_MARKER).read_bytes()
    except FileNotFoundError:
        return None


def _job_stage(checkpoint_uri: str) -> storage.Location:
    """Where a TrainJob's spec, arrays and output travel: beside its checkpoints."""
    return storage.parse(checkpoint_uri.rstrip("/") + "-job")


def _raise_recorded_failure(checkpoint_dir: str) -> None:
    marker = storage.parse(checkpoint_dir).child(checkpoints.FAILURE_MARKER).uri
    try:
        recorded = json.loads(storage.read_bytes(marker))
    except FileNotFoundError:
        return
    raise DeterministicTrainingError(
        f"an earlier attempt of this task failed in a way a retry repeats, so it is not retried: {recorded['error']}"
    )


def _record_failure(checkpoint_dir: str, document: bytes) -> None:
    storage.write_bytes(storage.parse(checkpoint_dir).child(checkpoints.FAILURE_MARKER).uri, document)


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


def _run_as_trainjob(work: Path, spec: dict, checkpoint_uri: str, settings, cluster, log_path: str | None) -> None:
    """Stage the arrays, preprocessing and spec next to the checkpoints, run the TrainJob (torchrun on every node
    starts the same worker module), then fetch the result into ``work/output``."""
    from kfp_mlops.components.train.trainjob import TrainJobSpec, run_trainjob

    stage = _job_stage(checkpoint_uri)
    storage.upload_file(spec["arrays"], stage.child(PREPARED_ARRAYS).uri)
    storage.upload_file(Path(spec["preprocessing_dir"]) / PREPROCESSING_FILE, stage.child(PREPROCESSING_FILE).uri)
    remote_spec = spec | {
        "arrays": stage.child(PREPARED_ARRAYS).uri,
        "preprocessing": stage.child(PREPROCESSING_FILE).uri,
        "checkpoint_uri": checkpoint_uri,
        "output_uri": stage.child("output").uri,
    }
    storage.write_bytes(stage.child("spec.json").uri, json.dumps(remote_spec).encode())
    secret_env = storage.credential_secret_env(cluster.storage_secret)
    processes = cluster.gpus_per_node if cluster.gpus_per_node > 0 else (settings.workers or 2)
    job = TrainJobSpec.for_kfp_task(
        run_id=cluster.run_id,
        task_name="train",
        namespace=settings.namespace or pod_namespace("default"),
        image=cluster.image,
        command=["torchrun", "-m", "kfp_mlops.components.train.worker", stage.child("spec.json").uri],
        num_nodes=settings.nodes,
        processes_per_node=processes,
        gpu_resource=cluster.gpu_resource if cluster.gpus_per_node > 0 else "",
        cpu=cluster.cpu,
        memory=cluster.memory,
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
    # Nothing is compiled at start (DeepSpeed's CPU op is prebuilt, the optimizer is torch's), but should an op be
    # built, it goes to a writable place, not $HOME (read-only under arbitrary UIDs)
    env.setdefault("TORCH_EXTENSIONS_DIR", str(Path(tempfile.gettempdir()) / "torch_extensions"))
    tail: list[str] = []
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace", env=env
    )
    try:
        with on_sigterm(process.send_signal, "stop the training workers"):
            with open(log_path or os.devnull, "a", encoding="utf-8") as log:
                for line in process.stdout:
                    sys.stdout.write(line)
                    log.write(line)
                    tail = (tail + [line.rstrip()])[-40:]
            code = process.wait()
    finally:
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


def _export(
    preprocessing: Preprocessing, settings, weights: Path, target: Path, arrays: dict, sample: pa.Table
) -> tuple[float, float]:
    """Write the weights and the serving graph (``serving_graph.compose`` around the exported network), then
    check train/serve consistency: the serving graph on raw validation rows must match PyTorch on the same rows
    preprocessed for training (max abs diff below ONNX_TOLERANCE). Returns that difference and the F1-optimal
    decision threshold on the validation split (0.5 for more than two classes)."""
    import onnx
    import onnxruntime
    import torch

    from kfp_mlops.components.train.model import ProbabilityModel, TabularClassifier

    classifier = TabularClassifier(preprocessing, settings.hidden_layers, settings.dropout, settings.embedding_dim)
    classifier.load_state_dict(torch.load(weights, map_location="cpu"))
    model = ProbabilityModel(classifier).eval()
    shutil.copyfile(weights, target / WEIGHTS_FILE)
    numeric = torch.from_numpy(preprocessing.numeric_matrix(sample))
    categorical = torch.from_numpy(preprocessing.categorical_matrix(sample))
    core_path = target / "core.onnx"
    torch.onnx.export(
        model,
        (numeric, categorical),
        str(core_path),
        input_names=["numeric", "categorical"],
        output_names=[PROBABILITIES_OUTPUT],
        dynamic_axes={"numeric": {0: "batch"}, "categorical": {0: "batch"}, PROBABILITIES_OUTPUT: {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
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
    (actual,) = session.run(
        [PROBABILITIES_OUTPUT], raw_inputs(sample, preprocessing.numeric, preprocessing.categorical)
    )
    diff = float(np.abs(actual - expected).max())
    if not np.isfinite(diff) or diff > ONNX_TOLERANCE:
        raise DeterministicTrainingError(
            f"the serving graph differs from PyTorch by {diff:.2e} (> {ONNX_TOLERANCE}) on raw validation rows"
        )
    return diff, threshold


def _replace_directory(staging: Path, target: Path) -> None:
    """Move a fully written directory into place (a retry replaces a previous attempt's output whole)."""
    if target.exists():
        shutil.rmtree(target)
    os.replace(staging, target)
