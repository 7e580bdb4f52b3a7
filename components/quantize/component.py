"""KFP wrapper of the quantize step. The body is one call: the work is in ``executor`` and ``core``."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Markdown, Metrics, Model, Output
from kfp.dsl.python_component import PythonComponent

from kfp_mlops.components.shared.images import ImageConfig


def quantize_model(
    config: str,
    model: Input[Model],
    train_data: Input[Dataset],
    validation_data: Input[Dataset],
    quantized_model: Output[Model],
    metrics: Output[Metrics],
    comparison: Output[Markdown],
    run_id: str = "",
):
    """Quantize the model (int8 dynamic, int8 static QDQ, fp16 for GPU targets), measure every candidate on the
    validation split against fp32, and output the fastest (or smallest) within the accuracy budget; fail with the
    comparison table when none is.

    Args:
        config: The pipeline config as the ingest step resolved it (YAML text).
        train_data: The features step's train split (calibration rows for int8 static).
        validation_data: The features step's validation split (accuracy, latency and throughput).
        run_id: The KFP run id: this step's MLflow run is nested in the run's.
    """
    from kfp_mlops.components.quantize import executor

    executor.run(config, model, train_data, validation_data, quantized_model, metrics, comparison, run_id)


def build(images: ImageConfig) -> PythonComponent:
    """The quantize component on its own image."""
    return dsl.component(quantize_model, base_image=images.ref("quantize"), install_kfp_package=False)
