"""The monitoring pipeline's own actions, outside kfp.local: retraining through the KFP API (the real kfp.Client
against ``FakeKfpApiServer``, a test double of the v2beta1 REST API), the drift step's preconditions, and the outcome
report. The whole pipeline runs from its compiled YAML in tests/test_local_run.py."""

from __future__ import annotations

import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests
import yaml
from support.configs import config_document
from support.kfp_api_server import FakeKfpApiServer

from kfp_mlops.components.drift import executor
from kfp_mlops.components.shared import kfp_api, outcomes
from kfp_mlops.components.shared.errors import InputError

RUN_ID = "monitoring-run-1"


def backend_artifact(tmp_path: Path, task: str, name: str) -> SimpleNamespace:
    """An output artifact where the KFP backend puts it: <root>/<pipeline>/<run id>/<task>/<salt>/<name>
    (backend/src/v2/driver/driver.go provisionOutputs), the pipeline root being a local folder here."""
    uri = str(tmp_path / "root" / "kfp-mlops-monitoring" / RUN_ID / task / uuid.uuid4().hex / name)
    Path(uri).parent.mkdir(parents=True)
    return SimpleNamespace(uri=uri, path=uri, metadata={})


def config_text(**sections) -> str:
    return yaml.safe_dump(config_document("s3://bucket/window/", **sections))


@pytest.fixture
def kfp_server(kfp_server, golden_package):
    """The KFP API test double (tests/conftest.py) with the training pipeline uploaded."""
    kfp_api.upload_pipeline(kfp_api.connect(kfp_api.Connection(host=kfp_server.url)), golden_package)
    return kfp_server


def monitoring(server: FakeKfpApiServer) -> dict:
    return {"retrain": "kfp_api", "kfp_host": server.url, "training_pipeline": "kfp-mlops-training",
            "poll_seconds": 0.01}  # fmt: skip


@pytest.mark.timeout(60)
def test_retraining_through_the_kfp_api_runs_the_uploaded_training_pipeline_and_waits_for_it(kfp_server, tmp_path):
    kfp_server.run_progress = ["RUNNING", "RUNNING", "SUCCEEDED"]
    config = config_text(monitoring=monitoring(kfp_server))
    training_run = backend_artifact(tmp_path, "submit-training", "training_run")
    state = executor.submit_training(config, "s3://bucket/window/2026-11-28/", RUN_ID, training_run)
    assert state == "SUCCEEDED"
    (run,) = kfp_server.runs.values()
    (version,) = kfp_server.versions_of(next(iter(kfp_server.pipelines)))
    assert run["pipeline_version_reference"]["pipeline_version_id"] == version["pipeline_version_id"]
    parameters = run["runtime_config"]["parameters"]
    assert parameters["data_source"] == "s3://bucket/window/2026-11-28/"
    assert yaml.safe_load(parameters["config"])["monitoring"]["retrain"] == "kfp_api"  # the run's own config
    assert training_run.metadata == {"run_id": run["run_id"], "state": "SUCCEEDED"}
    # the exit handler, another task of the run, finds it through its own output's URI
    outcome = backend_artifact(tmp_path, "report-outcome", "outcome")
    executor.report(config, RUN_ID, "SUCCEEDED", "", outcome)
    assert f"- Retrained: yes, training run {run['run_id']} (SUCCEEDED)" in Path(outcome.path).read_text()
    assert outcome.metadata["retrain"] == {"run_id": run["run_id"], "state": "SUCCEEDED"}


@pytest.mark.timeout(60)
def test_a_training_run_that_fails_fails_the_monitoring_step_naming_it(kfp_server, tmp_path):
    kfp_server.run_progress = ["RUNNING", "FAILED"]
    with pytest.raises(RuntimeError, match=r"the training run \S+ ended FAILED"):
        executor.submit_training(config_text(monitoring=monitoring(kfp_server)), "s3://b/w/", RUN_ID,
                                 backend_artifact(tmp_path, "submit-training", "training_run"))  # fmt: skip


