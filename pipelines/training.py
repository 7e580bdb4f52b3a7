"""Training pipeline: ingest → train-and-deploy (features → prepare → train → evaluate → (blessed) quantize →
deploy → record)."""

from kfp import dsl

from kfp_mlops.components.ingest import component as ingest_component
from kfp_mlops.components.shared import storage
from kfp_mlops.components.shared.images import ImageConfig
from kfp_mlops.pipelines import train_and_deploy

PIPELINE_NAME = "kfp-mlops-training"
DEFAULT_CONFIG = "s3://kfp-mlops/configs/training.yaml"


def build(images: ImageConfig):
    """The training pipeline with every step on the image ``images`` names."""
    ingest_op = ingest_component.build(images)
    shared_steps = train_and_deploy.build(images)

    @dsl.pipeline(name=PIPELINE_NAME, description="Validate data, build Feast features, train, bless, deploy.")
    def training(
        config: str = DEFAULT_CONFIG,
        data_source: str = "",
        gpu_type: str = "nvidia.com/gpu",
        gpus_per_node: str = train_and_deploy.DEFAULT_GPUS_PER_NODE,
        train_cpu: str = train_and_deploy.DEFAULT_TRAIN_CPU,
        train_memory: str = train_and_deploy.DEFAULT_TRAIN_MEMORY,
        train_node_selector: dict = {},  # noqa: B006 - KFP reads the default from the signature
        train_tolerations: list = [train_and_deploy.GPU_TOLERATION],  # noqa: B006
        storage_secret: str = storage.STORAGE_SECRET,
        feast_secret: str = train_and_deploy.FEAST_SECRET,
    ):
        """Train a tabular classifier from raw data; bless it only if it beats the thresholds and the model that
        serves; quantize it within the accuracy budget and deploy it to Triton after verifying it there.

        Args:
            config: Pipeline config: the URI of a YAML file (s3://, gs://, a path) or the YAML text itself.
            data_source: Raw data URI (file, prefix/directory or glob); overrides data.source of the config.
            gpu_type: Accelerator resource of the training pod, e.g. nvidia.com/gpu.
            gpus_per_node: GPUs for the training pod (one DeepSpeed worker each), e.g. 1; 0 trains on CPU. Text,
                as the KFP driver reads it into the pod (a number would be dropped); checked by ingest.
            train_cpu: CPU of the training pod (request and limit; per node of a multi-node TrainJob), e.g. 3.
            train_memory: Memory of the training pod (request and limit; per node), e.g. 12Gi.
            train_node_selector: Node selector of the training pod (JSON object), e.g. {"pool": "a100"}.
            train_tolerations: Tolerations of the training pod (JSON list); the default tolerates GPU-node taints.
            storage_secret: Kubernetes Secret with AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL.
            feast_secret: Kubernetes Secret with FEAST_REDIS_CONNECTION_STRING and FEAST_REGISTRY_URL.
        """
        ingest_task = ingest_op(
            config=config,
            data_source=data_source,
            run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
            **train_and_deploy.training_pod_arguments(locals()),
        )
        ingest_task.set_display_name("ingest and validate").set_cpu_limit("2").set_memory_limit("8G")
        train_and_deploy.configure(ingest_task, storage_secret)
        shared_steps(
            config=ingest_task.outputs["Output"],  # the config resolved once: every later step reads this text
            train=ingest_task.outputs["train"],
            validation=ingest_task.outputs["validation"],
            test=ingest_task.outputs["test"],
            **train_and_deploy.cluster_arguments(locals()),
        ).set_display_name("train and deploy")

    return training
