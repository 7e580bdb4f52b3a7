"""MLflow tracking and the model registry (components/shared/tracking.py, registry.py) against real `mlflow server`
processes (SQLite and PostgreSQL backend stores, artifacts served by the server): nothing is mocked."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient
from support.configs import config_document

from kfp_mlops.cli import main
from kfp_mlops.cli_common import with_local_tracking
from kfp_mlops.components.shared import registry, tracking
from kfp_mlops.components.shared.config import TrackingConfig, parse_config
from kfp_mlops.components.shared.errors import ConfigError
from kfp_mlops.lineage import parse_spec
from kfp_mlops.processes import free_port

pytestmark = pytest.mark.servers


def tracker(uri: str, run_id: str, task: str, experiment: str = "tests", **settings) -> tracking.Tracker:
    run_dir = f"/runs/kfp-mlops-training/{run_id}"
    config = TrackingConfig(uri=uri, experiment=experiment, **settings)
    return tracking.Tracker(config, run_id, run_dir, task, "kfp-mlops-training")


@pytest.mark.parametrize(
    "uri, problem",
    [
        ("localhost:5000", "is not an MLflow tracking URI"),
        ("ftp://mlflow.example.com", "is not an MLflow tracking URI"),
        ("http://", "names no host"),
        ("sqlite://mlflow.db", "needs an absolute path"),
        ("https://user:s3cret@mlflow.example.com", "holds a password"),
        ("postgresql://mlflow:s3cret@db:5432/mlflow", "holds a password"),
    ],
)
def test_a_malformed_tracking_uri_is_a_config_error_naming_the_key(uri, problem):
    document = {"data": {"source": "/data"}, "schema": {"entity": "e", "timestamp": "t", "label": "y"}}
    with pytest.raises(ConfigError, match=rf"tracking\.uri: .*{problem}") as error:
        parse_config({**document, "tracking": {"uri": uri}})
    assert "s3cret" not in str(error.value)


@pytest.mark.parametrize("uri", ["http://mlflow.kubeflow:5000", "https://mlflow.example.com/prefix",
                                 "sqlite:////work/build/mlflow.db", "postgresql://mlflow@db:5432/mlflow"])  # fmt: skip
def test_well_formed_tracking_uris_are_accepted(uri):
    assert TrackingConfig(uri=uri).uri == uri


def test_a_malformed_uri_from_the_environment_fails_the_first_step_and_one_with_a_password_is_allowed(monkeypatch):
    """Ingest builds its Tracker right after reading the config, before any data work."""
    monkeypatch.setenv(tracking.URI_ENV, "mlflow.kubeflow:5000")
    with pytest.raises(ConfigError, match="environment variable MLFLOW_TRACKING_URI .* is not an MLflow tracking URI"):
        tracking.Tracker(TrackingConfig(), "run-1", "/runs/p/run-1", "ingest")
    monkeypatch.setenv(tracking.URI_ENV, "https://user:pw@mlflow.example.com")  # from a Secret: allowed
    assert tracking.Tracker(TrackingConfig(), "run-1", "/runs/p/run-1", "ingest").enabled
    assert tracking.redacted("https://user:pw@mlflow.example.com") == "https://user:***@mlflow.example.com"
    assert not tracking.Tracker(TrackingConfig(enabled=False), "run-1", "/runs/p/run-1", "ingest").enabled


def test_a_step_logs_in_batches_into_its_own_run_nested_in_the_pipelines_and_a_retry_adds_nothing(
    mlflow_server, tmp_path
):
    uri = mlflow_server.env["MLFLOW_TRACKING_URI"]
    card = tmp_path / "model_card.md"
    card.write_text("# card\n")
    epochs = 1200  # 3 series × 1200 points: four log_batch calls of at most 1000 metrics
    log = tracking.StepLog(
        params={"train": {"epochs": epochs, "optimizer": {"lr": 0.001}}, "wide": {f"p{i}": i for i in range(150)}},
        metrics={"final_val_loss": 0.25},
        series={key: [(epoch, 1.0 / epoch) for epoch in range(1, epochs + 1)]
                for key in ("train_loss", "val_loss", "samples_per_second")},
        tags={"data.content_hash": "sha256:abc"},
        artifacts={str(card): ""},
    )  # fmt: skip
    step_run = tracker(uri, "run-batched", "train-model").log_step(log)
    again = tracker(uri, "run-batched", "train-model").log_step(log)  # a retried task
    assert again == step_run

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("tests").experiment_id
    runs = client.search_runs([experiment], filter_string="tags.`kfp.run_id` = 'run-batched'")
    by_level = {run.data.tags[tracking.TAG_LEVEL]: run for run in runs}
    assert len(runs) == 2 and set(by_level) == {"pipeline", "step"}
    pipeline, step = by_level["pipeline"], by_level["step"]
    assert step.info.run_id == step_run and step.data.tags[tracking.TAG_PARENT] == pipeline.info.run_id
    assert step.info.status == "FINISHED" and pipeline.info.status == "FINISHED"
    assert pipeline.data.tags[tracking.TAG_PIPELINE] == "kfp-mlops-training"
    assert step.data.params["train.optimizer.lr"] == "0.001" and len(step.data.params) == 152
    history = client.get_metric_history(step_run, "val_loss")
    assert len(history) == epochs and sorted(m.step for m in history) == list(range(1, epochs + 1))
    assert [a.path for a in client.list_artifacts(step_run)] == ["model_card.md"]


def test_an_unreachable_server_is_reported_once_and_the_step_goes_on_unless_tracking_is_required(capsys, monkeypatch):
    dead = f"http://127.0.0.1:{free_port()}"
    step = tracker(dead, "run-dead", "evaluate-model", timeout_seconds=2, retries=0)
    assert step.log_step(tracking.StepLog(metrics={"roc_auc": 0.8})) == ""
    assert step.log_step(tracking.StepLog(metrics={"roc_auc": 0.8})) == "" and not step.enabled
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[tracking]")]
    assert len(lines) == 1 and "failed to record this step" in lines[0] and "continues without tracking" in lines[0]
    assert registry.champion(step, "churn") is None  # the registry too: off for the rest of the step

    warmed = tracking.for_step(
        TrackingConfig(uri=dead, timeout_seconds=2, retries=0), "run-w", "/r/p/run-w", "quantize"
    )
    assert warmed.log_step(tracking.StepLog(metrics={"speedup": 1.0})) == ""  # what the warm-up met, said once
    assert capsys.readouterr().out.count("[tracking] MLflow at") == 1

    monkeypatch.setenv(tracking.URI_ENV, dead.replace("http://", "http://bob:s3cret@"))  # from a Secret
    from_secret = tracking.Tracker(TrackingConfig(timeout_seconds=2, retries=0), "run-dead", "/r/p/run-dead", "ingest")
    assert from_secret.log_step(tracking.StepLog(metrics={"rows": 1})) == ""
    said = capsys.readouterr().out
    assert "bob:***@" in said and "s3cret" not in said

    required = tracker(dead, "run-dead", "evaluate-model", timeout_seconds=2, retries=0, required=True)
    with pytest.raises(tracking.TrackingError, match="tracking.required is true"):
        required.log_step(tracking.StepLog(metrics={"roc_auc": 0.8}))


def _package(folder: Path, content: str) -> str:
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_text(content)
    return str(folder)


@pytest.mark.parametrize("server", ["mlflow_server", "mlflow_postgres_server"])
def test_two_runs_registering_at_once_get_distinct_versions_and_the_aliases_follow_the_deployment_that_won(
    server, request, tmp_path
):
    uri = request.getfixturevalue(server).env["MLFLOW_TRACKING_URI"]
    name = f"concurrent-{server}"
    start, versions = threading.Barrier(2), {}

    def register(run_id: str) -> None:
        step = tracker(uri, run_id, "deploy-model", experiment=name)
        package = _package(tmp_path / run_id, run_id)
        start.wait()
        versions[run_id] = registry.register(step, name, package, {"content_hash": run_id})

    threads = [threading.Thread(target=register, args=(run,)) for run in ("run-a", "run-b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    a, b = versions["run-a"], versions["run-b"]
    assert a is not None and b is not None and {a.version, b.version} == {1, 2}
    again = registry.register(tracker(uri, "run-a", "deploy-model", experiment=name), name, str(tmp_path / "run-a"), {})
    assert again.version == a.version  # a retried deploy finds its version

    # run-b's deployment won (Triton version 6); run-a's, promoted after it as version 5, must not take the alias
    won = registry.promote(tracker(uri, "run-b", "deploy-model", experiment=name), b, 6, "/repo", "t1")
    lost = registry.promote(tracker(uri, "run-a", "deploy-model", experiment=name), a, 5, "/repo", "t0")
    assert won.aliases_moved and not lost.aliases_moved and "champion stays version" in lost.note
    client = MlflowClient(uri)
    assert int(client.get_model_version_by_alias(name, registry.CHAMPION).version) == b.version
    # a later deployment (Triton version 7) of run-a's model: champion moves, and previous is what served before
    registry.promote(tracker(uri, "run-a", "deploy-model", experiment=name), a, 7, "/repo", "t2")
    assert int(client.get_model_version_by_alias(name, registry.CHAMPION).version) == a.version
    assert int(client.get_model_version_by_alias(name, registry.PREVIOUS).version) == b.version
    downloaded = tmp_path / "downloaded"
    downloaded.mkdir()
    assert registry.download(tracker(uri, "x", "evaluate-model", experiment=name), a, str(downloaded)) == ["model.onnx"]
    assert (downloaded / "model.onnx").read_text() == "run-a"


@pytest.mark.parametrize(
    "spec, expected",
    [("churn", ("churn", "champion", 0)), ("churn@previous", ("churn", "previous", 0)), ("churn/3", ("churn", "", 3))],
)
def test_lineage_names_a_version_by_alias_or_number(spec, expected):
    assert parse_spec(spec) == expected


@pytest.mark.parametrize("spec", ["churn@", "churn/x", "/3", "churn@a/3"])
def test_a_malformed_lineage_spec_says_what_is_expected(spec):
    with pytest.raises(ValueError, match="expected MODEL, MODEL@alias"):
        parse_spec(spec)


def test_lineage_without_a_tracking_server_says_how_to_get_one_and_an_unknown_model_is_named(
    mlflow_server, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)  # a fresh clone before `make demo`: no build/local-runs/mlflow.db
    monkeypatch.delenv(tracking.URI_ENV, raising=False)
    assert main(["lineage", "churn"]) == 2
    assert (
        "no tracking server: pass --tracking-uri, set MLFLOW_TRACKING_URI, or run a pipeline" in capsys.readouterr().err
    )
    assert main(["lineage", "no-such-model@champion", "--tracking-uri", mlflow_server.env["MLFLOW_TRACKING_URI"]]) == 1
    assert "no-such-model@champion: no such model version in the registry" in capsys.readouterr().err


def test_a_local_run_tracks_to_a_sqlite_file_beside_the_runs_unless_the_config_or_environment_says_otherwise(
    tmp_path, monkeypatch
):
    monkeypatch.delenv(tracking.URI_ENV, raising=False)
    text = yaml.safe_dump(config_document("/data/"))
    untracked = {"config": text}
    assert with_local_tracking(untracked, tmp_path / "runs") == "" and untracked["config"] == text  # tests: off
    document = config_document("/data/", tracking={})
    arguments = {"config": yaml.safe_dump(document)}
    uri = with_local_tracking(arguments, tmp_path / "runs")
    assert uri == f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    assert yaml.safe_load(arguments["config"])["tracking"]["uri"] == uri
    monkeypatch.setenv(tracking.URI_ENV, "http://mlflow.example.com")
    arguments = {"config": yaml.safe_dump(document)}
    assert with_local_tracking(arguments, tmp_path / "runs") == "http://mlflow.example.com"
    assert "uri" not in yaml.safe_load(arguments["config"]).get("tracking", {})  # the environment's, at run time
