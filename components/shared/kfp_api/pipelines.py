"""Pipelines, versions, experiments and runs on a KFP API server, each change idempotent: a pipeline is looked up by
display name before one is created, a version by name (``<package version>-<content hash>`` by default) before one is
uploaded, an experiment by name before one is created."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from kfp_mlops import __version__
from kfp_mlops.components.shared.kfp_api.client import PAGE_SIZE, KfpApiError, name_filter, normalised, on_server, pages

DEFAULT_EXPERIMENT = "Default"  # kfp.Client's default experiment name
# The account runs use (manifests/runner): it may launch TrainJobs; KFP's default (pipeline-runner, or a profile's
# default-editor) may not. Empty: the server's default.
RUNNER_SERVICE_ACCOUNT = "kfp-mlops-runner"
TERMINAL_STATES = frozenset({"SUCCEEDED", "FAILED", "SKIPPED", "CANCELED"})

CREATED_PIPELINE = "created pipeline"
ADDED_VERSION = "added version"
UNCHANGED = "unchanged"


@dataclass(frozen=True)
class UploadResult:
    pipeline_id: str
    pipeline_name: str
    version_id: str
    version_name: str
    action: str  # CREATED_PIPELINE, ADDED_VERSION or UNCHANGED

    def describe(self) -> str:
        pipeline = f"pipeline {self.pipeline_name} ({self.pipeline_id})"
        version = f"version {self.version_name} ({self.version_id})"
        if self.action == CREATED_PIPELINE:
            return f"created {pipeline} with {version}"
        if self.action == ADDED_VERSION:
            return f"uploaded {version} of {pipeline}"
        return f"{pipeline} already has {version} with this YAML: nothing uploaded"


@dataclass(frozen=True)
class SubmittedRun:
    run_id: str
    run_name: str
    experiment: str
    upload: UploadResult


@dataclass(frozen=True)
class RunOutcome:
    run_id: str
    state: str
    error: str
    seconds: float

    @property
    def succeeded(self) -> bool:
        return self.state == "SUCCEEDED"


def run_url(ui_host: str, run_id: str) -> str:
    """The run's page in the KFP UI, or "" without a host."""
    return f"{ui_host.rstrip('/')}/#/runs/details/{run_id}" if ui_host else ""


# --- pipelines and versions ---------------------------------------------------------------------------------------


def pipeline_display_name(package: Path) -> str:
    """The pipeline's name in the compiled YAML (``pipelineInfo.name``), as kfp.Client names uploads."""
    name = (_documents(package)[0].get("pipelineInfo") or {}).get("name")
    if not name:
        raise ValueError(f"{package}: no pipelineInfo.name: not a compiled KFP pipeline")
    return name


def content_hash(package: Path) -> str:
    """Short SHA-256 of the compiled YAML's bytes."""
    return hashlib.sha256(Path(package).read_bytes()).hexdigest()[:12]


def default_version_name(package: Path) -> str:
    return f"{__version__}-{content_hash(package)}"


def spec_struct(package: Path) -> dict[str, Any]:
    """The compiled YAML as the server returns a version's ``pipeline_spec``: the pipeline spec alone, or with a
    platform spec ``{"pipeline_spec": ..., "platform_spec": ...}`` (backend YamlStringToPipelineSpecStruct)."""
    documents = _documents(package)
    platform = [d for d in documents[1:] if isinstance(d.get("platforms"), dict) and "kubernetes" in d["platforms"]]
    if not platform:
        return documents[0]
    return {"pipeline_spec": documents[0], "platform_spec": platform[0]}


def _documents(package: Path) -> list[dict[str, Any]]:
    documents = [d for d in yaml.safe_load_all(Path(package).read_text()) if d]
    if not documents or not all(isinstance(d, dict) for d in documents):
        raise ValueError(f"{package}: not a compiled KFP pipeline YAML")
    return documents


