"""KFP wrappers of the drift step and the monitoring pipeline's other actions: retrain through the KFP API, and
report the run's outcome from its exit handler. Bodies are one call each."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Metrics, Output, PipelineTaskFinalStatus
from kfp.dsl.python_component import PythonComponent

from kfp_mlops.components.shared.images import ImageConfig


def drift_check(
    config: str,
    current_train: Input[Dataset],
    current_validation: Input[Dataset],
    current_test: Input[Dataset],
    run_id: str,
    report: Output[HTML],
    metrics: Output[Metrics],
    summary: Output[Markdown],
) -> str:
    """Compare the current window with the data the serving model was trained on (Evidently 0.7's tests, every row).
    Returns the next action: "none", or the configured retraining ("nested" or "kfp_api").

    Args:
        config: The pipeline config as the ingest step resolved it (YAML text).
        current_train: The ingest step's splits of the window (together: the whole window).
        run_id: The KFP run id: the verdict is kept in the run's directory for the outcome report.
    """
    from kfp_mlops.components.drift import executor

    current = [current_train, current_validation, current_test]
    return executor.run(config, current, run_id, report, metrics, summary)


def submit_training(config: str, data_source: str, run_id: str, training_run: Output[Artifact]) -> str:
    """Retrain through the KFP API: run the uploaded training pipeline on the window and wait for it.

    Args:
        config: The pipeline config as the ingest step resolved it (YAML text).
        data_source: The window's URI.
        run_id: The KFP run id: the retraining is kept in the run's directory for the outcome report.
        training_run: The submitted run (its id, state and UI link as metadata).
    """
    from kfp_mlops.components.drift import executor

    return executor.submit_training(config, data_source, run_id, training_run)


def report_outcome(config: str, run_id: str, status: PipelineTaskFinalStatus, outcome: Output[Markdown]):
    """The exit handler: what the run decided (drift, performance, retraining, blessing, deployment), as Markdown;
    the alerts (drift, degradation, a failed run) and the run's failure flag for Prometheus.

    Args:
        config: The pipeline's config parameter (a URI or the YAML text): where alerts and figures go.
    """
    from kfp_mlops.components.drift import executor

    executor.report(config, run_id, status.state, status.error_message or "", outcome)


def build(images: ImageConfig) -> PythonComponent:
    """The drift check on its own image."""
    return dsl.component(drift_check, base_image=images.ref("drift"), install_kfp_package=False)


def build_submit_training(images: ImageConfig) -> PythonComponent:
    """Retraining through the KFP API, on the drift image (kfp.Client comes with kfp)."""
    return dsl.component(submit_training, base_image=images.ref("drift"), install_kfp_package=False)


def build_report_outcome(images: ImageConfig) -> PythonComponent:
    return dsl.component(report_outcome, base_image=images.ref("drift"), install_kfp_package=False)
