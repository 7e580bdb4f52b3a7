"""The Prometheus Operator's kinds (monitoring.coreos.com/v1: PodMonitor, ServiceMonitor, PrometheusRule), validated
offline against the openAPIV3Schema of the Operator's own CRDs, vendored unchanged in tests/support/crds/ from
prometheus-operator/prometheus-operator tag v0.93.0 (commit f8fafd475f3d, example/prometheus-operator-crd/
monitoring.coreos.com_{podmonitors,servicemonitors,prometheusrules}.yaml; Apache-2.0). Unknown fields are rejected
(the API server would prune them; `kubectl apply --validate=strict` refuses them). Not evaluated: the CRDs' CEL rules
(x-kubernetes-validations) and the Operator's own checks at reconcile time (it parses each rule's PromQL: promtool
does that here, tests/test_monitoring_manifests.py)."""

from __future__ import annotations

import copy
import functools
import re
from pathlib import Path
from typing import Any

import yaml

CRDS = Path(__file__).resolve().parent / "crds"
GROUP = "monitoring.coreos.com"
KINDS = {"PodMonitor": "podmonitors", "ServiceMonitor": "servicemonitors", "PrometheusRule": "prometheusrules"}
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_METADATA_FIELDS = {"name", "namespace", "labels", "annotations"}


def _closed(schema: Any) -> Any:
    """The schema with every object that lists its properties closed to others (additionalProperties: false),
    except where the CRD says x-kubernetes-preserve-unknown-fields."""
    if isinstance(schema, dict):
        schema = {key: _closed(value) for key, value in schema.items()}
        if ("properties" in schema and "additionalProperties" not in schema
                and not schema.get("x-kubernetes-preserve-unknown-fields")):  # fmt: skip
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_closed(item) for item in schema]
    return schema


@functools.cache
def crd_schema(kind: str, version: str = "v1") -> dict[str, Any]:
    """The openAPIV3Schema of ``kind`` at ``version`` from the vendored CRD, closed to unknown fields."""
    crd = yaml.safe_load((CRDS / f"{GROUP}_{KINDS[kind]}.yaml").read_text())
    assert crd["spec"]["names"]["kind"] == kind and crd["spec"]["group"] == GROUP
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version and v["served"]]
    return _closed(copy.deepcopy(served["schema"]["openAPIV3Schema"]))


def is_operator_kind(document: dict[str, Any]) -> bool:
    return str(document.get("apiVersion", "")).startswith(f"{GROUP}/")


def operator_kind_problem(document: dict[str, Any]) -> str | None:
    """The first way ``document`` breaks its CRD's schema (path: message), or None. A kind or version of the group
    without a vendored CRD is a problem, never waved through."""
    import jsonschema

    api_version, kind = document.get("apiVersion", ""), document.get("kind")
    if kind not in KINDS or api_version != f"{GROUP}/v1":
        return f"{api_version} {kind}: no vendored CRD schema (tests/support/crds/)"
    metadata = document.get("metadata") or {}
    if unknown := sorted(set(metadata) - _METADATA_FIELDS):
        return f"metadata: unknown fields {unknown}"
    if not _DNS_SUBDOMAIN.fullmatch(str(metadata.get("name", ""))):
        return f"metadata.name: {metadata.get('name')!r} is not a DNS subdomain"
    for field in ("labels", "annotations"):
        if not all(isinstance(v, str) for v in (metadata.get(field) or {}).values()):
            return f"metadata.{field}: values must be strings"
    errors = sorted(
        jsonschema.Draft7Validator(crd_schema(kind)).iter_errors(document), key=lambda e: list(e.absolute_path)
    )
    if errors:
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in errors[0].absolute_path).lstrip(".")
        return f"{where or '<top level>'}: {errors[0].message}"
    return None
