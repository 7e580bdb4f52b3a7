"""Training pipeline: ingest → features → prepare (CPU) → train (GPU) → evaluate → (blessed) record baseline.

Quantize and deploy join inside the blessing gate as their issues land.
"""

from kfp import dsl, kubernetes

from kfp_mlops.components.evaluate import component as evaluate_component
from kfp_mlops.components.features import component as features_component
from kfp_mlops.components.ingest import component as ingest_component
from kfp_mlops.components.shared import storage
from kfp_mlops.components.shared.images import ImageConfig
from kfp_mlops.components.train import component as train_component

PIPELINE_NAME = "kfp-mlops-training"
DEFAULT_CONFIG = "s3://kfp-mlops/configs/training.yaml"
FEAST_SECRET_KEYS = {
    "FEAST_REDIS_CONNECTION_STRING": "FEAST_REDIS_CONNECTION_STRING",
    "FEAST_REGISTRY_URL": "FEAST_REGISTRY_URL",
}
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}  # GKE taints GPU nodes so
TRAIN_TIMEOUT_SECONDS = 24 * 3600  # a hung collective must not hold a GPU node forever
SHARED_MEMORY = "4Gi"  # NCCL and DataLoader workers need more /dev/shm than a container's default 64 MiB
# Caching, decided per task. KFP's cache key is the component and its inputs; a task whose inputs include the run
# id, or artifacts from an uncached upstream task, never hits, so caching it would only store entries.
CACHING = {
    "ingest": False,  # the data behind a URI changes between runs
    "features": False,  # materializes into the online store: a side effect a cache hit would skip
    "prepare-training": False,  # its inputs come from the uncached steps above: a hit is impossible
    "train-model": False,  # takes the run id (its checkpoints): a hit is impossible
    "evaluate-model": False,  # the recorded baseline it compares with can change between runs
    "record-baseline": False,  # writes the baseline record: a side effect
}


def with_storage_credentials(task: dsl.PipelineTask, secret: str) -> dsl.PipelineTask:
    """Object-storage credentials from the pipeline's Secret and from KFP's own MinIO Secret (both optional: KFP's
    MinIO works out of the box, and clusters with workload identity need none; see ``storage``)."""
    keys = {key: key for key in storage.CREDENTIAL_SECRET_KEYS}
    kubernetes.use_secret_as_env(task, secret_name=secret, secret_key_to_env=keys, optional=True)
    return kubernetes.use_secret_as_env(
        task, secret_name=storage.KFP_MINIO_SECRET, secret_key_to_env=storage.KFP_MINIO_SECRET_KEYS, optional=True
    )


