"""KFP wrappers of the evaluate step: evaluation with its blessing, and recording a blessed model as the baseline.
Bodies are one call each: the work is in ``executor`` and ``core``."""

from kfp import dsl
from kfp.dsl import Artifact, ClassificationMetrics, Dataset, Input, Markdown, Metrics, Model, Output
from kfp.dsl.python_component import PythonComponent

from kfp_mlops.components.shared.images import ImageConfig


def evaluate_model(
    config: str,
    model: Input[Model],
    test_data: Input[Dataset],
    metrics: Output[Metrics],
    classification_metrics: Output[ClassificationMetrics],
    model_card: Output[Markdown],
    blessing: Output[Artifact],
    run_id: str = "",
) -> bool:
    """Score the model on the test split; bless it only if thresholds hold and it does not regress. Returns the
    blessing (a single ``bool`` output: kfp.local resolves it in dsl.If, unlike a NamedTuple field).

    Args:
        config: The pipeline config as the ingest step resolved it (YAML text).
        run_id: The KFP run id: the decision is kept in the run's directory for the outcome report.
    """
    from kfp_mlops.components.evaluate import executor

    return executor.run(config, model, test_data, metrics, classification_metrics, model_card, blessing, run_id)


def record_baseline(
    config: str,
    model: Input[Model],
    metrics: Input[Metrics],
    reference_data: Input[Dataset],
    deployment: Input[Artifact],
    run_id: str,
):
    """Record the blessed model that now serves, its metrics and its train split in the serving record: the next
    candidate is compared with this model, the next drift check with this data.

    Args:
        config: The pipeline config as the ingest step resolved it (YAML text).
        model: The model package that serves (the quantized one).
        reference_data: The split the model was trained on.
        deployment: The deploy step's record of where it serves.
        run_id: The KFP run id, kept in the record.
    """
    from kfp_mlops.components.evaluate import executor

    executor.record(config, model, metrics, reference_data, deployment, run_id)


def build(images: ImageConfig) -> PythonComponent:
    """The evaluate component on its own image."""
    return dsl.component(evaluate_model, base_image=images.ref("evaluate"), install_kfp_package=False)


def build_record_baseline(images: ImageConfig) -> PythonComponent:
    """The baseline-recording component, on the evaluate image."""
    return dsl.component(record_baseline, base_image=images.ref("evaluate"), install_kfp_package=False)
