"""The steps both pipelines share, as one nested pipeline: features → prepare (CPU) → train (GPU) → evaluate →
(blessed) quantize → deploy → record. The training pipeline runs it after ingesting its data; the monitoring
pipeline runs it when the window drifted."""

import os

from kfp import dsl, kubernetes

from kfp_mlops.components.deploy import component as deploy_component
from kfp_mlops.components.evaluate import component as evaluate_component
from kfp_mlops.components.features import component as features_component
from kfp_mlops.components.quantize import component as quantize_component
from kfp_mlops.components.shared import storage, tracking, triton_access
from kfp_mlops.components.shared.images import ImageConfig
from kfp_mlops.components.train import component as train_component

FEAST_SECRET = "kfp-mlops-feast"
FEAST_SECRET_KEYS = {
    "FEAST_REDIS_CONNECTION_STRING": "FEAST_REDIS_CONNECTION_STRING",
    "FEAST_REGISTRY_URL": "FEAST_REGISTRY_URL",
}
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}  # GKE taints GPU nodes so
# The training pod's defaults fit the example GPU pools with room for their daemonsets (manifests/examples/
# allocatable.yaml, checked by tests/test_backend_conformance.py): an L4 node of GKE (g2-standard-8) or EKS (g6.xlarge).
DEFAULT_GPUS_PER_NODE = "1"
DEFAULT_TRAIN_CPU = "3"
DEFAULT_TRAIN_MEMORY = "12Gi"
TRAIN_TIMEOUT_SECONDS = 24 * 3600  # a hung collective must not hold a GPU node forever
# Every task's pod gets a deadline (kfp-kubernetes set_timeout: the pod's activeDeadlineSeconds, applied by the
# backend's driver, backend/src/v2/driver/k8s.go extendPodSpecPatch, GetActiveDeadlineSeconds, since 2.1.0). When it
# passes, the kubelet stops the pod (SIGTERM, then SIGKILL after the grace period, Kubernetes' default 30 s: neither
# kfp-kubernetes nor the driver can set terminationGracePeriodSeconds) and the task fails; a task with retries gets a
# new pod with a new deadline. Seconds per task; KFP_MLOPS_TASK_TIMEOUTS ("train-model=172800,deploy-model=1800")
# overrides them at compile time.
TIMEOUTS = {
    "ingest": 2 * 3600,
    "drift-check": 3600,
    "performance-check": 3600,
    # waits for the training run it starts: longer than that run may take (monitoring.wait_timeout_seconds, by
    # default 28 h, so the step gives up and cancels the run itself before its pod is stopped)
    "submit-training": 30 * 3600,
    "report-outcome": 600,
    "features": 4 * 3600,
    "prepare-training": 3600,
    "train-model": TRAIN_TIMEOUT_SECONDS,
    "evaluate-model": 3600,
    "quantize-model": 2 * 3600,
    "deploy-model": 3600,  # staging, verification, promotion and any rollback of one model
    "record-baseline": 1800,
    "batch-inference": 4 * 3600,  # the inference pipeline: every entity of the view, batch by batch
}
TIMEOUTS_ENV = "KFP_MLOPS_TASK_TIMEOUTS"
SHARED_MEMORY = "4Gi"  # NCCL needs more /dev/shm than a container's default 64 MiB
# Caching, decided per task. KFP's cache key is the component and its inputs; a task whose inputs include the run
# id, or artifacts from an uncached upstream task, never hits, so caching it would only store entries.
CACHING = {
    "ingest": False,  # the data behind a URI changes between runs
    "drift-check": False,  # the window behind its URI changes between runs
    "performance-check": False,  # the labels and the prediction log behind their URIs grow between runs
    "submit-training": False,  # starts a run: a side effect
    "report-outcome": False,  # reads what this run's steps recorded
    "features": False,  # materializes into the online store: a side effect a cache hit would skip
    "prepare-training": False,  # its inputs come from the uncached steps above: a hit is impossible
    "train-model": False,  # takes the run id (its checkpoints): a hit is impossible
    "evaluate-model": False,  # the recorded baseline it compares with can change between runs
    "quantize-model": False,  # its model comes from the uncached train task: a hit is impossible
    "deploy-model": False,  # changes what Triton serves: a side effect
    "record-baseline": False,  # writes the serving record: a side effect
    "batch-inference": False,  # the features and the model that serves change between runs; it appends to a log
}


