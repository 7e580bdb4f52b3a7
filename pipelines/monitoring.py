"""Monitoring pipeline: ingest the current window → drift check → performance check (the prediction log joined with
the labels that arrived, when labels are given) → on drift or degraded performance, retrain (the shared
train-and-deploy steps in this run, or a run of the uploaded training pipeline through the KFP API) → deploy only a
blessed model; an exit handler reports the outcome and sends the alerts. On a window without drift or degradation
the run stops after the performance check."""

from kfp import dsl, kubernetes

from kfp_mlops.components.drift import component as drift_component
from kfp_mlops.components.ingest import component as ingest_component
from kfp_mlops.components.performance import component as performance_component
from kfp_mlops.components.shared import storage
from kfp_mlops.components.shared.images import ImageConfig
from kfp_mlops.pipelines import train_and_deploy

PIPELINE_NAME = "kfp-mlops-monitoring"
DEFAULT_CONFIG = "s3://kfp-mlops/configs/training.yaml"
PIPELINES_API_TOKEN_LABEL = "kfp-mlops.io/pipelines-api-token"


def build(images: ImageConfig):
    """The monitoring pipeline with every step on the image ``images`` names."""
    ingest_op = ingest_component.build(images)
    drift_op = drift_component.build(images)
    performance_op = performance_component.build(images)
    submit_op = drift_component.build_submit_training(images)
    report_op = drift_component.build_report_outcome(images)
    shared_steps = train_and_deploy.build(images)

    @dsl.pipeline(name=PIPELINE_NAME, description="Check the latest data for drift and the served model's "
                  "performance on labelled predictions; retrain and redeploy only a better model.")  # fmt: skip
    def monitoring(
        config: str = DEFAULT_CONFIG,
        data_source: str = "",
        labels: str = "",
        gpu_type: str = "nvidia.com/gpu",
        gpus_per_node: str = train_and_deploy.DEFAULT_GPUS_PER_NODE,
        train_cpu: str = train_and_deploy.DEFAULT_TRAIN_CPU,
        train_memory: str = train_and_deploy.DEFAULT_TRAIN_MEMORY,
        train_node_selector: dict = {},  # noqa: B006 - KFP reads the default from the signature
        train_tolerations: list = [train_and_deploy.GPU_TOLERATION],  # noqa: B006
        storage_secret: str = storage.STORAGE_SECRET,
        feast_secret: str = train_and_deploy.FEAST_SECRET,
    ):
        """Compare the current window with the data the serving model was trained on; on drift, retrain on the
        window and deploy the new model only if it is blessed against the one that serves.

        Args:
            config: Pipeline config (the training pipeline's): the URI of a YAML file or the YAML text itself.
            data_source: The current window: feature logs or inference inputs (file, prefix/directory or glob);
                empty: data.source of the config (e.g. a prefix that always holds the latest window).
            labels: The labels that arrived (entity, timestamp, label; file, prefix or glob) to judge the serving
                model's predictions (the prediction log) with; empty: performance.labels of the config; neither:
                no performance check.
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
        report_task = report_op(config=config, run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER)
        report_task.set_display_name("report the outcome")
        train_and_deploy.configure(report_task, storage_secret)
        with dsl.ExitHandler(report_task, name="monitor"):
            ingest_task = ingest_op(
                config=config,
                data_source=data_source,
                run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                **train_and_deploy.training_pod_arguments(locals()),
            )
            ingest_task.set_display_name("ingest the window")
            run_config = ingest_task.outputs["Output"]
            drift_task = drift_op(
                config=run_config,
                current_train=ingest_task.outputs["train"],
                current_validation=ingest_task.outputs["validation"],
                current_test=ingest_task.outputs["test"],
                run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
            )
            drift_task.set_display_name("drift check")
            performance_task = performance_op(
                config=run_config,
                labels=labels,
                drift_action=drift_task.outputs["Output"],
                run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
            )
            performance_task.set_display_name("performance check")
            for task in (ingest_task, drift_task, performance_task):
                train_and_deploy.configure(task, storage_secret)
            # the next action: drift's, or retraining when the model degraded (performance_check decides both)
            action = performance_task.outputs["Output"]

            with dsl.If(action == "nested", name="retrain-here"):
                shared_steps(
                    config=run_config,
                    train=ingest_task.outputs["train"],
                    validation=ingest_task.outputs["validation"],
                    test=ingest_task.outputs["test"],
                    **train_and_deploy.cluster_arguments(locals()),
                ).set_display_name("retrain and deploy")
            with dsl.If(action == "kfp_api", name="retrain-via-kfp-api"):
                submit_task = submit_op(
                    config=run_config,
                    data_source=data_source,
                    run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                )
                submit_task.set_display_name("retrain: run the training pipeline")
                # a multi-user KFP API takes the pod's token for pipelines.kubeflow.org: a PodDefault of
                # manifests/overlays/profile projects it into pods with this label (argocompiler applies podMetadata)
                kubernetes.add_pod_label(submit_task, PIPELINES_API_TOKEN_LABEL, "true")
                train_and_deploy.configure(submit_task, storage_secret)

    return monitoring
