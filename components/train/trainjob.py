"""Multi-node training as a Kubeflow Trainer v2 TrainJob (``trainer.kubeflow.org/v1alpha1``).

``build_manifest`` renders a ``TrainJobSpec``; ``validate_manifest`` checks it against the official API models of
``kubeflow-trainer-api`` and rejects any field they do not know; ``run_trainjob`` creates the job idempotently
(GCPC-style: a retried pod finds the job it already created), waits for a terminal condition and, if the KFP run is
cancelled (SIGTERM), deletes the job before exiting. No KFP import; ``kubernetes`` is imported when first used.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kfp_mlops.components.shared.cancellation import on_sigterm
from kfp_mlops.components.shared.model_validation import model_problem

GROUP = "trainer.kubeflow.org"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "TrainJob"
PLURAL = "trainjobs"

# Condition types a TrainJob reports (Trainer v2 Go API: TrainJobComplete, TrainJobFailed, TrainJobSuspended).
COMPLETE = "Complete"
FAILED = "Failed"
SUSPENDED = "Suspended"
# States derived here when no condition above is true: child Jobs not started yet / at least one child Job active.
CREATED = "Created"
RUNNING = "Running"

RUN_ID_LABEL = "pipeline/runid"  # the label KFP puts on its own pods: one selector finds a run's pods and jobs
TASK_LABEL = "kfp-mlops/task"
PATCH_MANAGER = "kfp-mlops/train"  # owner of our entry in spec.runtimePatches
TRAINER_REPLICATED_JOB = "node"  # replicated Job (and container) that runs the trainer in torch-distributed

_REQUEST_TIMEOUT_SECONDS = 30
# Nodes rendezvous over plain TCP (torchrun's c10d store, NCCL): an Istio sidecar in an injected Kubeflow profile
# namespace intercepts those ports and the job hangs, so the pods opt out (Istio's sidecar.istio.io/inject label).
NO_ISTIO_SIDECAR = {"sidecar.istio.io/inject": "false"}
_TRANSIENT_STATUSES = {0, 429, 500, 502, 503, 504}  # 0: no HTTP response (connection error)
_MAX_CONSECUTIVE_POLL_ERRORS = 5
_NAME = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_LABEL_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


@dataclass(frozen=True)
class TrainJobSpec:
    """What to run as a TrainJob. ``processes_per_node`` is also the GPU count per node (none if ``gpu_resource``
    is empty); ``cpu``/``memory`` are Kubernetes quantities, empty for the runtime's default. ``secret_env`` maps a
    variable to ``(secret name, key)``: only the reference reaches the manifest, never the value."""

    name: str
    namespace: str
    image: str
    command: list[str]
    num_nodes: int = 1
    processes_per_node: int = 1
    gpu_resource: str = "nvidia.com/gpu"
    cpu: str = ""
    memory: str = ""
    env: dict[str, str] = field(default_factory=dict)
    secret_env: dict[str, tuple[str, str]] = field(default_factory=dict)
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)
    runtime_ref: str = "torch-distributed"
    runtime_kind: str = "ClusterTrainingRuntime"
    labels: dict[str, str] = field(default_factory=dict)
    pod_labels: dict[str, str] = field(default_factory=lambda: dict(NO_ISTIO_SIDECAR))  # on every node's Pod

    def __post_init__(self) -> None:
        if len(self.name) > 63 or not _NAME.fullmatch(self.name):
            raise ValueError(f"TrainJob name {self.name!r}: expected a DNS-1035 label (a-z, 0-9, '-'; at most 63)")
        if not self.namespace or not self.image or not self.command:
            raise ValueError("TrainJob needs a namespace, an image and a command")
        if self.num_nodes < 1 or self.processes_per_node < 1:
            counts = f"{self.num_nodes}, {self.processes_per_node}"
            raise ValueError(f"num_nodes and processes_per_node must be >= 1, got {counts}")
        both = sorted(set(self.env) & set(self.secret_env))
        if both:
            raise ValueError(f"environment variables set both as plain values and from secrets: {both}")
        for variable, reference in self.secret_env.items():
            if len(reference) != 2 or not all(reference):
                raise ValueError(f"secret_env[{variable!r}]: expected (secret name, key), got {reference!r}")
        for key, value in (self.labels | self.pod_labels).items():
            _check_label(key, value)

    @classmethod
    def for_kfp_task(cls, *, run_id: str, task_name: str, **fields: Any) -> TrainJobSpec:
        """A spec named after the KFP run and task (stable across retries of the task), labelled with both."""
        labels = {RUN_ID_LABEL: run_id, TASK_LABEL: _slug(task_name, 63), **fields.pop("labels", {})}
        return cls(name=trainjob_name(run_id, task_name), labels=labels, **fields)


@dataclass(frozen=True)
class TrainJobResult:
    """How the TrainJob ended. ``created``: False when this call found the job already there (a retried pod)."""

    name: str
    namespace: str
    state: str
    conditions: list[dict[str, Any]]
    seconds: float
    created: bool


def trainjob_name(run_id: str, task_name: str) -> str:
    """Deterministic TrainJob name for a KFP run and task: ``kfp-<task>-<hash>``, at most 39 characters, leaving
    room for the suffixes JobSet appends to Job and Pod names."""
    digest = hashlib.sha256(f"{run_id}/{task_name}".encode()).hexdigest()[:10]
    return f"kfp-{_slug(task_name, 24) or 'train'}-{digest}"


def build_manifest(spec: TrainJobSpec) -> dict[str, Any]:
    """The TrainJob object for ``spec``: trainer settings in ``spec.trainer``, node selector and tolerations as a
    ``spec.runtimePatches`` entry on the runtime's trainer Pod template."""
    resources = {}
    if spec.cpu:
        resources["cpu"] = spec.cpu
    if spec.memory:
        resources["memory"] = spec.memory
    if spec.gpu_resource:
        resources[spec.gpu_resource] = str(spec.processes_per_node)
    env = [{"name": name, "value": value} for name, value in spec.env.items()]
    env += [
        {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key, "optional": True}}}
        for name, (secret, key) in spec.secret_env.items()
    ]
    trainer: dict[str, Any] = {
        "image": spec.image,
        "command": list(spec.command),
        "numNodes": spec.num_nodes,
        "numProcPerNode": spec.processes_per_node,
    }
    if resources:
        trainer["resourcesPerNode"] = {"limits": dict(resources), "requests": dict(resources)}
    if env:
        trainer["env"] = env
    job_spec: dict[str, Any] = {
        "runtimeRef": {"apiGroup": GROUP, "kind": spec.runtime_kind, "name": spec.runtime_ref},
        "trainer": trainer,
    }
    pod_patch: dict[str, Any] = {}
    if spec.node_selector:
        pod_patch["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        pod_patch["tolerations"] = [dict(toleration) for toleration in spec.tolerations]
    pod_template: dict[str, Any] = {"spec": pod_patch} if pod_patch else {}
    if spec.pod_labels:
        pod_template["metadata"] = {"labels": dict(spec.pod_labels)}
    if pod_template:
        replicated_job = {"name": TRAINER_REPLICATED_JOB, "template": {"spec": {"template": pod_template}}}
        job_spec["runtimePatches"] = [
            {
                "manager": PATCH_MANAGER,
                "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [replicated_job]}}},
            }
        ]
    metadata: dict[str, Any] = {"name": spec.name, "namespace": spec.namespace}
    if spec.labels:
        metadata["labels"] = dict(spec.labels)
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": metadata, "spec": job_spec}


def validate_manifest(manifest: dict[str, Any]) -> None:
    """Validate against ``TrainerV1alpha1TrainJob`` of kubeflow-trainer-api. Unknown fields are rejected, as is any
    key lost in the model's round trip (``from_dict`` then ``to_dict``); the ValueError names the path."""
    from kubeflow_trainer_api.models import TrainerV1alpha1TrainJob

    if manifest.get("apiVersion") != API_VERSION or manifest.get("kind") != KIND:
        found = f"{manifest.get('apiVersion')!r} and {manifest.get('kind')!r}"
        raise ValueError(f"TrainJob manifest: expected apiVersion {API_VERSION} and kind {KIND}, got {found}")
    if not (manifest.get("metadata") or {}).get("name"):
        problem = "metadata.name: required"
    elif "spec" not in manifest:
        problem = "spec: required"
    else:
        problem = model_problem(manifest, TrainerV1alpha1TrainJob)
    if problem is not None:
        raise ValueError(f"TrainJob manifest: {problem}")


def run_trainjob(
    spec: TrainJobSpec,
    api_client: Any = None,
    poll_seconds: float = 10,
    timeout_seconds: float | None = None,
) -> TrainJobResult:
    """Create the TrainJob unless it exists, wait for Complete or Failed and return how it ended.

    Raises RuntimeError with the job's message if it failed, TimeoutError (after deleting the job) when
    ``timeout_seconds`` pass. SIGTERM meanwhile deletes the job (propagationPolicy Foreground) and exits with 143.
    ``api_client``: a ``kubernetes.client.ApiClient``; by default in-cluster config, else the kubeconfig.
    """
    manifest = build_manifest(spec)
    validate_manifest(manifest)
    owns_client = api_client is None
    if owns_client:
        api_client = _default_api_client()
    job = _RemoteTrainJob(api_client, spec.namespace, spec.name)
    started = time.monotonic()
    try:
        with on_sigterm(_delete_and_exit(job), "delete the job"):
            created = job.create_unless_exists(manifest, poll_seconds)
            return _wait(job, created, started, poll_seconds, timeout_seconds)
    finally:
        if owns_client:
            api_client.close()


class _RemoteTrainJob:
    """One TrainJob on the API server, through the official kubernetes client."""

    def __init__(self, api_client: Any, namespace: str, name: str) -> None:
        from kubernetes import client

        self._api = client.CustomObjectsApi(api_client)
        self.namespace = namespace
        self.name = name

    def __str__(self) -> str:
        return f"TrainJob {self.namespace}/{self.name}"

    def get(self) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        try:
            return self._api.get_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, self.name, _request_timeout=_REQUEST_TIMEOUT_SECONDS
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def create_unless_exists(self, manifest: dict[str, Any], poll_seconds: float) -> bool:
        """True if this call created the job; False if it was there already (retried pod, or lost a race).

        A job that exists but has Failed belongs to an earlier attempt of the task: it is deleted and created
        again, so the KFP retry trains on (from the checkpoints that attempt left) instead of failing at once."""
        from kubernetes.client.exceptions import ApiException

        existing = self.get()
        if existing is not None and _state_of(existing)[0] == FAILED:
            print(f"{self} failed in an earlier attempt{_detail(_state_of(existing)[1], FAILED)}: replacing it")
            self.delete()
            self._wait_until_gone(poll_seconds)
        elif existing is not None:
            print(f"{self} exists already: resuming")
            return False
        try:
            self._api.create_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, manifest, _request_timeout=_REQUEST_TIMEOUT_SECONDS
            )
        except ApiException as exc:
            if exc.status == 409:
                print(f"{self} was created meanwhile: resuming")
                return False
            raise
        print(f"{self} created")
        return True

    def _wait_until_gone(self, poll_seconds: float, timeout_seconds: float = 600) -> None:
        deadline = time.monotonic() + timeout_seconds
        while self.get() is not None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self} was still being deleted after {timeout_seconds} s")
            time.sleep(poll_seconds)

    def delete(self) -> None:
        """Delete the job and, in the foreground, its JobSet and Pods; a job already gone is fine."""
        from kubernetes.client.exceptions import ApiException

        try:
            self._api.delete_namespaced_custom_object(
                GROUP,
                VERSION,
                self.namespace,
                PLURAL,
                self.name,
                propagation_policy="Foreground",
                _request_timeout=_REQUEST_TIMEOUT_SECONDS,
            )
        except ApiException as exc:
            if exc.status != 404:
                raise
        print(f"{self} deleted")


