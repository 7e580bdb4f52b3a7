"""Launch the training workers: ``torch.distributed.run`` on this node, or a Kubeflow Trainer TrainJob whose data,
spec, checkpoints and output travel through object storage beside ``checkpoint_dir``. A failure a retry would repeat
is recorded beside the checkpoints, so that a retried task fails at once. No KFP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from kfp_mlops.components.shared import storage
from kfp_mlops.components.shared.cancellation import on_sigterm
from kfp_mlops.components.shared.cluster import pod_namespace
from kfp_mlops.components.shared.tabular import FILE_NAME as PREPROCESSING_FILE
from kfp_mlops.components.train import checkpoints
from kfp_mlops.components.train.devices import ClusterContext, trainjob_storage_error
from kfp_mlops.components.train.trainjob import TrainJobSpec, run_trainjob
from kfp_mlops.components.train.worker_spec import PREPARED_ARRAYS, WorkerSpec


class TrainingError(RuntimeError):
    """The worker processes failed; the message carries the end of their log."""


class DeterministicTrainingError(TrainingError):
    """A failure that a retry would repeat (training diverged, the export disagrees with PyTorch): recorded beside
    the checkpoints so that a retried attempt of the task fails at once instead of holding its GPUs again."""


def log(log_path: str | None, message: str) -> None:
    print(message, flush=True)
    if log_path:
        with open(log_path, "a", encoding="utf-8") as file:
            file.write(message + "\n")


def raise_recorded_failure(checkpoint_dir: str) -> None:
    """Fail at once when an earlier attempt recorded a failure a retry repeats."""
    marker = storage.parse(checkpoint_dir).child(checkpoints.FAILURE_MARKER).uri
    try:
        recorded = json.loads(storage.read_bytes(marker))
    except FileNotFoundError:
        return
    raise DeterministicTrainingError(
        f"an earlier attempt of this task failed in a way a retry repeats, so it is not retried: {recorded['error']}"
    )


def record_failure(checkpoint_dir: str, document: bytes) -> None:
    storage.write_bytes(storage.parse(checkpoint_dir).child(checkpoints.FAILURE_MARKER).uri, document)


def run_workers(
    spec: WorkerSpec,
    work: Path,
    checkpoint_dir: str,
    world_size: int,
    cluster: ClusterContext | None,
    log_path: str | None,
) -> None:
    """Run the workers on ``spec`` (local workers, or a TrainJob with ``train.nodes > 1``) until their output is in
    ``spec.output_dir``; a failure rank 0 recorded, or a ``latest`` naming no checkpoint tag, is recorded beside the
    checkpoints and raised as ``DeterministicTrainingError``."""
    trainjob = spec.train.nodes > 1
    try:
        checkpoints.read_tag(checkpoint_dir)  # workers check it again, each node reading the remote pointer
    except checkpoints.UnsafeCheckpointError as exc:
        record_failure(checkpoint_dir, json.dumps({"error": str(exc)}).encode())
        raise DeterministicTrainingError(str(exc)) from None
    try:
        if trainjob:
            _run_as_trainjob(work, spec, checkpoint_dir, cluster, log_path)
        else:
            local_checkpoints, checkpoint_uri = _checkpoint_location(checkpoint_dir, work)
            spec = spec.model_copy(update={"checkpoint_dir": str(local_checkpoints), "checkpoint_uri": checkpoint_uri})
            spec.write(work / "spec.json")
            _launch_workers(work / "spec.json", world_size, log_path)
    except (TrainingError, RuntimeError):
        failure = _worker_failure(work, checkpoint_dir, trainjob)
        if failure is None:
            raise
        record_failure(checkpoint_dir, failure)
        raise DeterministicTrainingError(json.loads(failure)["error"]) from None


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


def _run_as_trainjob(
    work: Path, spec: WorkerSpec, checkpoint_uri: str, cluster: ClusterContext | None, log_path: str | None
) -> None:
    """Stage the arrays, preprocessing and spec next to the checkpoints, run the TrainJob (torchrun on every node
    starts the same worker module), then fetch the result into ``work/output``."""
    if cluster is None:  # ``devices.choose_devices`` checked it already
        raise trainjob_storage_error(checkpoint_uri)
    settings = spec.train
    stage = _job_stage(checkpoint_uri)
    storage.upload_file(spec.arrays, stage.child(PREPARED_ARRAYS).uri)
    storage.upload_file(Path(spec.preprocessing_dir) / PREPROCESSING_FILE, stage.child(PREPROCESSING_FILE).uri)
    remote_spec = spec.model_copy(
        update={
            "arrays": stage.child(PREPARED_ARRAYS).uri,
            "preprocessing": stage.child(PREPROCESSING_FILE).uri,
            "checkpoint_uri": checkpoint_uri,
            "output_uri": stage.child("output").uri,
        }
    )
    storage.write_bytes(stage.child("spec.json").uri, remote_spec.model_dump_json().encode())
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
    log(log_path, f"[train] TrainJob {result.namespace}/{result.name}: {result.state} after {result.seconds:.0f}s")
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
