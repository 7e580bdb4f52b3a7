"""Compiled pipelines: golden YAML (volatile fields neutralised), PipelineSpec protobuf, images, no runtime pip."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from kfp_mlops.components.shared.images import ImageConfig
from kfp_mlops.pipelines import PIPELINES, compile_all, compile_pipeline

GOLDEN_DIR = Path(__file__).parent / "golden"
GOLDEN_IMAGES = ImageConfig(registry="registry.example/kfp-mlops", tag="golden")
STEP_OF_EXECUTOR = {
    "exec-ingest": "ingest",
    "exec-features": "features",
    "exec-prepare-training": "train",
    "exec-train-model": "train",
    "exec-evaluate-model": "evaluate",
    "exec-record-baseline": "evaluate",
    "exec-quantize-model": "quantize",
    "exec-deploy-model": "deploy",
    "exec-drift-check": "drift",
    "exec-performance-check": "performance",
    "exec-submit-training": "drift",
    "exec-report-outcome": "drift",
    "exec-batch-inference": "inference",
}


def neutralise(documents: list[dict]) -> list[dict]:
    """Drop what changes between SDK releases (the version stamp)."""
    for document in documents:
        document.pop("sdkVersion", None)
    return documents


def load_documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


SECRET_SENTINELS = {
    "AWS_ACCESS_KEY_ID": "AKIASENTINEL0000",
    "AWS_SECRET_ACCESS_KEY": "sentinel-secret-value-4d1f",
    "FEAST_REDIS_CONNECTION_STRING": "redis:6379,password=sentinel-redis-pw",
    "FEAST_REGISTRY_URL": "postgresql+psycopg://u:sentinel-pg-pw@db/feast",
}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> dict[str, Path]:
    """Every pipeline compiled while credentials sit in the environment (none may reach the YAML)."""
    directory = tmp_path_factory.mktemp("compiled")
    with pytest.MonkeyPatch.context() as patch:
        for key, value in SECRET_SENTINELS.items():
            patch.setenv(key, value)
        return {path.stem: path for path in compile_all(directory, GOLDEN_IMAGES)}


def test_every_pipeline_compiles(compiled):
    assert sorted(compiled) == sorted(PIPELINES)


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_compiled_yaml_matches_the_golden_copy(compiled, name):
    golden = GOLDEN_DIR / f"{name}.yaml"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        golden.write_text(compiled[name].read_text())
    assert neutralise(load_documents(compiled[name])) == neutralise(load_documents(golden)), (
        f"{name}.yaml differs from tests/golden; if the change is intended: make golden"
    )


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_compiled_yaml_parses_into_pipeline_spec_protobuf_without_unknown_fields(compiled, name):
    documents = load_documents(compiled[name])
    spec = json_format.ParseDict(documents[0], pipeline_spec_pb2.PipelineSpec(), ignore_unknown_fields=False)
    assert spec.pipeline_info.name == f"kfp-mlops-{name}"
    for platform in documents[1:]:
        json_format.ParseDict(platform, pipeline_spec_pb2.PlatformSpec(), ignore_unknown_fields=False)


def test_protobuf_check_rejects_an_unknown_field(compiled):
    document = load_documents(compiled["training"])[0]
    document["root"]["dag"]["tasks"]["ingest"]["gpuPool"] = "a100"
    with pytest.raises(json_format.ParseError, match="gpuPool"):
        json_format.ParseDict(document, pipeline_spec_pb2.PipelineSpec(), ignore_unknown_fields=False)


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_every_step_runs_on_its_own_image_without_runtime_installs(compiled, name):
    executors = load_documents(compiled[name])[0]["deploymentSpec"]["executors"]
    for executor_name, executor in executors.items():
        container = executor["container"]
        assert container["image"] == GOLDEN_IMAGES.ref(STEP_OF_EXECUTOR[executor_name]), executor_name
        command = " ".join(container["command"])
        assert "pip install" not in command and "pip3 install" not in command


def test_image_flags_reach_the_compiled_yaml(tmp_path):
    path = compile_pipeline("training", tmp_path / "t.yaml", ImageConfig(registry="r.local/ml", tag="sha-1"))
    images = {e["container"]["image"] for e in load_documents(path)[0]["deploymentSpec"]["executors"].values()}
    training_steps = set(STEP_OF_EXECUTOR.values()) - {"drift", "performance", "inference"}
    assert images == {f"r.local/ml/kfp-mlops-{step}:sha-1" for step in training_steps}


def test_pipeline_parameters_have_defaults_and_descriptions(compiled):
    for name, path in compiled.items():
        parameters = load_documents(path)[0]["root"]["inputDefinitions"]["parameters"]
        for key, spec in parameters.items():
            assert spec.get("isOptional") and "defaultValue" in spec, f"{name}.{key} has no default"
            assert spec.get("description"), f"{name}.{key} has no description"


def all_tasks(document: dict) -> dict[str, dict]:
    """Every task of a compiled pipeline, nested pipelines and condition groups included, by name."""
    tasks = {}
    for component in [document["root"], *document["components"].values()]:
        tasks |= component.get("dag", {}).get("tasks", {})
    return tasks


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_caching_is_a_deliberate_choice_for_every_task(compiled, name):
    from kfp_mlops.pipelines.train_and_deploy import CACHING

    document = load_documents(compiled[name])[0]
    components = document["components"]
    steps = {n: t for n, t in all_tasks(document).items() if "executorLabel" in components[t["componentRef"]["name"]]}
    assert steps and set(steps) <= set(CACHING)
    for step, task in steps.items():
        assert task.get("cachingOptions", {}).get("enableCache", False) is CACHING[step], step


def test_monitoring_retrains_only_on_drift_or_degradation_and_reports_from_an_exit_handler(compiled):
    document = load_documents(compiled["monitoring"])[0]
    tasks = all_tasks(document)
    exit_handler = next(task for name, task in tasks.items() if name.startswith("exit-handler"))
    assert tasks["report-outcome"]["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    assert tasks["report-outcome"]["dependentTasks"] == [next(n for n in tasks if n.startswith("exit-handler"))]
    inside = document["components"][exit_handler["componentRef"]["name"]]["dag"]["tasks"]
    conditions = {name: task for name, task in inside.items() if name.startswith("condition")}
    assert sorted(t["triggerPolicy"]["condition"] for t in conditions.values()) == [
        "inputs.parameter_values['pipelinechannel--performance-check-Output'] == 'kfp_api'",
        "inputs.parameter_values['pipelinechannel--performance-check-Output'] == 'nested'",
    ]
    # the performance check takes drift's decision and adds its own (components/performance/executor.py)
    drift_action = inside["performance-check"]["inputs"]["parameters"]["drift_action"]
    assert drift_action["taskOutputParameter"] == {"producerTask": "drift-check", "outputParameterKey": "Output"}
    groups = [document["components"][task["componentRef"]["name"]]["dag"]["tasks"] for task in conditions.values()]
    nested = {name for group in groups for name in group}
    assert nested == {"train-and-deploy", "submit-training"}


def test_unknown_pipeline_is_rejected(tmp_path):
    with pytest.raises(KeyError, match="unknown pipeline 'scoring'"):
        compile_pipeline("scoring", tmp_path / "x.yaml")


def test_training_pipeline_gates_on_the_blessing_and_puts_training_on_the_gpu_pool(compiled):
    documents = load_documents(compiled["training"])
    tasks = all_tasks(documents[0])
    gate = next(task for name, task in tasks.items() if name.startswith("condition"))
    assert "evaluate-model" in gate["dependentTasks"]
    assert "== true" in gate["triggerPolicy"]["condition"]
    blessed = documents[0]["components"][gate["componentRef"]["name"]]["dag"]["tasks"]
    assert set(blessed) == {"quantize-model", "deploy-model", "record-baseline"}  # only a blessed model goes on
    assert "quantize-model" in blessed["deploy-model"]["dependentTasks"]
    assert "deploy-model" in blessed["record-baseline"]["dependentTasks"]
    train = tasks["train-model"]
    assert train["retryPolicy"]["maxRetryCount"] == 2
    assert "retryPolicy" not in tasks["prepare-training"]  # input errors fail on the CPU pod, at once
    resources = documents[0]["deploymentSpec"]["executors"]["exec-train-model"]["container"]["resources"]
    # what prepare-training returns (the training pod, or a multi-node launcher without GPU): strings, as the
    # backend's driver reads them (tests/test_backend_conformance.py)
    channel = "{{$.inputs.parameters['pipelinechannel--prepare-training-%s']}}"
    assert resources["accelerator"]["resourceCount"] == channel % "gpus"
    assert resources["resourceCpuRequest"] == resources["resourceCpuLimit"] == channel % "cpu"
    assert resources["resourceMemoryRequest"] == resources["resourceMemoryLimit"] == channel % "memory"
    platform = documents[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-train-model"]
    selector = platform["nodeSelector"]["nodeSelectorJson"]["componentInputParameter"]
    assert selector.removeprefix("pipelinechannel--") == "train_node_selector"
    toleration = platform["tolerations"][0]["tolerationJson"]["componentInputParameter"]
    assert toleration.removeprefix("pipelinechannel--") == "train_tolerations"
    assert platform["emptyDirMounts"] == [
        {"volumeName": "dshm", "mountPath": "/dev/shm", "medium": "Memory", "sizeLimit": "4Gi"}
    ]
    assert int(platform["activeDeadlineSeconds"]) == 24 * 3600
    for executor in documents[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"].values():
        parameters = [s["secretNameParameter"] for s in executor["secretAsEnv"]]
        names = [p.get("componentInputParameter", "").removeprefix("pipelinechannel--") or p["runtimeValue"]["constant"]
                 for p in parameters]  # fmt: skip
        secrets = dict(zip(names, executor["secretAsEnv"], strict=True))
        storage_keys = {k["secretKey"]: k["envVar"] for k in secrets["storage_secret"]["keyToEnv"]}
        assert storage_keys["AWS_ACCESS_KEY_ID"] == "AWS_ACCESS_KEY_ID" and secrets["storage_secret"]["optional"]
        minio = secrets["mlpipeline-minio-artifact"]  # KFP's own MinIO credentials: minio:// works out of the box
        assert {k["secretKey"]: k["envVar"] for k in minio["keyToEnv"]} == {
            "accesskey": "KFP_MINIO_ACCESS_KEY", "secretkey": "KFP_MINIO_SECRET_KEY",
        } and minio["optional"]  # fmt: skip
    text = compiled["training"].read_text()
    for value in SECRET_SENTINELS.values():
        assert value not in text and value.split("=")[-1] not in text
