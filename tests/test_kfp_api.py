"""Cluster commands (upload, submit, schedule, runs, schedules) driving the real ``kfp.Client`` against
``FakeKfpApiServer``, an in-process HTTP test double of the KFP v2beta1 API (there is no KFP server here): what the
double holds after each command, and the requests it received, are asserted as a server would see them."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.kfp_api_server import FakeKfpApiServer

from kfp_mlops import __version__, cli
from kfp_mlops.components.shared import kfp_api

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden" / "training.yaml"
DISPLAY_NAME = "kfp-mlops-training"
TOKEN = "s3cret-token-value"


# --- fixtures -----------------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def isolated_client_settings(tmp_path, monkeypatch) -> None:
    """No user settings leak in: kfp.Client's context file (its namespace) and the connection variables."""
    from kfp.client.client import Client

    monkeypatch.setattr(Client, "_LOCAL_KFP_CONTEXT", str(tmp_path / "kfp-context.json"))
    for variable in (
        "KFP_HOST",
        "KFP_NAMESPACE",
        "KFP_EXISTING_TOKEN",
        "KF_PIPELINES_ENDPOINT",
        "KF_PIPELINES_UI_ENDPOINT",
    ):
        monkeypatch.delenv(variable, raising=False)


@pytest.fixture
def kfp_server() -> Iterator[FakeKfpApiServer]:
    with FakeKfpApiServer() as server:
        yield server


@pytest.fixture
def package(tmp_path) -> Path:
    """A compiled training pipeline: the golden YAML (compiling is tested once, below)."""
    return Path(shutil.copy(GOLDEN, tmp_path / "training.yaml"))


@pytest.fixture
def changed_package(tmp_path) -> Path:
    """The same pipeline with one default changed: another YAML, another content hash."""
    documents = list(yaml.safe_load_all(GOLDEN.read_text()))
    documents[0]["root"]["inputDefinitions"]["parameters"]["train_cpu"]["defaultValue"] = "16"
    path = tmp_path / "changed" / "training.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump_all(documents, sort_keys=True))
    return path


def kfp_mlops(*argv: str) -> int:
    """``kfp-mlops ARGV`` as the console script runs it; argparse's exit is returned as the code."""
    try:
        return cli.main(list(argv))
    except SystemExit as exc:
        return int(exc.code or 0)


def expected_version(package: Path) -> str:
    return f"{__version__}-{hashlib.sha256(package.read_bytes()).hexdigest()[:12]}"


def one(mapping: dict[str, Any]) -> Any:
    assert len(mapping) == 1, mapping
    return next(iter(mapping.values()))


# --- upload -------------------------------------------------------------------------------------------------------


def test_first_upload_creates_the_pipeline_with_one_version_named_by_package_version_and_hash(
    kfp_server, package, capsys
):
    assert kfp_mlops("upload", "training", "--host", kfp_server.url, "--package", str(package)) == 0

    pipeline = one(kfp_server.pipelines)
    assert pipeline["display_name"] == DISPLAY_NAME  # pipelineInfo.name, as kfp.Client names uploads
    (version,) = kfp_server.versions_of(pipeline["pipeline_id"])
    assert version["name"] == expected_version(package)
    documents = list(yaml.safe_load_all(package.read_text()))
    assert version["pipeline_spec"] == {"pipeline_spec": documents[0], "platform_spec": documents[1]}
    assert capsys.readouterr().out.startswith(f"created pipeline {DISPLAY_NAME} ({pipeline['pipeline_id']})")
    (upload,) = kfp_server.requests_to("POST", "/pipelines/upload_version")
    assert upload.query["name"] == [expected_version(package)]
    assert upload.query["pipelineid"] == [pipeline["pipeline_id"]]
    assert upload.body["filename"] == "training.yaml"