@on_server
def upload_pipeline(
    client: Any, package: Path, *, version_name: str = "", description: str = "", namespace: str = ""
) -> UploadResult:
    """Create the pipeline (named by the YAML) with one version, or add a version to the existing pipeline, unless
    a version of that name exists: then nothing is uploaded (a different spec under that name is an error)."""
    display_name = pipeline_display_name(package)
    version_name = version_name or default_version_name(package)
    pipeline, created = _create_pipeline(client, display_name, description, namespace)
    if created:
        try:
            version, _ = _upload_version(client, package, pipeline.pipeline_id, version_name, description)
        except Exception:
            _delete_quietly(lambda: client.delete_pipeline(pipeline.pipeline_id))  # leave no empty pipeline behind
            raise
        return UploadResult(
            pipeline.pipeline_id, display_name, version.pipeline_version_id, version_name, CREATED_PIPELINE
        )
    version = _find_version(client, pipeline.pipeline_id, version_name)
    if version is None:
        version, created = _upload_version(client, package, pipeline.pipeline_id, version_name, description)
        if created:
            return UploadResult(
                pipeline.pipeline_id, display_name, version.pipeline_version_id, version_name, ADDED_VERSION
            )
    if version.pipeline_spec is not None and normalised(version.pipeline_spec) != normalised(spec_struct(package)):
        raise KfpApiError(
            f"version {version_name!r} of pipeline {display_name!r} exists with a different pipeline spec: "
            "pass another version name",
            2,
        )
    return UploadResult(pipeline.pipeline_id, display_name, version.pipeline_version_id, version_name, UNCHANGED)


def _find_pipeline(client: Any, display_name: str, namespace: str) -> Any:
    matches = list(
        pages(
            lambda token: client.list_pipelines(
                page_token=token, page_size=PAGE_SIZE, filter=name_filter(display_name), namespace=namespace or None
            ),
            "pipelines",
        )
    )
    matches = [p for p in matches if p.display_name == display_name]
    if len(matches) > 1:
        ids = ", ".join(p.pipeline_id for p in matches)
        raise KfpApiError(f"{len(matches)} pipelines are named {display_name!r} ({ids}): delete all but one", 2)
    return matches[0] if matches else None


def _create_pipeline(client: Any, display_name: str, description: str, namespace: str) -> tuple[Any, bool]:
    """The pipeline named ``display_name`` and whether this call created it (without versions)."""
    import kfp_server_api

    pipeline = _find_pipeline(client, display_name, namespace)
    if pipeline is not None:
        return pipeline, False
    body = kfp_server_api.V2beta1Pipeline(
        display_name=display_name, description=description or None, namespace=namespace or None
    )
    try:
        return client.pipelines.pipeline_service_create_pipeline(pipeline=body), True
    except kfp_server_api.ApiException as exc:
        pipeline = _find_pipeline(client, display_name, namespace) if exc.status == 409 else None
        if pipeline is None:  # 409: created meanwhile by someone else, then use it
            raise
        return pipeline, False


def _find_version(client: Any, pipeline_id: str, version_name: str) -> Any:
    versions = pages(
        lambda token: client.list_pipeline_versions(
            pipeline_id, page_token=token, page_size=PAGE_SIZE, filter=name_filter(version_name)
        ),
        "pipeline_versions",
    )
    return next((v for v in versions if version_name in (v.display_name, getattr(v, "name", None))), None)


def _upload_version(
    client: Any, package: Path, pipeline_id: str, version_name: str, description: str
) -> tuple[Any, bool]:
    """Upload ``package`` as version ``version_name``; a 409 (uploaded meanwhile) returns that version, False."""
    import kfp_server_api

    try:
        return client.pipeline_uploads.upload_pipeline_version(
            str(package), name=version_name, pipelineid=pipeline_id, description=description or None
        ), True
    except kfp_server_api.ApiException as exc:
        existing = _find_version(client, pipeline_id, version_name) if exc.status == 409 else None
        if existing is None:
            raise
        return existing, False


def _delete_quietly(delete: Callable[[], Any]) -> None:
    try:
        delete()
    except Exception:  # noqa: BLE001 - best effort; the original error is what the user needs
        pass


# --- experiments and runs -----------------------------------------------------------------------------------------


@on_server
def ensure_experiment(client: Any, name: str, namespace: str = "") -> str:
    """The id of the experiment named ``name``, created if there is none."""
    import kfp_server_api

    experiment_id = find_experiment(client, name, namespace)
    if experiment_id:
        return experiment_id
    body = kfp_server_api.V2beta1Experiment(display_name=name, namespace=namespace or None)
    try:
        return client.experiments.experiment_service_create_experiment(experiment=body).experiment_id
    except kfp_server_api.ApiException as exc:
        experiment_id = find_experiment(client, name, namespace) if exc.status == 409 else ""
        if not experiment_id:
            raise
        return experiment_id