@pytest.mark.timeout(60)
def test_a_training_run_past_the_wait_timeout_is_cancelled_and_fails_the_step(kfp_server, tmp_path):
    kfp_server.run_progress = ["RUNNING"]
    settings = monitoring(kfp_server) | {"wait_timeout_seconds": 0.2}
    with pytest.raises(kfp_api.KfpApiError, match=r"still RUNNING after .*\(timeout 0.2 s\); cancelled run"):
        executor.submit_training(config_text(monitoring=settings), "s3://b/w/", RUN_ID,
                                 backend_artifact(tmp_path, "submit-training", "training_run"))  # fmt: skip
    (run,) = kfp_server.runs.values()
    assert run["state"] == "CANCELING"


def test_retraining_through_the_kfp_api_needs_its_host_and_an_uploaded_pipeline(kfp_server, tmp_path):
    with pytest.raises(InputError, match="monitoring.kfp_host is empty"):
        executor.submit_training(config_text(monitoring={"retrain": "kfp_api"}), "s3://b/w/", "", None)
    missing = monitoring(kfp_server) | {"training_pipeline": "not-uploaded"}
    with pytest.raises(kfp_api.KfpApiError, match="no pipeline named 'not-uploaded' is uploaded"):
        executor.submit_training(config_text(monitoring=missing), "s3://b/w/", "", None)


def test_kfp_api_errors_in_the_step_name_its_config_keys_not_cli_flags(tmp_path):
    with FakeKfpApiServer(multi_user=True) as server:
        with pytest.raises(kfp_api.KfpApiError, match="multi-user deployment: pass monitoring.kfp_namespace") as info:
            executor.submit_training(config_text(monitoring=monitoring(server)), "s3://b/w/", "", None)
    assert "--" not in str(info.value)
    with pytest.raises(ValueError, match="monitoring.kfp_host 'kfp.example.com': expected a URL"):
        executor.submit_training(config_text(monitoring={"retrain": "kfp_api", "kfp_host": "kfp.example.com"}),
                                 "s3://b/w/", "", None)  # fmt: skip


def test_the_drift_check_needs_a_model_that_serves_and_says_so(tmp_path):
    config = config_text(evaluate={"baseline": str(tmp_path / "record.json")})
    artifact = SimpleNamespace(path=str(tmp_path / "x"), metadata={})
    with pytest.raises(InputError, match=r"serving record .*record.json: no model serves yet.*run the training"):
        executor.run(config, [artifact], "", artifact, artifact, artifact)
    assert not list(tmp_path.iterdir())


def drift(drifted: bool, share: float, columns: list[str]) -> dict:
    return {"drifted": drifted, "share": share, "drifted_columns": columns, "reference": "s3://r",
            "serving_model": "s3://m", "action": "nested" if drifted else "none"}  # fmt: skip


@pytest.mark.parametrize(
    ("facts", "state", "expected"),
    [
        ({}, "FAILED", ["- Run: FAILED (ingest failed)", "- Retrained: no", "- Deployed: no",
                        "- Drift: not checked (the run stopped before the drift check)"]),
        ({"drift": drift(False, 0.1, ["age"])}, "SUCCEEDED",
         ["- Drift: no (10% of columns; age)", "- Retrained: no", "- Deployed: no"]),
        ({"drift": drift(True, 0.6, ["age", "plan"]),
          "evaluate": {"blessed": False, "reasons": ["roc_auc 0.5 is below the threshold 0.6"], "metrics": {}}},
         "SUCCEEDED",
         ["- Drift: yes (60% of columns; age, plan)", "- Retrained: yes, in this run",
          "- Blessed: no: roc_auc 0.5 is below the threshold 0.6", "- Deployed: no"]),
        ({"drift": drift(True, 1.0, ["age"]), "evaluate": {"blessed": True, "reasons": [], "metrics": {}},
          "deploy": {"deployed": True, "version": 3, "model_name": "churn", "endpoint": "triton:8001"}}, "SUCCEEDED",
         ["- Retrained: yes, in this run", "- Blessed: yes", "- Deployed: churn version 3 (triton:8001)"]),
        ({"drift": drift(True, 1.0, ["age"]), "retrain": {"run_id": "r-9", "state": "SUCCEEDED"}}, "SUCCEEDED",
         ["- Retrained: yes, training run r-9 (SUCCEEDED)"]),
    ],
    ids=["stopped before drift", "no drift", "not blessed", "deployed", "retrained through the KFP API"],
)  # fmt: skip
def test_the_outcome_report_says_what_the_run_decided(facts, state, expected):
    recorded = outcomes.Outcomes.model_validate(facts)
    text = executor.render_outcome(recorded, state, "ingest failed" if state == "FAILED" else "")
    lines = text.splitlines()
    assert lines[0] == "# Monitoring outcome"
    assert [line for line in expected if line not in lines] == []


