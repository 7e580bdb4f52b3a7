"""The DeepSpeed config, built from the pipeline's TrainConfig and checked before any worker starts."""

from __future__ import annotations

from typing import Any

from kfp_mlops.components.shared.config import TrainConfig
from kfp_mlops.components.shared.errors import ConfigError


def resolve_precision(requested: str, device: str, bf16_supported: bool = True) -> str:
    """``auto`` is bf16 on a GPU that supports it, fp16 on an older GPU, fp32 on CPU; half precision needs a GPU."""
    if device == "cpu":
        if requested in ("bf16", "fp16"):
            raise ConfigError(f"train.precision: {requested} needs a GPU and this node has none; use fp32 or auto")
        return "fp32"
    if requested == "auto":
        return "bf16" if bf16_supported else "fp16"
    if requested == "bf16" and not bf16_supported:
        raise ConfigError("train.precision: bf16 is not supported by this GPU; use fp16, fp32 or auto")
    return requested


def _scheduler(config: TrainConfig, total_steps: int) -> dict[str, Any]:
    lr = config.optimizer.lr
    # DeepSpeed wants at least one warm-up step; one step at the full rate is what warmup_steps 0 asks for
    warmup = max(1, min(config.scheduler.warmup_steps, max(total_steps - 1, 0)))
    kind = config.scheduler.type
    if kind == "WarmupLR":
        params = {"warmup_min_lr": 0.0, "warmup_max_lr": lr, "warmup_num_steps": warmup, "warmup_type": "linear"}
    elif kind == "WarmupDecayLR":
        params = {
            "warmup_min_lr": 0.0,
            "warmup_max_lr": lr,
            "warmup_num_steps": warmup,
            "total_num_steps": max(total_steps, warmup + 1),
            "warmup_type": "linear",
        }
    else:
        params = {
            "warmup_num_steps": warmup,
            "total_num_steps": max(total_steps, warmup + 1),
            "warmup_min_ratio": 0.0,
            "cos_min_ratio": 0.01,
        }
    return {"type": kind, "params": params}


def build_deepspeed_config(
    config: TrainConfig, world_size: int, device: str, total_steps: int, bf16_supported: bool = True
) -> dict[str, Any]:
    """A complete DeepSpeed config: batch sizes, optimizer, LR schedule, clipping, ZeRO stage and precision."""
    if world_size < 1:
        raise ConfigError(f"train.workers: need at least one worker process, got {world_size}")
    precision = resolve_precision(config.precision, device, bf16_supported)
    optimizer_params: dict[str, Any] = {"lr": config.optimizer.lr, "weight_decay": config.optimizer.weight_decay}
    if config.optimizer.type in ("Adam", "AdamW"):
        # PyTorch's Adam, not DeepSpeed's FusedAdam: that one is compiled with nvcc when first used, at pod start.
        # On a GPU, torch's fused kernel is as fast and ships prebuilt.
        optimizer_params["torch_adam"] = True
        if device == "cuda":
            optimizer_params["fused"] = True
    return {
        "train_micro_batch_size_per_gpu": config.micro_batch_size,
        "gradient_accumulation_steps": config.gradient_accumulation_steps,
        "train_batch_size": config.micro_batch_size * config.gradient_accumulation_steps * world_size,
        "gradient_clipping": config.gradient_clipping,
        "optimizer": {"type": config.optimizer.type, "params": optimizer_params},
        "scheduler": _scheduler(config, total_steps),
        "zero_optimization": {"stage": config.zero_stage},
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16", "auto_cast": False},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