@on_server
def find_experiment(client: Any, name: str, namespace: str = "") -> str:
    """The id of the experiment named ``name``, or ""."""
    experiments = pages(
        lambda token: client.list_experiments(
            page_token=token, page_size=PAGE_SIZE, filter=name_filter(name), namespace=namespace or None
        ),
        "experiments",
    )
    return next((e.experiment_id for e in experiments if e.display_name == name), "")


@on_server
def submit_run(
    client: Any,
    package: Path,
    arguments: dict[str, Any],
    *,
    experiment: str = DEFAULT_EXPERIMENT,
    run_name: str = "",
    namespace: str = "",
    service_account: str = "",
) -> SubmittedRun:
    """Start a run of the uploaded version whose YAML is ``package`` (uploaded first if absent), as
    ``service_account`` (empty: the server's default)."""
    uploaded = upload_pipeline(client, package, namespace=namespace)
    return _create_run(client, uploaded, arguments, experiment, run_name, namespace, service_account)


@on_server
def submit_uploaded(
    client: Any,
    pipeline_name: str,
    arguments: dict[str, Any],
    *,
    experiment: str = DEFAULT_EXPERIMENT,
    run_name: str = "",
    namespace: str = "",
    service_account: str = "",
) -> SubmittedRun:
    """Start a run of the newest version of the pipeline uploaded as ``pipeline_name`` (e.g. the monitoring pipeline
    retraining through the training pipeline the operator uploaded)."""

    pipeline = _find_pipeline(client, pipeline_name, namespace)
    if pipeline is None:
        raise KfpApiError(f"no pipeline named {pipeline_name!r} is uploaded: upload it first", 2)
    versions = client.list_pipeline_versions(pipeline.pipeline_id, page_size=1, sort_by="created_at desc")
    newest = (versions.pipeline_versions or [None])[0]
    if newest is None:
        raise KfpApiError(f"pipeline {pipeline_name!r} has no version", 2)
    upload = UploadResult(
        pipeline.pipeline_id, pipeline_name, newest.pipeline_version_id, newest.display_name, UNCHANGED
    )
    return _create_run(client, upload, arguments, experiment, run_name, namespace, service_account)


def _create_run(
    client: Any,
    version: UploadResult,
    arguments: dict[str, Any],
    experiment: str,
    run_name: str,
    namespace: str,
    service_account: str,
) -> SubmittedRun:
    """A run of ``version`` in ``experiment`` (created if absent), named after the pipeline and the time."""
    import kfp_server_api

    experiment_id = ensure_experiment(client, experiment, namespace)
    run_name = run_name or f"{version.pipeline_name} {datetime.now(UTC):%Y-%m-%d %H-%M-%S}"
    body = kfp_server_api.V2beta1Run(
        display_name=run_name,
        experiment_id=experiment_id,
        pipeline_version_reference=kfp_server_api.V2beta1PipelineVersionReference(
            pipeline_id=version.pipeline_id, pipeline_version_id=version.version_id
        ),
        runtime_config=kfp_server_api.V2beta1RuntimeConfig(parameters=dict(arguments)),
        service_account=service_account or None,
    )
    run = client.runs.run_service_create_run(run=body)
    return SubmittedRun(run.run_id, run_name, experiment, version)


@on_server
def list_runs(client: Any, *, experiment: str = "", limit: int = 20, namespace: str = "") -> list[Any]:
    """The latest ``limit`` runs, newest first, of one experiment or of all."""
    if limit < 1:
        raise ValueError(f"limit {limit}: expected at least 1")
    experiment_id = None
    if experiment:
        experiment_id = find_experiment(client, experiment, namespace)
        if not experiment_id:
            raise KfpApiError(f"no experiment named {experiment!r}", 2)
    runs = pages(
        lambda token: client.list_runs(
            page_token=token,
            page_size=min(limit, PAGE_SIZE),
            sort_by="created_at desc",
            experiment_id=experiment_id,
            namespace=namespace or None,
        ),
        "runs",
    )
    return [run for _, run in zip(range(limit), runs, strict=False)]
