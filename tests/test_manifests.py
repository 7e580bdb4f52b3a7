"""The cluster manifests: every kustomization under manifests/ renders offline (kubectl kustomize) and each document
validates strictly (built-in kinds against the Kubernetes 1.37 schemas, Kubeflow Trainer kinds against the official
kubeflow-trainer-api models); the runner's RBAC is exactly what the TrainJob launcher calls; no manifest holds a
credential; Triton, the Trainer runtime and the GPU examples say what the README claims; the multi-user (profile)
overlay puts each object where a Kubeflow profile needs it and its NetworkPolicies and Istio AuthorizationPolicies
admit exactly the callers the runs need (evaluated offline against Kubeflow's own policies); checkov finds nothing
beyond manifests/checkov-accepted.yaml. No cluster runs here.

Over 500 lines on purpose: one rendering of every kustomization, shared by the checks below.
"""

from __future__ import annotations

import copy
import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes_validate import ValidationError
from support.manifests import (
    CHECKOV,
    CHECKOV_TARGET,
    KUBECTL,
    MANIFESTS,
    REPO,
    checkov,
    documents,
    istio_allows,
    kustomization_dirs,
    kustomize,
    literal_credentials,
    namespace_labels,
    network_policies_admit,
    selector_matches,
    validate_document,
)

from kfp_mlops.components.shared import triton_access
from kfp_mlops.components.shared.config import DeployConfig, TrainConfig
from kfp_mlops.components.shared.storage import CREDENTIAL_SECRET_KEYS, STORAGE_SECRET
from kfp_mlops.components.train import trainjob
from kfp_mlops.pipelines.train_and_deploy import FEAST_SECRET_KEYS, GPU_TOLERATION

pytestmark = pytest.mark.timeout(120)

KUSTOMIZATIONS = kustomization_dirs()
SERVING_NAMESPACE = "kfp-mlops-serving"
PIPELINES_NAMESPACE = "kubeflow"
PROFILE = Path("overlays/profile")
PROFILE_NAMESPACE = "team-ml"  # the profile overlay's default (overlays/profile/namespace/kustomization.yaml)
DEFAULT_GPU_TOLERATION = GPU_TOLERATION  # the pipeline's default toleration
GPU_RESOURCE = "nvidia.com/gpu"
# Triton core's S3 path parser (src/filesystem/implementations/s3.h): a custom endpoint needs host AND port.
TRITON_S3_ENDPOINT_PATH = re.compile(
    r"s3://(http://|https://|)([0-9a-zA-Z\-.]+):([0-9]+)/([0-9a-z.\-]+)(((/[0-9a-zA-Z.\-_]+)*)?)"
)
TRITON_STORAGE_SECRET = "kfp-mlops-triton-storage"  # Triton's read-only credentials (never STORAGE_SECRET)
TRITON_CLIENT_LABEL = {"kfp-mlops.io/triton-client": "true"}  # namespaces the operator admits to inference
TRITON_METRICS_LABEL = {"kfp-mlops.io/triton-metrics": "true"}  # namespaces admitted to the metrics port
MLFLOW_SECRET = "kfp-mlops-mlflow"  # the tracking server's backend store URI and S3 credentials
TRACKING_SECRET = "kfp-mlops-tracking"  # how the steps reach the server (mlflow-skinny reads these variables)
TRACKING_SECRET_KEYS = {"MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"}
MLFLOW_PORT = 5000  # the tracking server's Service port (in-cluster URL http://mlflow.<namespace>:5000)
ACCEPTED = yaml.safe_load((MANIFESTS / "checkov-accepted.yaml").read_text())
README = (MANIFESTS / "README.md").read_text()