def test_same_yaml_again_uploads_nothing_and_says_so(kfp_server, package, capsys):
    assert kfp_mlops("upload", "training", "--host", kfp_server.url, "--package", str(package)) == 0
    capsys.readouterr()

    assert kfp_mlops("upload", "training", "--host", kfp_server.url, "--package", str(package)) == 0

    assert "with this YAML: nothing uploaded" in capsys.readouterr().out
    pipeline = one(kfp_server.pipelines)
    assert len(kfp_server.versions_of(pipeline["pipeline_id"])) == 1
    assert len(kfp_server.requests_to("POST", "/pipelines")) == 1
    assert len(kfp_server.requests_to("POST", "/pipelines/upload_version")) == 1


def test_changed_yaml_adds_a_version_to_the_existing_pipeline(kfp_server, package, changed_package, capsys):
    assert kfp_mlops("upload", "training", "--host", kfp_server.url, "--package", str(package)) == 0
    assert kfp_mlops("upload", "training", "--host", kfp_server.url, "--package", str(changed_package)) == 0

    pipeline = one(kfp_server.pipelines)
    names = sorted(v["name"] for v in kfp_server.versions_of(pipeline["pipeline_id"]))
    assert names == sorted([expected_version(package), expected_version(changed_package)])
    assert f"uploaded version {expected_version(changed_package)}" in capsys.readouterr().out


def test_upload_compiles_the_pipeline_and_compiling_again_is_the_same_version(kfp_server, tmp_path, capsys):
    from kfp_mlops.components.shared.images import ImageConfig
    from kfp_mlops.pipelines import compile_pipeline

    flags = ["--host", kfp_server.url, "--image-registry", "registry.test/ml", "--image-tag", "1.2.3"]
    assert kfp_mlops("upload", "training", *flags) == 0
    assert kfp_mlops("upload", "training", *flags) == 0

    reference = compile_pipeline("training", tmp_path / "training.yaml", ImageConfig("registry.test/ml", "1.2.3"))
    (version,) = kfp_server.versions.values()
    assert version["name"] == expected_version(reference)
    executors = version["pipeline_spec"]["pipeline_spec"]["deploymentSpec"]["executors"]
    assert executors["exec-train-model"]["container"]["image"] == "registry.test/ml/kfp-mlops-train:1.2.3"
    assert "nothing uploaded" in capsys.readouterr().out


def test_an_explicit_version_name_holding_another_yaml_is_refused(kfp_server, package, changed_package, capsys):
    assert kfp_mlops("upload", "training", "--host", kfp_server.url, "--package", str(package), "--version", "v1") == 0
    capsys.readouterr()

    code = kfp_mlops(
        "upload", "training", "--host", kfp_server.url, "--package", str(changed_package), "--version", "v1"
    )

    assert code == 2
    assert "version 'v1' of pipeline 'kfp-mlops-training' exists with a different pipeline spec" in (
        capsys.readouterr().err
    )
    assert len(kfp_server.versions) == 1


def test_a_pipeline_uploaded_elsewhere_gets_a_new_version_not_a_duplicate(kfp_server, package):
    client = kfp_api.connect(kfp_api.Connection(host=kfp_server.url))
    client.upload_pipeline(str(package))  # kfp.Client's own upload: /pipelines/upload, version named as pipeline

    assert kfp_mlops("upload", "training", "--host", kfp_server.url, "--package", str(package)) == 0

    pipeline = one(kfp_server.pipelines)
    names = sorted(v["name"] for v in kfp_server.versions_of(pipeline["pipeline_id"]))
    assert names == sorted([DISPLAY_NAME, expected_version(package)])


# --- submit -------------------------------------------------------------------------------------------------------


def test_submit_uploads_if_absent_and_runs_that_version_with_typed_parameters(kfp_server, package, capsys):
    code = kfp_mlops(
        "submit",
        "training",
        "--host",
        kfp_server.url,
        "--package",
        str(package),
        "--experiment",
        "nightly",
        "--param",
        "gpus_per_node=0",
        "--param",
        'train_node_selector={"pool": "a100"}',
        "--param",
        "train_cpu=4",
    )

    assert code == 0
    run = one(kfp_server.runs)
    pipeline = one(kfp_server.pipelines)
    (version,) = kfp_server.versions_of(pipeline["pipeline_id"])
    assert run["pipeline_version_reference"] == {
        "pipeline_id": pipeline["pipeline_id"],
        "pipeline_version_id": version["pipeline_version_id"],
    }
    parameters = run["runtime_config"]["parameters"]
    assert parameters == {"gpus_per_node": "0", "train_node_selector": {"pool": "a100"}, "train_cpu": "4"}
    assert type(parameters["train_node_selector"]) is dict  # STRUCT, from the compiled YAML
    assert kfp_server.experiments[run["experiment_id"]]["display_name"] == "nightly"
    out = capsys.readouterr().out
    assert f"run {run['run_id']}" in out
    assert f"{kfp_server.url}/#/runs/details/{run['run_id']}" in out.splitlines()


