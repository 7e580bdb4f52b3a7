"""Deploy executor: unpacks the KFP artifacts (duck-typed), calls ``core.deploy``, and records the deployment as
artifact metadata and as JSON at ``deployment.path``. Imports no KFP."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

from kfp_mlops.components.deploy import core
from kfp_mlops.components.shared import observability, outcomes, registry, runs, tracking
from kfp_mlops.components.shared.artifacts import update_metadata, write_text_atomically
from kfp_mlops.components.shared.config import load_config
from kfp_mlops.components.shared.records import read_record
from kfp_mlops.components.shared.registry import RegistryState
from kfp_mlops.components.shared.tracking import StepLog, Tracker


def run(config: str, model: Any, validation_data: Any, deployment: Any, run_id: str = "") -> int:
    """Deploy ``model`` as the pipeline config's ``deploy`` section says; returns the served version (0: not
    deployed). GPU instances when ``quantize.target`` is gpu (and ``deploy.instance_kind`` is auto). With a model
    registry, the package is registered first and the aliases move once Triton serves it (``registry``)."""
    started = time.monotonic()
    pipeline_config = load_config(config)
    settings = pipeline_config.deploy
    run_dir = runs.run_directory(deployment.uri, run_id) if run_id else ""
    tracker = tracking.for_step(pipeline_config.tracking, run_id, run_dir, "deploy-model")
    lineage = {key: str(model.metadata[key]) for key in LINEAGE_METADATA if key in model.metadata}
    version = registry.register(tracker, settings.model_name, model.path, {**lineage, "package": _uri(model)})
    moved: dict[str, RegistryState] = {}

    def move_aliases(result: core.DeployResult) -> None:  # under the deploy lease
        if version is None:
            note = f"registry unreachable: {tracker.failed}" if tracker.failed else "no registry configured"
            moved["state"] = RegistryState(model_name=settings.model_name, note=note)
            return
        reconcile(tracker, pipeline_config.evaluate.baseline, settings.model_name)
        served = result.deployment
        moved["state"] = registry.promote(
            tracker,
            version,
            served.version if served else 0,
            served.repository if served else "",
            datetime.now(UTC).isoformat(),
        )

    try:
        result = core.deploy(model.path, validation_data.path, settings, gpu=pipeline_config.quantize.target == "gpu",
                             holder=run_id, after_promotion=move_aliases)  # fmt: skip
    except core.DeployError as exc:
        print(f"[deploy] FAILED at {exc.stage}: {exc}")
        outcomes.record(run_dir, outcomes.DeployOutcome(deployed=False, failed=f"{exc.stage}: {exc}"))
        tracker.log_step(StepLog(tags={"deploy.failed": f"{exc.stage}: {exc}"}), failed=True)
        raise
    state = moved.get("state") or RegistryState(model_name=settings.model_name, note="not reached")
    record: dict[str, Any] = {
        "deployed": result.deployment is not None,
        "status": result.status,
        "model": _uri(model),
        **(result.deployment.model_dump() if result.deployment else {}),
        "previous_version": result.previous_version or 0,
        "pruned": result.pruned,
        "replicas": result.replicas,
        "registry": state.model_dump(),
    }
    if result.deployment is not None:
        record["deployment"] = result.deployment.model_dump()  # what the serving record keeps (records.Deployment)
    update_metadata(deployment, record)
    write_text_atomically(deployment.path, json.dumps(record, indent=2))
    outcomes.record(
        run_dir, outcomes.DeployOutcome.model_validate({k: v for k, v in record.items() if k != "registry"})
    )
    print(f"[deploy] {result.describe()}")
    print(f"[deploy] registry: {describe(state)}")
    served = result.deployment
    tags = {
        "deploy.status": result.status,
        "triton.version": str(result.version),
        "triton.previous_version": str(result.previous_version or 0),
        "triton.repository": served.repository if served else "",
        "triton.endpoint": served.endpoint if served else "",
        "registry.version": str(state.version),
        "registry.aliases_moved": str(state.aliases_moved),
    }
    verified = {f"verified.{key}": value for key, value in (served.verified if served else {}).items()}
    tracker.log_step(StepLog(metrics=verified, tags=tags))
    tracker.tag_pipeline({"deployed.version": str(result.version), "registry.version": str(state.version)})
    observability.push_step(pipeline_config, run_dir, run_id, "deploy-model", started,
                            {observability.DEPLOYED_VERSION: result.version})  # fmt: skip
    return result.version


LINEAGE_METADATA = ("content_hash", "precision", "source_model", "max_abs_diff", "latency_ms_batch1", "task")


def _uri(model: Any) -> str:
    return getattr(model, "uri", model.path)


def describe(state: RegistryState) -> str:
    if state.aliases_moved:
        return f"{state.model_name} version {state.version} is the champion"
    if state.version:
        return f"{state.model_name} version {state.version} registered; aliases not moved ({state.note})"
    return f"not registered ({state.note})"


def reconcile(tracker: Tracker, record_uri: str, name: str) -> None:
    """What the serving record says served while the registry could not be reached (aliases not moved) is
    registered now, if need be, and made the champion, so this deployment's ``previous`` is what really served."""
    record = read_record(record_uri) if record_uri else None
    state = record.registry if record is not None else None
    if record is None or record.deployment is None or state is None or state.aliases_moved:
        return
    if record.deployment.model_name != name:
        return
    version = registry.register_served(tracker, name, record.model, record.run_id,
                                       {"content_hash": record.content_hash, "package": record.model})  # fmt: skip
    if version is not None:
        registry.promote(tracker, version, record.deployment.version, record.deployment.repository,
                         record.recorded_at)  # fmt: skip
        print(f"[deploy] registry: reconciled {name} version {version.version} (served as Triton version "
              f"{record.deployment.version}, deployed while the registry was unreachable)")  # fmt: skip
