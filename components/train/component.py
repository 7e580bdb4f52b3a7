"""KFP wrapper of the train step. The body is one call: the work is in ``executor`` and ``core``."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output
from kfp.dsl.python_component import PythonComponent

from kfp_mlops.components.shared.images import ImageConfig


def train_model(
    config: str,
    train_data: Input[Dataset],
    validation_data: Input[Dataset],
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
    """Train the tabular classifier with DeepSpeed (one process per GPU, or CPU processes) and export it to ONNX.

    Args:
        config: The pipeline config as the ingest step resolved it (YAML text).
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
    executor.run(config, train_data, validation_data, pipeline_root, run_id, cluster, model, metrics,
                 training_log)  # fmt: skip


def build(images: ImageConfig) -> PythonComponent:
    """The train component on its own image (CUDA PyTorch + DeepSpeed; no runtime installs)."""
    return dsl.component(train_model, base_image=images.ref("train"), install_kfp_package=False)
