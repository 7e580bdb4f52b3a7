"""Every compiled pipeline against a model of the KFP backend's driver (tests/support/kfp_backend.py: each rule cites
the upstream file it comes from), with a negative case per rule; and the training pod's defaults against the example
GPU pools' allocatable resources (manifests/examples/allocatable.yaml)."""

# No `from __future__ import annotations`: kfp reads the probe components' annotations as types.
import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.utils import parse_quantity
from support.kfp_backend import CompiledPipeline

from kfp_mlops.components.shared import triton_access
from kfp_mlops.components.shared.config import MonitoringConfig
from kfp_mlops.components.shared.images import ImageConfig
from kfp_mlops.pipelines import PIPELINES, compile_pipeline
from kfp_mlops.pipelines.train_and_deploy import TIMEOUTS, TIMEOUTS_ENV, task_timeouts

ROOT = Path(__file__).resolve().parents[1]
POOLS = ROOT / "manifests" / "examples" / "allocatable.yaml"


def mutated(documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return copy.deepcopy(documents)


def test_every_compiled_pipeline_conforms_to_the_backend_model(compiled_documents):
    assert sorted(compiled_documents) == sorted(PIPELINES)
    for name, documents in compiled_documents.items():
        assert CompiledPipeline(documents).violations() == [], name
        assert "{{$.pipeline_root}}" not in yaml.safe_dump_all(documents), name


def test_the_training_pod_takes_its_accelerator_cpu_and_memory_from_string_channels(compiled_documents):
    """What the driver reads into the train-model pod, traced to where it comes from: every one a STRING."""
    pipeline = CompiledPipeline(compiled_documents["training"])
    resources = pipeline.spec["deploymentSpec"]["executors"]["exec-train-model"]["container"]["resources"]
    assert set(resources) == {"accelerator", "resourceCpuLimit", "resourceCpuRequest", "resourceMemoryLimit",
                              "resourceMemoryRequest"}  # fmt: skip
    (task,) = pipeline.executor_tasks("exec-train-model")
    for value in [*resources["accelerator"].values(), resources["resourceCpuLimit"], resources["resourceMemoryLimit"]]:
        channel = value.removeprefix("{{$.inputs.parameters['").removesuffix("']}}")
        assert pipeline.parameter_types(task.dag, task.spec["inputs"]["parameters"][channel]) == {"STRING"}
    root = pipeline.spec["root"]["inputDefinitions"]["parameters"]
    for name in ("gpu_type", "gpus_per_node", "train_cpu", "train_memory", "storage_secret", "feast_secret"):
        assert root[name]["parameterType"] == "STRING", name


# --- negative cases: a pipeline that breaks a rule fails it --------------------------------------------------------


def test_a_pipeline_root_placeholder_is_reported(compiled_documents):
    documents = mutated(compiled_documents["training"])
    ingest = documents[0]["root"]["dag"]["tasks"]["ingest"]["inputs"]["parameters"]
    ingest["run_id"] = {"runtimeValue": {"constant": "{{$.pipeline_root}}"}}
    (problem,) = CompiledPipeline(documents).unresolved_placeholders()
    assert "task ingest input run_id = '{{$.pipeline_root}}'" in problem and "resolve.go" in problem


def test_a_numeric_gpu_count_is_reported_through_the_nested_pipeline(compiled_documents):
    """gpus_per_node as an int at the root: the value reaches train-model's accelerator count through the nested
    pipeline and prepare-training, so the model follows the channel to the root's declaration."""
    documents = mutated(compiled_documents["training"])
    pipeline = CompiledPipeline(documents)
    executor = documents[0]["deploymentSpec"]["executors"]["exec-train-model"]["container"]
    executor["resources"]["accelerator"]["resourceCount"] = "{{$.inputs.parameters['pipelinechannel--gpus_per_node']}}"
    (task,) = pipeline.executor_tasks("exec-train-model")
    task.spec["inputs"]["parameters"]["pipelinechannel--gpus_per_node"] = {"componentInputParameter": "gpus_per_node"}
    assert pipeline.non_string_pod_fields() == []
    documents[0]["root"]["inputDefinitions"]["parameters"]["gpus_per_node"]["parameterType"] = "NUMBER_INTEGER"
    (problem,) = pipeline.non_string_pod_fields()
    assert "resources.accelerator.resourceCount" in problem and "NUMBER_INTEGER" in problem


def test_a_numeric_task_output_for_a_pod_field_is_reported(compiled_documents):
    documents = mutated(compiled_documents["training"])
    outputs = documents[0]["components"]["comp-prepare-training"]["outputDefinitions"]["parameters"]
    outputs["memory"]["parameterType"] = "NUMBER_DOUBLE"
    problems = CompiledPipeline(documents).non_string_pod_fields()
    assert {p.split(" comes")[0] for p in problems} == {
        "exec-train-model resources.resourceMemoryLimit",
        "exec-train-model resources.resourceMemoryRequest",
    }


def test_a_kubernetes_field_the_driver_does_not_apply_is_reported(compiled_documents):
    documents = mutated(compiled_documents["training"])
    executors = documents[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    executors["exec-train-model"]["podAffinity"] = [{"matchPodLabels": {"app": "cache"}, "topologyKey": "zone"}]
    (problem,) = CompiledPipeline(documents).unimplemented_kubernetes_fields()
    assert problem.startswith("exec-train-model: kfp-kubernetes field podAffinity")


def test_a_node_selector_from_a_string_parameter_is_reported(compiled_documents):
    documents = mutated(compiled_documents["training"])
    documents[0]["root"]["inputDefinitions"]["parameters"]["train_node_selector"]["parameterType"] = "STRING"
    problems = CompiledPipeline(documents).mistyped_kubernetes_parameters()
    assert problems and all("nodeSelectorJson has type ['STRING', 'STRUCT']" in p for p in problems)


def test_a_secret_name_from_a_number_is_reported(compiled_documents):
    documents = mutated(compiled_documents["monitoring"])
    documents[0]["root"]["inputDefinitions"]["parameters"]["storage_secret"]["parameterType"] = "NUMBER_INTEGER"
    problems = CompiledPipeline(documents).mistyped_kubernetes_parameters()
    assert problems and all("secretNameParameter" in p and "NUMBER_INTEGER" in p for p in problems)


def test_a_task_without_requests_is_reported(compiled_documents):
    documents = mutated(compiled_documents["monitoring"])
    del documents[0]["deploymentSpec"]["executors"]["exec-report-outcome"]["container"]["resources"]
    problems = CompiledPipeline(documents).tasks_without_requests()
    fields = ("resourceCpuRequest", "resourceCpuLimit", "resourceMemoryRequest", "resourceMemoryLimit")
    assert problems == [f"exec-report-outcome: no {field}" for field in fields]


def test_a_task_without_a_deadline_is_reported(compiled_documents):
    documents = mutated(compiled_documents["training"])
    executors = documents[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    del executors["exec-deploy-model"]["activeDeadlineSeconds"]
    executors["exec-ingest"]["activeDeadlineSeconds"] = "0"  # the driver skips 0 (k8s.go: timeout > 0)
    problems = CompiledPipeline(documents).tasks_without_deadline()
    assert [p.split(":")[0] for p in problems] == ["exec-deploy-model", "exec-ingest"]
    assert all("k8s.go" in p for p in problems)


def test_every_task_has_its_configured_deadline(compiled_documents):
    """Each executor's activeDeadlineSeconds is its task's TIMEOUTS entry: the long one for training, bounded ones
    for deploy and drift."""
    for documents in compiled_documents.values():
        pipeline = CompiledPipeline(documents)
        for executor, config in pipeline.kubernetes["executors"].items():
            task = executor.removeprefix("exec-")
            assert int(config["activeDeadlineSeconds"]) == TIMEOUTS[task], executor
    assert TIMEOUTS["train-model"] >= 12 * 3600
    assert TIMEOUTS["deploy-model"] <= 3600 and TIMEOUTS["drift-check"] <= 3600
    assert TIMEOUTS["submit-training"] > MonitoringConfig().wait_timeout_seconds  # the step gives up first


def control_key_problems(executors: dict[str, Any]) -> list[str]:
    """Triton's model-control key (CONTROL_ENV from the Secret CONTROL_SECRET) goes to deploy-model only, optional
    (k8s.go extendPodSpecPatch copies secretAsEnv.optional onto the secretKeyRef since 2.15.0: a missing Secret then
    leaves the variable unset instead of failing the pod)."""
    problems = []
    for executor, config in executors.items():
        sources = [
            (entry["secretNameParameter"]["runtimeValue"]["constant"], bool(entry.get("optional")))
            for entry in config.get("secretAsEnv", [])
            if any(item["envVar"] == triton_access.CONTROL_ENV for item in entry["keyToEnv"])
        ]
        if executor != "exec-deploy-model":
            problems += [f"{executor} gets Triton's control key: only deploy-model may"] if sources else []
        elif sources != [(triton_access.CONTROL_SECRET, True)]:
            problems.append(f"{executor}: the control key comes from {sources}, not optionally from "
                            f"{triton_access.CONTROL_SECRET}")  # fmt: skip
    return problems


def test_only_the_deploy_task_gets_tritons_control_key_and_optionally(compiled_documents):
    for name, documents in compiled_documents.items():
        assert control_key_problems(CompiledPipeline(documents).kubernetes["executors"]) == [], name


def test_a_control_key_elsewhere_required_or_missing_is_reported(compiled_documents):
    executors = mutated(compiled_documents["training"])[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    (entry,) = [
        e for e in executors["exec-deploy-model"]["secretAsEnv"] if e.get("secretName") == "kfp-mlops-triton-control"
    ]
    executors["exec-evaluate-model"]["secretAsEnv"].append(copy.deepcopy(entry))
    entry["optional"] = False
    assert control_key_problems(executors) == [
        "exec-deploy-model: the control key comes from [('kfp-mlops-triton-control', False)], not optionally from "
        "kfp-mlops-triton-control",
        "exec-evaluate-model gets Triton's control key: only deploy-model may",
    ]
    executors["exec-deploy-model"]["secretAsEnv"].remove(entry)
    assert control_key_problems(executors)[0].startswith("exec-deploy-model: the control key comes from []")


def test_task_timeouts_are_overridden_at_compile_time_and_bad_overrides_refused(monkeypatch, tmp_path):
    assert task_timeouts("train-model=172800, deploy-model=900")["train-model"] == 172800
    assert task_timeouts("") == TIMEOUTS
    for bad, message in (("train=1", "unknown task 'train'"), ("deploy-model=0", "deploy-model=<whole seconds"),
                         ("deploy-model=1h", "deploy-model=<whole seconds")):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            task_timeouts(bad)
    monkeypatch.setenv(TIMEOUTS_ENV, "deploy-model=900")
    path = compile_pipeline("training", tmp_path / "training.yaml", ImageConfig(tag="test"))
    documents = [d for d in yaml.safe_load_all(path.read_text()) if d]
    executors = CompiledPipeline(documents).kubernetes["executors"]
    assert executors["exec-deploy-model"]["activeDeadlineSeconds"] == "900"
    assert executors["exec-train-model"]["activeDeadlineSeconds"] == str(TIMEOUTS["train-model"])


def test_the_sdk_writes_a_pipeline_root_placeholder_that_the_model_catches(tmp_path):
    """The rule is about what the SDK really compiles: dsl.PIPELINE_ROOT_PLACEHOLDER as an argument."""
    from kfp import compiler, dsl, kubernetes

    @dsl.component(base_image="python:3.11-slim")
    def step(root: str) -> str:
        return root

    @dsl.pipeline(name="probe")
    def probe():
        task = step(root=dsl.PIPELINE_ROOT_PLACEHOLDER).set_cpu_request("1").set_cpu_limit("1")
        kubernetes.set_timeout(task.set_memory_request("1Gi").set_memory_limit("1Gi"), 60)

    path = tmp_path / "probe.yaml"
    compiler.Compiler().compile(probe, str(path))
    documents = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert CompiledPipeline(documents).violations() == [
        "task step input root = '{{$.pipeline_root}}': the backend's driver passes it on unresolved "
        "(backend/src/v2/driver/resolve.go, resolveInputParameter)"
    ]


# --- the defaults schedule on the example GPU pools ----------------------------------------------------------------


def pools() -> list[dict[str, Any]]:
    return yaml.safe_load(POOLS.read_text())["pools"]


def unschedulable(defaults: dict[str, str], pool: dict[str, Any]) -> list[str]:
    """What of the training pod's defaults does not fit one node of ``pool`` beside its daemonsets."""
    problems = []
    for resource, parameter in (("cpu", "train_cpu"), ("memory", "train_memory")):
        room = parse_quantity(pool["allocatable"][resource]) - parse_quantity(pool["daemonsets"][resource])
        if parse_quantity(defaults[parameter]) > room:
            problems.append(f"{parameter}={defaults[parameter]} exceeds {pool['name']}'s {room} {resource}")
    if int(defaults["gpus_per_node"]) > pool["gpus"]:
        problems.append(f"gpus_per_node={defaults['gpus_per_node']} exceeds {pool['name']}'s {pool['gpus']} GPUs")
    return problems


def test_the_training_pod_defaults_fit_every_example_pool(compiled_documents):
    for name, documents in compiled_documents.items():
        parameters = documents[0]["root"]["inputDefinitions"]["parameters"]
        if "gpus_per_node" not in parameters:
            assert name == "inference", name  # the one pipeline that trains nothing
            continue
        defaults = {p: parameters[p]["defaultValue"] for p in ("gpus_per_node", "train_cpu", "train_memory")}
        for pool in pools():
            assert unschedulable(defaults, pool) == [], name


def test_the_pool_figures_describe_the_example_files():
    for pool in pools():
        example = (POOLS.parent / pool["example"]).read_text()
        assert pool["machine_type"] in example, pool["name"]
        assert parse_quantity(pool["daemonsets"]["cpu"]) < parse_quantity(pool["allocatable"]["cpu"])


def test_defaults_that_exceed_a_pool_are_reported():
    eks = next(pool for pool in pools() if pool["machine_type"] == "g6.xlarge")
    assert unschedulable({"gpus_per_node": "1", "train_cpu": "8", "train_memory": "32G"}, eks) == [
        f"train_cpu=8 exceeds eks-g6.xlarge's {parse_quantity('3420m')} cpu",
        f"train_memory=32G exceeds eks-g6.xlarge's {parse_quantity('13Gi')} memory",
    ]
    assert unschedulable({"gpus_per_node": "2", "train_cpu": "3", "train_memory": "12Gi"}, eks) == [
        "gpus_per_node=2 exceeds eks-g6.xlarge's 1 GPUs"
    ]
