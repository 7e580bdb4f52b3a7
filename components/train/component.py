"""KFP wrappers of the train step: ``prepare_training`` (CPU: checks and preprocessing, no retries) and
``train_model`` (the accelerator pod, retried: it resumes from its checkpoints). Bodies are one call each."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output
from kfp.dsl.python_component import PythonComponent

from kfp_mlops.components.shared.images import ImageConfig


def prepare_training(
    config: str,
    train_data: Input[Dataset],
    validation_data: Input[Dataset],
    gpu_type: str,
    gpus_per_node: str,
    train_cpu: str,
    train_memory: str,
    run_id: str,
    training_data: Output[Dataset],
) -> NamedTuple("TrainPod", gpus=str, cpu=str, memory=str):
    """Check the training inputs and settings and fit preprocessing on the train split, on a CPU pod: an input
    or config error fails here at once, before a GPU is requested. Returns what the train-model pod asks for
    (strings, as the KFP driver reads them): the training pod, or a launcher without GPU for a multi-node TrainJob.

    Args:
        config: The pipeline config as the ingest step resolved it (YAML text).
        gpu_type: The pipeline's training-pod parameters (GPU resource, GPUs per node, CPU, memory per node).
        run_id: The KFP run id: a multi-node job's checkpoints go to the run's directory.
    """
    from kfp_mlops.components.train import executor

    pod = dict(gpu_type=gpu_type, gpus_per_node=gpus_per_node, cpu=train_cpu, memory=train_memory)
    return executor.prepare(config, train_data, validation_data, pod, run_id, training_data)


def train_model(
    config: str,
    training_data: Input[Dataset],
    run_id: str,
    image: str,
    gpu_type: str,
    gpus_per_node: str,
    train_cpu: str,
    train_memory: str,
    node_selector: dict,
    tolerations: list,
    storage_secret: str,
    model: Output[Model],
    metrics: Output[Metrics],
    training_log: Output[Artifact],
):
    """Train the tabular classifier with DeepSpeed (one process per GPU, or CPU processes) and export the serving
    graph (raw features in, probabilities and label out).

    Args:
        config: The pipeline config as the ingest step resolved it (YAML text).
        training_data: prepare_training's arrays and preprocessing.
        run_id: The KFP run id: checkpoints default to the run's directory (beside this task's outputs), where a
            retried task finds them and resumes.
        image: This step's image, which the nodes of a multi-node TrainJob (train.nodes > 1) run too.
        gpu_type: Accelerator resource per node, e.g. nvidia.com/gpu.
        gpus_per_node: GPUs per node (one DeepSpeed worker each); 0 trains on CPU.
        train_cpu: CPU per node of a multi-node TrainJob.
        train_memory: Memory per node of a multi-node TrainJob.
        node_selector: Node selector of the TrainJob's pods.
        tolerations: Tolerations of the TrainJob's pods.
        storage_secret: Kubernetes Secret the TrainJob's pods take object-storage credentials from.
    """
    from kfp_mlops.components.train import executor

    cluster = dict(image=image, gpu_type=gpu_type, gpus_per_node=gpus_per_node, cpu=train_cpu, memory=train_memory,
                   node_selector=node_selector, tolerations=tolerations, storage_secret=storage_secret)  # fmt: skip
    executor.run(config, training_data, run_id, cluster, model, metrics, training_log)


def build_prepare(images: ImageConfig) -> PythonComponent:
    """prepare_training on the train image (the same code and versions as the training pod)."""
    return dsl.component(prepare_training, base_image=images.ref("train"), install_kfp_package=False)


def build(images: ImageConfig) -> PythonComponent:
    """The train component on its own image (CUDA PyTorch + DeepSpeed; no runtime installs)."""
    return dsl.component(train_model, base_image=images.ref("train"), install_kfp_package=False)
