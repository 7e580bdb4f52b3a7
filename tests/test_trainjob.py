"""The multi-node train option: TrainJob manifests checked against the official kubeflow-trainer-api models, and the
real kubernetes client driven against ``FakeKubeApiServer``, an in-process HTTP test double of the API server (there
is no cluster here): request paths, bodies and query parameters are asserted as the server would receive them."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from typing import Any

import pytest
from kubeflow_trainer_api.models import TrainerV1alpha1TrainJob
from support.kube_api import COMPLETE, FAILED, api_client_for, not_found, status_body, stored

from kfp_mlops.components.train.trainjob import (
    RUN_ID_LABEL,
    TRAINER_REPLICATED_JOB,
    TrainJobSpec,
    build_manifest,
    run_trainjob,
    trainjob_name,
    validate_manifest,
)

pytestmark = pytest.mark.timeout(30)

RUN_ID = "0b6f2b0e-1c1e-4c5e-9d55-3a0c1f9c2e11"
NAMESPACE = "team-ml"
COLLECTION = f"/apis/trainer.kubeflow.org/v1alpha1/namespaces/{NAMESPACE}/trainjobs"
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
SECRET_VALUE = "s3cr3t-value-from-the-environment"


def gpu_spec(**overrides: Any) -> TrainJobSpec:
    fields: dict[str, Any] = {
        "run_id": RUN_ID,
        "task_name": "train",
        "namespace": NAMESPACE,
        "image": "ghcr.io/kfp-mlops/kfp-mlops-train:0.1.0",
        "command": ["torchrun", "-m", "kfp_mlops.components.train.launch", "--config", "/tmp/config.yaml"],
        "num_nodes": 2,
        "processes_per_node": 8,
        "cpu": "16",
        "memory": "64Gi",
        "env": {"PYTHONUNBUFFERED": "1"},
        "secret_env": {"AWS_SECRET_ACCESS_KEY": ("s3-credentials", "secret-access-key")},
        "node_selector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
        "tolerations": [GPU_TOLERATION],
    }
    fields.update(overrides)
    return TrainJobSpec.for_kfp_task(**fields)


def trainer_pod_template(manifest: dict[str, Any]) -> dict[str, Any]:
    (patch,) = manifest["spec"]["runtimePatches"]
    (replicated_job,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    assert replicated_job["name"] == TRAINER_REPLICATED_JOB
    return replicated_job["template"]["spec"]["template"]


def trainer_pod_patch(manifest: dict[str, Any]) -> dict[str, Any]:
    return trainer_pod_template(manifest)["spec"]


# --- manifests ----------------------------------------------------------------------------------------------------


def test_manifest_validates_against_the_official_trainjob_model():
    manifest = build_manifest(gpu_spec())
    validate_manifest(manifest)
    model = TrainerV1alpha1TrainJob.from_dict(manifest)
    assert model.spec.runtime_ref.name == "torch-distributed"
    assert model.spec.runtime_ref.kind == "ClusterTrainingRuntime"
    assert model.to_dict() == manifest


def test_manifest_puts_gpus_nodes_and_scheduling_where_the_api_expects_them():
    manifest = build_manifest(gpu_spec())
    trainer = manifest["spec"]["trainer"]
    assert trainer["numNodes"] == 2
    assert trainer["numProcPerNode"] == 8
    expected = {"cpu": "16", "memory": "64Gi", "nvidia.com/gpu": "8"}
    assert trainer["resourcesPerNode"] == {"limits": expected, "requests": expected}
    assert trainer["command"][:3] == ["torchrun", "-m", "kfp_mlops.components.train.launch"]
    assert trainer_pod_patch(manifest) == {
        "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
        "tolerations": [GPU_TOLERATION],
    }
    assert manifest["metadata"]["labels"][RUN_ID_LABEL] == RUN_ID
    assert manifest["metadata"]["name"] == trainjob_name(RUN_ID, "train")


def test_secret_env_is_a_secret_key_reference_and_no_secret_value_reaches_the_manifest(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_VALUE)
    manifest = build_manifest(gpu_spec())
    assert manifest["spec"]["trainer"]["env"] == [
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        {
            "name": "AWS_SECRET_ACCESS_KEY",
            # optional, as in the KFP pods: clusters with workload identity have no such Secret
            "valueFrom": {"secretKeyRef": {"name": "s3-credentials", "key": "secret-access-key", "optional": True}},
        },
    ]
    assert SECRET_VALUE not in json.dumps(manifest)


def test_cpu_only_job_requests_no_gpu_and_patches_only_the_istio_opt_out():
    manifest = build_manifest(gpu_spec(gpu_resource="", cpu="", memory="", node_selector={}, tolerations=[]))
    validate_manifest(manifest)
    assert "resourcesPerNode" not in manifest["spec"]["trainer"]
    assert trainer_pod_template(manifest) == {"metadata": {"labels": {"sidecar.istio.io/inject": "false"}}}
    assert "runtimePatches" not in build_manifest(gpu_spec(node_selector={}, tolerations=[], pod_labels={}))["spec"]


def test_every_node_opts_out_of_the_istio_sidecar_for_the_rendezvous():
    """In an Istio-injected profile namespace, a sidecar intercepts torchrun's and NCCL's ports: the pods opt out."""
    manifest = build_manifest(gpu_spec())
    validate_manifest(manifest)
    assert trainer_pod_template(manifest)["metadata"] == {"labels": {"sidecar.istio.io/inject": "false"}}
    assert TrainerV1alpha1TrainJob.from_dict(manifest).to_dict() == manifest  # a field the model keeps


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda m: m["spec"]["trainer"].update(numNode=2), "spec.trainer.numNode: unknown field"),
        (lambda m: m["metadata"].update(label={"a": "b"}), "metadata.label: unknown field"),
        (
            lambda m: trainer_pod_patch(m)["tolerations"][0].update(opertor="Exists"),
            "spec.runtimePatches[0].trainingRuntimeSpec.template.spec.replicatedJobs[0].template.spec.template.spec"
            ".tolerations[0].opertor: unknown field",
        ),
        (
            lambda m: m["spec"]["trainer"]["env"][1]["valueFrom"]["secretKeyRef"].update(secret="x"),
            "spec.trainer.env[1].valueFrom.secretKeyRef.secret: unknown field",
        ),
    ],
)
def test_unknown_field_is_rejected_naming_its_path(mutate: Callable[[dict], None], message: str):
    manifest = build_manifest(gpu_spec())
    mutate(manifest)
    with pytest.raises(ValueError, match="^TrainJob manifest: " + re.escape(message)):
        validate_manifest(manifest)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda m: m["spec"]["trainer"].update(numNodes="2"), "spec.trainer.numNodes: Input should be a valid integer"),
        (lambda m: m["spec"]["trainer"].update(command="python train.py"), "spec.trainer.command: expected a list"),
        (
            lambda m: m["spec"]["trainer"]["resourcesPerNode"]["limits"].update({"nvidia.com/gpu": [8]}),
            "spec.trainer.resourcesPerNode.limits.nvidia.com/gpu: expected one of float, str",
        ),
        (
            lambda m: trainer_pod_patch(m)["tolerations"][0].update(tolerationSeconds="60"),
            "tolerations[0].tolerationSeconds: Input should be a valid integer",
        ),
        (lambda m: m["metadata"]["labels"].update(team=7), "metadata.labels.team: Input should be a valid string"),
        (lambda m: m["spec"]["trainer"]["env"][0].pop("name"), "spec.trainer.env[0].name: required"),
        (lambda m: m["spec"].pop("runtimeRef"), "spec.runtimeRef: required"),
    ],
)
def test_wrong_type_or_missing_field_is_rejected_naming_its_path(mutate: Callable[[dict], None], message: str):
    manifest = build_manifest(gpu_spec())
    mutate(manifest)
    with pytest.raises(ValueError, match=re.escape(message)):
        validate_manifest(manifest)


def test_value_the_model_would_change_is_rejected():
    manifest = build_manifest(gpu_spec())
    manifest["spec"]["trainer"]["resourcesPerNode"]["limits"]["cpu"] = 16  # the model turns it into 16.0
    with pytest.raises(ValueError, match=r"spec\.trainer\.resourcesPerNode\.limits\.cpu: changed by the model"):
        validate_manifest(manifest)


def test_trainjob_name_is_stable_for_a_run_and_task_and_a_valid_dns_label():
    name = trainjob_name(RUN_ID, "Train Model (DeepSpeed) with a very long task name indeed")
    assert name == trainjob_name(RUN_ID, "Train Model (DeepSpeed) with a very long task name indeed")
    assert name != trainjob_name("another-run", "Train Model (DeepSpeed) with a very long task name indeed")
    assert name.startswith("kfp-train-model-deepspeed-")
    assert len(name) <= 39
    TrainJobSpec(name=name, namespace=NAMESPACE, image="i", command=["x"])  # passes the spec's own name check


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"name": "Train_Job"}, "DNS-1035 label"),
        ({"name": "x" * 64}, "DNS-1035 label"),
        ({"num_nodes": 0}, "num_nodes and processes_per_node must be >= 1"),
        ({"env": {"TOKEN": "a"}, "secret_env": {"TOKEN": ("s", "k")}}, "both as plain values and from secrets"),
        ({"secret_env": {"TOKEN": ("s", "")}}, r"secret_env\['TOKEN'\]"),
        ({"labels": {"pipeline/runid": "x" * 64}}, "not a valid Kubernetes label value"),
    ],
)
def test_spec_rejects_what_the_api_server_would(fields: dict[str, Any], message: str):
    with pytest.raises(ValueError, match=message):
        TrainJobSpec(**{"name": "kfp-train", "namespace": NAMESPACE, "image": "i", "command": ["x"], **fields})


# --- run_trainjob against the test double -------------------------------------------------------------------------


def test_creates_the_job_once_and_waits_until_complete(kube_api, capsys, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_VALUE)
    spec = gpu_spec()
    manifest = build_manifest(spec)
    item = f"{COLLECTION}/{spec.name}"
    kube_api.script(
        "GET",
        item,
        not_found(spec.name),
        stored(manifest),
        stored(manifest, active=1),
        stored(manifest, active=1),
        stored(manifest, **COMPLETE),
    )
    kube_api.script("POST", COLLECTION, (201, manifest))
    handler_before = signal.getsignal(signal.SIGTERM)

    result = run_trainjob(spec, api_client_for(kube_api), poll_seconds=0.01)

    assert (result.name, result.namespace, result.state, result.created) == (spec.name, NAMESPACE, "Complete", True)
    assert result.conditions[0]["reason"] == "JobsCompleted"
    assert result.seconds >= 0
    assert [(r.method, r.path) for r in kube_api.requests] == [("GET", item), ("POST", COLLECTION)] + [
        ("GET", item)
    ] * 4
    (create,) = kube_api.requests_of("POST")
    assert create.body == manifest
    assert SECRET_VALUE not in json.dumps(create.body)
    log = capsys.readouterr().out
    job = f"TrainJob {NAMESPACE}/{spec.name}"
    assert log.splitlines() == [  # one line per change of state, not one per poll
        f"{job} created",
        f"{job}: Created",
        f"{job}: Running",
        f"{job}: Complete: JobsCompleted: TrainJob is completed",
    ]
    assert signal.getsignal(signal.SIGTERM) is handler_before


def test_a_retried_pod_resumes_the_existing_job_without_creating_another(kube_api):
    spec = gpu_spec()
    manifest = build_manifest(spec)
    kube_api.script("GET", f"{COLLECTION}/{spec.name}", stored(manifest, active=1), stored(manifest, **COMPLETE))

    result = run_trainjob(spec, api_client_for(kube_api), poll_seconds=0.01)

    assert (result.state, result.created) == ("Complete", False)
    assert kube_api.requests_of("POST") == []


def test_conflict_on_create_is_treated_as_the_job_already_existing(kube_api):
    spec = gpu_spec()
    manifest = build_manifest(spec)
    kube_api.script("GET", f"{COLLECTION}/{spec.name}", not_found(spec.name), stored(manifest, **COMPLETE))
    kube_api.script("POST", COLLECTION, (409, status_body(409, "AlreadyExists", "trainjobs already exists")))

    result = run_trainjob(spec, api_client_for(kube_api), poll_seconds=0.01)

    assert (result.state, result.created) == ("Complete", False)
    assert len(kube_api.requests_of("POST")) == 1


def test_failed_job_raises_with_its_message(kube_api):
    spec = gpu_spec()
    manifest = build_manifest(spec)
    kube_api.script(
        "GET", f"{COLLECTION}/{spec.name}", not_found(spec.name), stored(manifest, active=1), stored(manifest, **FAILED)
    )
    kube_api.script("POST", COLLECTION, (201, manifest))

    with pytest.raises(RuntimeError, match=r"failed: JobsFailed: .*node-1 exited with code 1 \(CUDA out of memory\)"):
        run_trainjob(spec, api_client_for(kube_api), poll_seconds=0.01)
    assert kube_api.requests_of("DELETE") == []  # a failed job stays for its logs


def test_a_retried_pod_replaces_the_job_that_failed_in_the_earlier_attempt(kube_api):
    spec = gpu_spec()
    manifest = build_manifest(spec)
    item = f"{COLLECTION}/{spec.name}"
    kube_api.script(
        "GET", item, stored(manifest, **FAILED), stored(manifest, **FAILED), not_found(spec.name),
        stored(manifest, active=1), stored(manifest, **COMPLETE),
    )  # fmt: skip
    kube_api.script("DELETE", item, (200, status_body(200, "Deleted", "deleted")))
    kube_api.script("POST", COLLECTION, (201, manifest))

    result = run_trainjob(spec, api_client_for(kube_api), poll_seconds=0.01)

    assert (result.state, result.created) == ("Complete", True)
    methods = [r.method for r in kube_api.requests]
    assert methods.index("DELETE") < methods.index("POST")
    assert kube_api.requests_of("DELETE")[0].query["propagationPolicy"] == ["Foreground"]


def test_job_deleted_by_someone_else_while_waiting_fails_the_step(kube_api):
    spec = gpu_spec()
    manifest = build_manifest(spec)
    kube_api.script("GET", f"{COLLECTION}/{spec.name}", stored(manifest, active=1), not_found(spec.name))

    with pytest.raises(RuntimeError, match="disappeared while waiting"):
        run_trainjob(spec, api_client_for(kube_api), poll_seconds=0.01)


def test_transient_api_errors_while_waiting_are_retried(kube_api):
    spec = gpu_spec()
    manifest = build_manifest(spec)
    unavailable = (503, status_body(503, "ServiceUnavailable", "etcd leader changed"))
    kube_api.script(
        "GET",
        f"{COLLECTION}/{spec.name}",
        stored(manifest, active=1),
        unavailable,
        unavailable,
        stored(manifest, **COMPLETE),
    )

    assert run_trainjob(spec, api_client_for(kube_api), poll_seconds=0.01).state == "Complete"


def test_forbidden_is_not_retried(kube_api):
    spec = gpu_spec()
    kube_api.script("GET", f"{COLLECTION}/{spec.name}", (403, status_body(403, "Forbidden", "no RBAC")))

    with pytest.raises(Exception, match="Forbidden"):
        run_trainjob(spec, api_client_for(kube_api), poll_seconds=0.01)
    assert len(kube_api.requests) == 1


def test_timeout_deletes_the_job_in_the_foreground(kube_api):
    spec = gpu_spec()
    manifest = build_manifest(spec)
    kube_api.script("GET", f"{COLLECTION}/{spec.name}", not_found(spec.name), stored(manifest, active=1))
    kube_api.script("POST", COLLECTION, (201, manifest))
    kube_api.script("DELETE", f"{COLLECTION}/{spec.name}", (200, status_body(200, "", "deleted")))

    with pytest.raises(TimeoutError, match="did not finish within 0.2 s"):
        run_trainjob(spec, api_client_for(kube_api), poll_seconds=0.02, timeout_seconds=0.2)
    (delete,) = kube_api.requests_of("DELETE")
    assert delete.query == {"propagationPolicy": ["Foreground"]}


def test_invalid_manifest_sends_no_request(kube_api):
    spec = gpu_spec(tolerations=[{"key": "nvidia.com/gpu", "opertor": "Exists"}])

    with pytest.raises(ValueError, match="tolerations\\[0\\].opertor: unknown field"):
        run_trainjob(spec, api_client_for(kube_api), poll_seconds=0.01)
    assert kube_api.requests == []


def test_sigterm_deletes_the_job_in_the_foreground_and_exits_nonzero(kube_api):
    """A cancelled KFP run sends SIGTERM to the step's process: the launcher deletes the TrainJob, then exits."""
    spec = gpu_spec()
    manifest = build_manifest(spec)
    item = f"{COLLECTION}/{spec.name}"
    kube_api.script("GET", item, not_found(spec.name), stored(manifest, active=1))
    kube_api.script("POST", COLLECTION, (201, manifest))
    kube_api.script("DELETE", item, (200, status_body(200, "", "deleted")))
    launcher = textwrap.dedent(
        f"""
        from kubernetes.client import ApiClient, Configuration
        from kfp_mlops.components.train.trainjob import TrainJobSpec, run_trainjob
        spec = TrainJobSpec.for_kfp_task(run_id={RUN_ID!r}, task_name="train", namespace={NAMESPACE!r},
                                         image="i", command=["torchrun", "train.py"])
        run_trainjob(spec, ApiClient(Configuration(host={kube_api.url!r})), poll_seconds=0.02)
        """
    )
    process = subprocess.Popen([sys.executable, "-c", launcher], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        kube_api.wait_for(lambda: kube_api.requests_of("POST") and len(kube_api.requests_of("GET")) >= 3)
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=15)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 128 + signal.SIGTERM, output.decode()
    (delete,) = kube_api.requests_of("DELETE")
    assert delete.path == item
    assert delete.query == {"propagationPolicy": ["Foreground"]}
    assert f"SIGTERM: deleting TrainJob {NAMESPACE}/{spec.name}" in output.decode()
