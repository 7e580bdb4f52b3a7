"""Batch inference pipeline: one step, on its own image. Entities at a time → Feast's point-in-time features → the
serving model's predictions (Triton, or the package in-process) → the prediction log the performance check reads.
Schedule it like the others: ``kfp-mlops schedule inference --cron '0 0 2 * * *' --config …``."""

from kfp import dsl, kubernetes

from kfp_mlops.components.inference import component as inference_component
from kfp_mlops.components.shared import storage
from kfp_mlops.components.shared.images import ImageConfig
from kfp_mlops.pipelines import train_and_deploy

PIPELINE_NAME = "kfp-mlops-inference"
DEFAULT_CONFIG = "s3://kfp-mlops/configs/training.yaml"


def build(images: ImageConfig):
    """The inference pipeline with its step on the image ``images`` names."""
    inference_op = inference_component.build(images)
    timeouts = train_and_deploy.task_timeouts()

    @dsl.pipeline(name=PIPELINE_NAME, description="Predict for entities at a time with the serving model, into the "
                  "prediction log.")  # fmt: skip
    def inference(
        config: str = DEFAULT_CONFIG,
        entities: str = "",
        as_of: str = "",
        feature_repo: str = "",
        storage_secret: str = storage.STORAGE_SECRET,
        feast_secret: str = train_and_deploy.FEAST_SECRET,
    ):
        """Predict with the model the serving record names, on each entity's features as of a time, and append the
        predictions to the prediction log (inference.log).

        Args:
            config: Pipeline config (the training pipeline's): the URI of a YAML file or the YAML text itself.
            entities: URI of the entity ids (Parquet/CSV: the schema's entity column, optionally its timestamp
                column); empty: inference.entities of the config, else every entity of the Feast feature view.
            as_of: ISO 8601 time the features are read at, e.g. 2026-01-31T00:00:00Z; empty: inference.as_of of
                the config, else the run's start (kept for the run's retries).
            feature_repo: The feature repository (a features step's feature_repo output); empty: the one the
                serving model's features step wrote.
            storage_secret: Kubernetes Secret with AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL.
            feast_secret: Kubernetes Secret with FEAST_REDIS_CONNECTION_STRING and FEAST_REGISTRY_URL.
        """
        task = inference_op(config=config, entities=entities, as_of=as_of, feature_repo=feature_repo,
                            run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER)  # fmt: skip
        task.set_display_name("batch inference")
        kubernetes.use_secret_as_env(task, feast_secret, train_and_deploy.FEAST_SECRET_KEYS, optional=True)
        # a retry rewrites the same log files (writer: the run id, batch numbers, the as-of time kept for the run)
        task.set_retry(num_retries=2, backoff_duration="60s", backoff_factor=2.0)
        train_and_deploy.configure(task, storage_secret, timeouts)

    return inference
