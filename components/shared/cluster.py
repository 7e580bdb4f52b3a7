"""The training pod's settings as pipeline parameters, checked on a CPU pod before anything asks for a GPU.

The KFP backend reads these parameters into the pod spec itself: accelerator type and count, CPU and memory through
``resolvePodSpecInputRuntimeParameter`` (``backend/src/v2/driver/resolve.go``), which takes ``GetStringValue()`` —
so each is a ``str`` parameter (a number would resolve to "" and the GPU limit be dropped silently), parsed here —
and node selector and tolerations as JSON structs/lists (``driver/k8s.go`` ``extendPodSpecPatch``). A value the
driver cannot parse fails that pod's driver; one it can parse but no node satisfies leaves the pod Pending. Both are
caught here first, naming the parameter.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from kfp_mlops.components.shared.errors import InputError

# Kubernetes' quantity grammar (k8s.io/apimachinery pkg/api/resource/quantity.go: <signedNumber><suffix>).
_QUANTITY = re.compile(r"(\d+(\.\d*)?|\.\d+)(Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E|[eE][-+]?\d+)?")
# An extended resource name (k8s.io/apimachinery validation: a qualified name with a domain prefix).
_DNS_SUBDOMAIN = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
_RESOURCE_NAME = re.compile(_DNS_SUBDOMAIN + r"/[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
_TOLERATION_KEYS = {"key", "operator", "value", "effect", "tolerationSeconds"}
_OPERATORS = {"Exists", "Equal"}
_EFFECTS = {"", "NoSchedule", "PreferNoSchedule", "NoExecute"}
# The multi-node launcher only creates and watches the TrainJob: no GPU, little CPU and memory.
LAUNCHER_CPU = "500m"
LAUNCHER_MEMORY = "1Gi"
_POD_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


@dataclass(frozen=True)
class TrainingPod:
    """The training pod's parameters, checked. ``gpus``: GPUs per node (0: CPU)."""

    gpu_type: str
    gpus: int
    cpu: str
    memory: str
    node_selector: dict[str, str]
    tolerations: list[dict[str, Any]]


class PodResources(NamedTuple):
    """What the train-model pod asks for (strings: the driver reads them with GetStringValue); a NamedTuple, so
    prepare-training returns it as its three outputs."""

    gpus: str
    cpu: str
    memory: str


def check_training_pod(
    gpu_type: str, gpus_per_node: str, cpu: str, memory: str, node_selector: Any, tolerations: Any
) -> TrainingPod:
    """The pipeline's training-pod parameters, or an InputError naming the first one that is wrong."""
    gpus_text = str(gpus_per_node).strip()
    if not gpus_text.isdigit():
        raise InputError(f"pipeline parameter gpus_per_node is {gpus_per_node!r}: expected a whole number of GPUs "
                         "per node, such as 1 (0 trains on CPU)")  # fmt: skip
    gpus = int(gpus_text)
    if gpus and not _RESOURCE_NAME.fullmatch(gpu_type or ""):
        raise InputError(f"pipeline parameter gpu_type is {gpu_type!r}: expected an extended resource name such as "
                         "nvidia.com/gpu")  # fmt: skip
    _check_quantity("train_cpu", cpu, "a CPU quantity such as 4 or 3500m")
    _check_quantity("train_memory", memory, "a memory quantity such as 12Gi or 16G")
    if not isinstance(node_selector, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in node_selector.items()
    ):
        raise InputError(
            f"pipeline parameter train_node_selector is {node_selector!r}: expected a JSON object of "
            'label names to strings, such as {"cloud.google.com/gke-accelerator": "nvidia-l4"}'
        )
    return TrainingPod(gpu_type, gpus, cpu, memory, dict(node_selector), _check_tolerations(tolerations))


def train_pod_resources(pod: TrainingPod, nodes: int) -> PodResources:
    """The train-model pod's resources: the training pod itself, or, for a multi-node TrainJob (``nodes`` > 1), a
    launcher that holds no GPU while the job's nodes ask for theirs."""
    if nodes > 1:
        return PodResources(gpus="0", cpu=LAUNCHER_CPU, memory=LAUNCHER_MEMORY)
    return PodResources(gpus=str(pod.gpus), cpu=pod.cpu, memory=pod.memory)


def pod_namespace(default: str = "") -> str:
    """The namespace of the pod this runs in (its service account's), or ``default`` outside a pod."""
    return _POD_NAMESPACE_FILE.read_text().strip() if _POD_NAMESPACE_FILE.exists() else default


def _check_quantity(name: str, value: str, expected: str) -> None:
    if not isinstance(value, str) or not _QUANTITY.fullmatch(value.strip()) or _is_zero(value):
        raise InputError(f"pipeline parameter {name} is {value!r}: expected {expected}")


def _is_zero(value: str) -> bool:
    number = re.match(r"[\d.]+", value.strip())
    return number is not None and float(number.group()) == 0


def _check_tolerations(tolerations: Any) -> list[dict[str, Any]]:
    items = [tolerations] if isinstance(tolerations, dict) else tolerations
    if not isinstance(items, list):
        raise InputError(f"pipeline parameter train_tolerations is {tolerations!r}: expected a JSON list of "
                         "Kubernetes tolerations")  # fmt: skip
    for index, toleration in enumerate(items):
        where = f"pipeline parameter train_tolerations[{index}]"
        if not isinstance(toleration, dict):
            raise InputError(f"{where} is {toleration!r}: expected a JSON object (a Kubernetes toleration)")
        if unknown := sorted(set(toleration) - _TOLERATION_KEYS):
            raise InputError(f"{where} has unknown fields {unknown}: a toleration has {sorted(_TOLERATION_KEYS)}")
        if toleration.get("operator", "Equal") not in _OPERATORS:
            raise InputError(f"{where}.operator is {toleration['operator']!r}: expected Exists or Equal")
        if toleration.get("effect", "") not in _EFFECTS:
            raise InputError(f"{where}.effect is {toleration['effect']!r}: expected one of {sorted(_EFFECTS - {''})}")
    return [dict(toleration) for toleration in items]
