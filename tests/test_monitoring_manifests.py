"""manifests/monitoring/: the Prometheus Operator objects (PodMonitor for Triton, ServiceMonitor for the Pushgateway,
PrometheusRules), the plain Prometheus configuration and the Grafana dashboard.

What runs for real here: promtool 2.42 (unit tests of every alert, a firing and a non-firing case each, and a broken
rule that must fail them; `check rules`; `check config`), kubectl kustomize, the Operator kinds validated against the
Operator's own CRD schemas (tests/support/prometheus_operator.py), and a real Prometheus scraping a real local Triton
2.51 under a predict load, with the rules loaded and their expressions evaluated through the query API; every
dashboard expression is parsed by that Prometheus; the same Prometheus setup scrapes a real Pushgateway the way
prometheus-scrape.yaml says and alerts on pushed verdicts. Not here: the Operator itself, Grafana, Kubernetes discovery.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient
import yaml
from support.manifests import MANIFESTS, documents, kustomize, selector_matches, validate_document
from support.prometheus import PrometheusServer, promtool, rule_file, running_prometheus
from support.triton import sample_inputs, signature_model

from kfp_mlops import monitoring_services, triton_local
from kfp_mlops.components.shared import layout, observability
from kfp_mlops.components.shared.config import ObservabilityConfig
from kfp_mlops.pipelines import monitoring
from kfp_mlops.processes import free_ports, wait_until

pytestmark = pytest.mark.timeout(120)

MONITORING = MANIFESTS / "monitoring"
RULE_FILES = ("triton-rules", "pipeline-rules")  # each <name>.yaml (PrometheusRule) has <name>.test.yaml
TRITON_JOB = "kfp-mlops-triton"
PUSH_JOB = "kfp-mlops"  # observability.job (components/shared/config.py ObservabilityConfig)
# What the pipeline steps push (grouping labels job, pipeline, task, model): the contract of issue 18.
PUSHED_GAUGES = {
    "kfp_mlops_step_duration_seconds", "kfp_mlops_step_rows", "kfp_mlops_step_last_success_timestamp_seconds",
    "kfp_mlops_drift_detected", "kfp_mlops_drift_share", "kfp_mlops_performance_degraded",
    "kfp_mlops_performance_matched_rows", "kfp_mlops_model_metric", "kfp_mlops_blessed", "kfp_mlops_deployed_version",
    "kfp_mlops_monitoring_run_failed",
}  # fmt: skip
# Triton 2.51's metrics the rules and dashboard read (seen on the local Triton's /metrics in test_prometheus_scrapes_
# ...; nv_gpu_utilization only where there is a GPU: triton-inference-server/server docs/user_guide/metrics.md).
TRITON_METRICS = {
    "nv_inference_request_summary_us", "nv_inference_request_success", "nv_inference_request_failure",
    "nv_inference_count", "nv_inference_queue_duration_us", "nv_inference_pending_request_count",
}  # fmt: skip
GPU_METRICS = {"nv_gpu_utilization"}
ALERTS = {
    "triton-rules": {
        "KfpMlopsTritonP99LatencyHigh", "KfpMlopsTritonErrorRateHigh", "KfpMlopsTritonQueueTimeHigh",
        "KfpMlopsTritonDown", "KfpMlopsTritonNoModelReady", "KfpMlopsTritonGpuUtilizationHigh",
    },
    "pipeline-rules": {
        "KfpMlopsDriftDetected", "KfpMlopsPerformanceDegraded", "KfpMlopsMonitoringRunFailed",
        "KfpMlopsMonitoringStale",
    },
}  # fmt: skip
SUMMARY_LATENCIES = "--metrics-config=summary_latencies=true"
GRAFANA_MACROS = {"$__rate_interval": "1m", "$__interval": "1m", "$model": ".*"}  # what Grafana substitutes


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    return documents(kustomize(MONITORING))


@pytest.fixture(scope="module")
def triton_docs() -> list[dict[str, Any]]:
    return documents(kustomize(MANIFESTS / "triton" / "gpu"))


def prometheus_rule(name: str) -> dict[str, Any]:
    return yaml.safe_load((MONITORING / f"{name}.yaml").read_text())


def alerts(rule: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for group in rule["spec"]["groups"] for r in group["rules"] if "alert" in r}


def unit_test_dir(name: str, directory: Path, rule: dict[str, Any] | None = None) -> Path:
    """``directory`` with the rule's ``spec`` as <name>.rules.yaml and its unit-test file beside it."""
    rule_file(rule or prometheus_rule(name), directory / f"{name}.rules.yaml")
    shutil.copy(MONITORING / f"{name}.test.yaml", directory)
    return directory


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (names followed by a selector, a range or a closing parenthesis)."""
    without_strings = re.sub(r'"[^"]*"', '""', expr)
    words = set(re.findall(r"\b([a-z_][a-z0-9_]*)\b\s*(?=\{|\[|\)|$)", without_strings))
    return {w for w in words if w.startswith(("nv_", "kfp_mlops_")) or w == "up"}


# --- the rules: promtool unit tests, check rules, and a broken rule that fails ------------------------------------


@pytest.mark.parametrize("name", RULE_FILES)
def test_each_rule_file_passes_its_promtool_unit_tests(name, tmp_path):
    result = promtool("test", "rules", f"{name}.test.yaml", cwd=unit_test_dir(name, tmp_path))
    assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr


@pytest.mark.parametrize("name", RULE_FILES)
def test_promtool_checks_the_rules_extracted_from_each_prometheus_rule(name, tmp_path):
    rule = prometheus_rule(name)
    result = promtool("check", "rules", str(rule_file(rule, tmp_path / f"{name}.rules.yaml")), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alerts(rule))} rules found" in result.stdout


@pytest.mark.parametrize("name", RULE_FILES)
def test_every_alert_is_there_with_a_firing_and_a_non_firing_unit_test(name):
    assert set(alerts(prometheus_rule(name))) == ALERTS[name]
    unit_tests = yaml.safe_load((MONITORING / f"{name}.test.yaml").read_text())
    assert unit_tests["rule_files"] == [f"{name}.rules.yaml"]
    cases = [case for test in unit_tests["tests"] for case in test.get("alert_rule_test", [])]
    for alert in ALERTS[name]:
        outcomes = {bool(case["exp_alerts"]) for case in cases if case["alertname"] == alert}
        assert outcomes == {True, False}, f"{alert}: needs a firing and a non-firing case"


BROKEN_RULES = {  # id: (rule file, alert, field, text, replacement): a plausible mistake each unit test must catch
    "p99-wrong-quantile": ("triton-rules", "KfpMlopsTritonP99LatencyHigh", "expr", 'quantile="0.99"', 'quantile="0.5"'),
    "error-threshold": ("triton-rules", "KfpMlopsTritonErrorRateHigh", "expr", "> 0.05", "> 0.5"),
    "queue-per-row": ("triton-rules", "KfpMlopsTritonQueueTimeHigh", "expr", "nv_inference_request_success",
                      "nv_inference_count"),
    "down-not-absent": ("triton-rules", "KfpMlopsTritonDown", "expr", ' or absent(up{job="kfp-mlops-triton"})', ""),
    "no-model-inverted": ("triton-rules", "KfpMlopsTritonNoModelReady", "expr", "unless", "and"),
    "gpu-for-too-long": ("triton-rules", "KfpMlopsTritonGpuUtilizationHigh", "for", "30m", "60m"),
    "drift-inverted": ("pipeline-rules", "KfpMlopsDriftDetected", "expr", "== 1", "== 0"),
    "performance-wrong-job": ("pipeline-rules", "KfpMlopsPerformanceDegraded", "expr", 'job="kfp-mlops"',
                              'job="kfp-mlops-pushgateway"'),
    "failed-loses-model": ("pipeline-rules", "KfpMlopsMonitoringRunFailed", "expr", "by (pipeline, model)",
                           "by (pipeline)"),
    "stale-too-late": ("pipeline-rules", "KfpMlopsMonitoringStale", "expr", "26 * 3600", "28 * 3600"),
}  # fmt: skip


def test_every_alert_has_a_broken_copy_below():
    assert {(name, alert) for name, alert, *_ in BROKEN_RULES.values()} == {
        (name, alert) for name, names in ALERTS.items() for alert in names
    }


@pytest.mark.parametrize("case", BROKEN_RULES)
def test_a_broken_rule_fails_its_unit_tests(case, tmp_path):
    """The unit tests can fail: each alert, broken in a plausible way, fails promtool naming that alert."""
    name, alert, field, old, new = BROKEN_RULES[case]
    broken = copy.deepcopy(prometheus_rule(name))
    target = alerts(broken)[alert]
    assert old in str(target[field]), (alert, field, old)
    target[field] = str(target[field]).replace(old, new)
    result = promtool("test", "rules", f"{name}.test.yaml", cwd=unit_test_dir(name, tmp_path, broken))
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "FAILED" in output, output
    assert f"alertname: {alert}," in output, output


def test_the_rules_read_the_pushed_contract_and_tritons_metrics_only():
    pipeline = alerts(prometheus_rule("pipeline-rules"))
    for alert, rule in pipeline.items():
        assert metric_names(rule["expr"]) <= PUSHED_GAUGES, alert
        assert f'job="{PUSH_JOB}"' in rule["expr"], alert
    stale = pipeline["KfpMlopsMonitoringStale"]["expr"]
    assert (
        f'pipeline="{monitoring.PIPELINE_NAME}"' in stale and "kfp_mlops_step_last_success_timestamp_seconds" in stale
    )
    for alert, rule in alerts(prometheus_rule("triton-rules")).items():
        assert metric_names(rule["expr"]) <= TRITON_METRICS | GPU_METRICS | {"up"}, alert
        assert f'job="{TRITON_JOB}"' in rule["expr"], alert


# --- the kustomization: builds, validates against the Operator's CRDs, selects what Triton exposes ----------------


def test_kustomization_builds_and_every_document_validates_against_its_schema(rendered):
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in rendered)
    assert kinds == [
        ("ConfigMap", "kfp-mlops-dashboard"), ("PodMonitor", "kfp-mlops-triton"),
        ("PrometheusRule", "kfp-mlops-pipeline"), ("PrometheusRule", "kfp-mlops-triton"),
        ("ServiceMonitor", "kfp-mlops-pushgateway"),
    ]  # fmt: skip
    for document in rendered:
        validate_document(document)
        assert document["metadata"]["namespace"] == "kfp-mlops-serving"
    top_level = documents(kustomize(MANIFESTS))  # no Operator CRDs needed to apply the platform
    assert not [d for d in top_level if d["apiVersion"].startswith("monitoring.coreos.com/")]


@pytest.mark.parametrize(
    ("kind", "mutate", "message"),
    [
        ("ServiceMonitor", lambda s: s["endpoints"][0].update(honorLabel=True), "'honorLabel' was unexpected"),
        ("PodMonitor", lambda s: s.update(podMetricEndpoints=s.pop("podMetricsEndpoints")),
         "'podMetricEndpoints' was unexpected"),
        ("PodMonitor", lambda s: s["podMetricsEndpoints"][0].update(interval="15 seconds"), "does not match"),
        ("PrometheusRule", lambda s: s["groups"][0]["rules"][0].update(alert_name="x"), "'alert_name' was unexpected"),
        ("PrometheusRule", lambda s: s["groups"][0].pop("name"), "'name' is a required property"),
    ],
    ids=["servicemonitor-field", "podmonitor-field", "podmonitor-interval", "rule-field", "group-name"],
)  # fmt: skip
def test_operator_kind_validation_rejects_what_the_crd_would(rendered, kind, mutate, message):
    broken = copy.deepcopy(next(d for d in rendered if d["kind"] == kind))
    mutate(broken["spec"])
    with pytest.raises(ValueError, match=message):
        validate_document(broken)
    with pytest.raises(ValueError, match="no vendored CRD schema"):
        validate_document({**broken, "kind": "Probe"})


def test_monitors_scrape_tritons_metrics_port_and_the_pushgateway_with_its_labels(rendered, triton_docs):
    (pod_monitor,) = [d for d in rendered if d["kind"] == "PodMonitor"]
    deployment = next(d for d in triton_docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "triton")
    template = deployment["spec"]["template"]
    assert selector_matches(pod_monitor["spec"]["selector"], template["metadata"]["labels"])
    (endpoint,) = pod_monitor["spec"]["podMetricsEndpoints"]
    (container,) = template["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports[endpoint["port"]] == 8002 and "--metrics-port=8002" in container["args"]
    assert {"targetLabel": "job", "replacement": TRITON_JOB} in endpoint["relabelings"]
    assert SUMMARY_LATENCIES in container["args"]  # the p99 rule and panel need the summaries
    policy = next(d for d in triton_docs if d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == "triton")
    metrics_rules = [r for r in policy["spec"]["ingress"] if r["ports"] == [{"protocol": "TCP", "port": 8002}]]
    assert metrics_rules, "Prometheus needs a way in to the metrics port"
    (service_monitor,) = [d for d in rendered if d["kind"] == "ServiceMonitor"]
    (endpoint,) = service_monitor["spec"]["endpoints"]
    assert endpoint["honorLabels"] is True and endpoint["port"] == "http"


def test_plain_prometheus_config_scrapes_the_same_jobs_and_passes_promtool(tmp_path, triton_docs):
    shutil.copy(MONITORING / "prometheus-scrape.yaml", tmp_path)
    for name in RULE_FILES:
        rule_file(prometheus_rule(name), tmp_path / f"{name}.rules.yaml")
    result = promtool("check", "config", "prometheus-scrape.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load((MONITORING / "prometheus-scrape.yaml").read_text())
    assert config["rule_files"] == [f"{name}.rules.yaml" for name in RULE_FILES]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {TRITON_JOB, "kfp-mlops-pushgateway"}
    assert jobs["kfp-mlops-pushgateway"]["honor_labels"] is True
    (dns,) = jobs[TRITON_JOB]["dns_sd_configs"]
    headless = next(d for d in triton_docs if d["kind"] == "Service" and d["metadata"]["name"] == "triton-pods")
    assert headless["spec"]["clusterIP"] == "None" and headless["spec"]["publishNotReadyAddresses"] is True
    assert dns["names"] == [f"triton-pods.{headless['metadata']['namespace']}.svc.cluster.local"]
    assert dns["port"] == 8002


# --- the Grafana dashboard ----------------------------------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    return json.loads((MONITORING / "kfp-mlops-dashboard.json").read_text())


def panel_queries(board: dict[str, Any]) -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in board["panels"] for t in p.get("targets", [])]


def grafana_substituted(expr: str) -> str:
    for macro, value in GRAFANA_MACROS.items():
        expr = expr.replace(macro, value)
    assert "$" not in expr, f"an unknown Grafana variable in {expr}"
    return expr


def test_dashboard_is_what_the_grafana_sidecar_and_provisioning_load(rendered):
    """What Grafana's dashboard sidecar loads (kiwigrid/k8s-sidecar as the grafana chart runs it: ConfigMaps labelled
    sidecar.dashboards.label, grafana_dashboard, value "1" in kube-prometheus-stack; each *.json key a file) and the
    dashboard JSON model (grafana/grafana docs/sources/dashboards/build-dashboards/view-dashboard-json-model/
    index.md: id null until saved, uid a string of 8 to 40, an integer schemaVersion, panels on the 24-column grid
    with w 1-24), with every query on the dashboard's Prometheus data source variable. Grafana does not run here, and
    no JSON Schema of the dashboard model was found to validate against offline: this is its documented structure."""
    (config_map,) = [d for d in rendered if d["kind"] == "ConfigMap"]
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["data"] == {"kfp-mlops-dashboard.json": (MONITORING / "kfp-mlops-dashboard.json").read_text()}
    board = dashboard()
    assert "id" not in board or board["id"] is None  # provisioning assigns it
    assert re.fullmatch(r"[a-zA-Z0-9_-]{8,40}", board["uid"]) and board["title"]
    assert isinstance(board["schemaVersion"], int) and board["schemaVersion"] >= 36
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert {"$" + name for name in variables} - {"$datasource"} <= set(GRAFANA_MACROS)
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert {"h", "w", "x", "y"} <= set(grid) and 1 <= grid["w"] <= 24, panel["title"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24 and grid["h"] >= 1, panel["title"]
        assert panel["type"] in {"row", "timeseries", "stat", "state-timeline", "table"}, panel["type"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert panel["targets"] and len(refs) == len(set(refs)) and all(t["expr"].strip() for t in panel["targets"])


def test_dashboard_shows_serving_verdicts_and_steps_from_the_real_metric_names():
    queries = panel_queries(dashboard())
    used = set().union(*(metric_names(expr) for _, expr in queries))
    assert used <= TRITON_METRICS | GPU_METRICS | PUSHED_GAUGES | {"up"}, used - TRITON_METRICS - PUSHED_GAUGES
    expressions = " ".join(expr for _, expr in queries)
    needed = ['quantile="0.5"', 'quantile="0.99"', "rate(nv_inference_request_success", "nv_inference_request_failure",
              "nv_inference_queue_duration_us", "nv_gpu_utilization", "kfp_mlops_drift_detected",
              "kfp_mlops_performance_degraded", "kfp_mlops_step_duration_seconds"]  # fmt: skip
    for part in needed:
        assert part in expressions, part
    assert PUSHED_GAUGES <= used, PUSHED_GAUGES - used  # every pushed figure is on a panel


# --- a real Prometheus scraping a real Triton ---------------------------------------------------------------------


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=2) as response:
        return response.read()


@pytest.fixture(scope="module")
def triton_and_prometheus(tmp_path_factory) -> Iterator[tuple[httpclient.InferenceServerClient, PrometheusServer]]:
    """A local Triton 2.51 started as the cluster's (explicit model control, summary latencies on, no model loaded
    yet) and a Prometheus scraping its metrics port every second as job kfp-mlops-triton, with the Triton rules
    loaded."""
    root = tmp_path_factory.mktemp("monitoring")
    repository, state = root / "repository", root / "triton"
    state.mkdir()
    triton_local.add_onnx_model(repository, "churn", signature_model(root / "churn.onnx"), dynamic_batching={})
    install = triton_local.ensure_venv()
    http_port, grpc_port, metrics_port = free_ports(3)
    command = [
        str(install.tritonserver), f"--model-repository={repository}",
        f"--backend-directory={triton_local.backends_dir(install, state)}", "--model-control-mode=explicit",
        "--http-address=127.0.0.1", f"--http-port={http_port}", "--grpc-address=127.0.0.1", f"--grpc-port={grpc_port}",
        "--metrics-address=127.0.0.1", f"--metrics-port={metrics_port}", "--allow-gpu-metrics=false",
        "--exit-timeout-secs=5", SUMMARY_LATENCIES,
    ]  # fmt: skip
    log = state / "tritonserver.log"
    process = triton_local.spawn(command, log, triton_local.server_env(install, os.environ))
    try:
        wait_until(lambda: _get(f"http://127.0.0.1:{http_port}/v2/health/ready"), "tritonserver", process, log, 60)
        rules = root / "prometheus"
        rules.mkdir()
        rule_file(prometheus_rule("triton-rules"), rules / "triton-rules.rules.yaml")
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": ["triton-rules.rules.yaml"],
            "scrape_configs": [{
                "job_name": TRITON_JOB,
                "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"],
                                    "labels": {"namespace": "kfp-mlops-serving"}}],
            }],
        }  # fmt: skip
        with running_prometheus(config, rules) as prometheus:
            yield httpclient.InferenceServerClient(f"127.0.0.1:{http_port}"), prometheus
    finally:
        triton_local.stop_process(process.pid, timeout=15)


def poll(prometheus: PrometheusServer, expr: str, done, timeout: float = 20) -> list[dict[str, Any]]:
    """Query ``expr`` until ``done(result)`` holds; its last result. Bounded by ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = prometheus.series(expr)
        if done(result) or time.monotonic() > deadline:
            return result
        time.sleep(0.5)


