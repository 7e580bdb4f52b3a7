"""One DeepSpeed training process, started by ``torch.distributed.run`` (one per GPU, or N CPU processes with gloo).

``python -m kfp_mlops.components.train.worker SPEC.json`` on the step's own node, or ``torchrun -m
kfp_mlops.components.train.worker s3://…/spec.json`` on each node of a TrainJob. The spec (a ``WorkerSpec`` written
by ``core.train_prepared``) names the preprocessed arrays, the DeepSpeed config and the checkpoint directory. The
worker resumes from the latest checkpoint when one exists, checkpoints every K optimizer steps and at each epoch end,
stops early on validation loss, and (rank 0) writes the best weights and the training metrics.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import pickle
import re
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from kfp_mlops.components.shared import storage
from kfp_mlops.components.shared.tabular import FILE_NAME as PREPROCESSING_FILE
from kfp_mlops.components.shared.tabular import Preprocessing
from kfp_mlops.components.train import checkpoints
from kfp_mlops.components.train.model import build_model, training_loss
from kfp_mlops.components.train.worker_spec import PREPARED_ARRAYS, WorkerSpec

BEST_WEIGHTS = checkpoints.BEST_WEIGHTS


def _optimizer_state_bytes(engine) -> int:
    """Bytes of the optimizer's state tensors on this rank (Adam's moments: whole under ZeRO 0, this rank's share of
    them under ZeRO 1-3), found in the torch optimizer DeepSpeed wraps."""
    optimizer = engine.optimizer
    while not isinstance(optimizer, torch.optim.Optimizer) and hasattr(optimizer, "optimizer"):
        optimizer = optimizer.optimizer
    states = getattr(optimizer, "state", {}).values()
    return sum(t.numel() * t.element_size() for s in states for t in s.values() if isinstance(t, torch.Tensor))


def log(message: str) -> None:
    if dist.get_rank() == 0:
        print(f"[train] {message}", flush=True)


def _gathered_state_dict(engine) -> dict[str, torch.Tensor]:
    """Full fp32 weights on every rank (ZeRO-3 partitions parameters; stages 0-2 keep them whole)."""
    import deepspeed

    params = list(engine.module.parameters())
    with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
        return {name: tensor.detach().float().cpu().clone() for name, tensor in engine.module.state_dict().items()}


def _deepspeed_state_types() -> list[type]:
    """The non-tensor types DeepSpeed 0.19 pickles into its optimizer states (found with
    ``torch.serialization.get_unsafe_globals_in_checkpoint`` on ZeRO 0-3 checkpoints, fp32 and bf16): plain data
    classes and an enum, safe to rebuild."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def load_weights_only(path: str | os.PathLike[str], map_location: Any = None) -> Any:
    """``torch.load(weights_only=True)``: tensors, containers, numbers and the DeepSpeed state types only. A file
    holding anything else (a pickle that would run code) raises ``UnsafeCheckpointError`` naming it."""
    with torch.serialization.safe_globals(_deepspeed_state_types()):
        try:
            return torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as exc:
            found = re.search(r"WeightsUnpickler error: ([^.\n]*)", str(exc))
            reason = found.group(1) if found else str(exc).strip().splitlines()[0]
            raise checkpoints.UnsafeCheckpointError(
                f"checkpoint file {path} holds more than tensors and DeepSpeed's plain state, so loading it could run "
                f"code; refusing to load it (torch.load weights_only=True: {reason})"
            ) from None


def _load_checkpoints_weights_only(engine) -> None:
    """DeepSpeed's own engine loads with ``weights_only=False``; ours loads every file it reads weights-only."""
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    if type(engine.checkpoint_engine) is not TorchCheckpointEngine:
        raise RuntimeError(f"unexpected DeepSpeed checkpoint engine {type(engine.checkpoint_engine).__name__}")
    engine.checkpoint_engine.load = load_weights_only


