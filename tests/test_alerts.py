"""Alerts (components/shared/alerts.py) against a real Alertmanager (API v2) started by a fixture; the webhook against
a small local HTTP server, a test double (no real generic webhook server exists)."""

from __future__ import annotations

import base64
import json
import threading
import uuid
from collections.abc import Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from kfp_mlops.components.shared import alerts
from kfp_mlops.components.shared.alerts import Alert
from kfp_mlops.components.shared.config import AlertsConfig, parse_config
from kfp_mlops.components.shared.errors import ConfigError
from kfp_mlops.processes import free_port

RUN_URL = "https://kubeflow.example.com/_/pipeline/#/runs/details/{run_id}"


def received(alertmanager_url: str, model: str) -> list[dict]:
    """The alerts Alertmanager holds for ``model`` (GET /api/v2/alerts with a label matcher)."""
    response = requests.get(f"{alertmanager_url}/api/v2/alerts", params={"filter": f'model="{model}"'}, timeout=5)
    response.raise_for_status()
    return response.json()


def no_sleep(seconds: float) -> None:
    """The backoff, skipped: the tests count attempts, not seconds."""


@pytest.mark.servers
def test_alerts_reach_alertmanager_with_their_labels_annotations_and_times(alertmanager_server, capsys):
    model = f"churn-{uuid.uuid4().hex[:8]}"
    settings = AlertsConfig(alertmanager_url=alertmanager_server.bucket, run_url=RUN_URL, resolve_after_minutes=30)
    batch = [
        Alert("drift", model, "3", summary="4 of 6 columns drifted", description="share 0.67 >= 0.5",
              labels={"team": "risk", "severity": "ignored"}),
        Alert("failed", model, "3", summary="the monitoring run failed", description="drift: OOMKilled"),
    ]  # fmt: skip
    deliveries = alerts.send(settings, batch, run_id="run-42")
    assert [(d.target, d.delivered, d.attempts, d.status, d.error) for d in deliveries] == [
        ("alertmanager", True, 1, 200, "")
    ]
    held = {a["labels"]["alertname"]: a for a in received(alertmanager_server.bucket, model)}
    assert set(held) == {"KfpMlopsDrift", "KfpMlopsMonitoringFailed"}
    drift = held["KfpMlopsDrift"]
    url = "https://kubeflow.example.com/_/pipeline/#/runs/details/run-42"
    assert drift["labels"] == {"alertname": "KfpMlopsDrift", "model": model, "version": "3", "reason": "drift",
                               "severity": "warning", "team": "risk"}  # fmt: skip
    assert drift["annotations"] == {"summary": "4 of 6 columns drifted", "description": "share 0.67 >= 0.5",
                                    "run_url": url}  # fmt: skip
    assert drift["generatorURL"] == url and drift["status"]["state"] == "active"
    lasts = datetime.fromisoformat(drift["endsAt"]) - datetime.fromisoformat(drift["startsAt"])
    assert abs(lasts.total_seconds() - 30 * 60) < 5
    assert held["KfpMlopsMonitoringFailed"]["labels"]["severity"] == "critical"
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"[alerts] 2 alert(s) sent to Alertmanager at {alertmanager_server.bucket}/api/v2/alerts: "
                     f"KfpMlopsDrift {model} 3, KfpMlopsMonitoringFailed {model} 3"]  # fmt: skip


@pytest.mark.servers
def test_the_same_alert_sent_twice_is_one_alert(alertmanager_server):
    """Alertmanager identifies an alert by its label set: a retried task updates the alert it sent."""
    model = f"twice-{uuid.uuid4().hex[:8]}"
    settings = AlertsConfig(alertmanager_url=alertmanager_server.bucket)
    for summary in ("first", "second"):
        [delivery] = alerts.send(settings, [Alert("degraded", model, "7", summary=summary)])
        assert delivery.delivered
    held = received(alertmanager_server.bucket, model)
    assert len(held) == 1
    assert held[0]["labels"]["alertname"] == "KfpMlopsPerformanceDegraded"
    assert held[0]["annotations"]["summary"] == "second"


def test_an_unreachable_alertmanager_is_tried_retries_plus_one_times_and_never_raises(capsys):
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    sleeps: list[float] = []
    settings = AlertsConfig(alertmanager_url=closed, retries=3, timeout_seconds=2)
    [delivery] = alerts.send(settings, [Alert("drift", "churn", "1")], sleep=sleeps.append)
    assert (delivery.delivered, delivery.attempts, delivery.status) == (False, 4, None)
    assert "Connection refused" in delivery.error
    assert sleeps == list(alerts.BACKOFF_SECONDS)  # a short, growing backoff between the 4 attempts
    out = capsys.readouterr().out
    assert len(out.splitlines()) == 1 and "NOT sent to Alertmanager" in out and "after 4 attempt(s)" in out


