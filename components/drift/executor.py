"""Drift executors: unpack the KFP artifacts (duck-typed), find the reference through the serving record, call
``core.check_drift``, and decide what the monitoring pipeline does next. Imports no KFP."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from kfp_mlops.components.drift.core import check_drift
from kfp_mlops.components.shared import alerts, kfp_api, observability, outcomes, runs, tracking
from kfp_mlops.components.shared.artifacts import log_metrics, update_metadata, write_text_atomically
from kfp_mlops.components.shared.cluster import pod_namespace
from kfp_mlops.components.shared.config import load_config
from kfp_mlops.components.shared.errors import InputError
from kfp_mlops.components.shared.model_package import read_model_config
from kfp_mlops.components.shared.outcomes import DriftOutcome, Outcomes, RetrainOutcome
from kfp_mlops.components.shared.records import read_record
from kfp_mlops.components.shared.tracking import TAG_COMPARED_WITH, StepLog

NO_ACTION = "none"
# Where kfp.Client reads a projected token for the audience pipelines.kubeflow.org (KFP's multi-user auth):
# sdk/python/kfp/client/__init__.py KF_PIPELINES_SA_TOKEN_PATH; manifests/overlays/profile projects it there.
PIPELINES_API_TOKEN = "/var/run/secrets/kubeflow/pipelines/token"
# The fix a KFP API error names, in this step's words: its config keys and the pod's projected token.
SETTING_NAMES = kfp_api.SettingNames(
    host="monitoring.kfp_host",
    namespace="monitoring.kfp_namespace",
    token=f"the pod's token ({PIPELINES_API_TOKEN})",
    kube_context="the profile's PodDefault that projects it (manifests/overlays/profile)",
)


def run(config: str, current: list[Any], run_id: str, report: Any, metrics: Any, summary: Any) -> str:
    """Compare the window (the ingest step's splits of it) with the data the serving model was trained on.
    Returns what to do: ``none`` without drift, else ``monitoring.retrain`` (``nested`` or ``kfp_api``)."""
    started = time.monotonic()
    pipeline_config = load_config(config)
    run_dir = runs.run_directory(report.uri, run_id) if run_id else ""
    tracker = tracking.for_step(pipeline_config.tracking, run_id, run_dir, "drift-check")
    baseline = pipeline_config.evaluate.baseline
    record = read_record(baseline)
    if record is None or not record.reference_data:
        where = baseline or "(evaluate.baseline is empty)"
        raise InputError(
            f"serving record {where}: no model serves yet, so there is no reference to compare with; run the "
            "training pipeline first (it records the deployed model and its training data there)"
        )
    model = read_model_config(record.model)
    result = check_drift(record.reference_data, [artifact.path for artifact in current], pipeline_config.drift,
                         model.numeric, model.categorical, report.path, summary.path)  # fmt: skip
    log_metrics(metrics, result.metrics())
    action = pipeline_config.monitoring.retrain if result.drifted else NO_ACTION
    compared = (
        f"{record.registry.model_name}/{record.registry.version}" if record.registry and record.registry.version else ""
    )
    tracker.log_step(
        StepLog(
            params={"drift": pipeline_config.drift.model_dump(exclude_none=True)},
            metrics={k: float(v) for k, v in result.metrics().items() if math.isfinite(float(v))},
            tags={TAG_COMPARED_WITH: compared, "reference_data": record.reference_data, "serving_model": record.model,
                  "drifted": str(result.drifted), "drifted_columns": ", ".join(result.drifted_columns),
                  "action": action},
            artifacts={report.path: "", summary.path: ""},
        )
    )  # fmt: skip
    if compared:
        tracker.tag_pipeline({TAG_COMPARED_WITH: compared})
    outcomes.record(run_dir, DriftOutcome(
        drifted=result.drifted, share=result.share, drifted_columns=result.drifted_columns,
        reference=record.reference_data, serving_model=record.model, action=action,
    ))  # fmt: skip
    verdict = "drift" if result.drifted else "no drift"
    columns = f": {', '.join(result.drifted_columns)}" if result.drifted_columns else ""
    print(f"[drift] {verdict} ({len(result.drifted_columns)} of {len(result.columns)} columns{columns}); next: "
          f"{'retrain (' + action + ')' if result.drifted else 'nothing'}")  # fmt: skip
    figures = {observability.DRIFT_DETECTED: float(result.drifted), observability.DRIFT_SHARE: result.share}
    observability.push_step(pipeline_config, run_dir, run_id, "drift-check", started, figures)
    return action


def submit_training(config: str, data_source: str, run_id: str, training_run: Any) -> str:
    """Retrain through the KFP API: a run of the uploaded training pipeline on the window, with this run's config;
    waits for it and returns its state. Fails when that run does not succeed, and cancels it when the wait is given
    up (``kfp_api.wait_for_run``)."""
    pipeline_config = load_config(config)
    settings = pipeline_config.monitoring
    if not settings.kfp_host:
        raise InputError("monitoring.retrain is kfp_api but monitoring.kfp_host is empty: name the KFP API endpoint")
    namespace = settings.kfp_namespace or pod_namespace()
    token = Path(os.environ.get("KF_PIPELINES_SA_TOKEN_PATH", PIPELINES_API_TOKEN))
    print(f"[retrain] KFP API {settings.kfp_host}, namespace {namespace or '(none)'}, credentials: "
          f"{'the pod token for pipelines.kubeflow.org' if token.exists() else 'none (standalone KFP)'}")  # fmt: skip
    client = kfp_api.connect(kfp_api.Connection(host=settings.kfp_host, namespace=namespace, names=SETTING_NAMES))
    arguments = {"config": pipeline_config.to_yaml(), "data_source": data_source}
    submitted = kfp_api.submit_uploaded(client, settings.training_pipeline, arguments, experiment=settings.experiment,
                                        namespace=namespace, service_account=settings.service_account)  # fmt: skip
    print(f"[retrain] started run {submitted.run_id} of {settings.training_pipeline}")
    # bounded; transient API errors ridden out; on giving up (monitoring.wait_timeout_seconds, errors that persist,
    # SIGTERM from this task's deadline or a cancelled monitoring run) the training run is cancelled, then this fails
    outcome = kfp_api.wait_for_run(client, submitted.run_id, timeout_seconds=settings.wait_timeout_seconds,
                                   poll_seconds=settings.poll_seconds)  # fmt: skip
    retrained = RetrainOutcome(run_id=submitted.run_id, state=outcome.state)
    update_metadata(training_run, retrained.facts())
    write_text_atomically(training_run.path, json.dumps(retrained.facts()))
    outcomes.record(runs.run_directory(training_run.uri, run_id) if run_id else "", retrained)
    print(f"[retrain] run {submitted.run_id}: {outcome.state}")
    if outcome.state != "SUCCEEDED":
        raise RuntimeError(f"the training run {submitted.run_id} ended {outcome.state}: {outcome.error}")
    return outcome.state


def report(config: str, run_id: str, state: str, error: str, outcome: Any) -> None:
    """The run's outcome as Markdown (the drift and performance verdicts, whether it retrained, the blessing, the
    deployed version); then the alerts (``alerts``: drift, degradation, a failed run) and the run's failure flag for
    Prometheus (``observability``). The report stands whatever the alerts meet (``alerts.send`` never raises)."""
    run_dir = runs.run_directory(outcome.uri, run_id)
    recorded = outcomes.read_all(run_dir)
    text = render_outcome(recorded, state, error)
    write_text_atomically(outcome.path, text)
    update_metadata(outcome, {"state": state, **recorded.facts()})
    print("[outcome] " + " | ".join(line.removeprefix("- ") for line in text.splitlines() if line.startswith("- ")))
    try:
        pipeline_config = load_config(config)
    except (InputError, OSError) as exc:  # the run may have failed on this very config
        print(f"[outcome] the config cannot be read ({exc}): no alert sent, nothing pushed")
        return
    model = pipeline_config.deploy.model_name
    alerts.send(pipeline_config.alerts, run_alerts(recorded, state, error, model, run_id), run_id=run_id,
                run_url=pipeline_config.tracking.run_url)  # fmt: skip
    failed = {observability.MONITORING_RUN_FAILED: float(state not in ("SUCCEEDED", *CANCELLED))}
    observability.push(pipeline_config.observability, pipeline=runs.pipeline_name(run_dir, run_id),
                       task="report-outcome", model=model, figures=failed)  # fmt: skip


CANCELLED = ("CANCELED", "CANCELLED", "CANCELING")  # an operator's decision: not a failure to alert on


def run_alerts(recorded: Outcomes, state: str, error: str, model: str, run_id: str) -> list[alerts.Alert]:
    """What a monitoring run alerts on: drift, a degraded serving model, and the run's failure."""
    found = []
    drift, performance = recorded.drift, recorded.performance
    version = str(performance.model_version or "") if performance else ""
    if drift is not None and drift.drifted:
        columns = ", ".join(drift.drifted_columns) or "none"
        found.append(alerts.Alert(
            "drift", model, version, summary=f"{model}: drift in {drift.share:.0%} of the columns ({columns})",
            description=f"The current window drifted from {drift.reference}; next: {drift.action}.",
        ))  # fmt: skip
    if performance is not None and performance.verdict == "degraded":
        found.append(alerts.Alert(
            "degraded", model, version, summary=f"{model}: performance degraded: {'; '.join(performance.reasons)}",
            description=f"{performance.counts.get('matched', 0)} labelled predictions; next: {performance.action}.",
            labels={"registry_version": performance.registry_version},
        ))  # fmt: skip
    if state not in ("SUCCEEDED", *CANCELLED):
        found.append(alerts.Alert("failed", model, version, summary=f"{model}: monitoring run {run_id} {state}",
                                  description=error or "see the run's logs"))  # fmt: skip
    return found


