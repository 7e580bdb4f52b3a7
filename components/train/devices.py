"""What training runs on: the devices and worker processes (this node's GPUs or CPUs, or a TrainJob's nodes) and
the batching fitted to the data. No KFP, no torch import (GPUs are probed in a child process)."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

from kfp_mlops.components.shared import storage
from kfp_mlops.components.shared.config import TrainConfig
from kfp_mlops.components.shared.errors import ConfigError, InputError

MIN_STEPS_PER_EPOCH = 8  # the micro-batch shrinks for small data so an epoch still takes this many steps


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


@dataclass(frozen=True)
class Devices:
    """Where the workers run: ``world_size`` processes on ``device``, with the batching fitted to the data."""

    device: str  # cuda or cpu
    world_size: int
    bf16_supported: bool
    batching: Batching


def trainjob_storage_error(checkpoint_dir: str) -> ConfigError:
    return ConfigError(
        "train.nodes > 1 runs a TrainJob: it needs the cluster context and checkpoint_dir on object storage "
        f"(s3:// or gs://), got {checkpoint_dir!r}"
    )


def choose_devices(settings: TrainConfig, rows: int, checkpoint_dir: str, cluster: ClusterContext | None) -> Devices:
    """This node's GPUs (or CPU processes), or with ``train.nodes > 1`` a TrainJob's nodes (which need ``cluster``
    and checkpoints on object storage), and the batching fitted to ``rows`` training rows."""
    if settings.nodes > 1:
        if cluster is None or not storage.is_remote(checkpoint_dir):
            raise trainjob_storage_error(checkpoint_dir)
        device, world_size, bf16_supported = trainjob_devices(settings, cluster)
        batching = effective_batching(rows, settings, world_size // settings.nodes, settings.nodes)
    else:
        device, workers, bf16_supported = device_and_world_size(settings.workers)
        batching = effective_batching(rows, settings, workers)
        world_size = batching.workers
    return Devices(device, world_size, bf16_supported, batching)


_GPU_PROBE = "import torch; n = torch.cuda.device_count(); print(n, int(n > 0 and torch.cuda.is_bf16_supported()))"


def device_and_world_size(requested_workers: int) -> tuple[str, int, bool]:
    """(device, worker processes, bf16 supported): one process per GPU, else ``workers`` CPU processes (default 2).
    The GPUs are probed in a child process, so this launcher holds no CUDA context (memory) on GPU 0."""
    probe = subprocess.run([sys.executable, "-c", _GPU_PROBE], capture_output=True, text=True, check=True)
    gpus, bf16 = (int(value) for value in probe.stdout.split()[-2:])
    if gpus:
        return "cuda", min(requested_workers or gpus, gpus), bool(bf16)
    return "cpu", requested_workers or 2, False


def trainjob_devices(settings: TrainConfig, cluster: ClusterContext) -> tuple[str, int, bool]:
    """TrainJob nodes: one worker per GPU (bf16 assumed: the GPU pools we target are Ampere or newer), else
    ``train.workers`` CPU processes per node."""
    if cluster.gpus_per_node > 0 and cluster.gpu_resource:
        return "cuda", settings.nodes * cluster.gpus_per_node, True
    return "cpu", settings.nodes * (settings.workers or 2), False


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
