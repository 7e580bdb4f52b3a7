"""Training pipeline: ingest → features → train → evaluate → quantize → deploy if blessed.

This slice runs ingest; the later steps join as their issues land.
"""

from kfp import dsl

from kfp_mlops.components.ingest import component as ingest_component
from kfp_mlops.components.shared.images import ImageConfig

PIPELINE_NAME = "kfp-mlops-training"
DEFAULT_CONFIG = "s3://kfp-mlops/configs/training.yaml"


def build(images: ImageConfig):
    """The training pipeline with every step on the image ``images`` names."""
    ingest_op = ingest_component.build(images)

    @dsl.pipeline(name=PIPELINE_NAME, description="Ingest and validate tabular data, then train, evaluate and serve.")
    def training(config: str = DEFAULT_CONFIG, data_source: str = ""):
        """Train a tabular classifier from raw data.

        Args:
            config: Pipeline config: the URI of a YAML file (s3://, gs://, a path) or the YAML text itself.
            data_source: Raw data URI (file, prefix/directory or glob); overrides data.source of the config.
        """
        ingest_task = ingest_op(config=config, data_source=data_source)
        ingest_task.set_display_name("ingest and validate")
        ingest_task.set_caching_options(False)  # the data behind a URI changes between runs
        ingest_task.set_cpu_limit("2").set_memory_limit("8G")

    return training
