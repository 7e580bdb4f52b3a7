"""KFP wrapper of the features step. The body is one call: the work is in ``executor`` and ``core``."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Output
from kfp.dsl.python_component import PythonComponent

from kfp_mlops.components.shared.images import ImageConfig


def features(
    config: str,
    train: Input[Dataset],
    validation: Input[Dataset],
    test: Input[Dataset],
    feature_repo: Output[Artifact],
    train_features: Output[Dataset],
    validation_features: Output[Dataset],
    test_features: Output[Dataset],
    metrics: Output[Metrics],
    run_id: str = "",
):
    """Register the features with Feast, materialize them online and write point-in-time correct datasets.

    Args:
        config: The pipeline config as the ingest step resolved it (YAML text).
        run_id: The KFP run id: this step's MLflow run is nested in the run's.
    """
    from kfp_mlops.components.features import executor

    executor.run(
        config,
        train,
        validation,
        test,
        feature_repo,
        train_features,
        validation_features,
        test_features,
        metrics,
        run_id,
    )


def build(images: ImageConfig) -> PythonComponent:
    """The features component on its own image (the image carries kfp, Feast and this package: no runtime installs)."""
    return dsl.component(features, base_image=images.ref("features"), install_kfp_package=False)
