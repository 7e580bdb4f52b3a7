"""Alerts of the monitoring pipeline: drift, degraded performance, a failed monitoring run.

``send`` delivers a batch of ``Alert``s to each target of ``alerts`` in the config: Alertmanager (API v2, ``POST
/api/v2/alerts``, a list of postableAlert: labels, annotations, startsAt, endsAt, generatorURL, as in
prometheus/alertmanager ``api/v2/openapi.yaml`` v0.25.0) and/or a webhook whose URL is read from the environment
variable ``alerts.webhook_url_env`` names (generic JSON, or Slack's ``{"text": ...}``).

Alertmanager identifies an alert by its label set: the same alert sent again (a retried task) updates the one it
holds, and ``endsAt`` (now + ``resolve_after_minutes``) resolves it unless it is sent again before then.

Delivery never fails a step: each target gets ``timeout_seconds`` per attempt, ``retries`` retries after a connection
error, a 5xx or a 429 (not after another 4xx: the payload will not change), with a short backoff and a bounded total.
Each target ends with one ``[alerts]`` line and a ``Delivery`` saying what happened. A URL is printed as scheme and
host only (a Slack webhook's path is its secret), without credentials or query.
"""

from __future__ import annotations

import base64
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from kfp_mlops.components.shared.config import AlertsConfig

Reason = Literal["drift", "degraded", "failed"]
ALERT_NAMES: dict[str, str] = {  # the ``alertname`` label of each reason (Prometheus rules and routes match it)
    "drift": "KfpMlopsDrift",
    "degraded": "KfpMlopsPerformanceDegraded",
    "failed": "KfpMlopsMonitoringFailed",
}
FAILED_SEVERITY = "critical"  # a failed monitoring run; drift and degradation take alerts.severity
ALERTS_PATH = "/api/v2/alerts"
SOURCE = "kfp-mlops"
BACKOFF_SECONDS = (0.5, 1.0, 2.0)  # before the 1st, 2nd, 3rd and later retries
RETRIED_STATUSES = frozenset({429, 500, 502, 503, 504})
CORE_LABELS = ("alertname", "model", "version", "reason", "severity")
ERROR_TEXT_LIMIT = 300


@dataclass(frozen=True)
class Alert:
    """One alert. ``severity`` empty: ``alerts.severity`` (``critical`` for a failed run); ``run_url`` empty: the
    one ``send`` resolves; ``labels``: extra labels (the five core labels cannot be overridden)."""

    reason: Reason
    model: str
    version: str = ""
    summary: str = ""
    description: str = ""
    severity: str = ""
    run_url: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.reason not in ALERT_NAMES:
            raise ValueError(f"alert reason {self.reason!r} is not one of {', '.join(ALERT_NAMES)}")

    @property
    def alertname(self) -> str:
        return ALERT_NAMES[self.reason]

    def label_set(self, default_severity: str) -> dict[str, str]:
        severity = self.severity or (FAILED_SEVERITY if self.reason == "failed" else default_severity)
        core = {"alertname": self.alertname, "model": self.model, "version": str(self.version),
                "reason": self.reason, "severity": severity}  # fmt: skip
        labels = {**{str(k): str(v) for k, v in self.labels.items() if k not in CORE_LABELS}, **core}
        # Alertmanager drops a label whose value is empty (api/v2/api.go postAlertsHandler, removeEmptyLabels)
        return {key: value for key, value in labels.items() if value}


@dataclass(frozen=True)
class Delivery:
    """What happened to one target: ``target`` alertmanager or webhook, ``url`` as printed (redacted), the number
    of ``attempts``, the last HTTP ``status`` (None: no answer) and ``error`` ("" when delivered)."""

    target: Literal["alertmanager", "webhook"]
    url: str
    delivered: bool
    attempts: int
    status: int | None = None
    error: str = ""


def resolve_run_url(settings: AlertsConfig, fallback: str = "", run_id: str = "") -> str:
    """``alerts.run_url`` or ``fallback`` (e.g. ``tracking.run_url``), ``{run_id}`` replaced; "" when neither."""
    template = settings.run_url or fallback
    return template.replace("{run_id}", run_id) if template else ""