def test_a_second_submit_reuses_the_version_and_the_experiment(kfp_server, package):
    for _ in range(2):
        assert kfp_mlops("submit", "training", "--host", kfp_server.url, "--package", str(package)) == 0

    assert len(kfp_server.runs) == 2
    assert len(kfp_server.versions) == 1
    assert [e["display_name"] for e in kfp_server.experiments.values()] == ["Default"]
    assert len({r["pipeline_version_reference"]["pipeline_version_id"] for r in kfp_server.runs.values()}) == 1


def test_config_file_is_passed_as_the_config_parameter_text(kfp_server, package):
    config = ROOT / "examples" / "training.yaml"

    code = kfp_mlops("submit", "training", "--host", kfp_server.url, "--package", str(package), "--config", str(config))

    assert code == 0
    text = one(kfp_server.runs)["runtime_config"]["parameters"]["config"]
    assert yaml.safe_load(text)["schema"]["label"] == yaml.safe_load(config.read_text())["schema"]["label"]


@pytest.mark.parametrize(
    ("param", "message"),
    [
        ("nope=1", "unknown pipeline parameter 'nope'"),
        ("train_node_selector={", "parameter train_node_selector='{' is not a valid STRUCT"),
        ("train_tolerations={", "parameter train_tolerations='{' is not a valid LIST"),
        ("no-equals-sign", "--param 'no-equals-sign': expected key=value"),
    ],
)
def test_a_bad_param_is_refused_before_any_request(kfp_server, package, capsys, param, message):
    code = kfp_mlops("submit", "training", "--host", kfp_server.url, "--package", str(package), "--param", param)

    assert code == 2
    assert message in capsys.readouterr().err
    assert kfp_server.requests == []


@pytest.mark.parametrize(("progress", "code"), [(["RUNNING", "SUCCEEDED"], 0), (["SUCCEEDED"], 0)])
def test_submit_wait_follows_the_run_and_exits_0_when_it_succeeds(kfp_server, package, capsys, progress, code):
    kfp_server.run_progress = progress

    assert (
        kfp_mlops(
            "submit",
            "training",
            "--host",
            kfp_server.url,
            "--package",
            str(package),
            "--wait",
            "--poll-interval",
            "0.01",
        )
        == code
    )

    run_id = one(kfp_server.runs)["run_id"]
    out = capsys.readouterr().out
    assert [line for line in out.splitlines() if line.startswith(f"run {run_id}:")] == [
        f"run {run_id}: {state}" for state in progress
    ]
    assert f"run {run_id} SUCCEEDED after" in out


@pytest.mark.parametrize("state", ["FAILED", "CANCELED", "SKIPPED"])
def test_submit_wait_exits_1_naming_the_state_the_run_ended_in(kfp_server, package, capsys, state):
    kfp_server.run_progress = ["RUNNING", "RUNNING", state]

    code = kfp_mlops(
        "submit", "training", "--host", kfp_server.url, "--package", str(package), "--wait", "--poll-interval", "0.01"
    )

    assert code == 1
    run_id = one(kfp_server.runs)["run_id"]
    assert f"kfp-mlops submit: error: run {run_id} ended {state}" in capsys.readouterr().err
    assert len(kfp_server.requests_to("GET", f"/runs/{run_id}")) == 3  # one poll per state, then it stops


