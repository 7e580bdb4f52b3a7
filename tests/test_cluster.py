"""The training pod's pipeline parameters, checked before any pod asks for a GPU (components/shared/cluster.py)."""

from __future__ import annotations

import pytest

from kfp_mlops.components.shared.cluster import (
    LAUNCHER_CPU,
    LAUNCHER_MEMORY,
    PodResources,
    check_training_pod,
    train_pod_resources,
)
from kfp_mlops.components.shared.errors import InputError

GOOD = {"gpu_type": "nvidia.com/gpu", "gpus_per_node": "1", "cpu": "3", "memory": "12Gi",
        "node_selector": {"cloud.google.com/gke-accelerator": "nvidia-l4"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]}  # fmt: skip


def test_valid_parameters_are_parsed():
    pod = check_training_pod(**GOOD)
    assert (pod.gpus, pod.cpu, pod.memory) == (1, "3", "12Gi")
    assert check_training_pod(**GOOD | {"gpus_per_node": "0", "gpu_type": ""}).gpus == 0  # CPU: no resource needed
    for cpu, memory in (("3500m", "16G"), ("0.5", "1.5Gi"), ("2", "12884901888")):
        check_training_pod(**GOOD | {"cpu": cpu, "memory": memory})
    assert check_training_pod(**GOOD | {"tolerations": GOOD["tolerations"][0]}).tolerations == GOOD["tolerations"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"gpus_per_node": "two"}, "gpus_per_node is 'two': expected a whole number of GPUs"),
        ({"gpus_per_node": "-1"}, "gpus_per_node is '-1'"),
        ({"gpus_per_node": "1.5"}, "gpus_per_node is '1.5'"),
        ({"gpu_type": "gpu"}, "gpu_type is 'gpu': expected an extended resource name such as nvidia.com/gpu"),
        ({"cpu": "lots"}, "train_cpu is 'lots': expected a CPU quantity"),
        ({"cpu": "0"}, "train_cpu is '0'"),
        ({"memory": "32 GB"}, "train_memory is '32 GB': expected a memory quantity"),
        ({"memory": ""}, "train_memory is ''"),
        ({"node_selector": ["a"]}, r"train_node_selector is \['a'\]: expected a JSON object"),
        ({"node_selector": {"pool": 1}}, "train_node_selector is {'pool': 1}"),
        ({"tolerations": "nvidia.com/gpu"}, "train_tolerations is 'nvidia.com/gpu': expected a JSON list"),
        ({"tolerations": [{"key": "a", "operator": "Is"}]}, r"train_tolerations\[0\].operator is 'Is'"),
        ({"tolerations": [{"key": "a", "effect": "Never"}]}, r"train_tolerations\[0\].effect is 'Never'"),
        ({"tolerations": [{"key": "a", "colour": "red"}]}, r"train_tolerations\[0\] has unknown fields \['colour'\]"),
    ],
)
def test_an_impossible_value_is_refused_naming_the_parameter(change, message):
    with pytest.raises(InputError, match=f"pipeline parameter {message}"):
        check_training_pod(**GOOD | change)


def test_a_multi_node_launcher_asks_for_no_gpu_while_a_single_node_pod_asks_for_its_own():
    pod = check_training_pod(**GOOD | {"gpus_per_node": "2"})
    assert train_pod_resources(pod, nodes=1) == PodResources(gpus="2", cpu="3", memory="12Gi")
    assert train_pod_resources(pod, nodes=4) == PodResources(gpus="0", cpu=LAUNCHER_CPU, memory=LAUNCHER_MEMORY)