def value(result: list[dict[str, Any]]) -> float:
    return sum(float(sample["value"][1]) for sample in result)


def without_threshold(expr: str) -> str:
    """An alert's expression without its final comparison: the figure the alert judges."""
    stripped, count = re.subn(r"\s*>\s*[0-9.e*\s]+$", "", expr.strip())
    assert count == 1, expr
    return stripped


@pytest.mark.servers
def test_prometheus_scrapes_triton_under_load_and_the_triton_rules_evaluate(triton_and_prometheus):
    client, prometheus = triton_and_prometheus
    rules = alerts(prometheus_rule("triton-rules"))
    up = poll(prometheus, f'up{{job="{TRITON_JOB}"}}', lambda r: value(r) == 1)
    assert value(up) == 1, "Prometheus does not scrape Triton's metrics port"
    # Up with no model loaded: the no-model rule's expression selects the pod; nothing else has series yet.
    no_model = poll(prometheus, rules["KfpMlopsTritonNoModelReady"]["expr"], bool)
    assert [s["metric"]["job"] for s in no_model] == [TRITON_JOB]

    client.load_model("churn")
    loaded = poll(prometheus, f'nv_inference_count{{job="{TRITON_JOB}", model="churn"}}', bool)
    assert loaded and value(loaded) == 0
    assert poll(prometheus, rules["KfpMlopsTritonNoModelReady"]["expr"], lambda r: not r) == []

    inputs = sample_inputs(rows=8)
    sent, deadline = 0, time.monotonic() + 10
    while sent < 400 and time.monotonic() < deadline:  # predict requests through tritonclient, a batch of 8 each
        result = client.infer("churn", layout.infer_inputs(httpclient, inputs))
        assert np.isfinite(result.as_numpy("probabilities")).all()
        sent += len(inputs["numeric"])
    assert sent >= 200, f"only {sent} rows predicted in 10 s"
    rising = poll(prometheus, f'nv_inference_count{{job="{TRITON_JOB}"}}', lambda r: value(r) >= sent)
    assert value(rising) == sent, "nv_inference_count did not rise by the rows predicted"
    rated = poll(prometheus, f'rate(nv_inference_request_success{{job="{TRITON_JOB}"}}[5m])', lambda r: value(r) > 0)
    assert value(rated) > 0

    # The alerts' figures on real series: p99 latency (ms), error rate (none failed), queue time per request (ms).
    figures = {}
    for alert in ("KfpMlopsTritonP99LatencyHigh", "KfpMlopsTritonErrorRateHigh", "KfpMlopsTritonQueueTimeHigh"):
        result = poll(prometheus, without_threshold(rules[alert]["expr"]), bool)
        assert [(s["metric"]["model"], s["metric"]["namespace"]) for s in result] == [("churn", "kfp-mlops-serving")]
        figures[alert] = float(result[0]["value"][1])
    assert 0 < figures["KfpMlopsTritonP99LatencyHigh"] < 60_000
    assert figures["KfpMlopsTritonErrorRateHigh"] == 0
    assert 0 <= figures["KfpMlopsTritonQueueTimeHigh"] < 60_000
    for alert in ("KfpMlopsTritonErrorRateHigh", "KfpMlopsTritonDown", "KfpMlopsTritonNoModelReady"):
        assert prometheus.series(rules[alert]["expr"]) == [], f"{alert} selects a healthy Triton"
    assert prometheus.series(without_threshold(rules["KfpMlopsTritonGpuUtilizationHigh"]["expr"])) == []  # no GPU
    # Prometheus itself loaded and evaluates the rule file
    (group,) = json.loads(_get(f"{prometheus.url}/api/v1/rules"))["data"]["groups"]
    assert {r["name"] for r in group["rules"]} == ALERTS["triton-rules"]
    assert all(r["health"] in ("ok", "unknown") for r in group["rules"]), group["rules"]


