"""KFP wrapper of the batch inference step. The body is one call."""

from kfp import dsl
from kfp.dsl import Markdown, Metrics, Output
from kfp.dsl.python_component import PythonComponent

from kfp_mlops.components.shared.images import ImageConfig


def batch_inference(
    config: str,
    entities: str,
    as_of: str,
    feature_repo: str,
    run_id: str,
    metrics: Output[Metrics],
    summary: Output[Markdown],
) -> str:
    """Predict for entities at a time with the serving model, from Feast's point-in-time features, into the
    prediction log. Returns the log's URI.

    Args:
        config: The pipeline config (YAML text or its URI).
        entities: URI of the entity ids (Parquet/CSV); empty: inference.entities, else every entity of the view.
        as_of: ISO 8601 time of the features; empty: inference.as_of, else the run's start.
        feature_repo: The feature repository (a features step's feature_repo output); empty: the one written
            beside the serving model's reference data.
        run_id: The KFP run id: the log's files are named after it, so a retry rewrites them.
    """
    from kfp_mlops.components.inference import executor

    return executor.run(config, entities, as_of, feature_repo, run_id, metrics, summary)


def build(images: ImageConfig) -> PythonComponent:
    """Batch inference on its own image."""
    return dsl.component(batch_inference, base_image=images.ref("inference"), install_kfp_package=False)
