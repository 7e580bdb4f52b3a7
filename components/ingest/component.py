"""KFP wrapper of the ingest step. The body is one call: the work is in ``executor`` and ``core``."""

from kfp import dsl
from kfp.dsl import Dataset, Markdown, Metrics, Output
from kfp.dsl.python_component import PythonComponent

from kfp_mlops.components.shared.images import ImageConfig


def ingest(
    config: str,
    data_source: str,
    run_id: str,
    gpu_type: str,
    gpus_per_node: str,
    train_cpu: str,
    train_memory: str,
    train_node_selector: dict,
    train_tolerations: list,
    train: Output[Dataset],
    validation: Output[Dataset],
    test: Output[Dataset],
    metrics: Output[Metrics],
    summary: Output[Markdown],
) -> str:
    """Read, validate, deduplicate and split the raw data into train/validation/test Parquet datasets. Returns the
    whole pipeline config, validated and resolved (YAML): the later steps of the run read this, not the URI.

    Args:
        config: The pipeline config: YAML text, or the URI of a YAML file.
        data_source: Overrides data.source of the config when not empty.
        run_id: The KFP run id: the run's directory (beside this step's outputs) is checked for write access
            first, since training checkpoints go there.
        gpu_type: The training pod's parameters (see the pipeline's), checked here, on a CPU pod, before any
            step asks for a GPU.
    """
    from kfp_mlops.components.ingest import executor

    pod = dict(gpu_type=gpu_type, gpus_per_node=gpus_per_node, cpu=train_cpu, memory=train_memory,
               node_selector=train_node_selector, tolerations=train_tolerations)  # fmt: skip
    return executor.run(config, data_source, run_id, pod, train, validation, test, metrics, summary)


def build(images: ImageConfig) -> PythonComponent:
    """The ingest component on its own image (the image carries kfp and this package: no runtime installs)."""
    return dsl.component(ingest, base_image=images.ref("ingest"), install_kfp_package=False)
