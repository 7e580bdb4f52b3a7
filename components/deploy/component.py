"""KFP wrapper of the deploy step. The body is one call: the work is in ``executor`` and ``core``."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model, Output
from kfp.dsl.python_component import PythonComponent

from kfp_mlops.components.shared.images import ImageConfig


def deploy_model(
    config: str,
    model: Input[Model],
    validation_data: Input[Dataset],
    deployment: Output[Artifact],
    run_id: str = "",
) -> int:
    """Deploy the model to Triton as the next version: verified in the server under a staging name, then promoted;
    any failure rolls back and the previous version keeps serving. Returns the served version (0: not deployed,
    ``deploy.model_repository`` is empty).

    Args:
        config: The pipeline config as the ingest step resolved it (YAML text).
        validation_data: The validation split; ``deploy.verify.rows`` of its rows are sent through Triton.
        run_id: The KFP run id: the deployment is kept in the run's directory for the outcome report.
    """
    from kfp_mlops.components.deploy import executor

    return executor.run(config, model, validation_data, deployment, run_id)


def build(images: ImageConfig) -> PythonComponent:
    """The deploy component on its own image."""
    return dsl.component(deploy_model, base_image=images.ref("deploy"), install_kfp_package=False)
