"""KFP wrappers of the train step: ``prepare_training`` (CPU: checks and preprocessing, no retries) and
``train_model`` (the accelerator pod, retried: it resumes from its checkpoints). Bodies are one call each."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output
from kfp.dsl.python_component import PythonComponent

from kfp_mlops.components.shared.images import ImageConfig


def prepare_training(
    config: str,
    train_data: Input[Dataset],
    validation_data: Input[Dataset],
    gpus_per_node: int,
    pipeline_root: str,
    run_id: str,
    training_data: Output[Dataset],
):
    """Check the training inputs and settings and fit preprocessing on the train split, on a CPU pod: an input
    or config error fails here at once, before a GPU is requested.

    Args:
        config: The pipeline config as the ingest step resolved it (YAML text).
        gpus_per_node: GPUs of the training pod (0: CPU), to check the precision against.
        pipeline_root: The run's pipeline root (where a multi-node job's checkpoints go).
        run_id: The KFP run id.
    """
    from kfp_mlops.components.train import executor

    executor.prepare(config, train_data, validation_data, gpus_per_node, pipeline_root, run_id, training_data)


def train_model(
    config: str,
    training_data: Input[Dataset],
    pipeline_root: str,
    run_id: str,
    image: str,
    gpu_type: str,
    gpus_per_node: int,
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
        pipeline_root: The run's pipeline root; checkpoints default to <root>/checkpoints/<run_id>/train.
        run_id: The KFP run id: a retried task finds its checkpoints under it and resumes.
        image: This step's image, which the nodes of a multi-node TrainJob (train.nodes > 1) run too.
        gpu_type: Accelerator resource per node, e.g. nvidia.com/gpu.
        gpus_per_node: GPUs per node (one DeepSpeed worker each); 0 trains on CPU.
        node_selector: Node selector of the TrainJob's pods.
        tolerations: Tolerations of the TrainJob's pods.
        storage_secret: Kubernetes Secret the TrainJob's pods take object-storage credentials from.
    """
    from kfp_mlops.components.train import executor

    cluster = dict(image=image, gpu_type=gpu_type, gpus_per_node=gpus_per_node, node_selector=node_selector,
                   tolerations=tolerations, storage_secret=storage_secret)  # fmt: skip
    executor.run(config, training_data, pipeline_root, run_id, cluster, model, metrics, training_log)


def build_prepare(images: ImageConfig) -> PythonComponent:
    """prepare_training on the train image (the same code and versions as the training pod)."""
    return dsl.component(prepare_training, base_image=images.ref("train"), install_kfp_package=False)


def build(images: ImageConfig) -> PythonComponent:
    """The train component on its own image (CUDA PyTorch + DeepSpeed; no runtime installs)."""
    return dsl.component(train_model, base_image=images.ref("train"), install_kfp_package=False)
