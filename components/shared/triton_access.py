"""Access to Triton's model-control API, shared by the deploy step, `kfp-mlops local up` and the manifests.

Triton serves model control (load, unload, repository index: the ``model-repository`` protocol) only to requests that
carry the header ``CONTROL_HEADER`` with the key Triton was started with (``--grpc-restricted-protocol`` and
``--http-restricted-api``, see triton-inference-server/server ``docs/customization_guide/inference_protocols.md``);
inference stays open. Over gRPC, Triton expects the header with the prefix ``triton-grpc-protocol-`` (its answer
without it, checked on Triton 2.51: "This protocol is restricted, expecting header
'triton-grpc-protocol-kfp-mlops-control-key'", status UNAVAILABLE); over HTTP, the name as given (403 without it).
In a cluster the key is the ``CONTROL_SECRET_KEY`` entry of the Kubernetes Secret ``CONTROL_SECRET``, given to
Triton's container and to the deploy step as the environment variable ``CONTROL_ENV``.
"""

from __future__ import annotations

import os

CONTROL_HEADER = "kfp-mlops-control-key"  # the name in Triton's arguments and the HTTP header (lower case: gRPC)
GRPC_HEADER_PREFIX = "triton-grpc-protocol-"
REFUSED_MESSAGE = "This protocol is restricted"  # how Triton's gRPC answer to a request without the key begins
CONTROL_ENV = "KFP_MLOPS_TRITON_CONTROL_KEY"
CONTROL_SECRET = "kfp-mlops-triton-control"
CONTROL_SECRET_KEY = "control-key"
RESTRICTED_PROTOCOLS = ("model-repository",)


def control_headers(protocol: str = "grpc") -> dict[str, str]:
    """The header a model-control call over ``protocol`` (grpc or http) sends: the key from ``CONTROL_ENV``, or
    none where it is unset (a Triton started without the restriction, such as a plain local one)."""
    key = os.environ.get(CONTROL_ENV, "")
    if not key:
        return {}
    return {(GRPC_HEADER_PREFIX if protocol == "grpc" else "") + CONTROL_HEADER: key}


def refusal_hint() -> str:
    """What to do when Triton refuses model control for want of the key."""
    where = "is not the one Triton was started with" if os.environ.get(CONTROL_ENV) else "is not set"
    return (
        f"Triton restricts model control to requests carrying its key, and {CONTROL_ENV} {where} (in a cluster: "
        f"the Kubernetes Secret {CONTROL_SECRET}, key {CONTROL_SECRET_KEY}, given to the deploy step and to Triton)"
    )


def restriction_args(key: str) -> list[str]:
    """Triton's command-line arguments that restrict model control to requests carrying ``key``."""
    protocols = ",".join(RESTRICTED_PROTOCOLS)
    return [
        f"--grpc-restricted-protocol={protocols}:{CONTROL_HEADER}={key}",
        f"--http-restricted-api={protocols}:{CONTROL_HEADER}={key}",
    ]