def _wait(
    job: _RemoteTrainJob, created: bool, started: float, poll_seconds: float, timeout_seconds: float | None
) -> TrainJobResult:
    last_state = None
    consecutive_errors = 0
    while True:
        try:
            current = job.get()
        except Exception as exc:
            consecutive_errors += 1
            if not _is_transient(exc) or consecutive_errors >= _MAX_CONSECUTIVE_POLL_ERRORS:
                raise
            print(f"{job}: reading its status failed ({exc.__class__.__name__}), retrying")
        else:
            consecutive_errors = 0
            if current is None:
                raise RuntimeError(f"{job} disappeared while waiting for it (deleted by someone else?)")
            state, conditions = _state_of(current)
            if state != last_state:
                print(f"{job}: {state}{_detail(conditions, state)}")
                last_state = state
            if state == COMPLETE:
                return TrainJobResult(job.name, job.namespace, state, conditions, time.monotonic() - started, created)
            if state == FAILED:
                raise RuntimeError(f"{job} failed{_detail(conditions, FAILED)}")
        if timeout_seconds is not None and time.monotonic() - started >= timeout_seconds:
            job.delete()
            raise TimeoutError(f"{job} did not finish within {timeout_seconds} s; deleted it")
        time.sleep(poll_seconds)


def _state_of(trainjob: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    status = trainjob.get("status") or {}
    conditions = list(status.get("conditions") or [])
    true_types = {condition.get("type") for condition in conditions if condition.get("status") == "True"}
    for state in (FAILED, COMPLETE, SUSPENDED):
        if state in true_types:
            return state, conditions
    if any((child.get("active") or 0) > 0 for child in status.get("jobsStatus") or []):
        return RUNNING, conditions
    return CREATED, conditions


def _detail(conditions: list[dict[str, Any]], condition_type: str) -> str:
    for condition in conditions:
        if condition.get("type") == condition_type:
            parts = [condition.get("reason"), condition.get("message")]
            return ": " + ": ".join(part for part in parts if part) if any(parts) else ""
    return ""


def _is_transient(exc: Exception) -> bool:
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    if isinstance(exc, ApiException):
        return exc.status in _TRANSIENT_STATUSES
    return isinstance(exc, HTTPError | OSError)


def _delete_and_exit(job: _RemoteTrainJob) -> Callable[[int], None]:
    """The SIGTERM cleanup (a cancelled KFP run): delete the job, then exit 128 + the signal."""

    def cleanup(signum: int) -> None:
        print(f"SIGTERM: deleting {job}")
        try:
            job.delete()
        except Exception as exc:  # still exit: the pod is going away either way
            print(f"could not delete {job}: {exc}")
        raise SystemExit(128 + signum)

    return cleanup


def _default_api_client() -> Any:
    from kubernetes import client, config

    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException:
        config.load_kube_config(client_configuration=configuration)
    return client.ApiClient(configuration)


def _slug(text: str, limit: int) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit].strip("-")


def _check_label(key: str, value: str) -> None:
    prefix, _, name = key.rpartition("/")
    valid_prefix = not prefix or (len(prefix) <= 253 and _DNS_SUBDOMAIN.fullmatch(prefix))
    if not (valid_prefix and len(name) <= 63 and _LABEL_NAME.fullmatch(name)):
        raise ValueError(f"label key {key!r} is not a valid Kubernetes label key")
    if len(value) > 63 or (value and not _LABEL_NAME.fullmatch(value)):
        raise ValueError(f"label {key}: value {value!r} is not a valid Kubernetes label value (at most 63 characters)")
