"""KFP wrapper of the performance step. The body is one call."""

from kfp import dsl
from kfp.dsl import Artifact, ClassificationMetrics, Markdown, Metrics, Output
from kfp.dsl.python_component import PythonComponent

from kfp_mlops.components.shared.images import ImageConfig


def performance_check(
    config: str,
    labels: str,
    drift_action: str,
    run_id: str,
    metrics: Output[Metrics],
    classification_metrics: Output[ClassificationMetrics],
    summary: Output[Markdown],
    verdict: Output[Artifact],
) -> str:
    """Join the prediction log's window with the labels that arrived, score the serving model with evaluate's
    metrics and judge it. Returns the next action: "none", or the configured retraining ("nested" or "kfp_api")
    when the model degraded or drift asked for it.

    Args:
        config: The pipeline config as the ingest step resolved it (YAML text).
        labels: URI of the labels (entity, timestamp, label); empty: performance.labels of the config; neither: skip.
        drift_action: The drift check's next action: retraining it asks for stands.
        run_id: The KFP run id: the verdict is kept in the run's directory for the outcome report.
    """
    from kfp_mlops.components.performance import executor

    return executor.run(config, labels, drift_action, run_id, metrics, classification_metrics, summary, verdict)


def build(images: ImageConfig) -> PythonComponent:
    """The performance check on its own image."""
    return dsl.component(performance_check, base_image=images.ref("performance"), install_kfp_package=False)