@pytest.mark.servers
def test_every_dashboard_query_parses_in_prometheus_and_the_serving_panels_have_data(triton_and_prometheus):
    client, prometheus = triton_and_prometheus
    status, body = prometheus.query("sum by (model (nv_inference_count)")  # the check can fail: a parse error
    assert status == 400 and body["errorType"] == "bad_data"
    for title, expr in panel_queries(dashboard()):
        status, body = prometheus.query(grafana_substituted(expr))
        assert status == 200 and body["status"] == "success", (title, expr, body)
    client.load_model("churn")  # (again, if the test above ran) and a little traffic: the serving panels show it
    for _ in range(20):
        client.infer("churn", layout.infer_inputs(httpclient, sample_inputs(rows=4)))
    serving = [(title, expr) for title, expr in panel_queries(dashboard())
               if metric_names(expr) <= TRITON_METRICS | {"up"}]  # fmt: skip
    assert len(serving) >= 6
    for title, expr in serving:
        assert poll(triton_and_prometheus[1], grafana_substituted(expr), bool), f"{title}: no data from {expr}"


@pytest.mark.servers
def test_pushed_verdicts_reach_the_pipeline_rules_only_with_honor_labels(tmp_path):
    """A real Pushgateway scraped with prometheus-scrape.yaml's own job (honor_labels) and, for contrast, the same
    job without honor_labels; verdicts pushed as the steps push them (grouping job, pipeline, task, model)."""
    rules = alerts(prometheus_rule("pipeline-rules"))
    with monitoring_services.pushgateway(tmp_path / "pushgateway") as pushgateway:
        address = pushgateway.bucket.removeprefix("http://")
        settings = ObservabilityConfig(pushgateway=pushgateway.bucket, job=PUSH_JOB)
        group = {"pipeline": monitoring.PIPELINE_NAME, "task": "drift-check"}
        figures = {observability.DRIFT_DETECTED: 1, observability.DRIFT_SHARE: 0.4,
                   observability.STEP_LAST_SUCCESS: time.time()}  # fmt: skip
        assert observability.push(settings, **group, model="churn", figures=figures)  # as the drift step pushes
        assert observability.push(settings, **group, model="fraud", figures={observability.DRIFT_DETECTED: 0})
        plain = yaml.safe_load((MONITORING / "prometheus-scrape.yaml").read_text())
        (job,) = [j for j in plain["scrape_configs"] if j["job_name"] == "kfp-mlops-pushgateway"]
        job = {**job, "scrape_interval": "1s", "static_configs": [{"targets": [address]}]}
        contrast = {**job, "job_name": "without-honor-labels", "honor_labels": False}
        rule_file(prometheus_rule("pipeline-rules"), tmp_path / "pipeline-rules.rules.yaml")
        config = {"global": {"evaluation_interval": "1s"}, "rule_files": ["pipeline-rules.rules.yaml"],
                  "scrape_configs": [job, contrast]}  # fmt: skip
        with running_prometheus(config, tmp_path) as prometheus:
            drift = poll(prometheus, rules["KfpMlopsDriftDetected"]["expr"], bool)
            assert [s["metric"] for s in drift] == [{"pipeline": monitoring.PIPELINE_NAME, "model": "churn"}]
            renamed = poll(prometheus, 'kfp_mlops_drift_detected{job="without-honor-labels"}', lambda r: len(r) == 2)
            assert {s["metric"]["exported_job"] for s in renamed} == {PUSH_JOB}  # job= would not match the rules
            fresh = prometheus.series(without_threshold(rules["KfpMlopsMonitoringStale"]["expr"]))
            assert len(fresh) == 1 and float(fresh[0]["value"][1]) < 60
            assert prometheus.series(rules["KfpMlopsMonitoringStale"]["expr"]) == []

            def firing(result: Any) -> bool:
                return any(a["labels"]["alertname"] == "KfpMlopsDriftDetected" and a["state"] == "firing"
                           for a in result)  # fmt: skip

            deadline = time.monotonic() + 20
            while not firing(found := json.loads(_get(f"{prometheus.url}/api/v1/alerts"))["data"]["alerts"]):
                assert time.monotonic() < deadline, found
                time.sleep(0.5)
            (alert,) = [a for a in found if a["labels"]["alertname"] == "KfpMlopsDriftDetected"]
            assert alert["labels"]["model"] == "churn" and alert["annotations"]["summary"] == (
                f"Drift in the data of churn ({monitoring.PIPELINE_NAME})"
            )
