"""A model of what the KFP backend's driver does with a compiled pipeline, as rules over the YAML. kfp.local runs
the same YAML but resolves more than the backend does, so these rules are checked on every compiled pipeline instead.

Each rule is a fact read in kubeflow/pipelines at tags 2.15.0 to 2.17.0 (they agree), cited where it is encoded.
This is a model, not the backend: it covers the code paths our pipelines use, and each rule has a negative case in
tests/test_backend_conformance.py that fails when the rule is broken.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

# backend/src/v2/driver/resolve.go, resolveInputParameter, case RuntimeValue/Constant: these placeholders (and
# {{$.workspace_path}} inside a string) are substituted; any other constant is passed on as its literal text.
DRIVER_PLACEHOLDERS = frozenset(
    {
        "{{$.pipeline_job_name}}",
        "{{$.pipeline_job_resource_name}}",
        "{{$.pipeline_job_uuid}}",
        "{{$.pipeline_task_name}}",
        "{{$.pipeline_task_uuid}}",
    }
)
WORKSPACE_PLACEHOLDER = "{{$.workspace_path}}"
# backend/src/v2/driver/driver.go, initPodSpecPatch: the container image, accelerator type and count, and the CPU and
# memory requests and limits are read with resolvePodSpecInputRuntimeParameter (resolve.go), which returns
# GetStringValue() of the executor input: a parameter of any other type resolves to "" (the GPU limit is then skipped
# silently; a CPU or memory quantity fails to parse). KFP's own test pipelines declare them as str:
# test_data/sdk_compiled_pipelines/valid/pipeline_with_string_machine_fields_{pipeline_input,task_output}.py.
POD_FIELDS = (
    ("image",),
    ("resources", "accelerator", "resourceType"),
    ("resources", "accelerator", "resourceCount"),
    ("resources", "resourceCpuLimit"),
    ("resources", "resourceCpuRequest"),
    ("resources", "resourceMemoryLimit"),
    ("resources", "resourceMemoryRequest"),
)
# The KubernetesExecutorConfig fields the 2.15.0 backend applies: backend/src/v2/driver/k8s.go extendPodSpecPatch
# (its kubernetesExecutorConfig.Get… calls), and podMetadata in backend/src/v2/compiler/argocompiler/container.go
# (labels and annotations as template parameters). podAffinity and enabledSharedMemory parse but nothing applies them.
IMPLEMENTED_KUBERNETES_FIELDS = frozenset(
    {
        "secretAsVolume", "secretAsEnv", "pvcMount", "nodeSelector", "imagePullSecret", "imagePullPolicy",
        "configMapAsVolume", "configMapAsEnv", "activeDeadlineSeconds", "fieldPathAsEnv", "tolerations",
        "genericEphemeralVolume", "nodeAffinity", "emptyDirMounts", "podMetadata",
    }
)  # fmt: skip
# k8s.go: secretNameParameter / configMapNameParameter are read with GetStringValue(); nodeSelectorJson with
# resolveK8sJsonParameter (GetStructValue); tolerationJson as a struct or a list (anything else is an error).
KUBERNETES_PARAMETER_TYPES = {
    "secretNameParameter": {"STRING"},
    "configMapNameParameter": {"STRING"},
    "nodeSelectorJson": {"STRUCT"},
    "tolerationJson": {"STRUCT", "LIST"},
    "nodeAffinityJson": {"STRUCT"},
}
# k8s.go extendPodSpecPatch, "Get container timeout information": timeout := GetActiveDeadlineSeconds(); if timeout >
# 0 { podSpec.ActiveDeadlineSeconds = &timeout } (2.15.0 and 2.16.0 line 526, 2.17.0 line 540). An absent or zero
# value leaves the pod without a deadline: a hung step holds its node until someone cancels the run. The field is an
# int64 in kubernetes_executor_config.proto (active_deadline_seconds = 10), so the YAML holds it as a string.
DEADLINE_FIELD = "activeDeadlineSeconds"
_CHANNEL = re.compile(r"\{\{\$\.inputs\.parameters\['([^']+)'\]\}\}")
_CONSTANT_TYPES = {str: "STRING", bool: "BOOLEAN", int: "NUMBER_INTEGER", float: "NUMBER_DOUBLE", dict: "STRUCT",
                   list: "LIST"}  # fmt: skip


@dataclass(frozen=True)
class Task:
    dag: str  # the component whose DAG holds the task ("root" for the pipeline's own)
    name: str
    spec: dict[str, Any]

    @property
    def component(self) -> str:
        return self.spec["componentRef"]["name"]


class CompiledPipeline:
    """One compiled pipeline (the YAML's PipelineSpec and PlatformSpec documents) and the rules checked on it."""

    def __init__(self, documents: list[dict[str, Any]]) -> None:
        self.spec = documents[0]
        platform = documents[1] if len(documents) > 1 else {}
        self.kubernetes = platform.get("platforms", {}).get("kubernetes", {}).get("deploymentSpec", {})
        self.components = dict(self.spec["components"]) | {"root": self.spec["root"]}

    def tasks(self) -> Iterator[Task]:
        for name, component in self.components.items():
            for task_name, task in component.get("dag", {}).get("tasks", {}).items():
                yield Task(name, task_name, task)

    def executor_tasks(self, executor: str) -> list[Task]:
        return [t for t in self.tasks() if self.components[t.component].get("executorLabel") == executor]

    def parameter_types(self, dag: str, reference: dict[str, Any], seen: frozenset = frozenset()) -> set[str]:
        """Every type a task input (``reference``, resolved in ``dag``) can have at run time, following
        componentInputParameter up through every task that calls ``dag``."""
        if "runtimeValue" in reference:
            constant = reference["runtimeValue"].get("constant")
            return {_CONSTANT_TYPES.get(type(constant), "UNKNOWN")}
        if "taskOutputParameter" in reference:
            producer = reference["taskOutputParameter"]
            task = self.components[dag]["dag"]["tasks"][producer["producerTask"]]
            outputs = self.components[task["componentRef"]["name"]]["outputDefinitions"]["parameters"]
            return {outputs[producer["outputParameterKey"]]["parameterType"]}
        name = reference["componentInputParameter"]
        declared = self.components[dag]["inputDefinitions"]["parameters"][name]["parameterType"]
        types = {declared}
        if (dag, name) in seen:
            return types
        for caller in self.tasks():
            if caller.component == dag and name in caller.spec.get("inputs", {}).get("parameters", {}):
                types |= self.parameter_types(
                    caller.dag, caller.spec["inputs"]["parameters"][name], seen | {(dag, name)}
                )
        return types

    # --- the rules: each returns what breaks it, empty when the pipeline conforms -----------------------------------

    def unresolved_placeholders(self) -> list[str]:
        """Task inputs whose placeholder the driver passes on as literal text (resolve.go, see DRIVER_PLACEHOLDERS).
        A ``{{$.inputs.parameters['…']}}`` constant the component does not declare is the SDK's record of a pod
        field's channel (checked by ``non_string_pod_fields``), not an input the step reads."""
        found = []
        for task in self.tasks():
            declared = self.components[task.component].get("inputDefinitions", {}).get("parameters", {})
            for name, reference in task.spec.get("inputs", {}).get("parameters", {}).items():
                constant = reference.get("runtimeValue", {}).get("constant")
                if not isinstance(constant, str) or "{{$" not in constant:
                    continue
                if constant in DRIVER_PLACEHOLDERS or WORKSPACE_PLACEHOLDER in constant:
                    continue
                if _CHANNEL.fullmatch(constant) and name not in declared:
                    continue
                found.append(f"task {task.name} input {name} = {constant!r}: the backend's driver passes it on "
                             "unresolved (backend/src/v2/driver/resolve.go, resolveInputParameter)")  # fmt: skip
        return found

    def non_string_pod_fields(self) -> list[str]:
        """Pod fields taken from a parameter that is not STRING at run time (driver.go initPodSpecPatch)."""
        found = []
        for executor, spec in self.spec["deploymentSpec"]["executors"].items():
            container = spec.get("container", {})
            for path in POD_FIELDS:
                value = _get(container, path)
                match = _CHANNEL.fullmatch(value) if isinstance(value, str) else None
                if not match:
                    continue
                for task in self.executor_tasks(executor):
                    reference = task.spec["inputs"]["parameters"][match.group(1)]
                    types = self.parameter_types(task.dag, reference)
                    if types != {"STRING"}:
                        found.append(f"{executor} {'.'.join(path)} comes from {match.group(1)} of type "
                                     f"{sorted(types)}: the driver reads it with GetStringValue (resolve.go "
                                     "resolvePodSpecInputRuntimeParameter)")  # fmt: skip
        return found

    def unimplemented_kubernetes_fields(self) -> list[str]:
        """kfp-kubernetes settings the 2.15 driver does not apply (k8s.go extendPodSpecPatch)."""
        return [
            f"{executor}: kfp-kubernetes field {field} is not applied by the 2.15 driver (driver/k8s.go)"
            for executor, config in self.kubernetes.get("executors", {}).items()
            for field in config
            if field not in IMPLEMENTED_KUBERNETES_FIELDS
        ]

    def mistyped_kubernetes_parameters(self) -> list[str]:
        """kfp-kubernetes settings from parameters whose run-time type the driver cannot read (k8s.go)."""
        found = []
        for executor, config in self.kubernetes.get("executors", {}).items():
            for key, reference in _parameter_references(config):
                allowed = KUBERNETES_PARAMETER_TYPES[key]
                for task in self.executor_tasks(executor):
                    types = self.parameter_types(task.dag, reference)
                    if not types <= allowed:
                        found.append(f"{executor} {key} has type {sorted(types)}; the driver reads "
                                     f"{sorted(allowed)} (backend/src/v2/driver/k8s.go)")  # fmt: skip
        return found

    def tasks_without_requests(self) -> list[str]:
        """Containers without CPU and memory requests and limits: a namespace with a ResourceQuota on cpu/memory (as
        Kubeflow profiles can set) rejects such pods (Kubernetes docs, "Resource Quotas": "the quota system … requires
        every new pod to specify requests/limits"); driver.go initPodSpecPatch sets them from these fields."""
        needed = ("resourceCpuRequest", "resourceCpuLimit", "resourceMemoryRequest", "resourceMemoryLimit")
        return [
            f"{executor}: no {field}"
            for executor, spec in self.spec["deploymentSpec"]["executors"].items()
            for field in needed
            if not spec.get("container", {}).get("resources", {}).get(field)
        ]

    def tasks_without_deadline(self) -> list[str]:
        """Executors whose pod the driver gives no activeDeadlineSeconds (k8s.go extendPodSpecPatch applies only a
        value > 0; see DEADLINE_FIELD)."""
        executors = self.kubernetes.get("executors", {})
        found = []
        for executor in self.spec["deploymentSpec"]["executors"]:
            value = executors.get(executor, {}).get(DEADLINE_FIELD)
            if not (isinstance(value, str | int) and str(value).isdigit() and int(value) > 0):
                found.append(f"{executor}: no {DEADLINE_FIELD} > 0 (backend/src/v2/driver/k8s.go extendPodSpecPatch "
                             f"sets the pod's deadline only from a value > 0; got {value!r})")  # fmt: skip
        return found

    def violations(self) -> list[str]:
        return (
            self.unresolved_placeholders()
            + self.non_string_pod_fields()
            + self.unimplemented_kubernetes_fields()
            + self.mistyped_kubernetes_parameters()
            + self.tasks_without_requests()
            + self.tasks_without_deadline()
        )


def _get(document: dict[str, Any], path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(document, dict):
            return None
        document = document.get(key)
    return document


def _parameter_references(config: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    """(key, reference) for every parameter-valued setting (``…Parameter``/``…Json``) in a KubernetesExecutorConfig."""
    if isinstance(config, dict):
        for key, value in config.items():
            if key in KUBERNETES_PARAMETER_TYPES and isinstance(value, dict):
                yield key, value
            else:
                yield from _parameter_references(value)
    elif isinstance(config, list):
        for item in config:
            yield from _parameter_references(item)
