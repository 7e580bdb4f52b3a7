"""KFP wrapper of the ingest step. The body is one call: the work is in ``executor`` and ``core``."""

from kfp import dsl
from kfp.dsl import Dataset, Markdown, Metrics, Output
from kfp.dsl.python_component import PythonComponent

from kfp_mlops.components.shared.images import ImageConfig


def ingest(
    config: str,
    data_source: str,
    pipeline_root: str,
    run_id: str,
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
        pipeline_root: The run's pipeline root: checked for write access first (training checkpoints go there).
        run_id: The KFP run id.
    """
    from kfp_mlops.components.ingest import executor

    return executor.run(config, data_source, pipeline_root, run_id, train, validation, test, metrics, summary)


def build(images: ImageConfig) -> PythonComponent:
    """The ingest component on its own image (the image carries kfp and this package: no runtime installs)."""
    return dsl.component(ingest, base_image=images.ref("ingest"), install_kfp_package=False)
