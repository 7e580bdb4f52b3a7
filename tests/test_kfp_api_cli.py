"""The cluster commands (upload, submit, schedule, runs, schedules) driving the real ``kfp.Client`` against
``FakeKfpApiServer``, an in-process HTTP test double of the KFP v2beta1 API (there is no KFP server here): what the
double holds after each command, and the requests it received, are asserted as a server would see them."""

from __future__ import annotations

import re
import time

import pytest
import yaml
from support.kfp_cli import DISPLAY_NAME, ROOT, expected_version, kfp_mlops, one

from kfp_mlops.components.shared import kfp_api

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("kfp_client_settings")]


# --- upload -------------------------------------------------------------------------------------------------------


def test_first_upload_creates_the_pipeline_with_one_version_named_by_package_version_and_hash(
    kfp_server, golden_package, capsys
):
    assert kfp_mlops("upload", "training", "--host", kfp_server.url, "--package", str(golden_package)) == 0

    pipeline = one(kfp_server.pipelines)
    assert pipeline["display_name"] == DISPLAY_NAME  # pipelineInfo.name, as kfp.Client names uploads
    (version,) = kfp_server.versions_of(pipeline["pipeline_id"])
    assert version["name"] == expected_version(golden_package)
    documents = list(yaml.safe_load_all(golden_package.read_text()))
    assert version["pipeline_spec"] == {"pipeline_spec": documents[0], "platform_spec": documents[1]}
    assert capsys.readouterr().out.startswith(f"created pipeline {DISPLAY_NAME} ({pipeline['pipeline_id']})")
    (upload,) = kfp_server.requests_to("POST", "/pipelines/upload_version")
    assert upload.query["name"] == [expected_version(golden_package)]
    assert upload.query["pipelineid"] == [pipeline["pipeline_id"]]
    assert upload.body["filename"] == "training.yaml"


def test_same_yaml_again_uploads_nothing_and_says_so(kfp_server, golden_package, capsys):
    assert kfp_mlops("upload", "training", "--host", kfp_server.url, "--package", str(golden_package)) == 0
    capsys.readouterr()

    assert kfp_mlops("upload", "training", "--host", kfp_server.url, "--package", str(golden_package)) == 0

    assert "with this YAML: nothing uploaded" in capsys.readouterr().out
    pipeline = one(kfp_server.pipelines)
    assert len(kfp_server.versions_of(pipeline["pipeline_id"])) == 1
    assert len(kfp_server.requests_to("POST", "/pipelines")) == 1
    assert len(kfp_server.requests_to("POST", "/pipelines/upload_version")) == 1


def test_changed_yaml_adds_a_version_to_the_existing_pipeline(kfp_server, golden_package, changed_package, capsys):
    assert kfp_mlops("upload", "training", "--host", kfp_server.url, "--package", str(golden_package)) == 0
    assert kfp_mlops("upload", "training", "--host", kfp_server.url, "--package", str(changed_package)) == 0

    pipeline = one(kfp_server.pipelines)
    names = sorted(v["name"] for v in kfp_server.versions_of(pipeline["pipeline_id"]))
    assert names == sorted([expected_version(golden_package), expected_version(changed_package)])
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


def test_an_explicit_version_name_holding_another_yaml_is_refused(kfp_server, golden_package, changed_package, capsys):
    assert (
        kfp_mlops("upload", "training", "--host", kfp_server.url, "--package", str(golden_package), "--version", "v1")
        == 0
    )
    capsys.readouterr()

    code = kfp_mlops(
        "upload", "training", "--host", kfp_server.url, "--package", str(changed_package), "--version", "v1"
    )

    assert code == 2
    assert "version 'v1' of pipeline 'kfp-mlops-training' exists with a different pipeline spec" in (
        capsys.readouterr().err
    )
    assert len(kfp_server.versions) == 1


