"""What ``run --containers`` decides before any container starts (no engine needed): which local paths a run's
arguments name and how they are mounted, what the images' user may do there, the environment passed on, the engine
chosen, and how an image probe's report is judged (``make test-images`` runs the probes themselves)."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
import yaml

from kfp_mlops import containers
from kfp_mlops.container_run import open_to_run_user, passed_environment, paths_to_mount, print_lines
from kfp_mlops.image_checks import ImageReport


def config(**sections) -> str:
    return yaml.safe_dump({"data": {"source": "s3://bucket/raw/"}, **sections})


def test_the_config_paths_are_mounted_read_only_or_writable_and_uris_are_not(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "churn.parquet").write_bytes(b"x")
    text = config(
        data={"source": str(data / "churn.parquet")},
        evaluate={"baseline": str(tmp_path / "serving" / "record.json")},
        deploy={"model_repository": str(tmp_path / "models")},
        train={"checkpoint_dir": "gs://bucket/checkpoints"},
    )
    mounts = paths_to_mount({"config": text, "data_source": "s3://bucket/window/", "rows": 5})
    assert mounts == {data: "ro", tmp_path / "serving": "rw", tmp_path / "models": "rw"}
    assert (tmp_path / "models").is_dir() and (tmp_path / "serving").is_dir()  # created for the step to write


def test_a_glob_or_a_parameter_naming_a_local_path_is_mounted_and_a_missing_input_is_left_to_fail(tmp_path):
    (tmp_path / "window").mkdir()
    text = config(data={"source": f"file://{tmp_path}/window/*.parquet"})
    assert paths_to_mount({"config": text}) == {tmp_path / "window": "ro"}
    assert paths_to_mount({"data_source": str(tmp_path / "window")}) == {tmp_path / "window": "ro"}
    assert paths_to_mount({"config": config(data={"source": str(tmp_path / "absent")})}) == {}
    assert paths_to_mount({"data_source": "relative/path", "config": ""}) == {}


def test_the_images_user_gets_read_or_write_access_and_nothing_is_taken_away(tmp_path):
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "file").write_text("x")
    (tree / "sub").chmod(0o700)
    (tree / "sub" / "file").chmod(0o600)
    open_to_run_user(tree, writable=False)
    assert stat.S_IMODE((tree / "sub").stat().st_mode) == 0o755
    assert stat.S_IMODE((tree / "sub" / "file").stat().st_mode) == 0o644
    open_to_run_user(tree, writable=True)
    assert stat.S_IMODE((tree / "sub").stat().st_mode) == 0o777
    assert stat.S_IMODE((tree / "sub" / "file").stat().st_mode) == 0o666


def test_only_the_services_settings_are_passed_into_the_containers():
    environ = {"AWS_ACCESS_KEY_ID": "k", "AWS_ENDPOINT_URL": "http://127.0.0.1:1", "STORAGE_EMULATOR_HOST": "h",
               "KFP_MLOPS_TRITON_CONTROL_KEY": "t", "HOME": "/root", "PATH": "/bin", "STORAGE_EMULATOR_HOSTX": "no",
               "FEAST_REDIS_CONNECTION_STRING": "r"}  # fmt: skip
    assert set(passed_environment(environ)) == {
        "AWS_ACCESS_KEY_ID", "AWS_ENDPOINT_URL", "STORAGE_EMULATOR_HOST", "KFP_MLOPS_TRITON_CONTROL_KEY",
        "FEAST_REDIS_CONNECTION_STRING",
    }  # fmt: skip


def test_the_engine_can_be_forced_and_a_wrong_value_is_refused(monkeypatch):
    monkeypatch.setenv(containers.ENGINE_ENV, "docker")
    assert containers.detect().name == "docker"
    monkeypatch.setenv(containers.ENGINE_ENV, "podman")
    monkeypatch.setattr(containers.shutil, "which", lambda name: f"/usr/bin/{name}")
    engine = containers.detect()
    assert engine.name == "podman" and Path(engine.env["CONTAINERS_CONF"]).name == "containers.conf"
    monkeypatch.setenv(containers.ENGINE_ENV, "lxc")
    with pytest.raises(containers.ContainerEngineError, match="expected docker or podman"):
        containers.detect()


GOOD = {"uid": 10001, "python": "3.11.11", "modules": ["m"], "import_seconds": 1.0, "missing_distributions": [],
        "pip_check": {"returncode": 0, "output": "No broken requirements found."}, "compilers": [],
        "pip_in_step_environment": False}  # fmt: skip


def test_a_clean_report_has_no_problems_and_each_fault_names_step_and_image():
    assert ImageReport("ingest", "img:1", GOOD).problems() == []
    bad = GOOD | {"missing_module": "pyarrow", "importing": "kfp_mlops.components.ingest.core", "uid": 0,
                  "import_seconds": 40.0, "compilers": ["gcc"], "pip_in_step_environment": True}  # fmt: skip
    problems = ImageReport("ingest", "img:1", bad).problems()
    assert problems[0] == (
        "step ingest, image img:1: module 'pyarrow' is missing (importing kfp_mlops.components.ingest.core)"
    )
    joined = "\n".join(problems)
    assert "runs as uid 0, expected 10001" in joined and "40.0" not in joined  # seconds are measured, not judged
    assert "compilers at run time: gcc" in joined and "pip inside the step's environment" in joined
    assert ImageReport("train", "img:2", error="the image is not built here").problems() == [
        "step train, image img:2: the image is not built here"
    ]


def test_pip_check_forgives_only_what_debians_older_python_alone_requires():
    redis = {"returncode": 1, "output": "redis 7.4.1 requires async-timeout, which is not installed."}
    assert ImageReport("features", "i", GOOD | {"python": "3.11.2", "pip_check": redis}).problems() == []
    assert "pip check: redis" in ImageReport("features", "i", GOOD | {"pip_check": redis}).problems()[0]  # 3.11.11
    other = {"returncode": 1, "output": redis["output"] + "\nfeast 0.67.0 has requirement dill, but you have none."}
    problems = ImageReport("features", "i", GOOD | {"python": "3.11.2", "pip_check": other}).problems()
    assert problems == ["step features, image i: pip check: feast 0.67.0 has requirement dill, but you have none."]


def test_the_serving_model_and_reference_data_a_serving_record_names_are_mounted_read_only(tmp_path):
    """A monitoring run reads the model that serves (and its reference data) from the root of the run that
    deployed it: the record names them, and they are mounted even though no setting names them."""
    model, reference = tmp_path / "old-run" / "quantized_model", tmp_path / "old-run" / "train_features"
    model.mkdir(parents=True)
    reference.write_bytes(b"x")
    record = tmp_path / "serving" / "record.json"
    record.parent.mkdir()
    record.write_text(json.dumps({"model": str(model), "reference_data": str(reference), "gone": "/no/such/path",
                                  "deployment": {"version": 1, "uri": "s3://b/m/1"}}))  # fmt: skip
    mounts = paths_to_mount({"config": config(evaluate={"baseline": str(record)})})
    assert mounts == {tmp_path / "serving": "rw", model: "ro", tmp_path / "old-run": "ro"}


def test_a_containers_output_streamed_in_pieces_is_printed_one_whole_line_at_a_time(capsys):
    """kfp.local indents each print: pieces printed as they come would split "ModuleNotFoundError: ..." apart."""
    pieces = [b"Module", b"NotFoundError", b": No module ", b"named 'pyarrow'\nnext", b" line \xc3", b"\xa9\n", b"end"]
    print_lines(pieces)
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["ModuleNotFoundError: No module named 'pyarrow'", "next line é", "end"]