def render_outcome(recorded: Outcomes, state: str, error: str) -> str:
    drift, evaluate, deploy, retrain = recorded.drift, recorded.evaluate, recorded.deploy, recorded.retrain
    performance = recorded.performance
    lines = ["# Monitoring outcome", "", f"- Run: {state}{f' ({error})' if error else ''}"]
    if drift is None:
        lines.append("- Drift: not checked (the run stopped before the drift check)")
    else:
        columns = ", ".join(drift.drifted_columns) or "none"
        lines.append(f"- Drift: {'yes' if drift.drifted else 'no'} ({drift.share:.0%} of columns; {columns})")
    if performance is None:
        lines.append("- Performance: not checked (the run stopped before the performance check)")
    elif performance.verdict == "skipped":
        lines.append("- Performance: not checked (no labels)")
    else:
        why = f": {'; '.join(performance.reasons)}" if performance.reasons else ""
        lines.append(f"- Performance: {performance.verdict}{why} ({performance.counts.get('matched', 0)} labelled "
                     "predictions)")  # fmt: skip
    if evaluate is not None:
        lines.append("- Retrained: yes, in this run")
        lines.append(f"- Blessed: {'yes' if evaluate.blessed else 'no: ' + '; '.join(evaluate.reasons)}")
    elif retrain is not None:
        lines.append(f"- Retrained: yes, training run {retrain.run_id} ({retrain.state})")
    else:
        lines.append("- Retrained: no")
    if deploy is not None and deploy.version:
        lines.append(f"- Deployed: {deploy.model_name} version {deploy.version} ({deploy.endpoint})")
    else:
        lines.append("- Deployed: no")
    return "\n".join(lines) + "\n"
