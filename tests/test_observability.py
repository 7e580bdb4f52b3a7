"""Prometheus figures (components/shared/observability.py) pushed to a real Pushgateway started by a fixture and read
back from its /metrics."""

from __future__ import annotations

import math
import uuid

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from kfp_mlops.components.shared import observability as obs
from kfp_mlops.components.shared.config import ObservabilityConfig, parse_config
from kfp_mlops.components.shared.errors import ConfigError
from kfp_mlops.processes import free_port


def scraped(pushgateway_url: str, pipeline: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """The kfp_mlops_* samples the Pushgateway serves for ``pipeline``: name -> [(labels, value)]."""
    text = requests.get(f"{pushgateway_url}/metrics", timeout=5).text
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("kfp_mlops_") and sample.labels.get("pipeline") == pipeline:
                found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


@pytest.mark.servers
def test_figures_are_pushed_with_their_grouping_labels_and_read_back(pushgateway_server, capsys):
    pipeline = f"monitoring-{uuid.uuid4().hex[:8]}"
    settings = ObservabilityConfig(pushgateway=pushgateway_server.bucket, job="kfp-mlops-test")
    pushed = obs.push(
        settings, pipeline=pipeline, task="drift", model="churn",
        figures={obs.STEP_DURATION: 12.5, obs.STEP_ROWS: 5000, obs.DRIFT_DETECTED: 1, obs.DRIFT_SHARE: 0.6,
                 obs.DEPLOYED_VERSION: 3},
        labelled=obs.model_metrics({"roc_auc": 0.81, "log_loss": 0.42}, "performance"),
    )  # fmt: skip
    assert pushed
    metrics = scraped(pushgateway_server.bucket, pipeline)
    group = {"job": "kfp-mlops-test", "pipeline": pipeline, "task": "drift", "model": "churn"}
    for name, value in ((obs.STEP_DURATION, 12.5), (obs.STEP_ROWS, 5000), (obs.DRIFT_DETECTED, 1),
                        (obs.DRIFT_SHARE, 0.6), (obs.DEPLOYED_VERSION, 3)):  # fmt: skip
        [(labels, got)] = metrics[name]
        assert {k: v for k, v in labels.items() if k != "instance"} == group and got == value
    model_metrics = {(s["metric"], s["source"]): v for s, v in metrics[obs.MODEL_METRIC]}
    assert model_metrics == {("roc_auc", "performance"): 0.81, ("log_loss", "performance"): 0.42}
    out = capsys.readouterr().out
    where = f"(job kfp-mlops-test, pipeline '{pipeline}', task 'drift', model 'churn')"
    assert out.splitlines() == [
        f"[observability] 7 figure(s) pushed to Pushgateway at {pushgateway_server.bucket} {where}"
    ]


@pytest.mark.servers
def test_a_second_push_of_the_same_group_replaces_it(pushgateway_server):
    """PUT replaces the group: a retried task leaves one series per figure, and none of the first attempt's extras."""
    pipeline = f"training-{uuid.uuid4().hex[:8]}"
    settings = ObservabilityConfig(pushgateway=pushgateway_server.bucket)
    group = {"pipeline": pipeline, "task": "evaluate", "model": "churn"}
    assert obs.push(settings, **group, figures={obs.BLESSED: 0, obs.STEP_ROWS: 100},
                    labelled=obs.model_metrics({"roc_auc": 0.7}, "evaluate"))  # fmt: skip
    assert obs.push(
        settings, **group, figures={obs.BLESSED: 1}, labelled=obs.model_metrics({"roc_auc": 0.8}, "evaluate")
    )
    metrics = scraped(pushgateway_server.bucket, pipeline)
    assert sorted(metrics) == [obs.BLESSED, obs.MODEL_METRIC]
    assert [value for _, value in metrics[obs.BLESSED]] == [1]
    assert [value for _, value in metrics[obs.MODEL_METRIC]] == [0.8]
    # replace=False (POST) replaces only the metrics sent: a failure flag keeps the last success's figures
    assert obs.push(settings, **group, figures={obs.MONITORING_RUN_FAILED: 1}, replace=False)
    assert sorted(scraped(pushgateway_server.bucket, pipeline)) == [obs.BLESSED, obs.MODEL_METRIC,
                                                                     obs.MONITORING_RUN_FAILED]  # fmt: skip


@pytest.mark.servers
def test_a_non_finite_figure_is_skipped_and_named(pushgateway_server, capsys):
    pipeline = f"monitoring-{uuid.uuid4().hex[:8]}"
    settings = ObservabilityConfig(pushgateway=pushgateway_server.bucket)
    assert obs.push(settings, pipeline=pipeline, task="performance", model="churn",
                    figures={obs.PERFORMANCE_MATCHED_ROWS: 250, obs.DRIFT_SHARE: math.nan},
                    labelled=obs.model_metrics({"rmse": math.inf}, "performance"))  # fmt: skip
    assert sorted(scraped(pushgateway_server.bucket, pipeline)) == [obs.PERFORMANCE_MATCHED_ROWS]
    out = capsys.readouterr().out
    assert out.count("[observability]") == 1
    rmse = 'kfp_mlops_model_metric{metric="rmse",source="performance"}=inf'
    assert f"skipped non-finite: kfp_mlops_drift_share=nan, {rmse}" in out


@pytest.mark.servers
def test_no_finite_figure_pushes_nothing_and_keeps_the_group(pushgateway_server, capsys):
    pipeline = f"monitoring-{uuid.uuid4().hex[:8]}"
    settings = ObservabilityConfig(pushgateway=pushgateway_server.bucket)
    assert obs.push(settings, pipeline=pipeline, task="drift", model="m", figures={obs.DRIFT_SHARE: 0.2})
    assert not obs.push(settings, pipeline=pipeline, task="drift", model="m", figures={obs.DRIFT_SHARE: math.nan})
    assert [value for _, value in scraped(pushgateway_server.bucket, pipeline)[obs.DRIFT_SHARE]] == [0.2]
    assert "nothing pushed" in capsys.readouterr().out.splitlines()[-1]


def test_an_empty_pushgateway_pushes_nothing(capsys):
    assert not obs.push(ObservabilityConfig(), pipeline="p", task="t", model="m", figures={obs.STEP_ROWS: 1})
    assert capsys.readouterr().out == ""


def test_an_unreachable_pushgateway_is_one_line_and_false(capsys):
    settings = ObservabilityConfig(pushgateway=f"http://127.0.0.1:{free_port()}", timeout_seconds=2)
    assert not obs.push(settings, pipeline="p", task="t", model="m", figures={obs.STEP_ROWS: 1})
    out = capsys.readouterr().out
    assert len(out.splitlines()) == 1
    assert out.startswith("[observability] 1 figure(s) NOT pushed to Pushgateway at http://127.0.0.1:")
    assert "Connection refused" in out


def test_a_pushgateway_url_with_a_password_or_without_a_scheme_is_refused_by_the_config():
    document = {"data": {"source": "/data"}, "schema": {"entity": "e", "timestamp": "t", "label": "y"}}
    with pytest.raises(ConfigError, match="observability.pushgateway holds a password") as error:
        parse_config({**document, "observability": {"pushgateway": "http://user:s3cret@pushgateway:9091"}})
    assert "s3cret" not in str(error.value)
    with pytest.raises(ConfigError, match="observability.pushgateway 'pushgateway:9091' is not an http"):
        parse_config({**document, "observability": {"pushgateway": "pushgateway:9091"}})


@pytest.mark.parametrize(
    "figures, labelled, problem",
    [
        ({"kfp_mlops_step_seconds": 1.0}, (), "is not one of the metrics"),
        ({obs.MODEL_METRIC: 0.8}, (), r"takes the labels \(metric, source\), got \(\)"),
        ({}, [(obs.STEP_ROWS, {"metric": "x"}, 1.0)], r"takes the labels \(\), got \(metric\)"),
        ({}, [(obs.MODEL_METRIC, {"metric": "auc", "source": "train"}, 1.0)], "source 'train' is not one of"),
        ({obs.STEP_ROWS: "many"}, (), "is not a number"),
    ],
)
def test_a_figure_outside_the_contract_is_a_programming_error_even_without_a_pushgateway(figures, labelled, problem):
    with pytest.raises(ValueError, match=problem):
        obs.push(ObservabilityConfig(), pipeline="p", task="t", model="m", figures=figures, labelled=labelled)


def test_the_metric_names_are_the_contract_of_the_prometheus_rules():
    assert sorted(obs.METRICS) == sorted([
        "kfp_mlops_step_duration_seconds", "kfp_mlops_step_rows", "kfp_mlops_step_last_success_timestamp_seconds",
        "kfp_mlops_drift_detected", "kfp_mlops_drift_share", "kfp_mlops_performance_degraded",
        "kfp_mlops_performance_matched_rows", "kfp_mlops_model_metric", "kfp_mlops_blessed",
        "kfp_mlops_deployed_version", "kfp_mlops_monitoring_run_failed",
    ])  # fmt: skip
    assert obs.display_url("http://pushgateway.monitoring:9091/x?y=1") == "http://pushgateway.monitoring:9091"
