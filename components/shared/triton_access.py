"""Access to Triton's model-control API, shared by the deploy step, `kfp-mlops local up` and the manifests.

Triton serves model control (load, unload, repository index: the ``model-repository`` protocol) only to requests that
carry the header ``CONTROL_HEADER`` with the key Triton was started with (``--grpc-restricted-protocol`` and
``--http-restricted-api``, see triton-inference-server/server ``docs/customization_guide/inference_protocols.md``);
inference stays open. In a cluster the key is the ``CONTROL_SECRET_KEY`` entry of the Kubernetes Secret
``CONTROL_SECRET``, given to Triton's container and to the deploy step as the environment variable ``CONTROL_ENV``.
"""

from __future__ import annotations

import os

CONTROL_HEADER = "kfp-mlops-control-key"  # gRPC metadata / HTTP header name (lower case: gRPC requires it)
CONTROL_ENV = "KFP_MLOPS_TRITON_CONTROL_KEY"
CONTROL_SECRET = "kfp-mlops-triton-control"
CONTROL_SECRET_KEY = "control-key"
RESTRICTED_PROTOCOLS = ("model-repository",)


def control_headers() -> dict[str, str]:
    """The header a model-control call sends: the key from ``CONTROL_ENV``, or none where it is unset (a Triton
    started without the restriction, such as a plain local one)."""
    key = os.environ.get(CONTROL_ENV, "")
    return {CONTROL_HEADER: key} if key else {}


def restriction_args(key: str) -> list[str]:
    """Triton's command-line arguments that restrict model control to requests carrying ``key``."""
    protocols = ",".join(RESTRICTED_PROTOCOLS)
    return [
        f"--grpc-restricted-protocol={protocols}:{CONTROL_HEADER}={key}",
        f"--http-restricted-api={protocols}:{CONTROL_HEADER}={key}",
    ]