# What every CPU task asks for: (cpu request, cpu limit, memory request, memory limit). Requests make the pods
# schedulable under a profile's ResourceQuota; train-model asks for what prepare-training returns (the training pod,
# or a multi-node job's launcher).
RESOURCES = {
    "ingest": ("1", "2", "2Gi", "8Gi"),
    "drift-check": ("1", "4", "4Gi", "16Gi"),
    "performance-check": ("1", "4", "4Gi", "16Gi"),  # 10M labelled predictions join in about 8 GB
    "submit-training": ("100m", "500m", "256Mi", "512Mi"),
    "report-outcome": ("100m", "500m", "256Mi", "512Mi"),
    "features": ("1", "4", "4Gi", "16Gi"),
    "prepare-training": ("1", "4", "4Gi", "16Gi"),
    "evaluate-model": ("1", "2", "2Gi", "8Gi"),
    "quantize-model": ("1", "4", "2Gi", "8Gi"),
    "deploy-model": ("500m", "1", "1Gi", "4Gi"),
    "record-baseline": ("250m", "1", "512Mi", "2Gi"),
    "batch-inference": ("1", "4", "4Gi", "16Gi"),  # memory: inference.batch_rows rows, plus Feast's offline source
}


# The pipelines' parameters the shared steps take as they are (both pipelines declare them alike).
CLUSTER_PARAMETERS = ("gpu_type", "gpus_per_node", "train_cpu", "train_memory", "train_node_selector",
                      "train_tolerations", "storage_secret", "feast_secret")  # fmt: skip


def cluster_arguments(parameters: dict) -> dict:
    """The shared steps' cluster arguments, from a pipeline function's parameters (its ``locals()``)."""
    return {name: parameters[name] for name in CLUSTER_PARAMETERS}


def with_storage_credentials(task: dsl.PipelineTask, secret: str) -> dsl.PipelineTask:
    """Object-storage credentials from the pipeline's Secret and from KFP's own MinIO Secret (both optional: KFP's
    MinIO works out of the box, and clusters with workload identity need none; see ``storage``)."""
    keys = {key: key for key in storage.CREDENTIAL_SECRET_KEYS}
    kubernetes.use_secret_as_env(task, secret_name=secret, secret_key_to_env=keys, optional=True)
    return kubernetes.use_secret_as_env(
        task, secret_name=storage.KFP_MINIO_SECRET, secret_key_to_env=storage.KFP_MINIO_SECRET_KEYS, optional=True
    )


