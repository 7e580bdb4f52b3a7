"""Evaluate executor: unpacks the KFP artifacts (duck-typed), calls ``core``, records metrics, the UI's
ClassificationMetrics (a note only, for a regression model), the model card and the blessing. Imports no KFP."""

from __future__ import annotations

import json
import time
from typing import Any

from kfp_mlops.components.evaluate import core
from kfp_mlops.components.shared import observability, outcomes, registry, runs, storage, tracking
from kfp_mlops.components.shared.artifacts import log_metrics, update_metadata, write_text_atomically
from kfp_mlops.components.shared.config import PipelineConfig, load_config
from kfp_mlops.components.shared.model_package import read_model_config
from kfp_mlops.components.shared.records import Deployment, ServingRecord
from kfp_mlops.components.shared.registry import RegistryState
from kfp_mlops.components.shared.tracking import TAG_RUN, StepLog, Tracker


def run(
    config: str,
    model: Any,
    test_data: Any,
    metrics: Any,
    classification_metrics: Any,
    model_card: Any,
    blessing: Any,
    run_id: str = "",
) -> bool:
    started = time.monotonic()
    pipeline_config = load_config(config)
    run_dir = runs.run_directory(metrics.uri, run_id) if run_id else ""
    tracker = tracking.for_step(pipeline_config.tracking, run_id, run_dir, "evaluate-model")
    record, fetch = baseline_source(tracker, pipeline_config)
    evaluation = core.evaluate(pipeline_config, model.path, test_data.path, record, fetch)
    log_metrics(metrics, evaluation.metrics)
    if evaluation.task == "regression":  # no classes: the artifact stays empty, save for a note
        update_metadata(classification_metrics, {"note": "regression model: no confusion matrix or ROC curve"})
    else:
        classification_metrics.log_confusion_matrix(evaluation.classes, evaluation.confusion_matrix)
        roc = evaluation.roc_curve
        classification_metrics.log_roc_curve(roc["fpr"], roc["tpr"], roc["thresholds"])
    model_config = read_model_config(model.path)
    data_hash = test_data.metadata.get("content_hash") or model.metadata.get("content_hash", "")
    write_text_atomically(model_card.path, core.model_card(evaluation, pipeline_config, model_config, data_hash))
    update_metadata(
        blessing,
        {
            "blessed": evaluation.blessed,
            "reasons": evaluation.reasons,
            "baseline": pipeline_config.evaluate.baseline,
            "baseline_metrics": evaluation.baseline.metrics if evaluation.baseline else {},
            "undefined_metrics": evaluation.undefined,  # metric -> why it has no value on the test split
            "absent_classes": evaluation.absent,
            "task": evaluation.task,
            "model": model.uri,
        },
    )
    decision = {"blessed": evaluation.blessed, "reasons": evaluation.reasons, "undefined_metrics": evaluation.undefined}
    write_text_atomically(blessing.path, json.dumps(decision))
    for name, reason in evaluation.undefined.items():
        print(f"[evaluate] {name} is undefined on the test split: {reason}")
    print(f"[evaluate] {'BLESSED' if evaluation.blessed else 'NOT BLESSED: ' + '; '.join(evaluation.reasons)}")
    outcomes.record(run_dir, outcomes.EvaluateOutcome(blessed=evaluation.blessed, reasons=evaluation.reasons,
                                                      metrics=evaluation.metrics))  # fmt: skip
    baseline_metrics = evaluation.baseline.metrics if evaluation.baseline else {}
    tracker.log_step(
        StepLog(
            metrics={**evaluation.metrics, **{f"baseline.{name}": v for name, v in baseline_metrics.items()}},
            tags={"blessed": str(evaluation.blessed), "reasons": "; ".join(evaluation.reasons), "task": evaluation.task,
                  "baseline.model": evaluation.baseline.model if evaluation.baseline else "",
                  "baseline.registry_version": str(_registry_version(evaluation.baseline))},
            artifacts={model_card.path: "", blessing.path: ""},
        )
    )  # fmt: skip
    observability.push_step(pipeline_config, run_dir, run_id, "evaluate-model", started,
                            {observability.BLESSED: float(evaluation.blessed)},
                            observability.model_metrics(evaluation.metrics, "evaluate"))  # fmt: skip
    return evaluation.blessed


def baseline_source(tracker: Tracker, config: PipelineConfig) -> tuple[ServingRecord | None, Any]:
    """The model the candidate is compared with, and how to copy its package: the serving record's (the embedded
    default and the cache), unless the registry's champion is another version (then the champion, downloaded)."""
    record = core.load_baseline(config.evaluate.baseline)
    champion = registry.champion(tracker, config.deploy.model_name)
    mirrored = record.registry.version if record is not None and record.registry is not None else 0
    if champion is None or champion.version == mirrored:
        return record, storage.copy_tree
    print(f"[evaluate] baseline: {config.deploy.model_name} version {champion.version} (the registry's champion)")
    state = RegistryState(model_name=champion.name, version=champion.version, aliases_moved=True)
    metrics = registry.evaluation_metrics(tracker, champion)  # stand in when its package cannot be re-scored
    from_registry = ServingRecord(model=champion.source, metrics=metrics,
                                  content_hash=champion.tags.get("content_hash", ""),
                                  run_id=champion.tags.get(TAG_RUN, ""), registry=state)  # fmt: skip
    return from_registry, lambda _uri, folder: registry.download(tracker, champion, folder)


def _registry_version(baseline: core.Baseline | None) -> int:
    return baseline.record.registry.version if baseline is not None and baseline.record.registry else 0


def record(config: str, model: Any, metrics: Any, reference_data: Any, deployment: Any, run_id: str) -> None:
    """Record the blessed model (the package that serves, when deployed) in the serving record
    (evaluate.baseline), with its train split as the next drift check's reference and the registry version it
    mirrors; without a record configured, say so."""
    pipeline_config = load_config(config)
    values = {
        k: float(v) for k, v in metrics.metadata.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    state = deployment.metadata.get("registry") if deployment is not None else None
    registered = RegistryState.model_validate(state) if state else None
    uri = pipeline_config.evaluate.baseline
    if not uri:
        print("[record] evaluate.baseline is empty: no serving record kept")
        return
    served = deployment.metadata.get("deployment") if deployment is not None else None
    record_ = core.record_baseline(
        uri, model.uri, values, model.metadata.get("content_hash", ""), run_id, reference_data.uri,
        Deployment.model_validate(served) if served else None, registered,
    )  # fmt: skip
    if record_.run_id != run_id or record_.model != model.uri:
        later = record_.deployment
        print(f"[record] serving record {uri} kept: it names {later.model_name} version {later.version} (run "
              f"{record_.run_id}), deployed after this run's version {int(served['version'])}")  # fmt: skip
        return
    where = f", serving as {served['model_name']} version {int(served['version'])}" if served else ""
    mirrors = f"; registry version {registered.version}" if registered is not None and registered.version else ""
    print(f"[record] serving record {uri} now points at {record_.model}{where}{mirrors}")
