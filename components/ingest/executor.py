"""Ingest executor: unpacks the KFP artifacts (duck-typed: ``.path``, ``.metadata``, ``.log_metric``), calls
``core.ingest`` and records its result. Imports no KFP, so the component body stays a single call."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

from kfp_mlops.components.ingest.core import IngestResult, ingest, render_summary
from kfp_mlops.components.shared import observability, runs, storage, tracking
from kfp_mlops.components.shared.artifacts import dataset_metadata, log_metrics, update_metadata, write_text_atomically
from kfp_mlops.components.shared.cluster import check_training_pod
from kfp_mlops.components.shared.config import PipelineConfig, load_config
from kfp_mlops.components.shared.splits import SplitPaths
from kfp_mlops.components.shared.tracking import StepLog, Tracker


def run(
    config: str,
    data_source: str,
    run_id: str,
    training_pod: dict[str, Any],
    train: Any,
    validation: Any,
    test: Any,
    metrics: Any,
    summary: Any,
) -> str:
    """Returns the config resolved once (URI read, data_source applied) as YAML: every later step of the run
    takes this text, so an edit to the config file mid-run or before a retry cannot mix two configs.
    First, the training pod's parameters must be valid and the object storage that training checkpoints to must
    accept writes: a wrong parameter or a missing Secret fails here, before any GPU is asked for."""
    started = time.monotonic()
    check_training_pod(**training_pod)
    pipeline_config = load_config(config, data_source=data_source)
    run_dir = runs.run_directory(train.uri, run_id)
    tracker = tracking.for_step(pipeline_config.tracking, run_id, run_dir, "ingest")
    storage.check_access(runs.checkpoint_dir(run_dir, pipeline_config.train.checkpoint_dir, run_id))
    result = ingest(pipeline_config, SplitPaths(train.path, validation.path, test.path))
    print(f"[ingest] task: {result.task} ({result.task_reason})")
    for warning in result.warnings:  # before any training: the console shows a step's [ingest] lines
        print(f"[ingest] warning: {warning}")
    publish(result, pipeline_config, {"train": train, "validation": validation, "test": test}, metrics, summary)
    track(tracker, result, pipeline_config, summary.path)
    figures = {observability.STEP_ROWS: sum(result.rows.values())}
    observability.push_step(pipeline_config, run_dir, run_id, "ingest", started, figures)
    return pipeline_config.to_yaml()


def track(tracker: Tracker, result: IngestResult, config: PipelineConfig, summary_path: str) -> None:
    """The resolved config as params; rows, the data's content hash and statistics on the step's MLflow run; the
    hash and the source on the pipeline's."""
    if not tracker.enabled:
        return
    data = {"data.source": config.data.source, "data.content_hash": result.content_hash, "task": result.task}
    with tempfile.TemporaryDirectory(prefix="kfp-mlops-ingest-") as folder:
        statistics = Path(folder) / "statistics.json"
        statistics.write_text(json.dumps(result.statistics, indent=2, default=str))
        tracker.log_step(
            StepLog(
                params=config.model_dump(by_alias=True, exclude_none=True),
                metrics={"rows_read": result.rows_read, "duplicates_dropped": result.duplicates_dropped,
                         "missing_values": sum(result.missing.values()),
                         **{f"rows_{name}": rows for name, rows in result.rows.items()}},
                tags=data,
                artifacts={str(statistics): "", summary_path: ""},
            )
        )  # fmt: skip
    tracker.tag_pipeline(data)


def publish(result: IngestResult, config: PipelineConfig, datasets: dict[str, Any], metrics: Any, summary: Any) -> None:
    """Dataset metadata (rows, hash, column roles, the resolved task that training reads, statistics), Metrics, and
    the Markdown summary."""
    schema = config.schema_
    for name, artifact in datasets.items():
        metadata = dataset_metadata(schema, result.rows[name], result.features, result.categorical, result.content_hash)
        update_metadata(artifact, metadata | {"task": result.task, "statistics": result.statistics[name]})
    log_metrics(
        metrics,
        {
            "rows_read": result.rows_read,
            "duplicates_dropped": result.duplicates_dropped,
            "conflicting_labels_dropped": result.conflicting_labels_dropped,
            "missing_values": sum(result.missing.values()),
            **{f"rows_{name}": rows for name, rows in result.rows.items()},
        },
    )
    missing = {name: count for name, count in result.missing.items() if count}
    update_metadata(metrics, {"content_hash": result.content_hash, "missing_by_column": missing, "task": result.task,
                              "warnings": result.warnings})  # fmt: skip
    write_text_atomically(summary.path, render_summary(result, config))