def build(images: ImageConfig):
    """The training pipeline with every step on the image ``images`` names."""
    ingest_op = ingest_component.build(images)
    features_op = features_component.build(images)
    prepare_op = train_component.build_prepare(images)
    train_op = train_component.build(images)
    evaluate_op = evaluate_component.build(images)
    record_op = evaluate_component.build_record_baseline(images)

    @dsl.pipeline(name=PIPELINE_NAME, description="Validate data, build Feast features, train with DeepSpeed, bless.")
    def training(
        config: str = DEFAULT_CONFIG,
        data_source: str = "",
        gpu_type: str = "nvidia.com/gpu",
        gpus_per_node: int = 1,
        train_cpu: str = "8",
        train_memory: str = "32G",
        train_node_selector: dict = {},  # noqa: B006 - KFP reads the default from the signature
        train_tolerations: list = [GPU_TOLERATION],  # noqa: B006
        storage_secret: str = storage.STORAGE_SECRET,
        feast_secret: str = "kfp-mlops-feast",
    ):
        """Train a tabular classifier from raw data and bless it only if it beats the thresholds and the baseline.

        Args:
            config: Pipeline config: the URI of a YAML file (s3://, gs://, a path) or the YAML text itself.
            data_source: Raw data URI (file, prefix/directory or glob); overrides data.source of the config.
            gpu_type: Accelerator resource of the training pod, e.g. nvidia.com/gpu.
            gpus_per_node: GPUs for the training pod (one DeepSpeed worker each); 0 trains on CPU.
            train_cpu: CPU limit of the training pod.
            train_memory: Memory limit of the training pod.
            train_node_selector: Node selector of the training pod (JSON object), e.g. {"pool": "a100"}.
            train_tolerations: Tolerations of the training pod (JSON list); the default tolerates GPU-node taints.
            storage_secret: Kubernetes Secret with AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL.
            feast_secret: Kubernetes Secret with FEAST_REDIS_CONNECTION_STRING and FEAST_REGISTRY_URL.
        """
        ingest_task = ingest_op(
            config=config,
            data_source=data_source,
            pipeline_root=dsl.PIPELINE_ROOT_PLACEHOLDER,
            run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        )
        ingest_task.set_display_name("ingest and validate").set_cpu_limit("2").set_memory_limit("8G")
        run_config = ingest_task.outputs["Output"]  # the config resolved once: every later step reads this text

        features_task = features_op(
            config=run_config,
            train=ingest_task.outputs["train"],
            validation=ingest_task.outputs["validation"],
            test=ingest_task.outputs["test"],
        )
        features_task.set_display_name("Feast features").set_cpu_limit("4").set_memory_limit("16G")
        kubernetes.use_secret_as_env(features_task, feast_secret, FEAST_SECRET_KEYS, optional=True)

        prepare_task = prepare_op(
            config=run_config,
            train_data=features_task.outputs["train_features"],
            validation_data=features_task.outputs["validation_features"],
            gpus_per_node=gpus_per_node,
            pipeline_root=dsl.PIPELINE_ROOT_PLACEHOLDER,
            run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        )
        prepare_task.set_display_name("prepare training data").set_cpu_limit("4").set_memory_limit("16G")

        train_task = train_op(
            config=run_config,
            training_data=prepare_task.outputs["training_data"],
            pipeline_root=dsl.PIPELINE_ROOT_PLACEHOLDER,
            run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
            image=images.ref("train"),
            gpu_type=gpu_type,
            gpus_per_node=gpus_per_node,
            node_selector=train_node_selector,
            tolerations=train_tolerations,
            storage_secret=storage_secret,
        )
        train_task.set_display_name("train (DeepSpeed)")
        train_task.set_accelerator_type(gpu_type).set_accelerator_limit(gpus_per_node)
        train_task.set_cpu_limit(train_cpu).set_memory_limit(train_memory)
        # Retries resume from checkpoints. Input and config errors never reach this task (prepare-training checks
        # them on a CPU pod without retries), and a failure a retry would repeat fails the retry at once.
        train_task.set_retry(num_retries=2, backoff_duration="60s", backoff_factor=2.0)
        kubernetes.add_node_selector_json(train_task, train_node_selector)
        kubernetes.add_toleration_json(train_task, train_tolerations)
        kubernetes.empty_dir_mount(train_task, "dshm", "/dev/shm", medium="Memory", size_limit=SHARED_MEMORY)
        kubernetes.set_timeout(train_task, TRAIN_TIMEOUT_SECONDS)

        evaluate_task = evaluate_op(
            config=run_config,
            model=train_task.outputs["model"],
            test_data=features_task.outputs["test_features"],
        )
        evaluate_task.set_display_name("evaluate and bless")

        with dsl.If(evaluate_task.outputs["Output"] == True, name="blessed"):  # noqa: E712 - a KFP condition
            record_task = record_op(
                config=run_config,
                model=train_task.outputs["model"],
                metrics=evaluate_task.outputs["metrics"],
                run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
            )
            record_task.set_display_name("record baseline")

        for task in (ingest_task, features_task, prepare_task, train_task, evaluate_task, record_task):
            task.set_caching_options(CACHING[task.name])
            with_storage_credentials(task, storage_secret)

    return training
