"""Deploy executor: unpacks the KFP artifacts (duck-typed), calls ``core.deploy``, and records the deployment as
artifact metadata and as JSON at ``deployment.path``. Imports no KFP."""

from __future__ import annotations

import json
from typing import Any

from kfp_mlops.components.deploy import core
from kfp_mlops.components.shared import outcomes, runs
from kfp_mlops.components.shared.artifacts import update_metadata, write_text_atomically
from kfp_mlops.components.shared.config import load_config


def run(config: str, model: Any, validation_data: Any, deployment: Any, run_id: str = "") -> int:
    """Deploy ``model`` as the pipeline config's ``deploy`` section says; returns the served version (0: not
    deployed). GPU instances when ``quantize.target`` is gpu (and ``deploy.instance_kind`` is auto)."""
    pipeline_config = load_config(config)
    settings = pipeline_config.deploy
    run_dir = runs.run_directory(deployment.uri, run_id) if run_id else ""
    try:
        result = core.deploy(
            model.path, validation_data.path, settings, gpu=pipeline_config.quantize.target == "gpu", holder=run_id
        )
    except core.DeployError as exc:
        print(f"[deploy] FAILED at {exc.stage}: {exc}")
        outcomes.record(run_dir, outcomes.DeployOutcome(deployed=False, failed=f"{exc.stage}: {exc}"))
        raise
    record: dict[str, Any] = {
        "deployed": result.deployment is not None,
        "status": result.status,
        "model": getattr(model, "uri", model.path),
        **(result.deployment.model_dump() if result.deployment else {}),
        "previous_version": result.previous_version or 0,
        "pruned": result.pruned,
        "replicas": result.replicas,
    }
    if result.deployment is not None:
        record["deployment"] = result.deployment.model_dump()  # what the serving record keeps (records.Deployment)
    update_metadata(deployment, record)
    write_text_atomically(deployment.path, json.dumps(record, indent=2))
    outcomes.record(run_dir, outcomes.DeployOutcome.model_validate(record))
    print(f"[deploy] {result.describe()}")
    return result.version
