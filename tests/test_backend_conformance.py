"""Every compiled pipeline against a model of the KFP backend's driver (tests/support/kfp_backend.py: each rule cites
the upstream file it comes from), with a negative case per rule; and the training pod's defaults against the example
GPU pools' allocatable resources (manifests/examples/allocatable.yaml)."""

# No `from __future__ import annotations`: kfp reads the probe components' annotations as types.
import copy
from pathlib import Path
from typing import Any

import yaml
from kubernetes.utils import parse_quantity
from support.kfp_backend import CompiledPipeline

from kfp_mlops.pipelines import PIPELINES

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


def test_the_sdk_writes_a_pipeline_root_placeholder_that_the_model_catches(tmp_path):
    """The rule is about what the SDK really compiles: dsl.PIPELINE_ROOT_PLACEHOLDER as an argument."""
    from kfp import compiler, dsl

    @dsl.component(base_image="python:3.11-slim")
    def step(root: str) -> str:
        return root

    @dsl.pipeline(name="probe")
    def probe():
        step(root=dsl.PIPELINE_ROOT_PLACEHOLDER).set_cpu_request("1").set_cpu_limit("1").set_memory_request(
            "1Gi"
        ).set_memory_limit("1Gi")

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