def test_submit_wait_reports_the_error_of_a_failed_run(kfp_server, package, capsys):
    assert kfp_mlops("submit", "training", "--host", kfp_server.url, "--package", str(package)) == 0
    run_id = one(kfp_server.runs)["run_id"]
    kfp_server.set_run_state(run_id, "FAILED", error="task train-model: CUDA out of memory")
    client = kfp_api.connect(kfp_api.Connection(host=kfp_server.url))

    outcome = kfp_api.wait_for_run(client, run_id, poll_seconds=0.01)

    assert (outcome.state, outcome.error, outcome.succeeded) == (
        "FAILED",
        "task train-model: CUDA out of memory",
        False,
    )


def test_submit_wait_gives_up_after_timeout_and_leaves_the_run(kfp_server, package, capsys):
    kfp_server.run_progress = ["RUNNING"]
    started = time.monotonic()

    code = kfp_mlops(
        "submit",
        "training",
        "--host",
        kfp_server.url,
        "--package",
        str(package),
        "--wait",
        "--timeout",
        "0.3",
        "--poll-interval",
        "0.05",
    )

    assert code == 1
    assert time.monotonic() - started < 5
    assert "is still RUNNING after" in capsys.readouterr().err
    assert one(kfp_server.runs)["state"] == "RUNNING"


def test_waiting_for_an_unknown_run_is_a_not_found_error(kfp_server):
    client = kfp_api.connect(kfp_api.Connection(host=kfp_server.url))

    with pytest.raises(kfp_api.KfpApiError, match=r"not found at .* \(HTTP 404\): Run no-such-run not found") as info:
        kfp_api.wait_for_run(client, "no-such-run")
    assert info.value.exit_code == 2


# --- schedule -----------------------------------------------------------------------------------------------------


def test_schedule_create_same_change_pause_resume_delete(kfp_server, package, capsys):
    common = ["--host", kfp_server.url, "--package", str(package)]
    spec = ["--param", "gpus_per_node=0", "--no-catchup", "--max-concurrency", "2", "--start", "2026-02-01T00:00:00Z"]

    # create
    assert kfp_mlops("schedule", "training", *common, "--cron", "0 0 3 * * *", *spec) == 0
    created = one(kfp_server.recurring_runs)
    assert created["display_name"] == "training"
    assert created["trigger"]["cron_schedule"]["cron"] == "0 0 3 * * *"
    assert created["trigger"]["cron_schedule"]["start_time"].startswith("2026-02-01T00:00:00")
    assert (created["max_concurrency"], created["no_catchup"], created["mode"]) == ("2", True, "ENABLE")
    assert created["runtime_config"]["parameters"] == {"gpus_per_node": "0"}
    version = one(kfp_server.versions)
    assert created["pipeline_version_reference"]["pipeline_version_id"] == version["pipeline_version_id"]
    assert f"schedule 'training' ({created['recurring_run_id']}): created" in capsys.readouterr().out

    # the same again: nothing changes
    assert kfp_mlops("schedule", "training", *common, "--cron", "0 0 3 * * *", *spec) == 0
    assert one(kfp_server.recurring_runs) == created
    assert len(kfp_server.requests_to("POST", "/recurringruns")) == 1
    assert "the same spec is already scheduled: nothing to do" in capsys.readouterr().out

    # another cron: replaced, still one schedule
    assert kfp_mlops("schedule", "training", *common, "--cron", "0 30 3 * * *", *spec) == 0
    replaced = one(kfp_server.recurring_runs)
    assert replaced["recurring_run_id"] != created["recurring_run_id"]
    assert replaced["trigger"]["cron_schedule"]["cron"] == "0 30 3 * * *"
    out = capsys.readouterr().out
    assert f"replaced {created['recurring_run_id']}" in out
    assert "cron: '0 0 3 * * *' -> '0 30 3 * * *'" in out.splitlines()[-1]

    # pause, and a change while paused stays paused
    assert kfp_mlops("schedule", "training", "--host", kfp_server.url, "--pause") == 0
    assert one(kfp_server.recurring_runs)["mode"] == "DISABLE"
    with_catchup = [flag for flag in spec if flag != "--no-catchup"]
    assert kfp_mlops("schedule", "training", *common, "--cron", "0 30 3 * * *", *with_catchup) == 0
    paused = one(kfp_server.recurring_runs)
    assert (paused["mode"], paused.get("no_catchup", False)) == ("DISABLE", False)
    assert "catchup: False -> True" in capsys.readouterr().out

    # resume
    assert kfp_mlops("schedule", "training", "--host", kfp_server.url, "--resume") == 0
    assert one(kfp_server.recurring_runs)["mode"] == "ENABLE"
    assert "resumed" in capsys.readouterr().out

    # delete, and deleting again is an error naming the schedule
    assert kfp_mlops("schedule", "training", "--host", kfp_server.url, "--delete") == 0
    assert kfp_server.recurring_runs == {}
    assert kfp_mlops("schedule", "training", "--host", kfp_server.url, "--delete") == 2
    assert "no schedule named 'training'" in capsys.readouterr().err