def display_url(url: str, keep_path: bool = False) -> str:
    """``url`` for a log line: scheme, host and port, and the path only when ``keep_path``; never credentials,
    query or fragment."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError:  # e.g. an unclosed IPv6 bracket
        return "(a malformed URL)"
    netloc = f"[{host}]" if ":" in host else host
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc += f":{port}" if port else ""
    return urlunsplit((parts.scheme, netloc, parts.path if keep_path else "", "", ""))


def alertmanager_payload(
    alerts: Iterable[Alert], settings: AlertsConfig, run_url: str = "", now: datetime | None = None
) -> list[dict[str, Any]]:
    """The postableAlerts body of ``POST /api/v2/alerts`` (api/v2/openapi.yaml: ``postableAlert`` is ``labels``,
    ``generatorURL``, ``startsAt``, ``endsAt``, ``annotations``; a labelSet maps strings to strings)."""
    starts = now or datetime.now(UTC)
    ends = starts + timedelta(minutes=settings.resolve_after_minutes)
    payload = []
    for alert in alerts:
        url = alert.run_url or run_url
        annotations = {"summary": alert.summary, "description": alert.description, "run_url": url}
        entry: dict[str, Any] = {
            "labels": alert.label_set(settings.severity),
            "annotations": {key: value for key, value in annotations.items() if value},
            "startsAt": _timestamp(starts),
            "endsAt": _timestamp(ends),
        }
        if url:  # format: uri, so never an empty string
            entry["generatorURL"] = url
        payload.append(entry)
    return payload


def webhook_payload(
    alerts: Iterable[Alert], settings: AlertsConfig, run_url: str = "", now: datetime | None = None
) -> dict[str, Any]:
    """The webhook body: ``{"text": ...}`` for Slack (one line per alert, its run's link), else JSON with each
    alert's labels and annotations as Alertmanager gets them."""
    entries = alertmanager_payload(alerts, settings, run_url, now)
    if settings.webhook_format == "slack":
        lines = []
        for entry in entries:
            labels, notes = entry["labels"], entry["annotations"]
            version = f" version {labels['version']}" if labels.get("version") else ""
            line = f"[{labels['severity'].upper()}] {labels['alertname']}: model {labels['model']}{version}"
            line += f": {notes['summary']}" if notes.get("summary") else ""
            line += f"\n{notes['description']}" if notes.get("description") else ""
            line += f"\n<{notes['run_url']}|the run>" if notes.get("run_url") else ""
            lines.append(line)
        return {"text": "\n\n".join(lines)}
    return {"source": SOURCE, "alerts": [
        {"labels": e["labels"], "annotations": e["annotations"], "startsAt": e["startsAt"], "endsAt": e["endsAt"]}
        for e in entries
    ]}  # fmt: skip


def send(
    settings: AlertsConfig,
    alerts: Iterable[Alert],
    *,
    run_id: str = "",
    run_url: str = "",
    sleep: Callable[[float], None] = time.sleep,
) -> list[Delivery]:
    """Deliver ``alerts`` to Alertmanager and/or the webhook (see the module docstring); never raises. ``run_url``
    is the fallback of ``alerts.run_url`` (e.g. ``tracking.run_url``), ``{run_id}`` replaced by ``run_id``.
    No alerts or no target: nothing is sent, no line printed."""
    batch = list(alerts)
    if not batch:
        return []
    url = resolve_run_url(settings, run_url, run_id)
    now = datetime.now(UTC)
    summary = ", ".join(sorted({f"{a.alertname} {a.model}" + (f" {a.version}" if a.version else "") for a in batch}))
    deliveries = []
    if settings.alertmanager_url:
        target = settings.alertmanager_url.rstrip("/") + ALERTS_PATH
        body = alertmanager_payload(batch, settings, url, now)
        deliveries.append(_deliver("alertmanager", target, body, settings, sleep, keep_path=True))
    if settings.webhook_url_env:
        hook = os.environ.get(settings.webhook_url_env, "").strip()
        if hook:
            body = webhook_payload(batch, settings, url, now)
            deliveries.append(_deliver("webhook", hook, body, settings, sleep, keep_path=False))
        else:
            error = f"the environment variable {settings.webhook_url_env} (alerts.webhook_url_env) is not set"
            deliveries.append(Delivery("webhook", "", False, 0, None, error))
    for delivery in deliveries:
        where = f"{'Alertmanager' if delivery.target == 'alertmanager' else 'the webhook'}"
        where += f" at {delivery.url}" if delivery.url else ""
        if delivery.delivered:
            print(f"[alerts] {len(batch)} alert(s) sent to {where}: {summary}")
        else:
            tries = f" after {delivery.attempts} attempt(s)" if delivery.attempts else ""
            print(f"[alerts] {len(batch)} alert(s) NOT sent to {where}{tries} ({delivery.error}): {summary}; "
                  "the step continues")  # fmt: skip
    return deliveries


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer of its own (urllib would turn a redirected POST into a GET without the alerts)."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _deliver(
    target: Literal["alertmanager", "webhook"],
    url: str,
    body: Any,
    settings: AlertsConfig,
    sleep: Callable[[float], None],
    keep_path: bool,
) -> Delivery:
    try:
        return _post(target, url, body, settings, sleep, keep_path)
    except Exception as exc:  # e.g. a URL urllib cannot parse (the webhook's comes unchecked from the environment)
        problem = f"{type(exc).__name__} before any answer; the URL may be malformed"
        return Delivery(target, display_url(url, keep_path), False, 0, None, problem)