@pytest.fixture(scope="module")
def rendered() -> dict[Path, list[dict[str, Any]]]:
    """Every kustomization rendered once: directory (relative to manifests/) -> its documents."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        texts = dict(zip(KUSTOMIZATIONS, pool.map(lambda d: kustomize(MANIFESTS / d), KUSTOMIZATIONS), strict=True))
    return {directory: documents(text) for directory, text in texts.items()}


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def triton_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (container,) = one(docs, "Deployment", "triton")["spec"]["template"]["spec"]["containers"]
    return container


def gpu_requests(pod_spec: dict[str, Any]) -> list[str]:
    return [
        f"{container['name']}.{part}"
        for container in pod_spec.get("containers", []) + pod_spec.get("initContainers", [])
        for part in ("requests", "limits")
        if GPU_RESOURCE in (container.get("resources") or {}).get(part, {})
    ]


# --- every kustomization builds and validates ---------------------------------------------------------------------


def test_every_manifest_file_is_named_by_the_kustomization_of_its_directory():
    """Nothing under manifests/ is silently left out (optional patches are named in a comment); examples/ and
    secrets/ hold no Kubernetes objects and no kustomization reaches them."""
    assert {
        Path("."), Path("overlays/cpu"), PROFILE, PROFILE / "namespace", Path("triton/gpu"), Path("triton/cpu"),
        Path("trainer"),
    } <= set(KUSTOMIZATIONS)  # fmt: skip
    for path in [*MANIFESTS.rglob("*.yaml"), *MANIFESTS.rglob("*.env")]:
        relative = path.relative_to(MANIFESTS)
        if relative.parts[0] in {"examples", "secrets"} or path.name in {"kustomization.yaml", "checkov-accepted.yaml"}:
            continue
        kustomization = path.parent / "kustomization.yaml"
        assert kustomization.exists() and re.search(rf"\b{re.escape(path.name)}\b", kustomization.read_text()), relative
    for kustomization in MANIFESTS.rglob("kustomization.yaml"):
        assert not re.search(r"examples/|secrets/", re.sub(r"#.*", "", kustomization.read_text())), kustomization


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=str)
def test_kustomization_builds_and_every_document_validates_strictly(rendered, directory):
    docs = rendered[directory]
    assert docs, f"{directory} renders nothing"
    for document in docs:
        validate_document(document)
        if document["kind"] not in {"Namespace", "ClusterTrainingRuntime"}:
            namespaces = {PIPELINES_NAMESPACE, SERVING_NAMESPACE, PROFILE_NAMESPACE}  # which one: see profile tests
            assert document["metadata"].get("namespace") in namespaces, document


def test_strict_validation_rejects_a_misspelled_field(rendered):
    deployment = copy.deepcopy(one(rendered[Path("triton/gpu")], "Deployment", "triton"))
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readynessProbe"] = container.pop("readinessProbe")
    with pytest.raises(ValidationError, match="readynessProbe"):
        validate_document(deployment)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda spec: spec["template"]["spec"].update(replicatedJob=[]),
            r"spec\.template\.spec\.replicatedJob: unknown",
        ),
        (
            lambda spec: spec["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"][
                "containers"
            ][0].update(volumeMount=[]),
            r"containers\[0\]\.volumeMount: unknown field",
        ),
        (lambda spec: spec["mlPolicy"].update(numNodes="2"), r"spec\.mlPolicy\.numNodes: Input should be a valid int"),
    ],
    ids=["misspelled-jobset-field", "misspelled-container-field", "wrong-type"],
)
def test_trainer_runtime_validation_rejects_what_the_crd_would(rendered, mutate, message):
    runtime = copy.deepcopy(one(rendered[Path("trainer")], "ClusterTrainingRuntime", "torch-distributed"))
    mutate(runtime["spec"])
    with pytest.raises(ValueError, match=message):
        validate_document(runtime)


def test_a_custom_kind_without_a_model_is_refused_rather_than_waved_through():
    with pytest.raises(ValueError, match="no schema"):
        validate_document({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}})


# --- runner RBAC --------------------------------------------------------------------------------------------------


def trainjob_verbs() -> set[str]:
    """The verbs components/train/trainjob.py uses on trainjobs, read from its kubernetes client calls."""
    source = Path(trainjob.__file__).read_text()
    calls = set(re.findall(r"self\._api\.(\w+?)_namespaced_custom_object\(", source))
    verb = {"get": "get", "create": "create", "delete": "delete", "list": "list", "patch": "patch", "replace": "update"}
    return {verb[call] for call in calls}


def test_runner_role_grants_exactly_what_the_trainjob_launcher_calls(rendered):
    docs = rendered[Path("pipelines")]
    assert trainjob_verbs() == {"get", "create", "delete"}
    role = one(docs, "Role", "kfp-mlops-trainjob-launcher")
    (rule,) = role["rules"]
    assert set(rule) == {"apiGroups", "resources", "verbs"}
    assert (rule["apiGroups"], rule["resources"]) == ([trainjob.GROUP], [trainjob.PLURAL])
    assert sorted(rule["verbs"]) == sorted(trainjob_verbs())
    binding = one(docs, "RoleBinding", "kfp-mlops-trainjob-launcher")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "kfp-mlops-runner", "namespace": PIPELINES_NAMESPACE}
    ]
    one(docs, "ServiceAccount", "kfp-mlops-runner")


def test_runner_rbac_is_namespaced_without_wildcards_and_reads_no_secret_beyond_kfps_artifact_store(rendered):
    all_docs = [d for docs in rendered.values() for d in docs]
    assert not [d for d in all_docs if d["kind"] in {"ClusterRole", "ClusterRoleBinding"}]
    roles = [d for d in rendered[Path("pipelines")] if d["kind"] == "Role"]
    assert {r["metadata"]["name"] for r in roles} == {"kfp-mlops-trainjob-launcher", "kfp-mlops-kfp-executor"}
    for role in roles:
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs", "resourceNames"):
                assert "*" not in rule.get(field, []), f"{role['metadata']['name']}: wildcard in {field}"
            assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"])
            if "secrets" in rule["resources"]:  # KFP's launcher reads its artifact-store Secret, by name, nothing else
                assert role["metadata"]["name"] == "kfp-mlops-kfp-executor"
                assert rule == {
                    "apiGroups": [""], "resources": ["secrets"],
                    "resourceNames": ["mlpipeline-minio-artifact"], "verbs": ["get"],
                }  # fmt: skip
    trainjob_role = one(rendered[Path("pipelines")], "Role", "kfp-mlops-trainjob-launcher")
    assert all("secrets" not in rule["resources"] for rule in trainjob_role["rules"])


def test_pipeline_namespace_is_changed_in_one_place_and_bindings_follow(tmp_path):
    copied = tmp_path / "manifests"
    shutil.copytree(MANIFESTS, copied)
    kustomization = copied / "pipelines" / "kustomization.yaml"
    kustomization.write_text(kustomization.read_text().replace("namespace: kubeflow", "namespace: team-a"))
    docs = documents(kustomize(copied))
    namespaces = {d["metadata"].get("namespace") for d in docs}
    assert namespaces == {None, "team-a", SERVING_NAMESPACE}
    for binding in (d for d in docs if d["kind"] == "RoleBinding"):
        assert binding["metadata"]["namespace"] == "team-a"
        assert {s["namespace"] for s in binding["subjects"]} == {"team-a"}
    assert triton_lockdown_problems(docs, "team-a") == []  # Triton admits model control from there


# --- no literal credentials ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "document",
    [
        {"kind": "Secret", "metadata": {"name": "s"}, "stringData": {"AWS_SECRET_ACCESS_KEY": "x"}},
        {"kind": "Secret", "metadata": {"name": "s"}, "data": {"password": "eA=="}},
        {"kind": "Pod", "spec": {"containers": [{"env": [{"name": "AWS_SECRET_ACCESS_KEY", "value": "x"}]}]}},
        {"kind": "Pod", "spec": {"containers": [{"env": [{"name": "FEAST_REDIS_CONNECTION_STRING", "value": "r:1"}]}]}},
        {"kind": "Pod", "spec": {"containers": [{"env": [{"name": "DB", "value": "postgresql://u:p@h:5432/d"}]}]}},
        {"kind": "ConfigMap", "data": {"url": "postgresql+psycopg://feast:pw@host:5432/feast"}},
        {"kind": "Deployment", "spec": {"args": ["--redis=host:6379,password=hunter2"]}},
    ],
    ids=["secret-stringdata", "secret-data", "env-secret", "env-connection-string", "env-url", "configmap-url", "arg"],
)
def test_credential_scan_finds_a_literal_credential_wherever_it_is(document):
    assert literal_credentials(document)


def test_no_rendered_manifest_or_example_holds_a_literal_credential(rendered):
    found = [f"{d}: {finding}" for d, docs in rendered.items() for doc in docs for finding in literal_credentials(doc)]
    for path in (MANIFESTS / "examples").glob("*.yaml"):
        found += [
            f"{path.name}: {finding}" for doc in documents(path.read_text()) for finding in literal_credentials(doc)
        ]
    assert not [d for docs in rendered.values() for d in docs if d["kind"] == "Secret"]
    assert not found


def _secret_references(docs: list[dict[str, Any]]) -> dict[str, set[str]]:
    """Secret name -> keys the documents read from it (secretKeyRef env and secret volumes)."""
    references: dict[str, set[str]] = {}

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "secretKeyRef" in node:
                references.setdefault(node["secretKeyRef"]["name"], set()).add(node["secretKeyRef"]["key"])
            if "secret" in node and "secretName" in node["secret"]:
                keys = {item["key"] for item in node["secret"].get("items", [])}
                references.setdefault(node["secret"]["secretName"], set()).update(keys)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(docs)
    return references


def _template_keys(path: Path) -> dict[str, str]:
    """The Secret kubectl would create from a template (offline, --dry-run=client): key -> value."""
    result = subprocess.run(
        [str(KUBECTL), "create", "secret", "generic", "x", f"--from-env-file={path}", "--dry-run=client", "-o", "yaml"],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    return yaml.safe_load(result.stdout).get("data") or {}


def test_secret_templates_document_every_key_the_manifests_and_pipeline_read_and_hold_no_value(rendered):
    templates = {p.name.removesuffix(".env.example"): _template_keys(p) for p in (MANIFESTS / "secrets").iterdir()}
    assert set(templates) == {
        "kfp-mlops-storage", "kfp-mlops-feast", "kfp-mlops-feast-stores", TRITON_STORAGE_SECRET,
        triton_access.CONTROL_SECRET, MLFLOW_SECRET, TRACKING_SECRET,
    }  # fmt: skip
    for name, keys in templates.items():
        assert keys and not any(keys.values()), f"{name}: a template holds a value"
        assert re.search(rf"create secret generic {name} ", README), f"README does not show how to create {name}"
    for name, keys in _secret_references(
        rendered[Path(".")] + rendered[Path("overlays/cpu")] + rendered[PROFILE]
    ).items():
        assert keys <= set(templates[name]), f"{name}: manifests read {keys - set(templates[name])} not in template"
    assert set(CREDENTIAL_SECRET_KEYS) | {"AWS_DEFAULT_REGION"} == set(templates["kfp-mlops-storage"])
    assert set(FEAST_SECRET_KEYS.values()) == set(templates["kfp-mlops-feast"])
    assert set(templates[triton_access.CONTROL_SECRET]) == {triton_access.CONTROL_SECRET_KEY}
    assert set(templates[TRITON_STORAGE_SECRET]) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"}
    assert set(templates[TRACKING_SECRET]) == TRACKING_SECRET_KEYS
    assert set(templates[MLFLOW_SECRET]) == set(_secret_references(rendered[Path(".")])[MLFLOW_SECRET])


# --- Triton -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", ["triton/gpu", "triton/cpu", ".", "overlays/cpu"])
def test_triton_runs_explicit_model_control_from_the_configured_repository_with_health_probes(rendered, overlay):
    docs = rendered[Path(overlay)]
    deployment = one(docs, "Deployment", "triton")
    assert deployment["metadata"]["namespace"] == SERVING_NAMESPACE
    assert "replicas" not in deployment["spec"], "the HorizontalPodAutoscaler owns the replica count"
    container = triton_container(docs)
    assert re.fullmatch(r"nvcr\.io/nvidia/tritonserver:24\.10-py3", container["image"])  # Triton 2.51.0
    args = container["args"]
    assert args[0] == "tritonserver"
    assert {"--model-control-mode=explicit", "--load-model=*", "--http-port=8000", "--grpc-port=8001"} <= set(args)
    assert "--model-repository=$(MODEL_REPOSITORY)" in args
    (source,) = [e["valueFrom"]["configMapKeyRef"] for e in container["env"] if e["name"] == "MODEL_REPOSITORY"]
    repository = one(docs, "ConfigMap", source["name"])["data"][source["key"]]
    env_file = (MANIFESTS / "triton" / "base" / "model-repository.env").read_text()
    assert f"MODEL_REPOSITORY={repository}" in env_file.splitlines()
    assert TRITON_S3_ENDPOINT_PATH.fullmatch(repository), f"Triton would not read {repository} as host:port/bucket"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002}
    probe_paths = {kind: container[kind]["httpGet"] for kind in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert {kind: (p["path"], ports[p["port"]]) for kind, p in probe_paths.items()} == {
        "startupProbe": ("/v2/health/live", 8000),
        "livenessProbe": ("/v2/health/live", 8000),
        "readinessProbe": ("/v2/health/ready", 8000),
    }
    secrets = {
        e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "secretKeyRef" in e.get("valueFrom", {})
    }
    storage = {name: ref for name, ref in secrets.items() if name.startswith("AWS_")}
    assert {ref["name"] for ref in storage.values()} == {TRITON_STORAGE_SECRET}
    assert set(storage) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"}
    assert set(secrets) - set(storage) == {triton_access.CONTROL_ENV}


@pytest.mark.parametrize("overlay", ["triton/gpu", "triton/cpu"])
def test_triton_pod_is_non_root_and_restricted(rendered, overlay):
    docs = rendered[Path(overlay)]
    pod = one(docs, "Deployment", "triton")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] > 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    assert one(docs, "ServiceAccount", pod["serviceAccountName"])["automountServiceAccountToken"] is False
    context = triton_container(docs)["securityContext"]
    assert context == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    mounts = {m["mountPath"]: m["name"] for m in triton_container(docs)["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]], "Triton copies remote models to /tmp: a writable emptyDir"
    namespace = one(docs, "Namespace", SERVING_NAMESPACE)
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    resources = triton_container(docs)["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"]) and {"cpu", "memory"} <= set(resources["limits"])


@pytest.mark.parametrize("overlay", ["triton/gpu", "triton/cpu"])
def test_triton_services_and_autoscaler(rendered, overlay):
    docs = rendered[Path(overlay)]
    service = one(docs, "Service", "triton")
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {"http": 8000, "grpc": 8001, "metrics": 8002}
    pods = one(docs, "Service", "triton-pods")  # every pod's address, for per-pod model loads
    assert pods["spec"]["clusterIP"] == "None" and pods["spec"]["publishNotReadyAddresses"] is True
    labels = one(docs, "Deployment", "triton")["spec"]["template"]["metadata"]["labels"]
    for svc in (service, pods):
        assert svc["spec"]["selector"].items() <= labels.items()
    hpa = one(docs, "HorizontalPodAutoscaler", "triton")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "triton"}
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    assert "--load-model=*" in triton_container(docs)["args"], "scaling out relies on new pods loading the repository"
    policy = one(docs, "NetworkPolicy", "triton")
    assert {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]} == {8000, 8001, 8002}


# --- Triton locked down: model control needs the key, the network admits the runs' namespace, storage read-only ---

TRITON_OVERLAYS = {  # kustomization -> the namespace of the runs it admits to model control
    Path("triton/gpu"): PIPELINES_NAMESPACE,
    Path("triton/cpu"): PIPELINES_NAMESPACE,
    Path("."): PIPELINES_NAMESPACE,
    Path("overlays/cpu"): PIPELINES_NAMESPACE,
    PROFILE: PROFILE_NAMESPACE,
}
TRITON_HTTP_PORT, TRITON_METRICS_PORT = 8000, 8002


def _secret_names(node: Any) -> set[str]:
    """Every Secret a pod spec reads: secretKeyRef, envFrom secretRef, secret volumes and projected secrets."""
    found: set[str] = set()
    if isinstance(node, dict):
        for key in ("secretKeyRef", "secretRef"):
            if isinstance(node.get(key), dict):
                found.add(node[key].get("name"))
        if isinstance(node.get("secret"), dict):
            found.add(node["secret"].get("secretName") or node["secret"].get("name"))
        for value in node.values():
            found |= _secret_names(value)
    elif isinstance(node, list):
        for value in node:
            found |= _secret_names(value)
    return found


def triton_lockdown_problems(docs: list[dict[str, Any]], runs_namespace: str) -> list[str]:
    """What breaks the lock-down: Triton's model control restricted to the key (as restriction_args writes it, with
    the key expanded by Kubernetes from the required Secret CONTROL_SECRET), its storage credentials its own (never
    the pipelines' read-write Secret), and a NetworkPolicy that admits 8000/8001 only from the runs' namespace and
    the namespaces the operator labels, and 8002 only from those labelled for metrics."""
    problems = []
    container = triton_container(docs)
    args = container.get("args", [])
    expected = triton_access.restriction_args(f"$({triton_access.CONTROL_ENV})")
    for arg in expected:
        if arg not in args:
            problems.append(f"lockdown: Triton's args lack {arg}")
    restricted = [a for a in args if a.startswith(("--grpc-restricted-protocol", "--http-restricted-api"))]
    if extra := sorted(set(restricted) - set(expected)):
        problems.append(f"lockdown: Triton's args restrict other than restriction_args would: {extra}")
    env = {e["name"]: e for e in container.get("env", [])}
    control = (env.get(triton_access.CONTROL_ENV) or {}).get("valueFrom", {}).get("secretKeyRef")
    if control is None:
        problems.append(f"lockdown: Triton's env {triton_access.CONTROL_ENV} does not come from a Secret")
    else:
        wanted = (triton_access.CONTROL_SECRET, triton_access.CONTROL_SECRET_KEY)
        if (control.get("name"), control.get("key")) != wanted:
            problems.append(f"lockdown: Triton's key comes from {control.get('name')}/{control.get('key')}, not "
                            f"{triton_access.CONTROL_SECRET}/{triton_access.CONTROL_SECRET_KEY}")  # fmt: skip
        if control.get("optional"):
            problems.append("lockdown: Triton's key is optional: without the Secret Kubernetes leaves "
                            f"$({triton_access.CONTROL_ENV}) unexpanded, a key anyone can read")  # fmt: skip
    pod = one(docs, "Deployment", "triton")["spec"]["template"]["spec"]
    secrets = _secret_names(pod)
    if STORAGE_SECRET in secrets:
        problems.append(f"lockdown: Triton reads the pipelines' read-write Secret {STORAGE_SECRET}")
    if secrets - {TRITON_STORAGE_SECRET, triton_access.CONTROL_SECRET}:
        problems.append(f"lockdown: Triton reads Secrets {sorted(secrets)}")
    labels = _pod_labels(docs, "triton")
    if not any(
        p["kind"] == "NetworkPolicy" and p["metadata"]["namespace"] == SERVING_NAMESPACE
        and "Ingress" in p["spec"].get("policyTypes", ["Ingress"])
        and selector_matches(p["spec"]["podSelector"], labels)
        for p in docs
    ):  # fmt: skip
        problems.append("lockdown: no NetworkPolicy selects Triton's pods")
    callers = {  # name: (namespace, its labels, the ports it must reach)
        f"a pipeline pod of {runs_namespace}": (runs_namespace, {}, {TRITON_HTTP_PORT, TRITON_GRPC_PORT}),
        "a pod of a labelled client namespace": ("app", TRITON_CLIENT_LABEL, {TRITON_HTTP_PORT, TRITON_GRPC_PORT}),
        "a pod of the metrics namespace": ("monitoring", TRITON_METRICS_LABEL, {TRITON_METRICS_PORT}),
        "a pod of another namespace": ("elsewhere", {}, set()),
    }
    for name, (namespace, namespace_label, reaches) in callers.items():
        for port in (TRITON_HTTP_PORT, TRITON_GRPC_PORT, TRITON_METRICS_PORT, 8003):
            admitted = network_policies_admit(
                docs, to_namespace=SERVING_NAMESPACE, to_labels=labels, port=port, from_namespace=namespace,
                from_namespace_labels=namespace_labels(namespace, namespace_label), from_labels={"app": "x"},
            )  # fmt: skip
            if admitted != (port in reaches):
                problems.append(f"lockdown: NetworkPolicy {'admits' if admitted else 'refuses'} {name} on {port}")
    return problems


@pytest.mark.parametrize("overlay", sorted(TRITON_OVERLAYS), ids=str)
def test_triton_is_locked_down_key_network_and_read_only_storage(rendered, overlay):
    assert triton_lockdown_problems(rendered[overlay], TRITON_OVERLAYS[overlay]) == []


def _triton_env(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return triton_container(docs)["env"]


def _env_ref(docs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    (ref,) = [e["valueFrom"]["secretKeyRef"] for e in _triton_env(docs) if e["name"] == name]
    return ref


def _triton_ingress(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return one(docs, "NetworkPolicy", "triton")["spec"]["ingress"]


@pytest.mark.parametrize(
    ("mutate", "problem"),
    [
        (lambda docs: triton_container(docs)["args"].remove(
            triton_access.restriction_args(f"$({triton_access.CONTROL_ENV})")[1]),
         r"args lack --http-restricted-api=model-repository:kfp-mlops-control-key="),
        (lambda docs: triton_container(docs).update(args=[
            a.replace(f"$({triton_access.CONTROL_ENV})", "changeme") for a in triton_container(docs)["args"]]),
         r"args lack --grpc-restricted-protocol"),
        (lambda docs: triton_container(docs)["args"].append("--http-restricted-api=model-config:k=v"),
         r"restrict other than restriction_args"),
        (lambda docs: _env_ref(docs, triton_access.CONTROL_ENV).update(optional=True), r"key is optional"),
        (lambda docs: _env_ref(docs, triton_access.CONTROL_ENV).update(name="other"), r"key comes from other/"),
        (lambda docs: triton_container(docs).update(env=[
            e for e in _triton_env(docs) if e["name"] != triton_access.CONTROL_ENV]),
         r"KFP_MLOPS_TRITON_CONTROL_KEY does not come from a Secret"),
        (lambda docs: _env_ref(docs, "AWS_SECRET_ACCESS_KEY").update(name=STORAGE_SECRET),
         r"reads the pipelines' read-write Secret kfp-mlops-storage"),
        (lambda docs: triton_container(docs).update(envFrom=[{"secretRef": {"name": STORAGE_SECRET}}]),
         r"reads the pipelines' read-write Secret kfp-mlops-storage"),
        (lambda docs: one(docs, "Deployment", "triton")["spec"]["template"]["spec"]["volumes"].append(
            {"name": "aws", "secret": {"secretName": STORAGE_SECRET}}),
         r"reads the pipelines' read-write Secret kfp-mlops-storage"),
        (lambda docs: _triton_ingress(docs)[0].update({"from": [{"namespaceSelector": {}}]}),
         r"NetworkPolicy admits a pod of another namespace on 8001"),
        (lambda docs: _triton_ingress(docs).pop(0),
         rf"NetworkPolicy refuses a pipeline pod of {PIPELINES_NAMESPACE} on 8001"),
        (lambda docs: _triton_ingress(docs)[0]["from"][0]["namespaceSelector"]["matchExpressions"][0].update(
            values=["default"]), rf"NetworkPolicy refuses a pipeline pod of {PIPELINES_NAMESPACE} on 8000"),
        (lambda docs: _triton_ingress(docs)[1]["ports"].append({"protocol": "TCP", "port": 8002}),
         r"NetworkPolicy admits a pod of a labelled client namespace on 8002"),
        (lambda docs: _triton_ingress(docs)[2].pop("ports"),
         r"NetworkPolicy admits a pod of the metrics namespace on 8001"),
        (lambda docs: one(docs, "NetworkPolicy", "triton")["spec"].update(
            podSelector={"matchLabels": {"app.kubernetes.io/name": "tritonserver"}}),
         r"no NetworkPolicy selects Triton's pods"),
    ],
    ids=["no-http-restriction", "literal-key", "other-restriction", "optional-key", "key-other-secret",
         "key-not-from-secret", "read-write-secret-env", "read-write-secret-envfrom", "read-write-secret-volume",
         "network-any-namespace",
         "network-no-runs-rule", "network-other-runs-namespace", "network-clients-metrics", "network-metrics-any-port",
         "network-selects-nothing"],
)  # fmt: skip
def test_each_lockdown_rule_fails_when_the_manifests_break_it(rendered, mutate, problem):
    docs = copy.deepcopy(rendered[Path(".")])
    assert triton_lockdown_problems(docs, PIPELINES_NAMESPACE) == []
    mutate(docs)
    problems = triton_lockdown_problems(docs, PIPELINES_NAMESPACE)
    assert any(re.search(problem, p) for p in problems), problems


def test_the_runs_namespace_triton_admits_follows_where_the_runs_are(rendered):
    """The default is written once in triton/base; the overlays replace it from where the runner account is."""
    assert triton_lockdown_problems(rendered[PROFILE], PIPELINES_NAMESPACE) != []  # the profile's is team-ml
    policy = one(rendered[PROFILE], "NetworkPolicy", "triton")
    assert policy["spec"]["ingress"][0]["from"][0]["namespaceSelector"]["matchExpressions"][0]["values"] == [
        one(rendered[PROFILE], "ServiceAccount", "kfp-mlops-runner")["metadata"]["namespace"]
    ]


# The example policies for Triton's read-only credentials (manifests/examples/): what each grants.
S3_READ_ACTIONS = {"s3:GetObject", "s3:ListBucket", "s3:GetBucketLocation"}
S3_WRITE_ACTIONS = {"s3:PutObject", "s3:DeleteObject", "s3:DeleteObjectVersion", "s3:AbortMultipartUpload"}
GCS_READ_ONLY_ROLES = {"roles/storage.objectViewer", "roles/storage.legacyObjectReader"}


def s3_policy_problems(policy: dict[str, Any]) -> list[str]:
    """An S3 policy for Triton: every Allow grants only read actions (no wildcard), on the model repository's
    prefix; a Deny may name write actions."""
    problems = []
    for statement in policy["Statement"]:
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        if statement["Effect"] == "Allow":
            if not set(actions) <= S3_READ_ACTIONS:
                problems.append(f"{statement.get('Sid')}: allows {sorted(set(actions) - S3_READ_ACTIONS)}")
            for resource in resources:
                bucket, _, key = resource.removeprefix("arn:aws:s3:::").partition("/")
                condition = statement.get("Condition", {})
                prefixes = condition.get("StringLike", {}).get("s3:prefix", [])
                # on the bucket: listing under the prefix, or HeadBucket (no prefix at all), which Triton's S3
                # client sends when it starts (tests/test_triton_lockdown.py)
                scoped = key.startswith("kfp-mlops-models/") if key else (prefixes and all(
                    p.startswith("kfp-mlops-models") for p in prefixes)) or condition == {
                    "Null": {"s3:prefix": "true"}}  # fmt: skip
                if not scoped:
                    problems.append(f"{statement.get('Sid')}: {resource} reaches beyond kfp-mlops-models/")
    denied = {a for s in policy["Statement"] if s["Effect"] == "Deny" for a in s["Action"]}
    return problems + ([] if not denied or S3_WRITE_ACTIONS <= denied else [f"denies only {sorted(denied)}"])


def _examples(pattern: str) -> list[Path]:
    found = sorted((MANIFESTS / "examples").glob(pattern))
    assert found, pattern
    return found


def test_triton_read_only_s3_policies_grant_reads_of_the_model_repository_only():
    for path in _examples("triton-read-only-s3-*.json"):
        assert s3_policy_problems(json.loads(path.read_text())) == [], path.name


@pytest.mark.parametrize(
    ("mutate", "problem"),
    [
        (lambda p: p["Statement"][0]["Action"].append("s3:PutObject"), r"allows \['s3:PutObject'\]"),
        (lambda p: p["Statement"][0].update(Action="s3:*"), r"allows \['s3:\*'\]"),
        (lambda p: p["Statement"][0].update(Resource=["arn:aws:s3:::mlpipeline/*"]), r"reaches beyond"),
        (lambda p: p["Statement"][1].pop("Condition"), r"arn:aws:s3:::mlpipeline reaches beyond"),
        (lambda p: p["Statement"][2]["Condition"]["Null"].update({"s3:prefix": "false"}), r"reaches beyond"),
    ],
    ids=["put", "wildcard", "whole-bucket", "list-unscoped", "list-any-prefix"],
)
def test_a_triton_s3_policy_that_could_write_or_reach_further_is_reported(mutate, problem):
    policy = json.loads((MANIFESTS / "examples" / "triton-read-only-s3-iam-policy.json").read_text())
    mutate(policy)
    assert any(re.search(problem, p) for p in s3_policy_problems(policy))


def test_triton_read_only_gcs_example_grants_a_read_only_role_to_tritons_own_account(tmp_path):
    (script,) = _examples("triton-read-only-gcs.sh")
    subprocess.run(["bash", "-n", str(script)], check=True, timeout=30)
    text = script.read_text()
    roles = set(re.findall(r"--role=(\S+)", text))
    assert roles - {"roles/iam.workloadIdentityUser"} <= GCS_READ_ONLY_ROLES and roles & GCS_READ_ONLY_ROLES
    pod = one(documents(kustomize(MANIFESTS / "triton" / "gpu")), "Deployment", "triton")["spec"]["template"]["spec"]
    assert f"[{SERVING_NAMESPACE}/{pod['serviceAccountName']}]" in text  # Workload Identity for Triton's account
    assert f"serviceaccount {pod['serviceAccountName']}" in text


def test_gpu_overlay_requests_a_gpu_and_tolerates_the_default_taint_cpu_overlay_none(rendered):
    gpu_pod = one(rendered[Path("triton/gpu")], "Deployment", "triton")["spec"]["template"]["spec"]
    resources = gpu_pod["containers"][0]["resources"]
    assert resources["limits"][GPU_RESOURCE] == resources["requests"][GPU_RESOURCE] == "1"
    assert DEFAULT_GPU_TOLERATION in gpu_pod["tolerations"]
    assert "nodeSelector" not in gpu_pod, "the node selector is empty by default (examples per cloud are opt-in)"
    for overlay in ("triton/cpu", "overlays/cpu"):
        cpu_pod = one(rendered[Path(overlay)], "Deployment", "triton")["spec"]["template"]["spec"]
        assert not gpu_requests(cpu_pod)
        assert "tolerations" not in cpu_pod
    assert gpu_requests(one(rendered[Path(".")], "Deployment", "triton")["spec"]["template"]["spec"])


def test_every_image_is_pinned_to_a_release_tag(rendered):
    images = {container["image"] for docs in rendered.values() for doc in docs for container in _containers(doc)}
    assert len(images) == 5, images  # redis, postgres, tritonserver, the runtime's default pytorch, mlflow
    for image in images:
        name, _, tag = image.rpartition(":")
        assert name and re.fullmatch(r"[\w.-]*\d[\w.-]*", tag) and tag != "latest", image


def _containers(node: Any) -> list[dict[str, Any]]:
    if isinstance(node, dict):
        found = [c for c in node.get("containers", []) + node.get("initContainers", []) if "image" in c]
        return found + [c for value in node.values() for c in _containers(value)]
    if isinstance(node, list):
        return [c for value in node for c in _containers(value)]
    return []


# --- MLflow tracking server ---------------------------------------------------------------------------------------

MLFLOW_ARTIFACTS = "s3://mlpipeline/kfp-mlops/mlflow"  # beside the standalone paths (examples/cluster.yaml)
MLFLOW_OVERLAYS = {  # kustomization -> the namespace of the runs, where the server is, and its artifacts' destination
    Path("mlflow"): (PIPELINES_NAMESPACE, MLFLOW_ARTIFACTS),
    Path("pipelines"): (PIPELINES_NAMESPACE, MLFLOW_ARTIFACTS),
    Path("."): (PIPELINES_NAMESPACE, MLFLOW_ARTIFACTS),
    Path("overlays/cpu"): (PIPELINES_NAMESPACE, MLFLOW_ARTIFACTS),
    # the profile's own, lasting prefix (PROFILE_PREFIXES), as examples/profile.yaml's paths
    PROFILE: (PROFILE_NAMESPACE, f"s3://mlpipeline/private/{PROFILE_NAMESPACE}/kfp-mlops/mlflow"),
}
# What the server reads from its Secret, by secretKeyRef of the same key; the backend store URI is required.
MLFLOW_SECRET_VARIABLES = ("MLFLOW_BACKEND_STORE_URI", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


def mlflow_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (container,) = one(docs, "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"]
    return container


def _flag(args: list[str], name: str) -> str | None:
    """The value click would take for option ``name`` (``--name=value`` or ``--name value``; the last one wins)."""
    value = None
    for index, arg in enumerate(args):
        if arg == name and index + 1 < len(args):
            value = args[index + 1]
        elif arg.startswith(f"{name}="):
            value = arg.split("=", 1)[1]
    return value


def _mlflow_allows_host(allowed_hosts: list[str], host: str) -> bool:
    """MLflow's Host header check (mlflow-skinny 3.17.2 mlflow/server/security_utils.py, is_allowed_host_header):
    a pattern with ``*`` matches by fnmatch, any other exactly; ``*`` alone admits every host."""
    return "*" in allowed_hosts or any(
        fnmatch.fnmatch(host, allowed) if "*" in allowed else host == allowed for allowed in allowed_hosts
    )


def _kubelet_variables(container: dict[str, Any], namespace: str) -> dict[str, str]:
    """The container's variables as the kubelet resolves them for ``$(VAR)``: in order, a ``value`` expanded from the
    variables defined before it; the pod's namespace from its fieldRef (Secrets are left out: never expanded here)."""
    variables: dict[str, str] = {}
    for entry in container.get("env", []):
        if isinstance(entry.get("value"), str):
            variables[entry["name"]] = _expand(entry["value"], variables)
        elif ((entry.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath") == "metadata.namespace":
            variables[entry["name"]] = namespace
    return variables


def _expand(text: str, variables: dict[str, str]) -> str:
    """``$(VAR)`` replaced as the kubelet does; an unknown one is left as it is."""
    return re.sub(r"\$\((\w+)\)", lambda match: variables.get(match[1], match[0]), text)


def mlflow_problems(docs: list[dict[str, Any]], namespace: str, artifacts: str = MLFLOW_ARTIFACTS) -> list[str]:
    """What breaks the tracking server's contract: it proxies artifacts to S3 under ``artifacts`` (clients need no
    storage credentials);
    its backend store URI and S3 key come only from the Secret kfp-mlops-mlflow (required URI, no literal anywhere,
    no other Secret); it listens, on all interfaces, on the port its Service targets and its probes check; it accepts
    the Service's in-cluster names as Host (and no other domain); its NetworkPolicy admits port 5000 from the runs'
    namespace only."""
    problems = []
    deployment = one(docs, "Deployment", "mlflow")
    pod = deployment["spec"]["template"]["spec"]
    container = mlflow_container(docs)
    variables = _kubelet_variables(container, namespace)
    args = [_expand(arg, variables) for arg in container.get("args", [])]
    if container.get("command") != ["mlflow", "server"]:
        problems.append(f"serve: command {container.get('command')} is not mlflow server")
    # artifacts
    destination = _flag(args, "--artifacts-destination")
    if "--serve-artifacts" not in args or {"--no-serve-artifacts", "--artifacts-only"} & set(args):
        problems.append("artifacts: the server does not proxy artifacts (--serve-artifacts)")
    if destination != artifacts:
        problems.append(f"artifacts: destination {destination!r} is not {artifacts}")
    if _flag(args, "--default-artifact-root"):
        problems.append("artifacts: --default-artifact-root sends clients to the store itself")
    # secrets
    env = {e["name"]: e for e in container.get("env", [])}
    for name in MLFLOW_SECRET_VARIABLES:
        ref = (env.get(name, {}).get("valueFrom") or {}).get("secretKeyRef") or {}
        if (ref.get("name"), ref.get("key")) != (MLFLOW_SECRET, name):
            problems.append(f"secrets: {name} does not come from the Secret {MLFLOW_SECRET}")
        elif name == "MLFLOW_BACKEND_STORE_URI" and ref.get("optional"):
            problems.append("secrets: the backend store URI is optional (a missing Secret would start on SQLite)")
    for option in ("--backend-store-uri", "--registry-store-uri"):
        if _flag(args, option):
            problems.append(f"secrets: {option} is an argument (the process list), not the Secret's variable")
    if other := sorted(_secret_names(pod) - {MLFLOW_SECRET}):
        problems.append(f"secrets: the pod reads other Secrets {other}")
    problems += [f"secrets: {finding}" for finding in literal_credentials(deployment)]
    # the port the Service targets
    ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    listens = int(_flag(args, "--port") or 5000)  # MLflow's default
    binds = _flag(args, "--host") or "127.0.0.1"  # MLflow's default
    service = one(docs, "Service", "mlflow")
    (service_port,) = service["spec"]["ports"]
    target = service_port["targetPort"]
    target_number = ports.get(target) if isinstance(target, str) else target
    if service_port["port"] != MLFLOW_PORT:
        problems.append(f"port: the Service serves {service_port['port']}, not {MLFLOW_PORT}")
    if target_number != listens:
        problems.append(f"port: the Service targets {target} ({target_number}), the server listens on {listens}")
    if binds != "0.0.0.0":
        problems.append(f"port: the server binds {binds}, which other pods cannot reach")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    if not service["spec"]["selector"].items() <= labels.items():
        problems.append("port: the Service selects no server pod")
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = (container.get(kind) or {}).get("httpGet") or {}
        port = ports.get(probe.get("port")) if isinstance(probe.get("port"), str) else probe.get("port")
        if (probe.get("path"), port) != ("/health", listens):
            problems.append(f"port: {kind} does not check /health on {listens}")
    # Host headers: $(POD_NAMESPACE) expanded as the kubelet does, from the pod's own namespace
    namespace_ref = (env.get("POD_NAMESPACE", {}).get("valueFrom") or {}).get("fieldRef") or {}
    if namespace_ref.get("fieldPath") != "metadata.namespace":
        problems.append("hosts: POD_NAMESPACE is not the pod's namespace")
    allowed = _flag(args, "--allowed-hosts")
    if allowed is None:
        problems.append("hosts: no --allowed-hosts: MLflow's default (localhost, private IPs) refuses the Service")
    else:
        hosts = [host.strip() for host in allowed.split(",")]
        for host in (f"mlflow.{namespace}:{MLFLOW_PORT}", f"mlflow.{namespace}.svc.cluster.local:{MLFLOW_PORT}",
                     f"mlflow:{MLFLOW_PORT}", f"localhost:{MLFLOW_PORT}"):  # fmt: skip
            if not _mlflow_allows_host(hosts, host):
                problems.append(f"hosts: the server refuses Host {host}")
        for host in (f"mlflow.evil.example:{MLFLOW_PORT}", "evil.example"):
            if _mlflow_allows_host(hosts, host):
                problems.append(f"hosts: the server accepts Host {host}")
    # who reaches it
    callers = {  # name: (namespace, port, admitted)
        f"a pipeline pod of {namespace}": (namespace, listens, True),
        "a pod of another namespace": ("elsewhere", listens, False),
        f"a pipeline pod of {namespace} on another port": (namespace, listens + 1, False),
    }
    for name, (caller_namespace, port, expected) in callers.items():
        admitted = network_policies_admit(
            docs, to_namespace=namespace, to_labels=labels, port=port, from_namespace=caller_namespace,
            from_namespace_labels=namespace_labels(caller_namespace), from_labels={"app": "x"},
        )  # fmt: skip
        if admitted != expected:
            problems.append(f"network: NetworkPolicy {'admits' if admitted else 'refuses'} {name} ({port})")
    return problems


@pytest.mark.parametrize("overlay", sorted(MLFLOW_OVERLAYS), ids=str)
def test_mlflow_serves_artifacts_reads_the_secret_listens_where_the_service_targets_and_admits_the_runs(
    rendered, overlay
):
    docs = rendered[overlay]
    namespace, artifacts = MLFLOW_OVERLAYS[overlay]
    assert one(docs, "Deployment", "mlflow")["metadata"]["namespace"] == namespace
    assert mlflow_problems(docs, namespace, artifacts) == []


def test_mlflow_artifacts_in_a_profile_follow_the_pods_namespace_only_if_it_is_defined_first(rendered):
    """The profile overlay names the destination by $(POD_NAMESPACE); the kubelet expands a variable only from those
    defined before it, so the patch keeps POD_NAMESPACE first."""
    docs = copy.deepcopy(rendered[PROFILE])
    namespace, artifacts = MLFLOW_OVERLAYS[PROFILE]
    assert mlflow_problems(docs, namespace, artifacts) == []
    env = mlflow_container(docs)["env"]
    env.append(env.pop(0))  # POD_NAMESPACE last
    assert f"artifacts: destination 's3://mlpipeline/private/$(POD_NAMESPACE)/kfp-mlops/mlflow' is not {artifacts}" in (
        mlflow_problems(docs, namespace, artifacts)
    )


def _mlflow_env(docs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    (entry,) = [e for e in mlflow_container(docs)["env"] if e["name"] == name]
    return entry


def _replace_mlflow_arg(prefix: str, new: str | None) -> Any:
    def mutate(docs: list[dict[str, Any]]) -> None:
        args = mlflow_container(docs)["args"]
        (index,) = [i for i, arg in enumerate(args) if arg.startswith(prefix)]
        args[index : index + 1] = [] if new is None else [new]

    return mutate


def _mlflow_ingress(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return one(docs, "NetworkPolicy", "mlflow")["spec"]["ingress"]


LITERAL_BACKEND = "postgresql://mlflow:hunter2@db:5432/mlflow"


@pytest.mark.parametrize(
    ("mutate", "problem"),
    [
        (_replace_mlflow_arg("--serve-artifacts", None), r"artifacts: the server does not proxy artifacts"),
        (lambda docs: mlflow_container(docs)["args"].append("--no-serve-artifacts"),
         r"artifacts: the server does not proxy artifacts"),
        (_replace_mlflow_arg("--artifacts-destination", "--artifacts-destination=./mlartifacts"),
         r"destination './mlartifacts' is not s3://mlpipeline/kfp-mlops/mlflow"),
        (lambda docs: _mlflow_env(docs, "MLFLOW_BACKEND_STORE_URI").update(valueFrom=None, value=LITERAL_BACKEND),
         r"secrets: MLFLOW_BACKEND_STORE_URI does not come from the Secret kfp-mlops-mlflow"),
        (lambda docs: mlflow_container(docs)["args"].append(f"--backend-store-uri={LITERAL_BACKEND}"),
         r"secrets: --backend-store-uri is an argument"),
        (lambda docs: mlflow_container(docs)["args"].append(f"--backend-store-uri={LITERAL_BACKEND}"),
         r"secrets: .*args\[\d+\]: .* carries a password"),
        (lambda docs: _mlflow_env(docs, "MLFLOW_BACKEND_STORE_URI")["valueFrom"]["secretKeyRef"].update(optional=True),
         r"the backend store URI is optional"),
        (lambda docs: _mlflow_env(docs, "AWS_SECRET_ACCESS_KEY").update(valueFrom=None, value="x"),
         r"secrets: .*env AWS_SECRET_ACCESS_KEY has a literal value"),
        (lambda docs: _mlflow_env(docs, "AWS_SECRET_ACCESS_KEY")["valueFrom"]["secretKeyRef"].update(
            name=STORAGE_SECRET), r"AWS_SECRET_ACCESS_KEY does not come from the Secret kfp-mlops-mlflow"),
        (lambda docs: mlflow_container(docs).update(envFrom=[{"secretRef": {"name": STORAGE_SECRET}}]),
         r"the pod reads other Secrets \['kfp-mlops-storage'\]"),
        (_replace_mlflow_arg("--port=", "--port=8080"),
         r"port: the Service targets http \(5000\), the server listens on 8080"),
        (lambda docs: one(docs, "Service", "mlflow")["spec"]["ports"][0].update(targetPort=8080),
         r"port: the Service targets 8080 \(8080\), the server listens on 5000"),
        (_replace_mlflow_arg("--host=", "--host=127.0.0.1"), r"port: the server binds 127.0.0.1"),
        (lambda docs: mlflow_container(docs)["readinessProbe"]["httpGet"].update(path="/healthz"),
         r"port: readinessProbe does not check /health on 5000"),
        (_replace_mlflow_arg("--allowed-hosts=", None), r"hosts: no --allowed-hosts"),
        (lambda docs: mlflow_container(docs)["args"].__setitem__(-1, mlflow_container(docs)["args"][-1].replace(
            "$(POD_NAMESPACE)", "default")), rf"hosts: the server refuses Host mlflow.{PIPELINES_NAMESPACE}:5000"),
        (_replace_mlflow_arg("--allowed-hosts=", "--allowed-hosts=mlflow.*"),
         r"hosts: the server accepts Host mlflow.evil.example:5000"),
        (lambda docs: _mlflow_env(docs, "POD_NAMESPACE").update(valueFrom=None, value="kubeflow"),
         r"hosts: POD_NAMESPACE is not the pod's namespace"),
        (lambda docs: _mlflow_ingress(docs)[0].update({"from": [{"namespaceSelector": {}}]}),
         r"network: NetworkPolicy admits a pod of another namespace \(5000\)"),
        (lambda docs: _mlflow_ingress(docs).pop(0),
         rf"network: NetworkPolicy refuses a pipeline pod of {PIPELINES_NAMESPACE} \(5000\)"),
        (lambda docs: _mlflow_ingress(docs)[0].pop("ports"),
         rf"network: NetworkPolicy admits a pipeline pod of {PIPELINES_NAMESPACE} on another port \(5001\)"),
        (lambda docs: one(docs, "NetworkPolicy", "mlflow")["spec"].update(
            podSelector={"matchLabels": {"app": "mlflow"}}),
         r"network: NetworkPolicy admits a pod of another namespace"),
    ],
    ids=["no-serve-artifacts", "no-serve-artifacts-flag", "local-destination", "backend-literal-env",
         "backend-argument", "backend-argument-literal", "backend-optional", "key-literal", "key-other-secret",
         "envfrom-storage", "listens-elsewhere", "service-targets-elsewhere", "binds-localhost", "probe-path",
         "hosts-missing", "hosts-other-namespace", "hosts-any-domain", "hosts-fixed-namespace",
         "network-any-namespace", "network-no-rule", "network-any-port", "network-selects-nothing"],
)  # fmt: skip
def test_each_mlflow_rule_fails_when_the_manifests_break_it(rendered, mutate, problem):
    docs = copy.deepcopy(rendered[Path(".")])
    assert mlflow_problems(docs, PIPELINES_NAMESPACE) == []
    mutate(docs)
    problems = mlflow_problems(docs, PIPELINES_NAMESPACE)
    assert any(re.search(problem, p) for p in problems), problems


# --- Trainer runtime ----------------------------------------------------------------------------------------------


def test_trainer_runtime_is_the_one_trainjobs_reference_with_shared_memory_for_nccl(rendered):
    runtime = one(rendered[Path("trainer")], "ClusterTrainingRuntime", "torch-distributed")
    assert runtime["metadata"]["name"] == trainjob.TrainJobSpec.runtime_ref == TrainConfig().runtime
    assert trainjob.TrainJobSpec.runtime_kind == runtime["kind"]
    assert "torch" in runtime["spec"]["mlPolicy"]
    (job,) = runtime["spec"]["template"]["spec"]["replicatedJobs"]
    assert job["name"] == trainjob.TRAINER_REPLICATED_JOB
    assert job["template"]["metadata"]["labels"]["trainer.kubeflow.org/trainjob-ancestor-step"] == "trainer"
    pod = job["template"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["name"] == trainjob.TRAINER_REPLICATED_JOB
    (shm,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/dev/shm"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == shm["name"]]
    assert volume["emptyDir"]["medium"] == "Memory"
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["automountServiceAccountToken"] is False
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert job["template"]["spec"]["template"]["metadata"]["labels"] == ISTIO_OPT_OUT


def test_a_trainjob_the_pipeline_builds_patches_a_replicated_job_the_runtime_has(rendered):
    runtime = one(rendered[Path("trainer")], "ClusterTrainingRuntime", "torch-distributed")
    spec = trainjob.TrainJobSpec(
        name="kfp-train-0123456789", namespace=PIPELINES_NAMESPACE, image="ghcr.io/kfp-mlops/kfp-mlops-train:0.1.0",
        command=["torchrun"], num_nodes=2, tolerations=[DEFAULT_GPU_TOLERATION],
    )  # fmt: skip
    manifest = trainjob.build_manifest(spec)
    validate_document(manifest)  # the same models validate the pipeline's TrainJob and our runtime
    assert manifest["spec"]["runtimeRef"] == {
        "apiGroup": "trainer.kubeflow.org", "kind": runtime["kind"], "name": runtime["metadata"]["name"],
    }  # fmt: skip
    patched = manifest["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    assert {j["name"] for j in patched} <= {j["name"] for j in runtime["spec"]["template"]["spec"]["replicatedJobs"]}


# --- multi-user Kubeflow (profiles) -------------------------------------------------------------------------------
# The facts below are read from upstream sources and cited; the rules are evaluated offline against the rendered
# overlay together with the Kubeflow objects it meets on a cluster (copied here from upstream, cited).

OTHER_PROFILE = "team-other"
ISTIO_OPT_OUT = {"sidecar.istio.io/inject": "false"}  # Istio's label; trainjob.py patches the same onto TrainJobs
# Objects of the profile overlay that must not be in the profile namespace, and where they belong (None: cluster
# scope). Everything else goes to the profile namespace.
ELSEWHERE: dict[tuple[str, str], str | None] = {
    ("Namespace", SERVING_NAMESPACE): None,
    ("ClusterTrainingRuntime", "torch-distributed"): None,
    ("NetworkPolicy", "seaweedfs-from-kfp-mlops-triton"): PIPELINES_NAMESPACE,  # beside KFP's SeaweedFS pods
    ("AuthorizationPolicy", "triton-from-profile"): SERVING_NAMESPACE,
    ("ConfigMap", "triton-model-repository"): SERVING_NAMESPACE,
    ("Service", "triton-pods"): SERVING_NAMESPACE,
    **{(kind, "triton"): SERVING_NAMESPACE for kind in
       ("ServiceAccount", "Service", "Deployment", "HorizontalPodAutoscaler", "NetworkPolicy")},
}  # fmt: skip
# What the runs need beside them, in the profile namespace.
IN_PROFILE = {
    ("ServiceAccount", "kfp-mlops-runner"),
    *((kind, name) for kind in ("Role", "RoleBinding")
      for name in ("kfp-mlops-trainjob-launcher", "kfp-mlops-kfp-executor")),
    *((kind, store) for store in ("kfp-mlops-redis", "kfp-mlops-postgres") for kind in
      ("Deployment", "Service", "PersistentVolumeClaim", "NetworkPolicy", "AuthorizationPolicy")),
    *((kind, "mlflow") for kind in ("Deployment", "Service", "NetworkPolicy", "AuthorizationPolicy")),
}  # fmt: skip
FEAST_STORES = {"kfp-mlops-redis": 6379, "kfp-mlops-postgres": 5432}
TRITON_GRPC_PORT = int(DeployConfig().triton_url.rsplit(":", 1)[1])  # the deploy step drives Triton over gRPC only
SEAWEEDFS_S3_PORT = 8333

# Kubeflow's mesh-wide deny: kubeflow/manifests common/istio/istio-install/base/deny_all_authorizationpolicy.yaml.
GLOBAL_DENY_ALL = {
    "apiVersion": "security.istio.io/v1beta1", "kind": "AuthorizationPolicy",
    "metadata": {"name": "global-deny-all", "namespace": "istio-system"}, "spec": {},
}  # fmt: skip


def ns_owner_access_istio(namespace: str) -> dict[str, Any]:
    """The AuthorizationPolicy the profile controller puts in each profile namespace (kubeflow/dashboard
    components/profile-controller/controllers/profile_controller.go, getAuthorizationPolicy; default principals and
    header)."""
    return {
        "apiVersion": "security.istio.io/v1beta1", "kind": "AuthorizationPolicy",
        "metadata": {"name": "ns-owner-access-istio", "namespace": namespace},
        "spec": {"action": "ALLOW", "rules": [
            {"when": [{"key": "request.headers[kubeflow-userid]", "values": ["user@example.com"]}],
             "from": [{"source": {"principals": [
                 "cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account",
                 "cluster.local/ns/kubeflow/sa/ml-pipeline-ui"]}}]},
            {"when": [{"key": "source.namespace", "values": [namespace]}]},
            {"to": [{"operation": {"paths": ["/healthz", "/metrics", "/wait-for-drain"]}}]},
            {"from": [{"source": {"principals": ["cluster.local/ns/kubeflow/sa/notebook-controller-service-account"]}}],
             "to": [{"operation": {"methods": ["GET"], "paths": ["*/api/kernels"]}}]},
        ]},
    }  # fmt: skip


# KFP's SeaweedFS, in kubeflow: the pods' labels (third-party/seaweedfs/base/seaweedfs/seaweedfs-deployment.yaml),
# its NetworkPolicy (seaweedfs-networkpolicy.yaml) and Istio policy (third-party/seaweedfs/istio/
# istio-authorization-policy.yaml), kubeflow/pipelines 2.17.0 manifests/kustomize (2.15.0 lacks the last ingress rule).
SEAWEEDFS_POD_LABELS = {"app": "seaweedfs", "application-crd-id": "kubeflow-pipelines"}
SEAWEEDFS_UPSTREAM = [
    {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "seaweedfs", "namespace": PIPELINES_NAMESPACE},
        "spec": {
            "podSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["seaweedfs"]}]},
            "policyTypes": ["Ingress"],
            "ingress": [
                {"from": [{"namespaceSelector": {"matchExpressions": [
                    {"key": "app.kubernetes.io/part-of", "operator": "In", "values": ["kubeflow-profile"]}]}}],
                 "ports": [{"port": SEAWEEDFS_S3_PORT}]},
                {"from": [{"namespaceSelector": {"matchExpressions": [
                    {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["istio-system"]}]}}]},
                {"from": [{"podSelector": {}}], "ports": [{"port": SEAWEEDFS_S3_PORT}]},
            ],
        },
    },
    {
        "apiVersion": "security.istio.io/v1beta1", "kind": "AuthorizationPolicy",
        "metadata": {"name": "seaweedfs-service", "namespace": PIPELINES_NAMESPACE},
        "spec": {"action": "ALLOW", "selector": {"matchLabels": {"app": "seaweedfs"}}, "rules": [
            {"from": [{"source": {"principals": ["cluster.local/ns/kubeflow/sa/ml-pipeline"]}}]},
            {"from": [{"source": {"principals": ["cluster.local/ns/kubeflow/sa/ml-pipeline-ui"]}}]},
            {},
        ]},
    },
]  # fmt: skip
# The prefixes of bucket mlpipeline a profile's own credentials may read and write (kubeflow/pipelines
# manifests/kustomize/base/installs/multi-user/pipelines-profile-controller/sync.py, put_user_policy, 2.15.0-2.17.0),
# and the one the retention lifecycle rule expires (upsert_lifecycle_policy, Filter Prefix "private-artifacts").
PROFILE_PREFIXES = ("artifacts/", "private-artifacts/{ns}/", "private/{ns}/", "shared/")
EXPIRING_PREFIX = "private-artifacts"
PROFILE_PIPELINE_ROOT = "minio://mlpipeline/private-artifacts/{ns}/v2/artifacts"  # sync.py, kfp-launcher


class Caller:
    """A pod that connects: its namespace (labels), its labels, its mTLS identity (None: no sidecar, plain text)."""

    def __init__(self, name: str, namespace: str, labels: dict[str, str], account: str | None, profile: bool = True):
        self.name, self.namespace, self.labels = name, namespace, labels
        self.principal = f"cluster.local/ns/{namespace}/sa/{account}" if account else None
        # Labels the profile controller sets on a profile namespace (kubeflow/manifests
        # applications/profiles/upstream/base/namespace-labels.yaml; istio-injection: profile_controller.go).
        profile_labels = {"app.kubernetes.io/part-of": "kubeflow-profile", "istio-injection": "enabled"}
        self.namespace_labels = namespace_labels(namespace, profile_labels if profile else {})


def pipeline_pod(namespace: str) -> Caller:
    """A KFP pipeline pod: no sidecar (KFP sets sidecar.istio.io/inject: "false" on every template,
    backend/src/apiserver/template/v2_template.go), run by kfp-mlops-runner."""
    labels = {"pipelines.kubeflow.org/v2_component": "true", "workflows.argoproj.io/workflow": "run-x"}
    return Caller(f"pipeline pod of {namespace}", namespace, labels, account=None)


def notebook(namespace: str) -> Caller:
    """A Kubeflow notebook of the profile (meshed: sidecar, mTLS as default-editor), e.g. running predict."""
    return Caller(f"notebook of {namespace}", namespace, {"notebook-name": "nb"}, account="default-editor")


def _base_name(document: dict[str, Any]) -> str:
    name = document["metadata"]["name"]
    return re.sub(r"-[a-z0-9]{10}$", "", name) if document["kind"] == "ConfigMap" else name  # kustomize's hash


def _pod_labels(docs: list[dict[str, Any]], deployment: str) -> dict[str, str]:
    return one(docs, "Deployment", deployment)["spec"]["template"]["metadata"]["labels"]


def placement_problems(docs: list[dict[str, Any]], namespace: str) -> list[str]:
    problems = []
    for document in docs:
        key = (document["kind"], _base_name(document))
        expected = ELSEWHERE.get(key, namespace)
        if document["metadata"].get("namespace") != expected:
            problems.append(
                f"placement: {key[0]} {key[1]} is in {document['metadata'].get('namespace')}, not {expected}"
            )
    missing = IN_PROFILE - {
        (d["kind"], d["metadata"]["name"]) for d in docs if d["metadata"].get("namespace") == namespace
    }
    problems += [f"placement: {kind} {name} missing from {namespace}" for kind, name in sorted(missing)]
    for binding in (d for d in docs if d["kind"] == "RoleBinding"):
        if {s.get("namespace") for s in binding["subjects"]} != {namespace}:
            problems.append(f"placement: RoleBinding {binding['metadata']['name']} binds accounts outside {namespace}")
    return problems


def runner_problems(docs: list[dict[str, Any]], namespace: str) -> list[str]:
    """What kfp-mlops-runner may do in the profile namespace: the Roles bound to it there, checked against what the
    TrainJob launcher (trainjob.py) and KFP's executor (runner/kfp-executor.yaml) call."""
    account = {"kind": "ServiceAccount", "name": "kfp-mlops-runner", "namespace": namespace}
    bound = {
        b["roleRef"]["name"] for b in docs
        if b["kind"] == "RoleBinding" and b["metadata"]["namespace"] == namespace and b["roleRef"]["kind"] == "Role"
        and account in b["subjects"]
    }  # fmt: skip
    rules = [
        rule for d in docs if d["kind"] == "Role" and d["metadata"]["namespace"] == namespace
        and d["metadata"]["name"] in bound for rule in d["rules"]
    ]  # fmt: skip

    def allowed(group: str, resource: str, verb: str, name: str | None = None) -> bool:
        return any(
            group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"]
            and (not r.get("resourceNames") or name in r["resourceNames"])
            for r in rules
        )  # fmt: skip

    needed = [(trainjob.GROUP, trainjob.PLURAL, verb, None) for verb in sorted(trainjob_verbs())]
    needed += [
        ("", "pods", "get", None), ("", "configmaps", "get", "kfp-launcher"),
        ("", "secrets", "get", "mlpipeline-minio-artifact"), ("argoproj.io", "workflows", "get", None),
        ("argoproj.io", "workflowtaskresults", "create", None), ("argoproj.io", "workflowtaskresults", "patch", None),
    ]  # fmt: skip
    return [
        f"runner: kfp-mlops-runner cannot {verb} {resource}.{group or 'core'}{f' {name}' if name else ''}"
        for group, resource, verb, name in needed
        if not allowed(group, resource, verb, name)
    ]


def trainjob_pod_problems(docs: list[dict[str, Any]]) -> list[str]:
    runtime = one(docs, "ClusterTrainingRuntime", "torch-distributed")
    problems = []
    for job in runtime["spec"]["template"]["spec"]["replicatedJobs"]:
        labels = (job["template"]["spec"]["template"].get("metadata") or {}).get("labels") or {}
        if not ISTIO_OPT_OUT.items() <= labels.items():
            problems.append(f"TrainJob pods of replicated job {job['name']} get an Istio sidecar (no {ISTIO_OPT_OUT})")
    return problems


def _reach(
    docs: list[dict[str, Any]], caller: Caller, namespace: str, labels: dict[str, str], port: int,
    meshed_policies: list[dict[str, Any]], expect: tuple[bool, bool], what: str, protocol: str,
) -> list[str]:  # fmt: skip
    """Whether NetworkPolicy and Istio (the target meshed, with ``meshed_policies`` beside ours) each admit
    ``caller`` as expected."""
    network = network_policies_admit(
        docs, to_namespace=namespace, to_labels=labels, port=port, from_namespace=caller.namespace,
        from_namespace_labels=caller.namespace_labels, from_labels=caller.labels,
    )  # fmt: skip
    mesh = istio_allows(
        docs + meshed_policies, to_namespace=namespace, to_labels=labels, port=port, principal=caller.principal,
        protocol=protocol,
    )  # fmt: skip
    verdict = {True: "admits", False: "refuses"}
    return [
        f"{what}:{port} from {caller.name}: {layer} {verdict[got]} it"
        for layer, got, wanted in (("NetworkPolicy", network, expect[0]), ("Istio", mesh, expect[1]))
        if got != wanted
    ]


def store_access_problems(docs: list[dict[str, Any]], namespace: str) -> list[str]:
    """The Feast stores and the MLflow server, meshed in the profile namespace (Kubeflow's deny-all and the profile's
    own policy beside ours): reached by the profile's pipeline pods (plain text) and notebooks (mTLS); not by another
    profile's pods. Istio cannot tell a plain-text caller's namespace: for those the NetworkPolicy is the fence."""
    kubeflow_policies = [GLOBAL_DENY_ALL, ns_owner_access_istio(namespace)]
    problems = []
    for store, port in {**FEAST_STORES, "mlflow": MLFLOW_PORT}.items():
        labels = _pod_labels(docs, store)
        for caller, expect in (
            (pipeline_pod(namespace), (True, True)),
            (notebook(namespace), (True, True)),
            (pipeline_pod(OTHER_PROFILE), (False, True)),
            (notebook(OTHER_PROFILE), (False, False)),
        ):
            problems += _reach(docs, caller, namespace, labels, port, kubeflow_policies, expect, store, "tcp")
        # nothing but the store's own port
        problems += _reach(docs, pipeline_pod(namespace), namespace, labels, port + 1, kubeflow_policies,
                           (False, False), store, "tcp")  # fmt: skip
    return problems


def triton_access_problems(docs: list[dict[str, Any]], namespace: str) -> list[str]:
    """Triton's gRPC port from the profile's deploy step (a pipeline pod): its NetworkPolicy admits it, and, were
    kfp-mlops-serving meshed (under Kubeflow's deny-all), our AuthorizationPolicy would too; another profile's pods
    get through neither (unless the operator labels that namespace a Triton client)."""
    labels = _pod_labels(docs, "triton")
    problems = []
    for caller, expect in (
        (pipeline_pod(namespace), (True, True)),
        (notebook(namespace), (True, True)),
        (notebook(OTHER_PROFILE), (False, False)),
    ):
        problems += _reach(
            docs, caller, SERVING_NAMESPACE, labels, TRITON_GRPC_PORT, [GLOBAL_DENY_ALL], expect, "triton", "grpc"
        )
    return problems


def object_store_problems(docs: list[dict[str, Any]], namespace: str) -> list[str]:
    """Triton reads its model repository from KFP's SeaweedFS (KFP's policies there beside ours), under a prefix the
    profile's credentials may write, that no other profile may write and that does not expire."""
    triton = Caller("triton", SERVING_NAMESPACE, _pod_labels(docs, "triton"), account=None, profile=False)
    other = Caller("another pod of kfp-mlops-serving", SERVING_NAMESPACE, {"app": "other"}, account=None, profile=False)
    problems = []
    for caller, expect in ((triton, (True, True)), (other, (False, True)), (pipeline_pod(namespace), (True, True))):
        policies = [GLOBAL_DENY_ALL, SEAWEEDFS_UPSTREAM[1]]
        problems += _reach(docs + SEAWEEDFS_UPSTREAM[:1], caller, PIPELINES_NAMESPACE, SEAWEEDFS_POD_LABELS,
                           SEAWEEDFS_S3_PORT, policies, expect, "seaweedfs", "http")  # fmt: skip
    repository = one(
        docs, "ConfigMap", next(d["metadata"]["name"] for d in docs if _base_name(d) == "triton-model-repository")
    )
    url = repository["data"]["MODEL_REPOSITORY"]
    match = TRITON_S3_ENDPOINT_PATH.fullmatch(url)
    if not match:
        return [*problems, f"model repository {url}: Triton would not read it as s3://host:port/bucket/path"]
    host, port, bucket, key = match.group(2), int(match.group(3)), match.group(4), match.group(5).lstrip("/") + "/"
    if (host, port, bucket) != (f"seaweedfs.{PIPELINES_NAMESPACE}.svc.cluster.local", SEAWEEDFS_S3_PORT, "mlpipeline"):
        problems.append(f"model repository {url}: not KFP's SeaweedFS bucket mlpipeline on its S3 port")
    allowed = [prefix.format(ns=namespace) for prefix in PROFILE_PREFIXES]
    own = [prefix for prefix in allowed if f"/{namespace}/" in f"/{prefix}"]  # the profile's own prefixes
    if not any(key.startswith(prefix) for prefix in own) or key.startswith(EXPIRING_PREFIX):
        problems.append(f"model repository {url}: not under the profile's own, lasting prefix private/{namespace}/")
    return problems


def profile_problems(docs: list[dict[str, Any]], namespace: str = PROFILE_NAMESPACE) -> list[str]:
    return [
        *placement_problems(docs, namespace),
        *runner_problems(docs, namespace),
        *trainjob_pod_problems(docs),
        *store_access_problems(docs, namespace),
        *triton_access_problems(docs, namespace),
        *object_store_problems(docs, namespace),
    ]


def test_profile_overlay_puts_each_object_where_a_kubeflow_profile_needs_it_and_admits_the_runs(rendered):
    assert profile_problems(rendered[PROFILE]) == []


def test_kubeflows_own_istio_policies_refuse_the_sidecar_less_pipeline_pods_which_is_why_the_overlay_has_its_own(
    rendered,
):
    """Without our AuthorizationPolicies, Kubeflow's deny-all and the profile's ns-owner-access-istio admit the
    profile's notebooks (mTLS, source.namespace) but not its pipeline pods (plain text) to a meshed store."""
    docs = [d for d in rendered[PROFILE] if d["kind"] != "AuthorizationPolicy"]
    kubeflow_policies = [GLOBAL_DENY_ALL, ns_owner_access_istio(PROFILE_NAMESPACE)]
    labels = _pod_labels(docs, "kfp-mlops-redis")
    common = {"to_namespace": PROFILE_NAMESPACE, "to_labels": labels, "port": FEAST_STORES["kfp-mlops-redis"]}
    assert not istio_allows(docs + kubeflow_policies, principal=pipeline_pod(PROFILE_NAMESPACE).principal, **common)
    assert istio_allows(docs + kubeflow_policies, principal=notebook(PROFILE_NAMESPACE).principal, **common)


def _move(kind: str, name: str, namespace: str) -> Any:
    return lambda docs: one(docs, kind, name)["metadata"].update(namespace=namespace)


def _rules(docs: list[dict[str, Any]], kind: str, name: str) -> list[dict[str, Any]]:
    return one(docs, kind, name)["spec"]["rules" if kind == "AuthorizationPolicy" else "ingress"]


def _set_repository(url: str) -> Any:
    def mutate(docs: list[dict[str, Any]]) -> None:
        (repository,) = [d for d in docs if _base_name(d) == "triton-model-repository"]
        repository["data"]["MODEL_REPOSITORY"] = url

    return mutate


SEAWEEDFS_URL = "s3://seaweedfs.kubeflow.svc.cluster.local:8333/mlpipeline"


@pytest.mark.parametrize(
    ("mutate", "problem"),
    [
        (_move("Service", "kfp-mlops-redis", PIPELINES_NAMESPACE),
         r"placement: Service kfp-mlops-redis is in kubeflow"),
        (_move("NetworkPolicy", "seaweedfs-from-kfp-mlops-triton", PROFILE_NAMESPACE),
         r"placement: NetworkPolicy seaweedfs-from-kfp-mlops-triton is in team-ml, not kubeflow"),
        (lambda docs: one(docs, "RoleBinding", "kfp-mlops-trainjob-launcher")["subjects"][0].update(
            namespace=PIPELINES_NAMESPACE),
         r"placement: RoleBinding kfp-mlops-trainjob-launcher binds accounts outside"),
        (lambda docs: docs.remove(one(docs, "AuthorizationPolicy", "kfp-mlops-postgres")),
         r"AuthorizationPolicy kfp-mlops-postgres missing from team-ml"),
        (lambda docs: one(docs, "Role", "kfp-mlops-trainjob-launcher")["rules"][0].update(apiGroups=["kubeflow.org"]),
         r"runner: kfp-mlops-runner cannot create trainjobs.trainer.kubeflow.org"),
        (lambda docs: one(docs, "Role", "kfp-mlops-trainjob-launcher")["rules"][0].update(verbs=["get", "create"]),
         r"runner: kfp-mlops-runner cannot delete trainjobs"),
        (lambda docs: one(docs, "ClusterTrainingRuntime", "torch-distributed")["spec"]["template"]["spec"][
            "replicatedJobs"][0]["template"]["spec"]["template"].pop("metadata"),
         r"TrainJob pods of replicated job node get an Istio sidecar"),
        (lambda docs: _rules(docs, "NetworkPolicy", "kfp-mlops-redis")[0].update({"from": [{"namespaceSelector": {}}]}),
         r"kfp-mlops-redis:6379 from pipeline pod of team-other: NetworkPolicy admits it"),
        (lambda docs: _rules(docs, "NetworkPolicy", "kfp-mlops-postgres")[0].update(
            {"from": [{"podSelector": {"matchLabels": {"app": "feast"}}}]}),
         r"kfp-mlops-postgres:5432 from pipeline pod of team-ml: NetworkPolicy refuses it"),
        (lambda docs: _rules(docs, "AuthorizationPolicy", "kfp-mlops-redis").pop(0),
         r"kfp-mlops-redis:6379 from pipeline pod of team-ml: Istio refuses it"),
        (lambda docs: _rules(docs, "AuthorizationPolicy", "kfp-mlops-postgres")[1]["from"][0]["source"].update(
            namespaces=[OTHER_PROFILE]),
         r"kfp-mlops-postgres:5432 from notebook of team-other: Istio admits it"),
        (lambda docs: _rules(docs, "AuthorizationPolicy", "kfp-mlops-redis")[0].update(
            to=[{"operation": {"ports": ["6379"], "methods": ["GET"]}}]),
         r"kfp-mlops-redis:6379 from pipeline pod of team-ml: Istio refuses it"),  # an HTTP-only field on TCP
        (lambda docs: _rules(docs, "AuthorizationPolicy", "kfp-mlops-redis")[0].pop("to"),
         r"kfp-mlops-redis:6380 from pipeline pod of team-ml: Istio admits it"),
        (lambda docs: docs.remove(one(docs, "AuthorizationPolicy", "mlflow")),
         r"mlflow:5000 from pipeline pod of team-ml: Istio refuses it"),
        (lambda docs: _rules(docs, "AuthorizationPolicy", "triton-from-profile")[0]["to"][0]["operation"].update(
            ports=["8000"]),
         r"triton:8001 from pipeline pod of team-ml: Istio refuses it"),
        (lambda docs: _rules(docs, "NetworkPolicy", "seaweedfs-from-kfp-mlops-triton")[0]["from"][0].pop("podSelector"),
         r"seaweedfs:8333 from another pod of kfp-mlops-serving: NetworkPolicy admits it"),
        (lambda docs: docs.remove(one(docs, "NetworkPolicy", "seaweedfs-from-kfp-mlops-triton")),
         r"seaweedfs:8333 from triton: NetworkPolicy refuses it"),
        (_set_repository(f"{SEAWEEDFS_URL}/kfp-mlops-models"), r"not under the profile's own, lasting prefix"),
        (_set_repository(f"{SEAWEEDFS_URL}/private-artifacts/team-ml/models"), r"not under the profile's own, lasting"),
        (_set_repository(f"{SEAWEEDFS_URL}/shared/kfp-mlops-models"), r"not under the profile's own, lasting prefix"),
        (_set_repository("s3://minio-service.kubeflow.svc.cluster.local:9000/mlpipeline/private/team-ml/m"),
         r"not KFP's SeaweedFS bucket mlpipeline"),
    ],
    ids=[
        "store-outside-profile", "seaweedfs-policy-in-profile", "binding-subject-elsewhere", "policy-missing",
        "role-wrong-group", "role-without-delete", "trainjob-sidecar", "store-network-any-namespace",
        "store-network-misses-pipeline-pods", "store-istio-no-plain-text", "store-istio-other-namespace",
        "store-istio-http-field-on-tcp", "store-istio-any-port", "mlflow-istio-policy-missing",
        "triton-istio-wrong-port",
        "seaweedfs-whole-namespace", "seaweedfs-policy-missing", "repository-outside-prefixes",
        "repository-expiring", "repository-shared", "repository-old-endpoint",
    ],
)  # fmt: skip
def test_each_profile_rule_fails_when_the_overlay_breaks_it(rendered, mutate, problem):
    docs = copy.deepcopy(rendered[PROFILE])
    mutate(docs)
    problems = profile_problems(docs)
    assert any(re.search(problem, p) for p in problems), problems


def test_profile_namespace_is_set_in_one_place_and_everything_that_names_it_follows(tmp_path):
    copied = tmp_path / "manifests"
    shutil.copytree(MANIFESTS, copied)
    kustomization = copied / PROFILE / "namespace" / "kustomization.yaml"
    text = kustomization.read_text()
    assert text.count(f"namespace: {PROFILE_NAMESPACE}") == 1, "the one place"
    kustomization.write_text(text.replace(f"namespace: {PROFILE_NAMESPACE}", "namespace: team-b"))
    rendered_text = kustomize(copied / PROFILE)
    assert profile_problems(documents(rendered_text), "team-b") == []
    assert triton_lockdown_problems(documents(rendered_text), "team-b") == []
    assert PROFILE_NAMESPACE not in rendered_text and "PROFILE_NAMESPACE" not in rendered_text
    for source in (copied / PROFILE).rglob("*"):  # the default is written nowhere else (comments aside)
        if source.is_file() and source != kustomization:
            assert PROFILE_NAMESPACE not in re.sub(r"#.*", "", source.read_text()), source


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda spec: spec["rules"][0]["from"][0]["source"].update(notPrincipal=["*"]), r"notPrincipal"),
        (lambda spec: spec["rules"][0]["to"][0]["operation"].update(ports=[6379]), r"6379 is not of type 'string'"),
        (lambda spec: spec.update(action="allow"), r"'allow' is not one of"),
        (lambda spec: spec.update(targetRef={"kind": "Service", "name": "kfp-mlops-redis"}), r"only one of targetRefs"),
        (lambda spec: spec["rules"][0]["from"][0]["source"].update(serviceAccounts=["team-ml/x"]),
         r"cannot set serviceAccounts with namespaces or principals"),
        (lambda spec: spec["selector"]["matchLabels"].update(app="*"), r"no wildcard"),
    ],
    ids=["misspelled-field", "port-not-a-string", "action-enum", "selector-and-targetref", "serviceaccounts-cel",
         "wildcard-label"],
)  # fmt: skip
def test_authorization_policy_validation_rejects_what_the_istio_crd_would(rendered, mutate, message):
    policy = copy.deepcopy(one(rendered[PROFILE], "AuthorizationPolicy", "kfp-mlops-redis"))
    validate_document(policy)
    mutate(policy["spec"])
    with pytest.raises(ValueError, match=message):
        validate_document(policy)


def test_the_offline_evaluators_refuse_what_they_do_not_model_and_match_selectors_like_kubernetes():
    policy = {"kind": "AuthorizationPolicy", "metadata": {"name": "p", "namespace": "n"},
              "spec": {"rules": [{"from": [{"source": {"ipBlocks": ["10.0.0.0/8"]}}]}]}}  # fmt: skip
    with pytest.raises(NotImplementedError, match="ipBlocks"):
        istio_allows([policy], to_namespace="n", to_labels={}, port=1, principal=None)
    expression = {"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["x"]}]}
    assert selector_matches(expression, {}) and selector_matches(expression, {"a": "y"})
    assert not selector_matches(expression, {"a": "x"}) and selector_matches(None, {"a": "x"})


def test_readme_gives_the_profile_prefixes_pipeline_root_and_upstream_sources():
    section = README.split("## Multi-user Kubeflow (profiles)", 1)[1].split("\n## ", 1)[0]
    for prefix in PROFILE_PREFIXES:
        assert f"mlpipeline/{prefix.format(ns='<ns>')}" in section, prefix
    assert PROFILE_PIPELINE_ROOT.format(ns="<ns>") in section
    for source in ("sync.py", "seaweedfs-networkpolicy.yaml", "deny_all_authorizationpolicy.yaml",
                   "v2_template.go", "profile_controller.go"):  # fmt: skip
        assert source in section, source
    assert "kubectl apply -k manifests/overlays/profile" in section


# --- GPU node pool examples ---------------------------------------------------------------------------------------


def _tolerates(toleration: dict[str, str], taint: dict[str, str]) -> bool:
    if toleration.get("effect") and toleration["effect"] != taint["effect"]:
        return False
    if toleration["operator"] == "Exists":
        return toleration.get("key") in (None, taint["key"])
    return toleration["key"] == taint["key"] and toleration.get("value") == taint.get("value")


def _with_patch(tmp_path: Path, patch: str) -> dict[str, Any]:
    """The gpu overlay with one of its optional patches applied, as an operator would uncomment it."""
    shutil.copy(MANIFESTS / "triton" / "gpu" / patch, tmp_path / patch)
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {"resources": [os.path.relpath(MANIFESTS / "triton" / "gpu", tmp_path)], "patches": [{"path": patch}]}
        )
    )
    return one(documents(kustomize(tmp_path)), "Deployment", "triton")["spec"]["template"]["spec"]


def test_eksctl_example_taints_what_the_default_toleration_tolerates_and_labels_what_the_eks_patch_selects(tmp_path):
    config = yaml.safe_load((MANIFESTS / "examples" / "eks-gpu-nodegroup.eksctl.yaml").read_text())
    assert (config["apiVersion"], config["kind"]) == ("eksctl.io/v1alpha5", "ClusterConfig")
    selector = _with_patch(tmp_path, "node-selector-eks.yaml")["nodeSelector"]
    (group,) = config["managedNodeGroups"]
    assert re.fullmatch(r"(g4dn|g5|g6|g6e|p4d|p5)\.\w+", group["instanceType"]), "a GPU instance type"
    assert selector.items() <= group["labels"].items()
    assert group["taints"] and all(_tolerates(DEFAULT_GPU_TOLERATION, taint) for taint in group["taints"])
    assert group["minSize"] <= group["desiredCapacity"] <= group["maxSize"]


def test_gke_example_creates_the_accelerator_the_gke_patch_selects_and_is_valid_bash(tmp_path):
    script = MANIFESTS / "examples" / "gke-gpu-node-pool.sh"
    subprocess.run(["bash", "-n", str(script)], check=True, timeout=30)
    words = shlex.split(script.read_text().split("gcloud container node-pools create", 1)[1], comments=True)
    (accelerator,) = [w.split("=", 1)[1] for w in words if w.startswith("--accelerator=")]
    options = dict(part.split("=", 1) for part in accelerator.split(","))
    selector = _with_patch(tmp_path, "node-selector-gke.yaml")["nodeSelector"]
    assert selector == {"cloud.google.com/gke-accelerator": options["type"]}
    assert int(options["count"]) >= 1 and "gpu-driver-version" in options
    gke_taint = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}  # GKE adds it to GPU nodes
    assert _tolerates(DEFAULT_GPU_TOLERATION, gke_taint)


# --- checkov ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkov_report(rendered, tmp_path_factory) -> dict[str, Any]:
    """One checkov run over every rendered kustomization (one file each): path -> (passed, failed) checks."""
    assert CHECKOV.exists(), f"checkov is not installed at {CHECKOV.relative_to(REPO)}: run `{CHECKOV_TARGET}`"
    directory = tmp_path_factory.mktemp("rendered")
    files = {}
    for kustomization, docs in rendered.items():
        path = directory / f"{'_'.join(kustomization.parts) or 'manifests'}.yaml"
        path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
        files[kustomization] = path
    report = checkov(list(files.values()))
    assert not report["results"].get("parsing_errors"), report["results"]["parsing_errors"]
    by_path = {str(p): k for k, p in files.items()}
    results: dict[Path, dict[str, list]] = {k: {"passed": [], "failed": []} for k in files}
    for outcome in ("passed", "failed"):
        for check in report["results"].get(f"{outcome}_checks", []):
            results[by_path[check["file_abs_path"]]][outcome].append(check)
    return results


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=str)
def test_checkov_finds_nothing_beyond_the_accepted_list(checkov_report, rendered, directory):
    outcome = checkov_report[directory]
    only_custom_kinds = all(d["apiVersion"].startswith("trainer.kubeflow.org/") for d in rendered[directory])
    assert outcome["passed"] or only_custom_kinds, "checkov scanned nothing: did it parse the file?"
    unexpected = [
        f"{c['check_id']} {c['resource']}: {c['check_name']}"
        for c in outcome["failed"]
        if c["resource"] not in ACCEPTED.get(c["check_id"], {}).get("resources", [])
    ]
    assert not unexpected, "fix these or explain them in manifests/checkov-accepted.yaml"


def test_every_accepted_checkov_finding_still_occurs_and_is_in_the_readme(checkov_report):
    failed = {(c["check_id"], c["resource"]) for outcome in checkov_report.values() for c in outcome["failed"]}
    accepted = {(check, resource) for check, entry in ACCEPTED.items() for resource in entry["resources"]}
    assert not accepted - failed, "stale entries in manifests/checkov-accepted.yaml: remove them"
    readme_ids = set(re.findall(r"^\| `(CKV2?_K8S_\d+)` \|", README, flags=re.MULTILINE))
    assert readme_ids == set(ACCEPTED)
    for entry in ACCEPTED.values():
        assert entry["reason"].strip() and entry["check"].strip()


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda spec: spec.update(volumez=[]), r"spec has unknown fields \['volumez'\]"),
        (lambda spec: spec.pop("selector"), "spec.selector.matchLabels is required"),
        (lambda spec: spec["volumeMounts"][0].update(name="other"), r"volumes it does not define: \['other'\]"),
        (lambda spec: spec["volumes"][0]["projected"]["sources"][0]["serviceAccountToken"].update(audiance="x"),
         "audiance"),
    ],
)  # fmt: skip
def test_pod_default_validation_rejects_what_the_crd_would(rendered, mutate, message):
    """The profile overlay's PodDefault (the retraining step's KFP API token) validates; a broken copy does not."""
    (pod_default,) = [d for d in rendered[Path("overlays/profile")] if d["kind"] == "PodDefault"]
    validate_document(pod_default)
    assert pod_default["spec"]["selector"]["matchLabels"] == {"kfp-mlops.io/pipelines-api-token": "true"}
    (source,) = pod_default["spec"]["volumes"][0]["projected"]["sources"]
    assert source["serviceAccountToken"]["audience"] == "pipelines.kubeflow.org"
    broken = copy.deepcopy(pod_default)
    mutate(broken["spec"])
    with pytest.raises(Exception, match=message):
        validate_document(broken)