def test_a_new_pipeline_version_replaces_the_schedule_on_it(kfp_server, package, changed_package, capsys):
    assert (
        kfp_mlops(
            "schedule",
            "training",
            "--host",
            kfp_server.url,
            "--package",
            str(package),
            "--cron",
            "@daily",
            "--name",
            "daily-training",
        )
        == 0
    )
    assert (
        kfp_mlops(
            "schedule",
            "training",
            "--host",
            kfp_server.url,
            "--package",
            str(changed_package),
            "--cron",
            "@daily",
            "--name",
            "daily-training",
        )
        == 0
    )

    schedule = one(kfp_server.recurring_runs)
    new_version = next(v for v in kfp_server.versions.values() if v["name"] == expected_version(changed_package))
    assert schedule["pipeline_version_reference"]["pipeline_version_id"] == new_version["pipeline_version_id"]
    assert "pipeline version:" in capsys.readouterr().out


def test_five_field_cron_is_refused_with_the_seconds_first_explanation(kfp_server, package, capsys):
    code = kfp_mlops("schedule", "training", "--host", kfp_server.url, "--package", str(package), "--cron", "0 3 * * *")

    assert code == 2
    assert "KFP cron expressions have 6 fields, seconds first: did you mean '0 0 3 * * *'?" in capsys.readouterr().err
    assert kfp_server.requests == []


def test_the_server_itself_would_take_five_fields_as_seconds_first(kfp_server, package):
    """Why the client refuses 5 fields: robfig/cron v1 (the backend's parser) accepts them, seconds first, so
    '0 3 * * *' would run at second 0 of minute 3 of every hour, not at 03:00."""
    client = kfp_api.connect(kfp_api.Connection(host=kfp_server.url))
    uploaded = kfp_api.upload_pipeline(client, package)
    experiment_id = kfp_api.ensure_experiment(client, "Default")

    client.create_recurring_run(
        experiment_id,
        "five fields",
        cron_expression="0 3 * * *",
        pipeline_id=uploaded.pipeline_id,
        version_id=uploaded.version_id,
    )

    assert one(kfp_server.recurring_runs)["trigger"]["cron_schedule"]["cron"] == "0 3 * * *"


@pytest.mark.parametrize(
    "cron",
    [
        "0 0 3 * * *",
        "*/10 * * * * *",
        "0 0 9 ? * MON-FRI",
        "0 0 0 1 JAN,JUL *",
        "0 0 12 * * 1-5",
        "@daily",
        "@every 1h30m",
    ],
)
def test_valid_kfp_cron_expressions_pass(cron):
    assert kfp_api.validate_cron(cron) == cron


@pytest.mark.parametrize(
    ("cron", "message"),
    [
        ("0 3 * * *", re.escape("did you mean '0 0 3 * * *'?")),
        ("0 0 3 * * * 2026", "have 6 fields .* got 7"),
        ("0 61 * * * *", "minute '61' is out of range 0-59"),
        ("0 0 24 * * *", "hour '24' is out of range 0-23"),
        ("0 0 0 0 * *", "day of month '0' is out of range 1-31"),
        ("0 0 5-1 * * *", "hour range '5-1' runs backwards"),
        ("0 0 0 * * MON-FUNDAY", "day of week 'FUNDAY' is out of range"),
        ("0 0 3 * * */0", "day of week step must be at least 1"),
        ("@sometimes", "unknown descriptor"),
    ],
)
def test_invalid_cron_expressions_are_explained(cron, message):
    with pytest.raises(ValueError, match=message):
        kfp_api.validate_cron(cron)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--cron", "@daily", "--start", "2026-01-01T00:00:00"], "needs a timezone"),
        (["--cron", "@daily", "--max-concurrency", "11"], "max concurrency 11: the KFP server accepts 1 to 10"),
        (["--cron", "@daily", "--delete"], "--delete takes no --cron"),
        ([], "--cron is required"),
    ],
)
def test_bad_schedule_flags_are_refused_before_any_request(kfp_server, package, capsys, flags, message):
    code = kfp_mlops("schedule", "training", "--host", kfp_server.url, "--package", str(package), *flags)

    assert code == 2
    assert message in capsys.readouterr().err
    assert kfp_server.requests == []


