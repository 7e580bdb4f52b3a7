"""Train executors: unpack the KFP artifacts (duck-typed), call ``core.prepare`` / ``core.train_prepared``, record
model metadata and metrics. Imports no KFP."""

from __future__ import annotations

import math
from typing import Any

from kfp_mlops.components.shared import runs
from kfp_mlops.components.shared.artifacts import log_metrics, update_metadata
from kfp_mlops.components.shared.config import load_config
from kfp_mlops.components.train import core


def prepare(
    config: str,
    train_data: Any,
    validation_data: Any,
    gpus_per_node: int,
    pipeline_root: str,
    run_id: str,
    training_data: Any,
) -> None:
    pipeline_config = load_config(config)
    checkpoint_dir = runs.checkpoint_dir(run_id, pipeline_root, pipeline_config.train.checkpoint_dir)
    prepared = core.prepare(pipeline_config, train_data.path, validation_data.path, training_data.path,
                            int(gpus_per_node), checkpoint_dir)  # fmt: skip
    update_metadata(
        training_data,
        {
            "rows": prepared.rows,
            "features": prepared.preprocessing.features,
            "classes": prepared.preprocessing.classes,
            "content_hash": train_data.metadata.get("content_hash", ""),
        },
    )


def run(
    config: str,
    training_data: Any,
    pipeline_root: str,
    run_id: str,
    cluster: dict[str, Any],
    model: Any,
    metrics: Any,
    training_log: Any,
) -> None:
    pipeline_config = load_config(config)
    checkpoint_dir = runs.checkpoint_dir(run_id, pipeline_root, pipeline_config.train.checkpoint_dir)
    context = core.ClusterContext(
        image=cluster["image"],
        run_id=run_id,
        gpus_per_node=int(cluster["gpus_per_node"]),
        gpu_resource=cluster["gpu_type"],
        node_selector=dict(cluster["node_selector"] or {}),
        tolerations=list(cluster["tolerations"] or []),
        storage_secret=cluster["storage_secret"],
    )
    result = core.train_prepared(
        pipeline_config, training_data.path, model.path, checkpoint_dir, training_log.path, context
    )
    summary = {  # finite numbers only: the cluster's launcher reads executor output as strict JSON (no NaN/Infinity)
        k: v
        for k, v in result.metrics.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    }
    log_metrics(metrics, summary)
    update_metadata(
        model,
        {
            "framework": "pytorch+deepspeed",
            "format": "onnx",
            "onnx_file": "model.onnx",
            "onnx_max_abs_diff": result.onnx_max_abs_diff,
            "content_hash": training_data.metadata.get("content_hash", ""),
            "checkpoint_dir": checkpoint_dir,
            "stopped_early": result.metrics["stopped_early"],
            "precision": result.metrics["precision"],
            "zero_stage": result.metrics["zero_stage"],
            "world_size": result.metrics["world_size"],
            "batching": result.batching.as_dict() if result.batching else {},
        },
    )