@pytest.mark.servers
def test_an_invalid_payload_is_not_retried_and_is_reported(alertmanager_server, capsys):
    """An empty label name: Alertmanager answers 400 ("invalid label set"), which another attempt would not change
    (prometheus/alertmanager v0.25.0 api/v2/api.go, postAlertsHandler: a label set failing ``Validate`` is a
    BadRequest; the valid alerts of the same batch are still taken)."""
    settings = AlertsConfig(alertmanager_url=alertmanager_server.bucket, retries=3)
    [delivery] = alerts.send(settings, [Alert("drift", "churn", "1", labels={"": "x"})], sleep=no_sleep)
    assert (delivery.delivered, delivery.attempts, delivery.status) == (False, 1, 400)
    assert "invalid label set" in delivery.error
    out = capsys.readouterr().out
    assert out.count("[alerts]") == 1 and "HTTP 400" in out and "after 1 attempt(s)" in out


def test_an_unknown_reason_is_a_programming_error():
    with pytest.raises(ValueError, match="not one of drift, degraded, failed"):
        Alert("slow", "churn")  # type: ignore[arg-type]


def test_no_alert_or_no_target_sends_nothing(capsys):
    assert alerts.send(AlertsConfig(), [Alert("drift", "churn")]) == []
    assert alerts.send(AlertsConfig(alertmanager_url="http://127.0.0.1:1"), []) == []
    assert capsys.readouterr().out == ""


def test_the_alerts_section_is_validated_with_the_config():
    document = {"data": {"source": "/data"}, "schema": {"entity": "e", "timestamp": "t", "label": "y"}}
    with pytest.raises(ConfigError, match="alerts.webhook_format"):
        parse_config({**document, "alerts": {"webhook_format": "teams"}})
    with pytest.raises(ConfigError, match="alerts.retries"):
        parse_config({**document, "alerts": {"retries": 11}})
    with pytest.raises(ConfigError, match="alerts.alertmanager_url holds a password") as error:
        parse_config({**document, "alerts": {"alertmanager_url": "http://am:s3cret@alertmanager:9093"}})
    assert "s3cret" not in str(error.value)
    with pytest.raises(ConfigError, match=r"alerts.alertmanager_url 'alertmanager:9093' is not an http\(s\)://host"):
        parse_config({**document, "alerts": {"alertmanager_url": "alertmanager:9093"}})


# --- the webhook ----------------------------------------------------------------------------------------------------


