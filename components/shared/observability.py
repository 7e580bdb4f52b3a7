"""Prometheus figures of the steps: each step pushes its key figures to a Pushgateway (``observability`` in the config).

One push per task: a fresh registry, one Gauge per figure, sent with ``push_to_gateway`` (HTTP PUT) under the
grouping key ``{job, pipeline, task, model}``. PUT replaces the whole group, so a retried task never leaves a
duplicate or a stale figure; ``replace=False`` (POST) replaces only the metrics it sends (e.g. a failure flag that
must not erase the last success's figures). The Pushgateway adds ``push_time_seconds`` to each group.

The metric names are a contract with the Prometheus rules: a name not listed here is a programming error
(ValueError); a non-finite value is skipped and named. Pushing never fails a step: an empty ``pushgateway`` sends
nothing, a failure is reported on the one ``[observability]`` line of the push, within ``timeout_seconds``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from prometheus_client import CollectorRegistry, Gauge, push_to_gateway, pushadd_to_gateway

from kfp_mlops.components.shared import runs
from kfp_mlops.components.shared.config import ObservabilityConfig, PipelineConfig

STEP_DURATION = "kfp_mlops_step_duration_seconds"
STEP_ROWS = "kfp_mlops_step_rows"
STEP_LAST_SUCCESS = "kfp_mlops_step_last_success_timestamp_seconds"
DRIFT_DETECTED = "kfp_mlops_drift_detected"  # 0/1
DRIFT_SHARE = "kfp_mlops_drift_share"
PERFORMANCE_DEGRADED = "kfp_mlops_performance_degraded"  # 0/1
PERFORMANCE_MATCHED_ROWS = "kfp_mlops_performance_matched_rows"
MODEL_METRIC = "kfp_mlops_model_metric"  # labels: metric, source (evaluate | performance)
BLESSED = "kfp_mlops_blessed"  # 0/1
DEPLOYED_VERSION = "kfp_mlops_deployed_version"
MONITORING_RUN_FAILED = "kfp_mlops_monitoring_run_failed"  # 0/1

METRICS: dict[str, str] = {  # name -> help text
    STEP_DURATION: "Seconds the step took.",
    STEP_ROWS: "Rows the step read or wrote.",
    STEP_LAST_SUCCESS: "Unix time of the step's last success.",
    DRIFT_DETECTED: "1 when the drift check found the dataset drifted, else 0.",
    DRIFT_SHARE: "Share of the checked columns that drifted.",
    PERFORMANCE_DEGRADED: "1 when the performance check judged the serving model degraded, else 0.",
    PERFORMANCE_MATCHED_ROWS: "Predictions the performance check matched with a label.",
    MODEL_METRIC: "A model metric, by name and by the step that computed it.",
    BLESSED: "1 when evaluation blessed the candidate model, else 0.",
    DEPLOYED_VERSION: "The model version the deployment serves.",
    MONITORING_RUN_FAILED: "1 when the monitoring run failed, else 0.",
}
LABELS: dict[str, tuple[str, ...]] = {MODEL_METRIC: ("metric", "source")}  # the metrics that take labels
METRIC_SOURCES = ("evaluate", "performance")
GROUPING_LABELS = ("pipeline", "task", "model")

Labelled = tuple[str, Mapping[str, str], float]  # (metric name, its labels, value)


def model_metrics(metrics: Mapping[str, float], source: Literal["evaluate", "performance"]) -> list[Labelled]:
    """``kfp_mlops_model_metric{metric=..., source=...}`` figures of ``metrics`` (e.g. evaluate's roc_auc)."""
    if source not in METRIC_SOURCES:
        raise ValueError(f"{MODEL_METRIC}: source {source!r} is not one of {', '.join(METRIC_SOURCES)}")
    return [(MODEL_METRIC, {"metric": name, "source": source}, value) for name, value in metrics.items()]


def push(
    settings: ObservabilityConfig,
    *,
    pipeline: str,
    task: str,
    model: str,
    figures: Mapping[str, float],
    labelled: Iterable[Labelled] = (),
    replace: bool = True,
) -> bool:
    """Push ``figures`` (name -> value) and ``labelled`` figures ((name, labels, value), see ``model_metrics``) as
    the group ``{job: observability.job, pipeline, task, model}``; True when the Pushgateway took them, False when
    nothing was pushed. ValueError for a name not in METRICS or labels other than LABELS says (before anything is
    sent, even without a Pushgateway)."""
    values, skipped = _checked(figures, labelled)
    if not settings.pushgateway:
        return False
    shown = display_url(settings.pushgateway)
    group = {"pipeline": pipeline, "task": task, "model": model}
    where = f"Pushgateway at {shown} (job {settings.job}, " + ", ".join(f"{k} {v!r}" for k, v in group.items()) + ")"
    note = f"; skipped non-finite: {', '.join(skipped)}" if skipped else ""
    if not values:  # an empty PUT would erase the group's figures of the last push
        print(f"[observability] nothing pushed to {where}: no finite figure{note}")
        return False
    registry = CollectorRegistry()
    gauges: dict[str, Gauge] = {}
    for name, labels, value in values:
        if name not in gauges:
            gauges[name] = Gauge(name, METRICS[name], LABELS.get(name, ()), registry=registry)
        (gauges[name].labels(**labels) if labels else gauges[name]).set(value)
    send = push_to_gateway if replace else pushadd_to_gateway
    try:  # the default handler: urllib, bounded by the timeout (a password is refused by the config)
        send(settings.pushgateway.rstrip("/"), job=settings.job, registry=registry, grouping_key=group,
             timeout=settings.timeout_seconds)  # fmt: skip
    except Exception as exc:  # refused, timed out, an HTTP error: the step's own result stands
        detail = " ".join(str(exc).split())[:300].replace(settings.pushgateway, shown)
        print(f"[observability] {len(values)} figure(s) NOT pushed to {where} ({type(exc).__name__}: {detail})"
              f"{note}; the step continues")  # fmt: skip
        return False
    print(f"[observability] {len(values)} figure(s) pushed to {where}{note}")
    return True


def push_step(
    config: PipelineConfig,
    run_dir: str,
    run_id: str,
    task: str,
    started: float,
    figures: Mapping[str, float] | None = None,
    labelled: Iterable[Labelled] = (),
) -> bool:
    """A task's push after it succeeded: its seconds since ``started`` (``time.monotonic()``), the time of its
    success and ``figures``, grouped by its pipeline (from its run directory), task and ``deploy.model_name``."""
    finished = {STEP_DURATION: time.monotonic() - started, STEP_LAST_SUCCESS: time.time(), **(figures or {})}
    pipeline = runs.pipeline_name(run_dir, run_id) if run_dir else ""
    return push(config.observability, pipeline=pipeline, task=task, model=config.deploy.model_name, figures=finished,
                labelled=labelled)  # fmt: skip


def display_url(url: str) -> str:
    """``url`` for a log line: scheme, host and port only."""
    parts = urlsplit(url)
    netloc = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, "", "", ""))


def _checked(figures: Mapping[str, float], labelled: Iterable[Labelled]) -> tuple[list[Labelled], list[str]]:
    """(name, labels, value) of every finite figure, and the names of the skipped ones; ValueError on a name or a
    label set the contract does not know."""
    values: list[Labelled] = []
    skipped: list[str] = []
    entries = [(name, {}, value) for name, value in figures.items()] + list(labelled)
    for name, labels, value in entries:
        if name not in METRICS:
            raise ValueError(f"{name!r} is not one of the metrics of components/shared/observability.py")
        expected = LABELS.get(name, ())
        if tuple(sorted(labels)) != tuple(sorted(expected)):
            raise ValueError(f"{name} takes the labels ({', '.join(expected)}), got ({', '.join(labels)})")
        if name in LABELS and labels.get("source") not in METRIC_SOURCES:
            raise ValueError(f"{name}: source {labels.get('source')!r} is not one of {', '.join(METRIC_SOURCES)}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name}: {value!r} is not a number") from None
        if math.isfinite(number):
            values.append((name, dict(labels), number))
        else:
            skipped.append(f"{name}{_label_text(labels)}={number}")
    return values, skipped


def _label_text(labels: Mapping[str, str]) -> str:
    return "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else ""