def localise(spec_uri: str) -> WorkerSpec:
    """A TrainJob node reads its spec, arrays and preprocessing from object storage into a node-local directory
    (downloaded once per node) and resumes from the remote checkpoints if there are any."""
    spec = WorkerSpec.read(storage.read_bytes(spec_uri))
    node = os.environ.get("GROUP_RANK", "0")  # torchrun's node rank
    work = Path(tempfile.gettempdir()) / f"kfp-mlops-train-{hashlib.sha256(spec_uri.encode()).hexdigest()[:12]}-{node}"
    if int(os.environ.get("LOCAL_RANK", 0)) == 0:
        shutil.rmtree(work, ignore_errors=True)
        (work / "checkpoints").mkdir(parents=True)
        storage.download_file(spec.arrays, work / PREPARED_ARRAYS)
        storage.download_file(spec.preprocessing, work / PREPROCESSING_FILE)
        checkpoints.download_latest(spec.checkpoint_uri, work / "checkpoints")
    dist.barrier()
    return spec.model_copy(
        update={
            "arrays": str(work / PREPARED_ARRAYS),
            "preprocessing_dir": str(work),
            "checkpoint_dir": str(work / "checkpoints"),
            "output_dir": str(work / "output"),
        }
    )


class Trainer:
    def __init__(self, spec: WorkerSpec):
        import deepspeed

        self.spec = spec
        self.config = spec.train
        self.cuda = torch.cuda.is_available()
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.local_rank = int(os.environ.get("LOCAL_RANK", 0))
        self.device = torch.device(f"cuda:{self.local_rank}" if self.cuda else "cpu")
        torch.manual_seed(self.config.seed)
        preprocessing = Preprocessing.load(spec.preprocessing_dir)
        self.task = preprocessing.task
        model = build_model(self.config.model.entry_point, self.config.model.options, preprocessing)
        ds = spec.deepspeed
        # One process, ZeRO 0, fp32: nothing to all-reduce, so the engine's per-step collectives (the gradients'
        # all-reduce, the gradient norm's) are skipped and the gradients are clipped by torch's own clip_grad_norm_,
        # the same norm. For a small network they cost as much as the step itself (benchmarks/train.py).
        self.fast_path = (self.world == 1 and ds["zero_optimization"]["stage"] == 0
                          and not ds["bf16"]["enabled"] and not ds["fp16"]["enabled"])  # fmt: skip
        self.clip = ds["gradient_clipping"] if self.fast_path else 0.0
        config = {**ds, "gradient_clipping": 0.0} if self.fast_path else ds
        self.engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=config)
        if self.fast_path:
            self.engine.enable_backward_allreduce = False
        _load_checkpoints_weights_only(self.engine)
        self.dtype = torch.bfloat16 if ds["bf16"]["enabled"] else torch.float16 if ds["fp16"]["enabled"] else None
        arrays = np.load(spec.arrays)
        self.data = {key: torch.from_numpy(arrays[key]) for key in arrays.files}
        self.checkpoints = Path(spec.checkpoint_dir)
        self.micro = ds["train_micro_batch_size_per_gpu"]  # the batching fitted to the data by the launcher
        self.accumulation = ds["gradient_accumulation_steps"]
        accumulation = self.accumulation
        per_rank = len(self.data["train_y"]) // (self.micro * self.world)
        self.batches_per_epoch = per_rank - per_rank % accumulation
        self.remote_tags: list[str] = []  # checkpoints this process knows on object storage, oldest first
        self.state: dict[str, Any] = {
            "epoch": 0, "batch": 0, "best_val_loss": math.inf, "bad_epochs": 0, "history": [], "stopped_early": False,
        }  # fmt: skip

    def _inputs(self, prefix: str, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """fp32 numeric inputs even under bf16/fp16: the model standardises them before casting (raw values such
        as 80,000 overflow fp16 and lose their digits in bf16)."""
        return self.data[f"{prefix}_numeric"][index].to(self.device), self.data[f"{prefix}_categorical"][index].to(
            self.device
        )

    def _reseed(self, value: int) -> None:
        """Seed this step's dropout from (seed, step, rank), so a resumed run draws what the killed one would have.
        Seeds the device generator directly: torch.manual_seed also queues lazy CUDA calls, costly per step."""
        torch.default_generator.manual_seed(value)
        if self.cuda:
            torch.cuda.default_generators[self.device.index].manual_seed(value)

    def resume(self) -> int:
        if (tag := checkpoints.read_tag(str(self.checkpoints))) is None:
            return 0
        path, client_state = self.engine.load_checkpoint(str(self.checkpoints), tag=tag)
        if path is None:
            raise RuntimeError(f"checkpoint {tag} in {self.checkpoints} could not be loaded")
        self.remote_tags = [tag]
        self.state.update({key: client_state[key] for key in self.state if key in client_state})
        step = self.engine.global_steps
        log(f"resumed from checkpoint step {step} (epoch {self.state['epoch'] + 1}, batch {self.state['batch']})")
        return step

    def save(self, tag: str, best_changed: bool = False) -> None:
        """Checkpoint every rank's state; on object storage, every node's shards go up before rank 0 moves the
        ``latest`` pointer, and old checkpoints are pruned there as here (the two newest are kept)."""
        self.engine.save_checkpoint(str(self.checkpoints), tag=tag, client_state=dict(self.state))
        log(f"checkpoint {tag} (optimizer step {self.engine.global_steps})")
        dist.barrier()
        if remote := self.spec.checkpoint_uri:
            if self.local_rank == 0:
                checkpoints.upload_shards(self.checkpoints, remote, tag)
            dist.barrier()
            if self.rank == 0:
                checkpoints.upload_pointers(self.checkpoints, remote, best_changed)
                self.remote_tags = checkpoints.prune_remote(remote, [*self.remote_tags, tag])
        if self.rank == 0:
            tags = [p for p in self.checkpoints.iterdir() if p.is_dir() and p.name.startswith(("step", "epoch"))]
            for old in sorted(tags, key=lambda p: p.stat().st_mtime)[:-2]:  # keep the two newest
                if old.name != tag:
                    shutil.rmtree(old, ignore_errors=True)
        dist.barrier()

    def _mean_over_ranks(self, total: float, count: int) -> float:
        values = torch.tensor([total, float(count)], dtype=torch.float64, device=self.device)
        dist.all_reduce(values)
        return (values[0] / values[1]).item()

    def validation_loss(self) -> float:
        self.engine.eval()
        rows = torch.arange(self.rank, len(self.data["validation_y"]), self.world)
        total = 0.0
        with torch.no_grad():
            for start in range(0, len(rows), 4096):
                index = rows[start : start + 4096]
                output = self.engine(*self._inputs("validation", index))
                target = self.data["validation_y"][index].to(self.device)
                total += training_loss(output, target, self.task, reduction="sum").item()
        return self._mean_over_ranks(total, len(rows))

    def fit(self) -> dict[str, Any]:
        resumed_from = self.resume()
        every = self.config.checkpoint_every_steps
        accumulation = self.accumulation
        started, startup_seconds = self.spec.process_started, None
        seed, n_train = self.config.seed, len(self.data["train_y"])
        samples, seconds = 0, 0.0
        for epoch in range(self.state["epoch"], self.config.epochs):
            if self.state["bad_epochs"] >= self.config.early_stopping.patience:
                break  # resumed after the early-stopping decision
            order = torch.from_numpy(np.random.default_rng(seed + epoch).permutation(n_train))
            shard = order[: self.batches_per_epoch * self.micro * self.world][self.rank :: self.world]
            self.engine.train()
            loss_sum, loss_count = 0.0, 0
            start, epoch_samples = time.perf_counter(), samples
            for batch in range(self.state["batch"], self.batches_per_epoch):
                index = shard[batch * self.micro : (batch + 1) * self.micro]
                self._reseed(seed * 1_000_003 + (epoch * self.batches_per_epoch + batch) * self.world + self.rank)
                output = self.engine(*self._inputs("train", index))
                loss = training_loss(output, self.data["train_y"][index].to(self.device), self.task)
                self.engine.backward(loss)
                if self.clip and self.engine.is_gradient_accumulation_boundary():
                    torch.nn.utils.clip_grad_norm_(self.engine.module.parameters(), self.clip)
                self.engine.step()
                if startup_seconds is None and self.engine.global_steps > resumed_from:
                    startup_seconds = time.time() - started
                    log(f"start-up {startup_seconds:.1f}s (task process start to first optimizer step)")
                loss_sum, loss_count = loss_sum + loss.item(), loss_count + 1
                self.state["batch"] = batch + 1
                samples += self.micro * self.world
                last_batch = batch + 1 == self.batches_per_epoch  # the epoch checkpoint follows at once
                if (batch + 1) % accumulation == 0 and self.engine.global_steps % every == 0 and not last_batch:
                    self.save(f"step{self.engine.global_steps}")
            epoch_seconds = time.perf_counter() - start
            seconds += epoch_seconds
            train_loss = self._mean_over_ranks(loss_sum, loss_count) if loss_count else float("nan")
            val_loss = self.validation_loss()
            if not math.isfinite(val_loss):
                raise FloatingPointError(f"validation loss is {val_loss} after epoch {epoch + 1}: training diverged")
            improved = val_loss < self.state["best_val_loss"] - self.config.early_stopping.min_delta
            self.state.update(epoch=epoch + 1, batch=0)
            throughput = (samples - epoch_samples) / max(epoch_seconds, 1e-9)
            self.state["history"].append(
                {"epoch": epoch + 1, "train_loss": train_loss, "val_loss": val_loss, "samples_per_second": throughput}
            )
            if improved:
                self.state.update(best_val_loss=val_loss, bad_epochs=0)
                weights = _gathered_state_dict(self.engine)
                if self.rank == 0:
                    torch.save(weights, self.checkpoints / BEST_WEIGHTS)
            else:
                self.state["bad_epochs"] += 1
            log(
                f"epoch {epoch + 1}/{self.config.epochs} train_loss={train_loss:.4f} val_loss={val_loss:.4f} "
                f"step={self.engine.global_steps} samples/s={samples / max(seconds, 1e-9):,.0f}"
            )
            stop = self.state["bad_epochs"] >= self.config.early_stopping.patience
            self.state["stopped_early"] = stop and epoch + 1 < self.config.epochs
            self.save(f"epoch{epoch + 1}", best_changed=improved)
            if stop:
                log(f"early stopping: no validation improvement for {self.state['bad_epochs']} epoch(s)")
                break
        history = self.state["history"]
        return {
            "epochs": len(history),
            "global_steps": self.engine.global_steps,
            "final_train_loss": history[-1]["train_loss"] if history else float("nan"),
            "final_val_loss": history[-1]["val_loss"] if history else float("nan"),
            "best_val_loss": self.state["best_val_loss"],
            "samples_per_second": samples / seconds if seconds else 0.0,
            "startup_seconds": startup_seconds if startup_seconds is not None else float("nan"),
            "world_size": self.world,
            "resumed_from_step": resumed_from,
            "stopped_early": self.state["stopped_early"],
            "history": history,
            "precision": "bf16" if self.dtype == torch.bfloat16 else "fp16" if self.dtype == torch.float16 else "fp32",
            "zero_stage": self.spec.deepspeed["zero_optimization"]["stage"],
            "fast_path": self.fast_path,
            "device": self.device.type,
            "peak_gpu_memory_bytes": torch.cuda.max_memory_allocated(self.device) if self.cuda else 0,
            "parameters": sum(
                p.ds_numel if hasattr(p, "ds_numel") else p.numel() for p in self.engine.module.parameters()
            ),
            "optimizer_state_bytes": _optimizer_state_bytes(self.engine),  # this rank's: ZeRO 1-3 partition it
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,  # this process's (rank 0)
        }


def main(spec_path: str) -> None:
    """Run one worker. ``spec_path`` is a local file (single node) or an object-storage URI (TrainJob nodes)."""
    import deepspeed

    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo")
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    remote = storage.is_remote(spec_path)
    spec = localise(spec_path) if remote else WorkerSpec.read(Path(spec_path).read_bytes())
    trainer = Trainer(spec)
    try:
        result = trainer.fit()
    except (FloatingPointError, checkpoints.UnsafeCheckpointError) as exc:  # a retry would repeat it
        if dist.get_rank() == 0:
            output = Path(spec.output_dir)
            output.mkdir(parents=True, exist_ok=True)
            (output / checkpoints.FAILURE_MARKER).write_text(json.dumps({"error": str(exc)}))
            if remote:
                storage.copy_tree(str(output), spec.output_uri)
        raise
    # Decided from all-reduced state, the same on every rank: a ZeRO-3 gather is collective, all ranks or none.
    have_best = math.isfinite(trainer.state["best_val_loss"])
    final = None if have_best else _gathered_state_dict(trainer.engine)
    if dist.get_rank() == 0:
        output = Path(spec.output_dir)
        output.mkdir(parents=True, exist_ok=True)
        weights = load_weights_only(trainer.checkpoints / BEST_WEIGHTS, map_location="cpu") if have_best else final
        torch.save(weights, output / "weights.pt")
        (output / "metrics.json").write_text(json.dumps(result, indent=2))
        if remote:
            storage.copy_tree(str(output), spec.output_uri)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