class WebhookDouble(ThreadingHTTPServer):
    """A test double of a webhook receiver (no real generic webhook server exists): records each POST's path and JSON
    body and answers with the next status of ``statuses`` (then 200)."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.requests: list[tuple[str, dict]] = []
        self.authorizations: list[str | None] = []
        self.statuses = list(statuses or [])
        super().__init__(("127.0.0.1", 0), _WebhookHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _WebhookHandler(BaseHTTPRequestHandler):
    server: WebhookDouble

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append((self.path, body))
        self.server.authorizations.append(self.headers.get("Authorization"))
        status = self.server.statuses.pop(0) if self.server.statuses else 200
        self.send_response(status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def webhook(request) -> Iterator[WebhookDouble]:
    server = WebhookDouble(getattr(request, "param", None))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


SECRET_PATH = "/services/T0000SECRET/B0000SECRET/XXXXsecretXXXX"


def test_the_generic_webhook_gets_json_and_its_secret_path_is_never_printed(webhook, monkeypatch, capsys):
    monkeypatch.setenv("ALERT_WEBHOOK", f"{webhook.url}{SECRET_PATH}?token=qsecret")
    settings = AlertsConfig(webhook_url_env="ALERT_WEBHOOK", run_url=RUN_URL)
    [delivery] = alerts.send(settings, [Alert("degraded", "churn", "5", summary="roc_auc fell by 0.08")],
                             run_id="run-7")  # fmt: skip
    assert (delivery.target, delivery.delivered, delivery.url) == ("webhook", True, webhook.url)
    [(path, body)] = webhook.requests
    assert path == f"{SECRET_PATH}?token=qsecret"
    assert body["source"] == "kfp-mlops"
    [sent] = body["alerts"]
    assert alerts.send(settings, [Alert("failed", "churn")])[0].delivered  # no version: no version label
    assert "version" not in webhook.requests[-1][1]["alerts"][0]["labels"]
    assert sent["labels"] == {"alertname": "KfpMlopsPerformanceDegraded", "model": "churn", "version": "5",
                              "reason": "degraded", "severity": "warning"}  # fmt: skip
    assert sent["annotations"] == {
        "summary": "roc_auc fell by 0.08",
        "run_url": "https://kubeflow.example.com/_/pipeline/#/runs/details/run-7",
    }
    assert sent["startsAt"].endswith("Z") and sent["endsAt"] > sent["startsAt"]
    out = capsys.readouterr().out
    assert out.startswith(f"[alerts] 1 alert(s) sent to the webhook at {webhook.url}:")
    assert "SECRET" not in out and "secret" not in out


@pytest.mark.parametrize("webhook", [[503, 429, 500]], indirect=True)
def test_a_slack_webhook_gets_text_after_retries_on_5xx_and_429_and_its_path_stays_hidden(webhook, monkeypatch,
                                                                                           capsys):  # fmt: skip
    monkeypatch.setenv("SLACK_WEBHOOK_URL", f"{webhook.url}{SECRET_PATH}")
    settings = AlertsConfig(webhook_url_env="SLACK_WEBHOOK_URL", webhook_format="slack", retries=3)
    batch = [
        Alert("drift", "churn", "2", summary="3 of 5 columns drifted", run_url="https://kfp.example/run/9"),
        Alert("failed", "churn", summary="the monitoring run failed", description="performance: timeout"),
    ]
    [delivery] = alerts.send(settings, batch, sleep=no_sleep)
    assert (delivery.delivered, delivery.attempts, delivery.status) == (True, 4, 200)
    assert len(webhook.requests) == 4 and all(path == SECRET_PATH for path, _ in webhook.requests)
    assert webhook.requests[-1][1] == {"text": (
        "[WARNING] KfpMlopsDrift: model churn version 2: 3 of 5 columns drifted\n<https://kfp.example/run/9|the run>"
        "\n\n[CRITICAL] KfpMlopsMonitoringFailed: model churn: the monitoring run failed\nperformance: timeout"
    )}  # fmt: skip
    out = capsys.readouterr().out
    assert out.count("[alerts]") == 1 and "SECRET" not in out


@pytest.mark.parametrize("webhook", [[404]], indirect=True)
def test_a_refused_webhook_is_reported_once_without_its_path(webhook, monkeypatch, capsys):
    monkeypatch.setenv("SLACK_WEBHOOK_URL", f"{webhook.url}{SECRET_PATH}")
    settings = AlertsConfig(webhook_url_env="SLACK_WEBHOOK_URL", webhook_format="slack", retries=2)
    [delivery] = alerts.send(settings, [Alert("drift", "churn", "2")], sleep=no_sleep)
    assert (delivery.delivered, delivery.attempts, delivery.status) == (False, 1, 404)
    assert "SECRET" not in delivery.error and "SECRET" not in delivery.url
    out = capsys.readouterr().out
    assert out.count("[alerts]") == 1 and "HTTP 404" in out and "SECRET" not in out


def test_a_webhook_url_with_credentials_sends_them_as_basic_auth_and_never_prints_them(webhook, monkeypatch, capsys):
    host = webhook.url.removeprefix("http://")
    monkeypatch.setenv("ALERT_WEBHOOK", f"http://hook:pw-s3cret@{host}/hook")
    [delivery] = alerts.send(AlertsConfig(webhook_url_env="ALERT_WEBHOOK"), [Alert("drift", "churn")])
    assert delivery.delivered and webhook.authorizations == ["Basic " + base64.b64encode(b"hook:pw-s3cret").decode()]
    assert "s3cret" not in capsys.readouterr().out


def test_a_malformed_webhook_url_is_reported_not_raised(monkeypatch, capsys):
    monkeypatch.setenv("ALERT_WEBHOOK", "http://[::1/hook")
    [delivery] = alerts.send(AlertsConfig(webhook_url_env="ALERT_WEBHOOK"), [Alert("drift", "churn")])
    assert (delivery.delivered, delivery.attempts) == (False, 0)
    assert capsys.readouterr().out.count("[alerts]") == 1


def test_a_webhook_variable_that_is_not_set_is_reported(monkeypatch, capsys):
    monkeypatch.delenv("KFP_MLOPS_TEST_WEBHOOK", raising=False)
    [delivery] = alerts.send(AlertsConfig(webhook_url_env="KFP_MLOPS_TEST_WEBHOOK"), [Alert("drift", "churn")])
    assert (delivery.delivered, delivery.attempts) == (False, 0)
    assert "KFP_MLOPS_TEST_WEBHOOK" in delivery.error and "is not set" in capsys.readouterr().out


def test_urls_are_printed_without_credentials_query_or_secret_path():
    url = "https://hook:pw@hooks.slack.com:8443/services/T0/B0/XXX?token=q#f"
    assert alerts.display_url(url) == "https://hooks.slack.com:8443"
    assert alerts.display_url("http://u:p@am.monitoring:9093/prefix/api/v2/alerts?x=1", keep_path=True) == (
        "http://am.monitoring:9093/prefix/api/v2/alerts"
    )
    assert alerts.resolve_run_url(AlertsConfig(), "http://kfp/runs/{run_id}", "r1") == "http://kfp/runs/r1"
    assert alerts.resolve_run_url(AlertsConfig(run_url="http://ui/{run_id}"), "http://kfp/{run_id}", "r1") == (
        "http://ui/r1"
    )
