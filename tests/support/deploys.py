"""A deployment in a process of its own (for tests of concurrent deployments): ``deploy_in_process`` is what a
spawned worker runs, as a deploy step's pod would."""

from __future__ import annotations

import os
from typing import Any


def deploy_in_process(
    model_dir: str, validation: str, settings: dict[str, Any], holder: str, env: dict[str, str]
) -> dict[str, Any]:
    """``core.deploy`` with ``env`` set (the storage endpoint and credentials); what it returned or raised."""
    os.environ.update(env)
    from kfp_mlops.components.deploy import core
    from kfp_mlops.components.shared.config import DeployConfig

    try:
        result = core.deploy(model_dir, validation, DeployConfig(**settings), holder=holder)
    except core.DeployError as exc:
        return {"holder": holder, "stage": str(exc.stage), "error": str(exc), "rolled_back": exc.rolled_back}
    return {"holder": holder, "status": result.status, "version": result.version}