def test_a_pipeline_uploaded_elsewhere_gets_a_new_version_not_a_duplicate(kfp_server, golden_package):
    client = kfp_api.connect(kfp_api.Connection(host=kfp_server.url))
    client.upload_pipeline(str(golden_package))  # kfp.Client's own upload: /pipelines/upload, version named as pipeline

    assert kfp_mlops("upload", "training", "--host", kfp_server.url, "--package", str(golden_package)) == 0

    pipeline = one(kfp_server.pipelines)
    names = sorted(v["name"] for v in kfp_server.versions_of(pipeline["pipeline_id"]))
    assert names == sorted([DISPLAY_NAME, expected_version(golden_package)])


# --- submit -------------------------------------------------------------------------------------------------------


def test_submit_uploads_if_absent_and_runs_that_version_with_typed_parameters(kfp_server, golden_package, capsys):
    code = kfp_mlops(
        "submit",
        "training",
        "--host",
        kfp_server.url,
        "--package",
        str(golden_package),
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


def test_a_second_submit_reuses_the_version_and_the_experiment(kfp_server, golden_package):
    for _ in range(2):
        assert kfp_mlops("submit", "training", "--host", kfp_server.url, "--package", str(golden_package)) == 0

    assert len(kfp_server.runs) == 2
    assert len(kfp_server.versions) == 1
    assert [e["display_name"] for e in kfp_server.experiments.values()] == ["Default"]
    assert len({r["pipeline_version_reference"]["pipeline_version_id"] for r in kfp_server.runs.values()}) == 1


def test_config_file_is_passed_as_the_config_parameter_text(kfp_server, golden_package):
    config = ROOT / "examples" / "training.yaml"

    code = kfp_mlops(
        "submit", "training", "--host", kfp_server.url, "--package", str(golden_package), "--config", str(config)
    )

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
def test_a_bad_param_is_refused_before_any_request(kfp_server, golden_package, capsys, param, message):
    code = kfp_mlops("submit", "training", "--host", kfp_server.url, "--package", str(golden_package), "--param", param)

    assert code == 2
    assert message in capsys.readouterr().err
    assert kfp_server.requests == []


@pytest.mark.parametrize(("progress", "code"), [(["RUNNING", "SUCCEEDED"], 0), (["SUCCEEDED"], 0)])
def test_submit_wait_follows_the_run_and_exits_0_when_it_succeeds(kfp_server, golden_package, capsys, progress, code):
    kfp_server.run_progress = progress

    assert (
        kfp_mlops(
            "submit",
            "training",
            "--host",
            kfp_server.url,
            "--package",
            str(golden_package),
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
def test_submit_wait_exits_1_naming_the_state_the_run_ended_in(kfp_server, golden_package, capsys, state):
    kfp_server.run_progress = ["RUNNING", "RUNNING", state]

    code = kfp_mlops(
        "submit",
        "training",
        "--host",
        kfp_server.url,
        "--package",
        str(golden_package),
        "--wait",
        "--poll-interval",
        "0.01",
    )

    assert code == 1
    run_id = one(kfp_server.runs)["run_id"]
    assert f"kfp-mlops submit: error: run {run_id} ended {state}" in capsys.readouterr().err
    assert len(kfp_server.requests_to("GET", f"/runs/{run_id}")) == 3  # one poll per state, then it stops


def test_submit_wait_reports_the_error_of_a_failed_run(kfp_server, golden_package, capsys):
    assert kfp_mlops("submit", "training", "--host", kfp_server.url, "--package", str(golden_package)) == 0
    run_id = one(kfp_server.runs)["run_id"]
    kfp_server.set_run_state(run_id, "FAILED", error="task train-model: CUDA out of memory")
    client = kfp_api.connect(kfp_api.Connection(host=kfp_server.url))

    outcome = kfp_api.wait_for_run(client, run_id, poll_seconds=0.01)

    assert (outcome.state, outcome.error, outcome.succeeded) == (
        "FAILED",
        "task train-model: CUDA out of memory",
        False,
    )


def test_submit_wait_gives_up_after_timeout_and_leaves_the_run(kfp_server, golden_package, capsys):
    kfp_server.run_progress = ["RUNNING"]
    started = time.monotonic()

    code = kfp_mlops(
        "submit",
        "training",
        "--host",
        kfp_server.url,
        "--package",
        str(golden_package),
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


# --- schedule -----------------------------------------------------------------------------------------------------


def test_schedule_create_same_change_pause_resume_delete(kfp_server, golden_package, capsys):
    common = ["--host", kfp_server.url, "--package", str(golden_package)]
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


def test_a_new_pipeline_version_replaces_the_schedule_on_it(kfp_server, golden_package, changed_package, capsys):
    assert (
        kfp_mlops(
            "schedule",
            "training",
            "--host",
            kfp_server.url,
            "--package",
            str(golden_package),
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


def test_five_field_cron_is_refused_with_the_seconds_first_explanation(kfp_server, golden_package, capsys):
    code = kfp_mlops(
        "schedule", "training", "--host", kfp_server.url, "--package", str(golden_package), "--cron", "0 3 * * *"
    )

    assert code == 2
    assert "KFP cron expressions have 6 fields, seconds first: did you mean '0 0 3 * * *'?" in capsys.readouterr().err
    assert kfp_server.requests == []


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--cron", "@daily", "--start", "2026-01-01T00:00:00"], "needs a timezone"),
        (["--cron", "@daily", "--max-concurrency", "11"], "max concurrency 11: the KFP server accepts 1 to 10"),
        (["--cron", "@daily", "--delete"], "--delete takes no --cron"),
        ([], "--cron is required"),
    ],
)
def test_bad_schedule_flags_are_refused_before_any_request(kfp_server, golden_package, capsys, flags, message):
    code = kfp_mlops("schedule", "training", "--host", kfp_server.url, "--package", str(golden_package), *flags)

    assert code == 2
    assert message in capsys.readouterr().err
    assert kfp_server.requests == []


# --- listing ------------------------------------------------------------------------------------------------------


def test_runs_lists_the_newest_first_as_an_aligned_table(kfp_server, golden_package, capsys):
    client = kfp_api.connect(kfp_api.Connection(host=kfp_server.url))
    run_ids = [kfp_api.submit_run(client, golden_package, {}, run_name=f"run {i}").run_id for i in range(3)]
    kfp_server.set_run_state(run_ids[0], "SUCCEEDED")

    assert kfp_mlops("runs", "--host", kfp_server.url, "--limit", "2") == 0

    lines = capsys.readouterr().out.splitlines()
    assert re.split(r"\s{2,}", lines[0]) == ["RUN ID", "NAME", "STATE", "CREATED", "FINISHED"]
    assert [line.split()[0] for line in lines[1:]] == [run_ids[2], run_ids[1]]
    assert {line.index("PENDING") for line in lines[1:]} == {lines[0].index("STATE")}
    (list_request,) = kfp_server.requests_to("GET", "/runs")
    assert list_request.query["sort_by"] == ["created_at desc"]


def test_runs_of_one_experiment_and_of_an_unknown_one(kfp_server, golden_package, capsys):
    client = kfp_api.connect(kfp_api.Connection(host=kfp_server.url))
    nightly = kfp_api.submit_run(client, golden_package, {}, experiment="nightly").run_id
    kfp_api.submit_run(client, golden_package, {}, experiment="adhoc")
    capsys.readouterr()

    assert kfp_mlops("runs", "--host", kfp_server.url, "--experiment", "nightly") == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]] == [nightly]
    assert kfp_mlops("runs", "--host", kfp_server.url, "--experiment", "weekly") == 2
    assert "no experiment named 'weekly'" in capsys.readouterr().err


def test_schedules_lists_every_schedule_with_its_status(kfp_server, golden_package, capsys):
    assert kfp_mlops("schedules", "--host", kfp_server.url) == 0
    assert capsys.readouterr().out.strip() == "no schedules"
    common = ["--host", kfp_server.url, "--package", str(golden_package)]
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