# --- listing ------------------------------------------------------------------------------------------------------


def test_runs_lists_the_newest_first_as_an_aligned_table(kfp_server, package, capsys):
    client = kfp_api.connect(kfp_api.Connection(host=kfp_server.url))
    run_ids = [kfp_api.submit_run(client, package, {}, run_name=f"run {i}").run_id for i in range(3)]
    kfp_server.set_run_state(run_ids[0], "SUCCEEDED")

    assert kfp_mlops("runs", "--host", kfp_server.url, "--limit", "2") == 0

    lines = capsys.readouterr().out.splitlines()
    assert re.split(r"\s{2,}", lines[0]) == ["RUN ID", "NAME", "STATE", "CREATED", "FINISHED"]
    assert [line.split()[0] for line in lines[1:]] == [run_ids[2], run_ids[1]]
    assert {line.index("PENDING") for line in lines[1:]} == {lines[0].index("STATE")}
    (list_request,) = kfp_server.requests_to("GET", "/runs")
    assert list_request.query["sort_by"] == ["created_at desc"]


def test_runs_of_one_experiment_and_of_an_unknown_one(kfp_server, package, capsys):
    client = kfp_api.connect(kfp_api.Connection(host=kfp_server.url))
    nightly = kfp_api.submit_run(client, package, {}, experiment="nightly").run_id
    kfp_api.submit_run(client, package, {}, experiment="adhoc")
    capsys.readouterr()

    assert kfp_mlops("runs", "--host", kfp_server.url, "--experiment", "nightly") == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]] == [nightly]
    assert kfp_mlops("runs", "--host", kfp_server.url, "--experiment", "weekly") == 2
    assert "no experiment named 'weekly'" in capsys.readouterr().err


def test_schedules_lists_every_schedule_with_its_status(kfp_server, package, capsys):
    assert kfp_mlops("schedules", "--host", kfp_server.url) == 0
    assert capsys.readouterr().out.strip() == "no schedules"
    common = ["--host", kfp_server.url, "--package", str(package)]
    assert kfp_mlops("schedule", "training", *common, "--cron", "0 0 3 * * *", "--name", "nightly") == 0
    assert kfp_mlops("schedule", "training", *common, "--cron", "@weekly", "--name", "weekly", "--pause") == 0
    capsys.readouterr()

    assert kfp_mlops("schedules", "--host", kfp_server.url) == 0

    lines = capsys.readouterr().out.splitlines()
    assert re.split(r"\s{2,}", lines[0]) == [
        "SCHEDULE ID",
        "NAME",
        "STATUS",
        "CRON",
        "MAX CONCURRENCY",
        "CATCHUP",
        "CREATED",
    ]
    rows = [re.split(r"\s{2,}", line) for line in lines[1:]]
    assert [row[1:6] for row in rows] == [
        ["nightly", "enabled", "0 0 3 * * *", "1", "yes"],
        ["weekly", "paused", "@weekly", "1", "yes"],
    ]