@pytest.mark.servers
def test_the_exit_handler_alerts_on_degradation_and_failure_and_pushes_the_runs_failure(
    alertmanager_server, pushgateway_server, tmp_path
):
    model = f"churn-{uuid.uuid4().hex[:8]}"
    alerting = {"alertmanager_url": alertmanager_server.bucket, "run_url": "https://kf.example/runs/{run_id}"}
    sections = {"alerts": alerting, "observability": {"pushgateway": pushgateway_server.bucket},
                "deploy": {"model_name": model}}  # fmt: skip
    run_dir = str(tmp_path / "root" / "kfp-mlops-monitoring" / RUN_ID)
    outcomes.record(run_dir, outcomes.DriftOutcome(drifted=False, share=0.1, drifted_columns=[], reference="r",
                                                   serving_model="m", action="none"))  # fmt: skip
    verdict = outcomes.PerformanceOutcome(verdict="degraded", reasons=["roc_auc 0.51 vs 0.84"],
                                           counts={"matched": 700}, model_version=4, action="nested")  # fmt: skip
    outcomes.record(run_dir, verdict)
    outcome = backend_artifact(tmp_path, "report-outcome", "outcome")
    executor.report(config_text(**sections), RUN_ID, "FAILED", "train-model: OOMKilled", outcome)
    text = Path(outcome.path).read_text()
    assert "- Performance: degraded: roc_auc 0.51 vs 0.84 (700 labelled predictions)" in text
    held = requests.get(f"{alertmanager_server.bucket}/api/v2/alerts", params={"filter": f'model="{model}"'},
                        timeout=5).json()  # fmt: skip
    by_name = {alert["labels"]["alertname"]: alert for alert in held}
    assert set(by_name) == {"KfpMlopsPerformanceDegraded", "KfpMlopsMonitoringFailed"}  # no drift: no drift alert
    degraded = by_name["KfpMlopsPerformanceDegraded"]
    assert degraded["labels"]["version"] == "4" and degraded["labels"]["reason"] == "degraded"
    assert degraded["annotations"]["run_url"] == f"https://kf.example/runs/{RUN_ID}"
    assert by_name["KfpMlopsMonitoringFailed"]["annotations"]["description"] == "train-model: OOMKilled"
    metrics = requests.get(f"{pushgateway_server.bucket}/metrics", timeout=5).text
    labels = f'instance="",job="kfp-mlops",model="{model}",pipeline="kfp-mlops-monitoring",task="report-outcome"'
    assert f"kfp_mlops_monitoring_run_failed{{{labels}}} 1" in metrics


def test_a_good_window_alerts_nothing():
    good = outcomes.Outcomes(
        drift=outcomes.DriftOutcome(drifted=False, share=0.0, drifted_columns=[], reference="r", serving_model="m",
                                    action="none"),
        performance=outcomes.PerformanceOutcome(verdict="ok", action="none"),
    )  # fmt: skip
    assert executor.run_alerts(good, "SUCCEEDED", "", "churn", RUN_ID) == []
    assert [a.reason for a in executor.run_alerts(good, "FAILED", "x", "churn", RUN_ID)] == ["failed"]
    assert executor.run_alerts(good, "CANCELED", "", "churn", RUN_ID) == []