def with_tracking_settings(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """The MLflow client's settings (tracking URI and credentials) from the Secret ``tracking.SECRET``, optional
    like the control key's below: without it, a step tracks only where ``tracking.uri`` is set."""
    return kubernetes.use_secret_as_env(
        task, tracking.SECRET, {key: key for key in tracking.SECRET_KEYS}, optional=True
    )


def task_timeouts(overrides: str | None = None) -> dict[str, int]:
    """TIMEOUTS with ``overrides`` (default: the environment variable KFP_MLOPS_TASK_TIMEOUTS), written
    ``task=seconds,task=seconds``; raises ValueError naming an unknown task or a value that is not whole seconds > 0."""
    text = os.environ.get(TIMEOUTS_ENV, "") if overrides is None else overrides
    timeouts = dict(TIMEOUTS)
    for item in filter(None, (part.strip() for part in text.split(","))):
        task, _, seconds = item.partition("=")
        task = task.strip()
        if task not in TIMEOUTS:
            raise ValueError(f"{TIMEOUTS_ENV}: unknown task {task!r}; tasks are {', '.join(TIMEOUTS)}")
        if not seconds.strip().isdigit() or int(seconds) <= 0:
            raise ValueError(f"{TIMEOUTS_ENV}: {item!r}: expected {task}=<whole seconds > 0>")
        timeouts[task] = int(seconds)
    return timeouts


def with_triton_control_key(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """Triton's model-control key as the environment variable CONTROL_ENV, from the Secret CONTROL_SECRET
    (components/shared/triton_access.py). Optional (secretAsEnv.optional, applied by the backend since 2.15.0:
    backend/src/v2/driver/k8s.go extendPodSpecPatch): without the Secret the step sends no key, which a Triton
    started without the restriction (a local one) accepts and a locked-down one refuses."""
    keys = {triton_access.CONTROL_SECRET_KEY: triton_access.CONTROL_ENV}
    return kubernetes.use_secret_as_env(task, triton_access.CONTROL_SECRET, keys, optional=True)


def configure(task: dsl.PipelineTask, storage_secret: str, timeouts: dict[str, int] | None = None) -> dsl.PipelineTask:
    """What every task gets: its caching choice (CACHING), its resources (RESOURCES), its pod's deadline
    (``timeouts``, default ``task_timeouts()``), the object-storage credentials and the tracking settings."""
    task.set_caching_options(CACHING[task.name])
    kubernetes.set_timeout(task, (timeouts or task_timeouts())[task.name])
    if task.name in RESOURCES:
        cpu_request, cpu_limit, memory_request, memory_limit = RESOURCES[task.name]
        task.set_cpu_request(cpu_request).set_cpu_limit(cpu_limit)
        task.set_memory_request(memory_request).set_memory_limit(memory_limit)
    return with_tracking_settings(with_storage_credentials(task, storage_secret))


def training_pod_arguments(parameters: dict) -> dict:
    """The training pod's parameters, as ingest checks them (from a pipeline function's ``locals()``)."""
    return {name: parameters[name] for name in ("gpu_type", "gpus_per_node", "train_cpu", "train_memory",
                                                "train_node_selector", "train_tolerations")}  # fmt: skip


def build(images: ImageConfig):
    """The shared steps as a nested pipeline, every step on the image ``images`` names and with its timeout
    (``task_timeouts()``, read once here)."""
    timeouts = task_timeouts()
    features_op = features_component.build(images)
    prepare_op = train_component.build_prepare(images)
    train_op = train_component.build(images)
    evaluate_op = evaluate_component.build(images)
    quantize_op = quantize_component.build(images)
    deploy_op = deploy_component.build(images)
    record_op = evaluate_component.build_record_baseline(images)

    @dsl.pipeline(name="train-and-deploy", description="Features, training, blessing, quantization, deployment.")
    def train_and_deploy(
        config: str,
        train: dsl.Input[dsl.Dataset],
        validation: dsl.Input[dsl.Dataset],
        test: dsl.Input[dsl.Dataset],
        gpu_type: str,
        gpus_per_node: str,
        train_cpu: str,
        train_memory: str,
        train_node_selector: dict,
        train_tolerations: list,
        storage_secret: str,
        feast_secret: str,
    ):
        features_task = features_op(
            config=config, train=train, validation=validation, test=test, run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER
        )
        features_task.set_display_name("Feast features")
        kubernetes.use_secret_as_env(features_task, feast_secret, FEAST_SECRET_KEYS, optional=True)

        prepare_task = prepare_op(
            config=config,
            train_data=features_task.outputs["train_features"],
            validation_data=features_task.outputs["validation_features"],
            gpu_type=gpu_type,
            gpus_per_node=gpus_per_node,
            train_cpu=train_cpu,
            train_memory=train_memory,
            run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        )
        prepare_task.set_display_name("prepare training data")
        train_pod = prepare_task.outputs  # what train-model asks for: strings, as the driver reads them

        train_task = train_op(
            config=config,
            training_data=prepare_task.outputs["training_data"],
            run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
            image=images.ref("train"),
            gpu_type=gpu_type,
            gpus_per_node=gpus_per_node,
            train_cpu=train_cpu,
            train_memory=train_memory,
            node_selector=train_node_selector,
            tolerations=train_tolerations,
            storage_secret=storage_secret,
        )
        train_task.set_display_name("train (DeepSpeed)")
        train_task.set_accelerator_type(gpu_type).set_accelerator_limit(train_pod["gpus"])
        train_task.set_cpu_request(train_pod["cpu"]).set_cpu_limit(train_pod["cpu"])
        train_task.set_memory_request(train_pod["memory"]).set_memory_limit(train_pod["memory"])
        # Retries resume from checkpoints. Input and config errors never reach this task (prepare-training checks
        # them on a CPU pod without retries), and a failure a retry would repeat fails the retry at once.
        train_task.set_retry(num_retries=2, backoff_duration="60s", backoff_factor=2.0)
        kubernetes.add_node_selector_json(train_task, train_node_selector)
        kubernetes.add_toleration_json(train_task, train_tolerations)
        kubernetes.empty_dir_mount(train_task, "dshm", "/dev/shm", medium="Memory", size_limit=SHARED_MEMORY)

        evaluate_task = evaluate_op(
            config=config,
            model=train_task.outputs["model"],
            test_data=features_task.outputs["test_features"],
            run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        )
        evaluate_task.set_display_name("evaluate and bless")

        with dsl.If(evaluate_task.outputs["Output"] == True, name="blessed"):  # noqa: E712 - a KFP condition
            quantize_task = quantize_op(
                config=config,
                model=train_task.outputs["model"],
                train_data=features_task.outputs["train_features"],
                validation_data=features_task.outputs["validation_features"],
                run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
            )
            quantize_task.set_display_name("quantize within the accuracy budget")
            deploy_task = deploy_op(
                config=config,
                model=quantize_task.outputs["quantized_model"],
                validation_data=features_task.outputs["validation_features"],
                run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
            )
            deploy_task.set_display_name("deploy to Triton (verify, promote)")
            with_triton_control_key(deploy_task)
            record_task = record_op(
                config=config,
                model=quantize_task.outputs["quantized_model"],
                metrics=evaluate_task.outputs["metrics"],
                reference_data=features_task.outputs["train_features"],
                deployment=deploy_task.outputs["deployment"],
                run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
            )
            record_task.set_display_name("record what serves")

        tasks = (features_task, prepare_task, train_task, evaluate_task, quantize_task, deploy_task, record_task)
        for task in tasks:
            configure(task, storage_secret, timeouts)

    return train_and_deploy
