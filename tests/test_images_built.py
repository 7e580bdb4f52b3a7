"""The step images built and run for real (``make test-images``; the ``images`` marker keeps them out of
``make test``): each image's own checks, then the compiled pipelines with every task in its own image through
kfp.local's Docker runner (``kfp-mlops run --local --containers``), against a real local Triton.

Needs the images of ``make images-local`` (named ``localhost/kfp-mlops/kfp-mlops-<step>:<version>``) and a container
engine (Docker, else podman: ``kfp_mlops/containers.py``).
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import sys
from pathlib import Path

import pytest
from support import configs as support_configs
from support.triton import running_triton

from kfp_mlops import containers, image_checks
from kfp_mlops.cli import main
from kfp_mlops.components.shared.images import STEPS, ImageConfig
from kfp_mlops.container_run import MISSING_IMAGE_EXIT, run_container
from kfp_mlops.pipelines import compile_pipeline
from kfp_mlops.sample_data import write_sample_data

pytestmark = [pytest.mark.images, pytest.mark.timeout(1200)]
REPO = Path(__file__).resolve().parents[1]
IMAGES = ImageConfig(registry=containers.LOCAL_REGISTRY)
TRAINING_STEPS = ("ingest", "features", "prepare-training", "train-model", "evaluate-model", "quantize-model",
                  "deploy-model", "record-baseline")  # fmt: skip
# The task -> the step image it runs in (the compiled YAML's executors).
TASK_IMAGES = {"ingest": "ingest", "features": "features", "prepare-training": "train", "train-model": "train",
               "evaluate-model": "evaluate", "quantize-model": "quantize", "deploy-model": "deploy",
               "record-baseline": "evaluate", "drift-check": "drift", "performance-check": "performance",
               "report-outcome": "drift"}  # fmt: skip


def _build_local():
    sys.path.insert(0, str(REPO / "images"))
    import build_local

    return build_local


@pytest.fixture(scope="module")
def engine() -> containers.Engine:
    return containers.detect()


@pytest.fixture(scope="module")
def package_of(tmp_path_factory):
    directory, compiled = tmp_path_factory.mktemp("pkg"), {}

    def package(name: str, images: ImageConfig = IMAGES) -> Path:
        key = (name, images.tag)
        if key not in compiled:
            compiled[key] = compile_pipeline(name, directory / f"{name}-{images.tag or 'v'}.yaml", images)
        return compiled[key]

    return package


def run_in_containers(pipeline: str, package: Path, root: Path, *args: str) -> tuple[int, str]:
    arguments = ["--package", str(package), "--pipeline-root", str(root), *args]
    with contextlib.redirect_stdout(io.StringIO()) as out:
        code = main(["run", pipeline, "--local", "--containers", *arguments])
    return code, out.getvalue()


# --- each image on its own ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("step", STEPS)
def test_image_runs_as_non_root_read_only_imports_its_step_and_pip_check_is_clean(engine, step):
    result = image_checks.probe(engine, step, IMAGES.ref(step))
    summary = {k: v for k, v in result.report.items() if k not in ("traceback", "modules")}
    print(f"{step}: {json.dumps(summary)}")
    assert result.problems() == [], result.report.get("traceback", "")
    assert result.report["uid"] == image_checks.RUN_USER_UID and result.report["modules"]


@pytest.mark.parametrize("step", STEPS)
def test_image_is_within_its_size_budget(engine, step):
    budget = _build_local().SIZE_BUDGET_MB[step]
    size = image_checks.size_mb(engine, IMAGES.ref(step))
    print(f"{step}: {size:.0f} MB (budget {budget} MB)")
    assert size <= budget, f"{IMAGES.ref(step)} is {size:.0f} MB, over its budget of {budget} MB"


@pytest.fixture(scope="module")
def image_lacking_pyarrow(engine, tmp_path_factory) -> str:
    """The ingest image with pyarrow uninstalled, tagged ``missing-module-test`` (removed afterwards)."""
    broken = ImageConfig(registry=containers.LOCAL_REGISTRY, tag="missing-module-test").ref("ingest")
    context = tmp_path_factory.mktemp("broken-image")
    (context / "Dockerfile").write_text(
        f"FROM {IMAGES.ref('ingest')}\nUSER 0\n"
        "RUN pip --python /opt/venv/bin/python uninstall --yes pyarrow\nUSER 10001\n"
    )
    extra = ["--pull=never", "--network=none"] if engine.name == "podman" else []
    engine.run("build", *extra, "-t", broken, str(context), timeout=300)
    yield broken
    engine.run("rmi", "-f", broken, check=False)


def test_an_image_lacking_a_dependency_is_reported_naming_step_image_and_module(engine, image_lacking_pyarrow):
    problems = image_checks.probe(engine, "ingest", image_lacking_pyarrow).problems()
    assert any(
        f"step ingest, image {image_lacking_pyarrow}: module 'pyarrow' is missing" in problem for problem in problems
    ), problems
    assert any("not installed: pyarrow" in problem for problem in problems), problems


def test_a_pipeline_whose_image_lacks_a_dependency_fails_at_that_step_naming_image_and_module(
    image_lacking_pyarrow, package_of, sample_data, tmp_path
):
    broken = ImageConfig(registry=containers.LOCAL_REGISTRY, tag="missing-module-test")
    config = support_configs.write_config(tmp_path, str(sample_data))
    package = package_of("training", broken)
    code, out = run_in_containers("training", package, tmp_path / "root", "--config", str(config))
    assert code == 1, out
    assert re.search(r"^ingest +FAILURE", out, re.MULTILINE), out
    assert "step 'ingest' failed: ModuleNotFoundError: No module named 'pyarrow'" in out, out
    assert f"container: {image_lacking_pyarrow} exited with status 1" in out, out


def test_the_exit_code_of_a_container_that_fails_at_once_is_read_not_guessed(engine):
    """The podman race: with kfp's auto-remove, a container that exits 3 at once reads as 0 (SUCCESS)."""
    import docker

    with containers.docker_api(engine) as url, contextlib.closing(docker.DockerClient(base_url=url)) as client:
        with contextlib.redirect_stdout(io.StringIO()) as printed:
            failed = run_container(client, IMAGES.ref("ingest"), ["sh", "-c", "exit 3"], {})
            succeeded = run_container(client, IMAGES.ref("ingest"), ["true"], {})
            missing = run_container(client, f"{containers.LOCAL_REGISTRY}/kfp-mlops-nothing:0", ["true"], {})
        assert (failed, succeeded, missing) == (3, 0, MISSING_IMAGE_EXIT)
        assert "ImageNotFoundError: localhost/kfp-mlops/kfp-mlops-nothing:0 is not built here" in printed.getvalue()
        names = [c.name for c in client.containers.list(all=True, filters={"ancestor": IMAGES.ref("ingest")})]
        assert names == []  # removed after their exit code was read


