"""The MLflow model registry: a blessed model is a version of the registered model ``deploy.model_name``, with the
ONNX package as its artifact and its lineage as tags; deploy moves the aliases after Triton verified and promoted it.

- ``champion``: the version that serves; ``previous``: the one that served before it (a rollback moves it back).
- Aliases move only under the deploy lease (``components/deploy/lease.py``), right after promotion, so they follow
  the deployment that won; and never to a version older in Triton than the champion of the same repository (a
  later deployment's alias stands: the rule of ``records.supersedes``).
- Registering is idempotent: a retried deploy finds the version its first attempt made (tag ``kfp.run_id``).
- When the registry could not be reached, the serving record says so (``RegistryState.aliases_moved`` false) and
  the next deploy reconciles: it registers what serves and makes it the champion before moving on.

Every call goes through ``Tracker.guarded``: a registry failure never fails the deployment (unless required).
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from kfp_mlops.components.shared import storage
from kfp_mlops.components.shared.tracking import TAG_RUN, TAG_TASK, Tracker

CHAMPION = "champion"
PREVIOUS = "previous"
MODEL_FOLDER = "model"  # the package, as the deploy step's run's artifact
TAG_TRITON_VERSION = "triton.version"
TAG_TRITON_REPOSITORY = "triton.repository"
TAG_DEPLOYED_AT = "triton.deployed_at"


class RegistryState(BaseModel):
    """What the registry holds of a deployment (kept in the serving record and the deployment's metadata)."""

    model_config = ConfigDict(extra="forbid")

    model_name: str
    version: int = 0  # 0: not registered (the registry could not be reached)
    aliases_moved: bool = False
    note: str = ""  # why not, when not


@dataclass(frozen=True)
class Version:
    """A model version as evaluate and lineage read it."""

    name: str
    version: int
    source: str  # the artifact URI of the package
    run_id: str  # the MLflow run that registered it
    tags: dict[str, str] = field(default_factory=dict)
    aliases: list[str] = field(default_factory=list)

    @property
    def triton_version(self) -> int:
        return int(self.tags.get(TAG_TRITON_VERSION, "0") or 0)


def as_version(found: Any) -> Version:
    return Version(found.name, int(found.version), found.source, found.run_id or "", dict(found.tags or {}),
                   list(getattr(found, "aliases", []) or []))  # fmt: skip


def register(tracker: Tracker, name: str, package_dir: str, tags: dict[str, str]) -> Version | None:
    """The version of ``name`` for this KFP run's model (created once: a retry finds it), its package uploaded as
    the artifact ``model/`` of this step's run; None when tracking is off or failed."""
    if not (tracker.enabled and tracker.settings.registry):
        return None

    def create() -> Version:
        client = tracker.client
        existing = find_by_run(tracker, name, tags.get(TAG_RUN, tracker.run_id))
        if existing is not None:
            return existing
        run = tracker.step_run()
        client.log_artifacts(run.info.run_id, package_dir, MODEL_FOLDER)
        if not client.search_registered_models(filter_string=f"name = '{name}'"):
            try:
                client.create_registered_model(name, description="kfp-mlops: blessed models; champion serves")
            except Exception:  # another run created it meanwhile
                client.get_registered_model(name)
        source = f"{run.info.artifact_uri.rstrip('/')}/{MODEL_FOLDER}"
        created = client.create_model_version(name, source, run_id=run.info.run_id, tags={TAG_RUN: tracker.run_id,
                                                                                        **tags})  # fmt: skip
        return as_version(created)

    return tracker.guarded(f"register model {name}", create)


def find_by_run(tracker: Tracker, name: str, kfp_run_id: str) -> Version | None:
    found = tracker.client.search_model_versions(f"name = '{name}' and tags.`{TAG_RUN}` = '{kfp_run_id}'")
    return as_version(min(found, key=lambda v: int(v.version))) if found else None


def champion(tracker: Tracker, name: str) -> Version | None:
    """The version the alias ``champion`` names, None without one (or when the registry is off or unreachable)."""
    if not (tracker.enabled and tracker.settings.registry):
        return None
    return tracker.guarded(f"read the champion of {name}", lambda: alias(tracker, name, CHAMPION))


def alias(tracker: Tracker, name: str, which: str) -> Version | None:
    try:
        return as_version(tracker.client.get_model_version_by_alias(name, which))
    except Exception as exc:
        if "RESOURCE_DOES_NOT_EXIST" in str(getattr(exc, "error_code", "")) or "not found" in str(exc).lower():
            return None
        raise


def promote(
    tracker: Tracker, version: Version, triton_version: int, repository: str, deployed_at: str
) -> RegistryState:
    """Make ``version`` the champion (the one before it ``previous``) now that Triton serves it as
    ``triton_version`` from ``repository``; see the module docstring. Call it under the deploy lease."""
    state = RegistryState(model_name=version.name, version=version.version)

    def move() -> RegistryState:
        client, name = tracker.client, version.name
        for key, value in ((TAG_TRITON_VERSION, triton_version), (TAG_TRITON_REPOSITORY, repository),
                           (TAG_DEPLOYED_AT, deployed_at)):  # fmt: skip
            client.set_model_version_tag(name, str(version.version), key, str(value))
        current = alias(tracker, name, CHAMPION)
        if current is not None and current.version == version.version:
            return state.model_copy(update={"aliases_moved": True})
        if (
            current is not None
            and current.tags.get(TAG_TRITON_REPOSITORY) == repository
            and current.triton_version > triton_version
        ):
            return state.model_copy(
                update={
                    "note": f"champion stays version {current.version}: Triton serves its "
                    f"version {current.triton_version}, later than {triton_version}"
                }
            )
        if current is not None:
            client.set_registered_model_alias(name, PREVIOUS, str(current.version))
        client.set_registered_model_alias(name, CHAMPION, str(version.version))
        return state.model_copy(update={"aliases_moved": True})

    moved = tracker.guarded(f"move the aliases of {version.name}", move)
    return moved or state.model_copy(update={"note": f"registry unreachable: {tracker.failed}"})


def register_served(
    tracker: Tracker, name: str, model_uri: str, kfp_run_id: str, tags: dict[str, str]
) -> Version | None:
    """Reconciliation: the version of the model a previous deploy served while the registry was unreachable,
    registered now from its package at ``model_uri`` (unless it already is)."""
    if not (tracker.enabled and tracker.settings.registry):
        return None
    existing = tracker.guarded("look up a served model", lambda: find_by_run(tracker, name, kfp_run_id))
    if existing is not None or not tracker.enabled:
        return existing
    with tempfile.TemporaryDirectory(prefix="kfp-mlops-served-") as local:
        if not storage.copy_tree(model_uri, local):
            return None
        return register(tracker, name, local, {**tags, TAG_RUN: kfp_run_id})


def evaluation_metrics(tracker: Tracker, version: Version) -> dict[str, float]:
    """The metrics the evaluate step logged for the run that trained ``version`` ({} when none can be read)."""

    def read() -> dict[str, float]:
        kfp_run = version.tags.get(TAG_RUN, "")
        found = tracker.client.search_runs(
            [tracker.experiment_id()], f"tags.`{TAG_RUN}` = '{kfp_run}' and tags.`{TAG_TASK}` = 'evaluate-model'"
        )
        logged = found[0].data.metrics if found else {}
        return {name: value for name, value in logged.items() if not name.startswith("baseline.")}

    return tracker.guarded(f"read the metrics of {version.name} version {version.version}", read) or {}


def download(tracker: Tracker, version: Version, destination: str) -> list[str]:
    """The version's package, downloaded into the folder ``destination``; returns its files' names."""
    from mlflow.artifacts import download_artifacts

    with tempfile.TemporaryDirectory(prefix="kfp-mlops-download-") as staging:
        folder = Path(download_artifacts(artifact_uri=version.source, dst_path=staging, tracking_uri=tracker.uri))
        for item in folder.iterdir():
            shutil.move(str(item), Path(destination) / item.name)
    return sorted(item.name for item in Path(destination).iterdir())
