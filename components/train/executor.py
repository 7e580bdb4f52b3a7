"""Train executors: unpack the KFP artifacts (duck-typed), call ``core.prepare`` / ``core.train_prepared``, record
model metadata and metrics. Imports no KFP."""

from __future__ import annotations

import math
from typing import Any

from kfp_mlops.components.shared import layout, runs, tracking
from kfp_mlops.components.shared.artifacts import log_metrics, update_metadata
from kfp_mlops.components.shared.cluster import PodResources, check_training_pod, train_pod_resources
from kfp_mlops.components.shared.config import load_config
from kfp_mlops.components.shared.tracking import StepLog
from kfp_mlops.components.train import core


def prepare(
    config: str,
    train_data: Any,
    validation_data: Any,
    training_pod: dict[str, str],
    run_id: str,
    training_data: Any,
) -> PodResources:
    """Returns what the train-model pod asks for (``cluster.train_pod_resources``)."""
    pod = check_training_pod(**training_pod, node_selector={}, tolerations=[])
    pipeline_config = load_config(config)
    run_dir = runs.run_directory(training_data.uri, run_id)
    checkpoint_dir = runs.checkpoint_dir(run_dir, pipeline_config.train.checkpoint_dir, run_id)
    prepared = core.prepare(pipeline_config, train_data.path, validation_data.path, training_data.path,
                            pod.gpus, checkpoint_dir, train_data.metadata.get("task", ""))  # fmt: skip
    update_metadata(
        training_data,
        {
            "rows": prepared.rows,
            "features": prepared.preprocessing.features,
            "classes": prepared.preprocessing.classes,
            "task": prepared.preprocessing.task,
            "parameters": prepared.parameters,
            "content_hash": train_data.metadata.get("content_hash", ""),
        },
    )
    resources = train_pod_resources(pod, pipeline_config.train.nodes)
    role = "TrainJob launcher (no GPU)" if pipeline_config.train.nodes > 1 else "training pod"
    print(f"[prepare] train-model pod ({role}): {resources.gpus} x {pod.gpu_type}, cpu {resources.cpu}, "
          f"memory {resources.memory}")  # fmt: skip
    return resources


def run(
    config: str,
    training_data: Any,
    run_id: str,
    cluster: dict[str, Any],
    model: Any,
    metrics: Any,
    training_log: Any,
) -> None:
    pipeline_config = load_config(config)
    run_dir = runs.run_directory(model.uri, run_id)
    checkpoint_dir = runs.checkpoint_dir(run_dir, pipeline_config.train.checkpoint_dir, run_id)
    tracker = tracking.for_step(pipeline_config.tracking, run_id, run_dir, "train-model")
    context = core.ClusterContext(
        image=cluster["image"],
        run_id=run_id,
        gpus_per_node=int(cluster["gpus_per_node"]),
        gpu_resource=cluster["gpu_type"],
        cpu=cluster.get("cpu", ""),
        memory=cluster.get("memory", ""),
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
            "onnx_file": layout.ONNX_FILE,
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
    tracker.log_step(training_log_entry(result, summary))


def training_log_entry(result: core.TrainResult, summary: dict[str, float]) -> StepLog:
    """The effective settings (fitted batching, precision, ZeRO stage, workers) as params, the final figures as
    metrics and the per-epoch losses and samples/s as series (step = epoch)."""
    history = result.metrics.get("history", [])
    series = {
        key: [(int(entry["epoch"]), float(entry[key])) for entry in history
              if key in entry and math.isfinite(float(entry[key]))]
        for key in ("train_loss", "val_loss", "samples_per_second")
    }  # fmt: skip
    effective = {key: result.metrics[key] for key in ("precision", "zero_stage", "world_size", "device", "fast_path")
                 if key in result.metrics}  # fmt: skip
    batching = result.batching.as_dict() if result.batching else {}
    return StepLog(params={"effective": effective, "batching": batching}, metrics=summary,
                   series={key: points for key, points in series.items() if points})  # fmt: skip