# --- the compiled pipelines, each task in its own image ---------------------------------------------------------------


@pytest.fixture(scope="module")
def sample_data(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("sample")
    write_sample_data(str(directory), rows=5_000, seed=0)
    return directory


def test_a_failing_step_in_a_container_fails_the_run_with_a_non_zero_exit(package_of, tmp_path):
    config = support_configs.write_config(tmp_path, str(tmp_path / "no-such-data"))
    code, out = run_in_containers("training", package_of("training"), tmp_path / "root", "--config", str(config))
    assert code == 1, out
    assert re.search(r"^ingest +FAILURE", out, re.MULTILINE) and "SUCCEEDED" not in out, out
    assert "no data files found" in out and f"container: {IMAGES.ref('ingest')} exited with status 1" in out, out


@pytest.fixture(scope="module")
def triton(tmp_path_factory):
    repository = tmp_path_factory.mktemp("triton-models")
    with running_triton(repository) as server:
        yield server, repository


@pytest.fixture(scope="module")
def deployed(package_of, sample_data, triton, tmp_path_factory):
    server, repository = triton
    work = tmp_path_factory.mktemp("deployed")
    deploy = {"model_repository": str(repository), "triton_url": server.grpc_url, "backend": "python",
              "model_name": "churn"}  # fmt: skip
    train = {"epochs": 4, "micro_batch_size": 64, "optimizer": {"lr": 0.003}}
    record = work / "serving" / "record.json"
    config = support_configs.write_config(
        work, str(sample_data), evaluate={"baseline": str(record)}, deploy=deploy, train=train
    )
    code, out = run_in_containers("training", package_of("training"), work / "root", "--config", str(config))
    (run_dir,) = (work / "root").glob("kfp-mlops-training-*")
    return {"code": code, "out": out, "run_dir": run_dir, "config": config, "record": record, "server": server,
            "repository": repository, "work": work}  # fmt: skip


def _ran_in_their_images(run_dir: Path, tasks: tuple[str, ...]) -> None:
    run_log = (run_dir / "logs" / "run.log").read_text()
    for task in tasks:
        log = (run_dir / "logs" / f"{task}.log").read_text()
        assert f"container: running {IMAGES.ref(TASK_IMAGES[task])}" in log, f"{task} did not run in its image"
    assert "Pulling image" not in run_log


def test_training_in_containers_deploys_to_triton_and_predicts_by_entity_id(deployed):
    out, run_dir = deployed["out"], deployed["run_dir"]
    assert deployed["code"] == 0, out
    assert "Pipeline kfp-mlops-training: SUCCEEDED" in out
    for step in TRAINING_STEPS:
        assert re.search(rf"^{step} +SUCCESS", out, re.MULTILINE), f"{step} did not succeed:\n{out}"
    _ran_in_their_images(run_dir, TRAINING_STEPS)
    # written by the images' user (uid 10001), not by this process
    assert (run_dir / "train-model" / "model" / "model.onnx").stat().st_uid == image_checks.RUN_USER_UID
    assert "[evaluate] BLESSED" in out and "[deploy] " in out
    record = json.loads(deployed["record"].read_text())
    assert record["deployment"]["version"] == 1
    entity = "100000"
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        code = main(["predict", "--entity", entity, "--url", deployed["server"].grpc_url, "--protocol", "grpc",
                     "--model", "churn", "--model-repository", str(deployed["repository"]),
                     "--feature-repo", str(run_dir / "features" / "feature_repo")])  # fmt: skip
    assert code == 0, printed.getvalue()
    assert re.search(rf"^{entity} .*[01]\s*$", printed.getvalue(), re.MULTILINE), printed.getvalue()


def test_monitoring_in_containers_on_a_drifted_window_retrains_and_redeploys(deployed, package_of, tmp_path):
    assert deployed["code"] == 0, deployed["out"]
    window = tmp_path / "window"
    write_sample_data(str(window), rows=5_000, seed=1, drift=True)
    code, out = run_in_containers(
        "monitoring", package_of("monitoring"), tmp_path / "root", "--config", str(deployed["config"]),
        "--param", f"data_source={window}",
    )  # fmt: skip
    assert code == 0, out
    assert re.search(r"^  drift-check +\[drift\] drift \(\d+ of 9 columns", out, re.MULTILINE), out
    (run_dir,) = (tmp_path / "root").glob("kfp-mlops-monitoring-*")
    tasks = (
        "ingest",
        "drift-check",
        "performance-check",
        "features",
        "train-model",
        "evaluate-model",
        "report-outcome",
    )
    for task in tasks:
        assert re.search(rf"^{task} +SUCCESS", out, re.MULTILINE), f"{task} did not succeed:\n{out}"
    _ran_in_their_images(run_dir, tasks)
    assert (run_dir / "drift-check" / "report").read_text().lstrip().lower().startswith("<")


# --- examples/custom_model: the user's own train image --------------------------------------------------------------


@pytest.fixture(scope="module")
def custom_train_image(engine) -> str:
    """examples/custom_model/Dockerfile built FROM the local train image, as its README builds it (removed after)."""
    image = f"{containers.LOCAL_REGISTRY}/kfp-mlops-train-tabular-resnet:custom-model-test"
    extra = ["--pull=never", "--network=none"] if engine.name == "podman" else []
    engine.run("build", *extra, "--build-arg", f"TRAIN_IMAGE={IMAGES.ref('train')}", "-t", image,
               str(support_configs.CUSTOM_MODEL_EXAMPLE), timeout=300)  # fmt: skip
    yield image
    engine.run("rmi", "-f", image, check=False)


def test_the_custom_model_example_image_trains_its_network_in_the_pipeline_and_serves_it(
    custom_train_image, triton, tmp_path
):
    server, repository = triton
    images = ImageConfig(registry=containers.LOCAL_REGISTRY, overrides={"train": custom_train_image})
    package = compile_pipeline("training", tmp_path / "training-custom-model.yaml", images)
    config = support_configs.write_custom_model_config(tmp_path, server.grpc_url, repository)
    code, out = run_in_containers("training", package, tmp_path / "root", "--config", str(config))
    assert code == 0, out
    (run_dir,) = (tmp_path / "root").glob("kfp-mlops-training-*")
    for task in ("prepare-training", "train-model"):  # the user's image, nothing importable from this checkout
        assert f"container: running {custom_train_image}" in (run_dir / "logs" / f"{task}.log").read_text()
    model_config = json.loads((run_dir / "train-model" / "model" / "model_config.json").read_text())
    assert model_config["task"] == "regression"
    assert model_config["architecture"]["entry_point"] == "tabular_resnet.model:build"
    assert "[evaluate] BLESSED" in out and re.search(r"^deploy-model +SUCCESS", out, re.MULTILINE), out
