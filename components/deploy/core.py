"""Deploy: put a model package into a Triton model repository as the next version of the served model, verify it
inside Triton before it can answer for the served name, promote it, and roll back on any failure. Paths and values
only; no KFP. Triton is driven over gRPC only (model control over HTTP stalls concurrent HTTP inference).

Repository layout (a local path, ``s3://`` or ``gs://``; the storage Triton reads)::

    <repo>/<name>/config.pbtxt               version_policy: specific [the served version], and nothing else
    <repo>/<name>/<N>/model.onnx             + model.py (python backend) + kfp-mlops.json (the commit marker)
    <repo>/<name>-candidate-<8 hex>/         only while a deployment runs: the same files, loaded for verification
    <repo>/<name>.deploy-lease.json          who deploys <name> now (a file: Triton scans folders only)

One deployment of a name at a time: the lease (``lease``) is taken first, renewed at each stage, released at the end.
Protocol: stage the candidate (``<name>-candidate-<8 hex>``, this deployment's own, version N) → load it on every
replica and verify it (rows against the package's own outputs, batch-1 latency) → commit ``<name>/<N>/`` (invisible
to Triton: the served config names the old version only) → promote (the served config names N, load ``<name>`` on
every replica, wait until N is ready; Triton answers with the old version until then) → remove the candidate, prune
old versions, resolve the replicas again and bring any newcomer in line. Any failure rolls back to the previous
version. See README.md.

Modules: ``lease`` (one deployment per name), ``package`` (the package, its Triton config, its reference outputs),
``repository`` (versions, markers, commits), ``replica`` (one Triton over gRPC), ``verification`` (answers and
latency), ``protocol`` (the rollout and its rollback, on the ``errors.Stage`` enum); this module is the entry point.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kfp_mlops.components.deploy.errors import DeployError, Stage
from kfp_mlops.components.deploy.lease import Lease
from kfp_mlops.components.deploy.package import Package, model_config
from kfp_mlops.components.deploy.protocol import DeployResult, Rollout
from kfp_mlops.components.deploy.replica import replica_endpoints
from kfp_mlops.components.deploy.repository import Repository
from kfp_mlops.components.deploy.verification import Verification
from kfp_mlops.components.shared import cancellation
from kfp_mlops.components.shared.config import DeployConfig

__all__ = ["DeployError", "DeployResult", "Stage", "Verification", "deploy", "model_config", "replica_endpoints"]


def deploy(
    model_dir: str,
    validation_path: str,
    settings: DeployConfig,
    gpu: bool = False,
    holder: str = "",
    after_promotion: Callable[[DeployResult], Any] | None = None,
) -> DeployResult:
    """Deploy the package at ``model_dir`` as the next version of ``settings.model_name`` (see the module
    docstring), verified on ``settings.verify.rows`` rows of the validation split at ``validation_path``.
    ``gpu`` chooses KIND_GPU instances when ``settings.instance_kind`` is auto; ``holder`` (the KFP run id) names
    this deployment in the lease. Idempotent: the package that already serves (same content and config) only has its
    readiness checked. Raises DeployError after rolling back; while it runs (on the main thread), SIGTERM (a cancelled
    KFP run) raises DeployError at CANCELLED where the deployment is, so that it rolls back (within 25 s) before the
    pod goes. ``after_promotion(result)`` runs under the lease once the version serves (or at once when nothing is
    deployed)."""
    if not settings.model_repository:
        result = DeployResult(status="not_deployed")
        if after_promotion is not None:
            after_promotion(result)
        return result
    package = Package.read(model_dir, settings, gpu)
    repository = Repository(settings.model_repository, settings.model_name)
    lease = Lease(settings.model_repository, settings.model_name, holder, settings.lease_seconds)
    with cancellation.on_sigterm(_cancelled, "roll the deployment back"):
        return Rollout(package, repository, settings, lease).run(validation_path, after_promotion)


def _cancelled(signum: int) -> None:
    raise DeployError(Stage.CANCELLED, f"cancelled (signal {signum})")