def _post(
    target: Literal["alertmanager", "webhook"],
    url: str,
    body: Any,
    settings: AlertsConfig,
    sleep: Callable[[float], None],
    keep_path: bool,
) -> Delivery:
    shown = display_url(url, keep_path)
    parts = urlsplit(url)
    headers = {"Content-Type": "application/json", "User-Agent": SOURCE}
    if parts.username is not None:  # user:password@ in the URL: Basic auth, and out of the request line
        token = f"{parts.username}:{parts.password or ''}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(token).decode()
        bare = parts.hostname or ""
        netloc = (f"[{bare}]" if ":" in bare else bare) + (f":{parts.port}" if parts.port else "")
        url = urlunsplit(parts._replace(netloc=netloc))
    data = json.dumps(body).encode()
    opener = urllib.request.build_opener(_NoRedirects)
    secrets = [s for s in (url, parts.path if not keep_path and len(parts.path) > 1 else "", parts.query,
                           parts.password or "") if s]  # fmt: skip
    timeout = settings.timeout_seconds
    backoffs = [BACKOFF_SECONDS[min(i, len(BACKOFF_SECONDS) - 1)] for i in range(settings.retries)]
    deadline = time.monotonic() + timeout * (settings.retries + 1) + sum(backoffs)
    attempts, status, error = 0, None, ""
    for attempt in range(settings.retries + 1):
        if attempt:
            if time.monotonic() + backoffs[attempt - 1] >= deadline:
                break
            sleep(backoffs[attempt - 1])
        attempts += 1
        request = urllib.request.Request(url, data=data, headers=headers, method="POST")
        try:
            with opener.open(request, timeout=max(0.1, min(timeout, deadline - time.monotonic()))) as response:
                status = response.status
                response.read()
            return Delivery(target, shown, True, attempts, status)
        except urllib.error.HTTPError as exc:
            status = exc.code
            detail = _body(exc)
            error = f"HTTP {exc.code} {exc.reason}" + (f": {detail}" if detail else "")
            if exc.code not in RETRIED_STATUSES:
                break
        except (OSError, ValueError) as exc:  # URLError, timeouts, refused or reset connections, a malformed URL
            status = None
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            error = f"{type(exc).__name__}: {reason}"
            if isinstance(exc, ValueError):
                break
    return Delivery(target, shown, False, attempts, status, _scrub(error, secrets))


def _body(error: urllib.error.HTTPError) -> str:
    """The start of an error answer's body (Alertmanager says what it refused), or "" when it cannot be read."""
    try:
        return error.read(ERROR_TEXT_LIMIT).decode("utf-8", "replace").strip() if error.fp else ""
    except OSError:
        return ""


def _scrub(text: str, secrets: list[str]) -> str:
    text = " ".join(text.split())[:ERROR_TEXT_LIMIT]
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def _timestamp(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