def test_lists_follow_next_page_tokens_to_the_end(kfp_server, package, monkeypatch):
    client = kfp_api.connect(kfp_api.Connection(host=kfp_server.url))
    for index in range(5):
        kfp_api.ensure_schedule(client, package, kfp_api.Schedule(name=f"s{index}", cron="@hourly"))
    monkeypatch.setattr(kfp_api.schedules, "PAGE_SIZE", 2)

    schedules = kfp_api.list_schedules(client)

    assert [s.display_name for s in schedules] == ["s0", "s1", "s2", "s3", "s4"]
    pages = [r for r in kfp_server.requests_to("GET", "/recurringruns") if r.query.get("sort_by") == ["created_at"]]
    assert [r.query["page_size"] for r in pages] == [["2"]] * 3
    assert [bool(r.query.get("page_token")) for r in pages] == [False, True, True]


# --- connection and credentials -----------------------------------------------------------------------------------


def test_a_missing_or_wrong_token_is_401_naming_existing_token(package, capsys, monkeypatch):
    with FakeKfpApiServer(token=TOKEN) as server:
        assert kfp_mlops("upload", "training", "--host", server.url, "--package", str(package)) == 2
        missing = capsys.readouterr().err
        code = kfp_mlops(
            "upload", "training", "--host", server.url, "--package", str(package), "--existing-token", "wrong-token"
        )
        wrong = capsys.readouterr()
        monkeypatch.setenv("KFP_EXISTING_TOKEN", TOKEN)
        assert kfp_mlops("upload", "training", "--host", server.url, "--package", str(package)) == 0
        accepted = capsys.readouterr()

    assert code == 2
    for message in (missing, wrong.err):
        assert message.startswith("kfp-mlops upload: error: ")
        assert "(HTTP 401" in message and "--existing-token (env KFP_EXISTING_TOKEN)" in message
    assert server.requests[-1].authorization == f"Bearer {TOKEN}"
    assert len(server.pipelines) == 1
    for text in (missing, wrong.out, wrong.err, accepted.out, accepted.err):
        assert TOKEN not in text and "wrong-token" not in text


def test_a_token_without_permission_is_403_naming_the_namespace(package, capsys):
    with FakeKfpApiServer(token=TOKEN, read_only_token="viewer-token") as server:
        code = kfp_mlops(
            "upload",
            "training",
            "--host",
            server.url,
            "--package",
            str(package),
            "--existing-token",
            "viewer-token",
            "--namespace",
            "team-ml",
        )

    assert code == 2
    err = capsys.readouterr().err
    assert "denied access in namespace team-ml (HTTP 403" in err
    assert "viewer-token" not in err


def test_an_unreachable_server_is_a_clear_error(package, capsys):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed once the block ends: nothing listens there

    code = kfp_mlops("runs", "--host", f"http://127.0.0.1:{port}")

    assert code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"kfp-mlops runs: error: cannot reach http://127.0.0.1:{port}: ")
    assert "Connection refused" in err and "--host" in err and "object at 0x" not in err


@pytest.mark.timeout(20)
def test_a_server_that_does_not_answer_is_given_up_after_the_request_timeout(kfp_server, capsys):
    kfp_server.stall()
    started = time.monotonic()

    code = kfp_mlops("runs", "--host", kfp_server.url, "--request-timeout", "0.5")

    elapsed = time.monotonic() - started
    assert code == 1
    assert elapsed < 3  # one attempt: no urllib3 retries, no kfp.Client health-check retries
    assert f"no answer from {kfp_server.url} within 0.5 s" in capsys.readouterr().err
    assert [r.path for r in kfp_server.requests] == ["/apis/v2beta1/healthz"]


@pytest.mark.timeout(20)
def test_every_request_is_bounded_not_only_the_first(kfp_server, package):
    client = kfp_api.connect(kfp_api.Connection(host=kfp_server.url, timeout=0.5))
    kfp_server.stall()
    started = time.monotonic()

    with pytest.raises(kfp_api.KfpApiError, match="no answer from .* within 0.5 s") as info:
        kfp_api.upload_pipeline(client, package)
    assert info.value.exit_code == 1
    assert time.monotonic() - started < 3


def test_a_multi_user_server_needs_a_namespace(package, capsys):
    with FakeKfpApiServer(multi_user=True) as server:
        assert kfp_mlops("runs", "--host", server.url) == 2
        assert "is a multi-user deployment: pass --namespace" in capsys.readouterr().err
        assert kfp_mlops("runs", "--host", server.url, "--namespace", "team-ml") == 0
        (listing,) = server.requests_to("GET", "/runs")

    assert listing.query["namespace"] == ["team-ml"]


