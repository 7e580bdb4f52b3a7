"""Cluster manifests, validated against the Kubernetes OpenAPI schemas (kubernetes-validate, strict): no cluster
runs here."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from kubernetes_validate import ValidationError, validate

REPO = Path(__file__).resolve().parents[1]
KUSTOMIZATION = yaml.safe_load((REPO / "manifests" / "kustomization.yaml").read_text())
RESOURCES = [REPO / "manifests" / path for path in KUSTOMIZATION["resources"]]


@pytest.mark.parametrize("path", RESOURCES, ids=[p.name for p in RESOURCES])
def test_manifest_is_valid_in_strict_mode(path):
    documents = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert documents
    for document in documents:
        validate(document, "1.37.0", strict=True)


def test_strict_validation_rejects_a_misspelled_field():
    deployment = next(d for d in yaml.safe_load_all((REPO / "manifests/feast/redis.yaml").read_text()) if d)
    deployment["spec"]["replica"] = deployment["spec"].pop("replicas")
    with pytest.raises(ValidationError, match="replica"):
        validate(deployment, "1.37.0", strict=True)


def test_trainjob_role_grants_what_the_launcher_calls():
    role = next(yaml.safe_load_all((REPO / "manifests/rbac/trainjob-launcher.yaml").read_text()))
    rule = next(r for r in role["rules"] if r["resources"] == ["trainjobs"])
    assert rule["apiGroups"] == ["trainer.kubeflow.org"]
    assert {"get", "create", "delete"} <= set(rule["verbs"])  # run_trainjob: GET, POST, DELETE on SIGTERM


def test_no_manifest_carries_a_secret_value():
    for path in RESOURCES:
        for document in yaml.safe_load_all(path.read_text()):
            assert document.get("kind") != "Secret", f"{path} commits a Secret"
