"""Inference executor: unpacks the KFP artifacts (duck-typed), finds the serving model and the feature repository,
fixes the as-of time once per run (a retry predicts at the same time, so it rewrites the same log files), calls
``core.run_inference`` and records its result. Imports no KFP."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from kfp_mlops.components.inference.core import parse_as_of, render_summary, require_record, run_inference
from kfp_mlops.components.shared import runs, storage, tracking
from kfp_mlops.components.shared.artifacts import log_metrics, update_metadata, write_text_atomically
from kfp_mlops.components.shared.config import load_config
from kfp_mlops.components.shared.errors import InputError
from kfp_mlops.components.shared.feature_repo import sibling_feature_repo
from kfp_mlops.components.shared.records import read_record
from kfp_mlops.components.shared.tracking import StepLog

AS_OF_FILE = "inference/as_of"  # in the run's state folder: the run's as-of time, kept for its retries


def run_as_of(run_dir: str, configured: str) -> datetime:
    """The configured as-of time, else the time this run first asked (kept in the run's state folder)."""
    if configured:
        return parse_as_of(configured, datetime.now(UTC))
    uri = storage.parse(run_dir).child(f"{runs.STATE_FOLDER}/{AS_OF_FILE}").uri
    try:
        return parse_as_of(storage.read_bytes(uri).decode().strip(), datetime.now(UTC))
    except FileNotFoundError:
        moment = datetime.now(UTC)
        storage.write_bytes(uri, moment.isoformat().encode())
        return moment


def feature_repo_of(feature_repo: str, reference_data: str) -> str:
    """``feature_repo``, else the repository the serving model's features task wrote beside its reference data."""
    if feature_repo:
        return feature_repo
    if not reference_data:
        raise InputError(
            "no feature repository: pass feature_repo (the features step's feature_repo output), or record a model "
            "whose serving record names its reference data (the training pipeline does)"
        )
    return sibling_feature_repo(reference_data)


def run(config: str, entities: str, as_of: str, feature_repo: str, run_id: str, metrics: Any, summary: Any) -> str:
    """Predict for the entities at the as-of time into the prediction log; returns the log's URI."""
    pipeline_config = load_config(config)
    updates = {key: value for key, value in (("entities", entities), ("as_of", as_of)) if value}
    settings = pipeline_config.inference.model_copy(update=updates)
    baseline = pipeline_config.evaluate.baseline
    record = require_record(read_record(baseline), baseline)
    run_dir = runs.run_directory(metrics.uri, run_id)
    tracker = tracking.for_step(pipeline_config.tracking, run_id, run_dir, "batch-inference")
    moment = run_as_of(run_dir, settings.as_of)
    repo = feature_repo_of(feature_repo, record.reference_data)
    print(f"[inference] model {record.model}, features from {repo} as of {moment.isoformat()}, log {settings.log}")
    result = run_inference(settings, record, repo, run_id, moment, triton_url=pipeline_config.deploy.triton_url,
                           feature_view=pipeline_config.features.view,
                           max_batch_size=pipeline_config.deploy.max_batch_size)  # fmt: skip
    log_metrics(metrics, result.metrics())
    write_text_atomically(summary.path, render_summary(result))
    update_metadata(summary, {"log": result.log, "source": result.source, "model_name": result.model_name,
                              "model_version": result.model_version, "model_uri": result.model_uri,
                              "as_of": result.as_of, "files": len(result.files)})  # fmt: skip
    tracker.log_step(
        StepLog(
            params={"inference": settings.model_dump(exclude={"entities", "log"})},
            metrics={key: float(value) for key, value in result.metrics().items()},
            tags={"prediction_log": result.log, "entities": settings.entities or "(the feature view)",
                  "serving_model": record.model, "source": result.source, "as_of": result.as_of},
            artifacts={summary.path: ""},
        )
    )  # fmt: skip
    print(f"[inference] {result.rows} predictions ({result.unknown_entities} unknown entities) in {result.batches} "
          f"batch(es), {result.rows_per_second:,.0f} rows/s, by {result.source}: {result.log}")  # fmt: skip
    return result.log