@pytest.mark.parametrize("host", ["kfp.example.com", "ftp://kfp.example.com"])
def test_a_host_without_http_scheme_is_refused(capsys, host):
    assert kfp_mlops("runs", "--host", host) == 2
    assert "expected a URL starting with http:// or https://" in capsys.readouterr().err


def test_the_host_comes_from_kfp_host_when_not_given(kfp_server, monkeypatch, capsys):
    monkeypatch.setenv("KFP_HOST", kfp_server.url)

    assert kfp_mlops("schedules") == 0
    assert capsys.readouterr().out.strip() == "no schedules"


# --- the test double answers like the server -----------------------------------------------------------------------


def http(server: FakeKfpApiServer, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        f"{server.url}/apis/v2beta1{path}", data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_double_rejects_unknown_fields_and_wrong_types_like_the_grpc_gateway(kfp_server):
    assert http(kfp_server, "POST", "/experiments", {"display_name": "x", "displayname": "y"}) == (
        400,
        {"code": 3, "message": 'V2beta1Experiment: unknown field "displayname"', "details": []},
    )
    status, body = http(kfp_server, "POST", "/experiments", {"display_name": 7})
    assert (status, body["message"]) == (400, "V2beta1Experiment.display_name: expected str, got int")
    assert http(kfp_server, "POST", "/experiments", {"display_name": "x"})[0] == 200
    assert http(kfp_server, "POST", "/experiments", {"display_name": "x"})[0] == 409


def test_double_rejects_an_upload_whose_spec_has_an_unknown_field(kfp_server, tmp_path):
    documents = list(yaml.safe_load_all(GOLDEN.read_text()))
    documents[0]["root"]["dag"]["tasks"]["ingest"]["retryPolicy"] = {"maxRetryCount": 1, "maxRetries": 1}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump_all(documents))
    client = kfp_api.connect(kfp_api.Connection(host=kfp_server.url))

    with pytest.raises(kfp_api.KfpApiError, match=r"HTTP 400\): invalid v2 pipeline spec: .*maxRetries"):
        kfp_api.upload_pipeline(client, bad)
    assert kfp_server.pipelines == {}  # the empty pipeline made for the version was deleted again


def test_double_pages_filters_and_sorts_experiments_as_kfp_client_asks(kfp_server):
    client = kfp_api.connect(kfp_api.Connection(host=kfp_server.url))
    for name in ("b", "a", "c", "a-2"):
        kfp_api.ensure_experiment(client, name)

    first = client.list_experiments(page_size=3, sort_by="display_name desc")
    second = client.list_experiments(page_size=3, page_token=first.next_page_token, sort_by="ignored: in the token")
    assert [e.display_name for e in first.experiments + second.experiments] == ["c", "b", "a-2", "a"]
    assert (first.total_size, second.next_page_token) == (4, None)
    assert client.get_experiment(experiment_name="a").display_name == "a"  # kfp.Client's EQUALS filter, op 1
    with pytest.raises(Exception, match="Invalid sorting field"):
        client.list_experiments(sort_by="colour")


def test_double_checks_run_parameters_like_the_api_server(kfp_server, package):
    client = kfp_api.connect(kfp_api.Connection(host=kfp_server.url))

    with pytest.raises(kfp_api.KfpApiError, match="input parameter gpus_per_node requires type STRING"):
        kfp_api.submit_run(client, package, {"gpus_per_node": 2})
    with pytest.raises(kfp_api.KfpApiError, match="not required by pipeline: colour"):
        kfp_api.submit_run(client, package, {"colour": "blue"})
    assert kfp_server.runs == {}


def test_double_refuses_a_duplicate_pipeline_name_with_409(kfp_server, package):
    client = kfp_api.connect(kfp_api.Connection(host=kfp_server.url))
    client.upload_pipeline(str(package))

    with pytest.raises(Exception) as info:
        client.upload_pipeline(str(package))
    assert info.value.status == 409
    assert len(kfp_server.pipelines) == 1
