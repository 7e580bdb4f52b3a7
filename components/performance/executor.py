"""Performance executor: read the serving record, the labels and the prediction log's window, call
``core.check_performance``, record metrics, the UI's ClassificationMetrics, the summary and the verdict, and decide
what the monitoring pipeline does next (drift's decision included). Imports no KFP."""

from __future__ import annotations

import json
import math
import time
from typing import Any

from kfp_mlops.components.performance import core
from kfp_mlops.components.shared import observability, outcomes, prediction_log, runs, tracking
from kfp_mlops.components.shared.artifacts import log_metrics, update_metadata, write_text_atomically
from kfp_mlops.components.shared.config import load_config
from kfp_mlops.components.shared.errors import InputError
from kfp_mlops.components.shared.model_package import read_model_config
from kfp_mlops.components.shared.outcomes import PerformanceOutcome
from kfp_mlops.components.shared.records import read_record
from kfp_mlops.components.shared.tracking import StepLog

NO_ACTION = "none"
SKIPPED = "skipped"


def run(
    config: str,
    labels: str,
    drift_action: str,
    run_id: str,
    metrics: Any,
    classification_metrics: Any,
    summary: Any,
    verdict: Any,
) -> str:
    """Judge the serving model on the labelled window; returns the next action: ``monitoring.retrain`` when drift
    asked for it (``drift_action``) or the model degraded, else ``none``. Without labels (``labels`` and
    ``performance.labels`` empty) nothing is judged and drift's action stands."""
    started = time.monotonic()
    pipeline_config = load_config(config)
    settings = pipeline_config.performance
    run_dir = runs.run_directory(metrics.uri, run_id) if run_id else ""
    labels_uri = labels or settings.labels
    if not labels_uri:
        print(f"[performance] no labels (performance.labels is empty): skipped; next: {drift_action}")
        _write_verdict(verdict, {"verdict": SKIPPED, "reasons": [], "action": drift_action})
        write_text_atomically(summary.path, "# Performance\n\nSkipped: no labels configured (performance.labels).\n")
        outcomes.record(run_dir, PerformanceOutcome(verdict=SKIPPED, action=drift_action))
        return drift_action
    tracker = tracking.for_step(pipeline_config.tracking, run_id, run_dir, "performance-check")
    log_uri = settings.log or pipeline_config.inference.log
    if not log_uri:
        raise InputError("performance: no prediction log to read: set performance.log or inference.log")
    baseline = pipeline_config.evaluate.baseline
    record = read_record(baseline)
    if record is None:
        raise InputError(f"serving record {baseline or '(evaluate.baseline is empty)'}: no model serves yet, so no "
                         "model to judge; run the training pipeline first")  # fmt: skip
    model = read_model_config(record.model)
    label_table, label_files = core.read_labels(labels_uri)
    since, until = core.window(label_table, model.timestamp, settings)
    predictions, log_files = prediction_log.read_log(log_uri, model.entity, model.timestamp, since, until)
    result = core.check_performance(predictions, label_table, labels_uri, model, settings, pipeline_config.evaluate,
                                    record.model, record.metrics)  # fmt: skip
    where = f"{since:%Y-%m-%d %H:%M} to {until:%Y-%m-%d %H:%M} UTC" if since and until else "every prediction"
    text = core.summary(result, f"{where}; {len(log_files)} log file(s), {len(label_files)} label file(s)")
    write_text_atomically(summary.path, text)
    log_metrics(metrics, {k: v for k, v in result.metrics().items() if math.isfinite(v)})
    serving = result.serving
    scores = serving.scores if serving else None
    if scores is not None and not model.regression and "roc_auc" in scores.metrics:
        classification_metrics.log_confusion_matrix([str(c) for c in model.classes], scores.confusion_matrix)
        roc = scores.roc_curve
        classification_metrics.log_roc_curve(roc["fpr"], roc["tpr"], roc["thresholds"])
    else:
        update_metadata(classification_metrics, {"note": "no classification scores on this window"})
    retrain = drift_action != NO_ACTION or result.degraded
    action = pipeline_config.monitoring.retrain if retrain else NO_ACTION
    facts = {"verdict": result.verdict, "reasons": result.reasons, "action": action,
             "counts": result.counts.figures(), "model": record.model}  # fmt: skip
    _write_verdict(verdict, facts)
    outcomes.record(run_dir, PerformanceOutcome(
        verdict=result.verdict, reasons=result.reasons, metrics=scores.metrics if scores else {},
        reference_metrics=result.reference_metrics, counts=result.counts.figures(),
        model_name=serving.model_name if serving else pipeline_config.deploy.model_name,
        model_version=serving.model_version if serving else 0,
        registry_version=serving.registry_version if serving else "", action=action,
    ))  # fmt: skip
    tracker.log_step(
        StepLog(
            params={"performance": settings.model_dump(exclude_none=True), "labels": labels_uri, "log": log_uri},
            metrics={k: v for k, v in result.metrics().items() if math.isfinite(v)},
            tags={"verdict": result.verdict, "reasons": "; ".join(result.reasons), "action": action,
                  "serving_model": record.model},
            artifacts={summary.path: ""},
        )
    )  # fmt: skip
    counts = result.counts
    print(f"[performance] {result.verdict}{': ' + '; '.join(result.reasons) if result.reasons else ''} "
          f"({counts.matched} labelled of {counts.predictions} predictions, {counts.unmatched_labels} labels "
          f"unmatched); next: {'retrain (' + action + ')' if retrain else 'nothing'}")  # fmt: skip
    figures = {observability.PERFORMANCE_DEGRADED: float(result.degraded),
               observability.PERFORMANCE_MATCHED_ROWS: float(counts.matched)}  # fmt: skip
    observability.push_step(pipeline_config, run_dir, run_id, "performance-check", started, figures,
                            observability.model_metrics(scores.metrics if scores else {}, "performance"))  # fmt: skip
    return action


def _write_verdict(verdict: Any, facts: dict) -> None:
    update_metadata(verdict, facts)
    write_text_atomically(verdict.path, json.dumps(facts))
