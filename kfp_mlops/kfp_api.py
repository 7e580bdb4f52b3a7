"""Upload, run and schedule compiled pipelines on a Kubeflow Pipelines server (v2beta1 API) through ``kfp.Client``.

Every remote change is idempotent: a pipeline is looked up by display name before one is created, a version by name
(``<package version>-<content hash>`` by default) before one is uploaded, an experiment by name, a recurring run
(schedule) by name and compared before it is replaced. Errors are ``KfpApiError`` with a one-line message and an exit
code: 2 when the command line must change (credentials, names, input the server rejects), 1 when the server failed,
could not be reached in time, or a run did not succeed. Tokens are never logged. No argparse here (see cluster_cli).
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from kfp_mlops.components.shared.errors import ServiceError

if TYPE_CHECKING:
    import kfp.client

DEFAULT_TIMEOUT_SECONDS = 30.0
DEFAULT_EXPERIMENT = "Default"  # kfp.Client's default experiment name
# The account runs use (manifests/runner): it may launch TrainJobs; KFP's default (pipeline-runner, or a profile's
# default-editor) may not. Empty: the server's default.
RUNNER_SERVICE_ACCOUNT = "kfp-mlops-runner"
TERMINAL_STATES = frozenset({"SUCCEEDED", "FAILED", "SKIPPED", "CANCELED"})
MAX_CONCURRENCY_RANGE = range(1, 11)  # the API server accepts 1 to 10
PAGE_SIZE = 100
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)  # the server's "not set" for finished_at

CREATED_PIPELINE = "created pipeline"
ADDED_VERSION = "added version"
UNCHANGED = "unchanged"

# Filter operations as kfp.Client sends them (backend/api/v2beta1/filter.proto).
_EQUALS = 1
_CRON_FIELDS = (  # name, lowest, highest, names accepted (robfig/cron, which the KFP backend parses with)
    ("second", 0, 59, ()),
    ("minute", 0, 59, ()),
    ("hour", 0, 23, ()),
    ("day of month", 1, 31, ()),
    ("month", 1, 12, ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")),
    ("day of week", 0, 6, ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")),
)
_CRON_DESCRIPTORS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
_CRON_EVERY = re.compile(r"@every (\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+")
_CRON_PART = re.compile(r"(?P<range>\*|\?|[0-9A-Za-z]+(-[0-9A-Za-z]+)?)(/(?P<step>\d+))?")


class KfpApiError(ServiceError):
    """A cluster operation failed; ``exit_code`` is 2 if the command line must change, 1 if the server failed."""


@dataclass(frozen=True)
class Connection:
    """How to reach the KFP API: what ``kfp.Client`` accepts. No host: kube config (``kube_context``) or, in a pod,
    the in-cluster service with the pod's service-account token. ``timeout``: seconds per request."""

    host: str = ""
    namespace: str = ""
    existing_token: str = field(default="", repr=False)
    kube_context: str = ""
    ssl_ca_cert: str = ""
    ui_host: str = ""
    timeout: float = DEFAULT_TIMEOUT_SECONDS

    def __post_init__(self) -> None:
        if self.host and not self.host.startswith(("http://", "https://")):
            raise ValueError(f"--host {self.host!r}: expected a URL starting with http:// or https://")
        if not self.timeout > 0:
            raise ValueError(f"request timeout must be > 0 seconds, got {self.timeout}")


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


@dataclass(frozen=True)
class Schedule:
    """A recurring run: ``cron`` has KFP's 6 fields (seconds first); ``start``/``end`` are timezone-aware."""

    name: str
    cron: str
    arguments: dict[str, Any] = field(default_factory=dict)
    max_concurrency: int = 1
    catchup: bool = True
    start: datetime | None = None
    end: datetime | None = None
    service_account: str = ""  # empty: the server's default

    def __post_init__(self) -> None:
        if not self.name.strip():
            raise ValueError("schedule name is empty")
        validate_cron(self.cron)
        if self.max_concurrency not in MAX_CONCURRENCY_RANGE:
            raise ValueError(f"--max-concurrency {self.max_concurrency}: the KFP server accepts 1 to 10")
        for label, moment in (("start", self.start), ("end", self.end)):
            if moment is not None and moment.tzinfo is None:
                raise ValueError(f"--{label} {moment.isoformat()}: needs a timezone, e.g. 2026-01-01T00:00:00Z")
        if self.start and self.end and self.end <= self.start:
            raise ValueError(f"--end {self.end.isoformat()} is not after --start {self.start.isoformat()}")


@dataclass(frozen=True)
class ScheduleResult:
    name: str
    recurring_run_ids: list[str]
    action: str  # created, replaced, unchanged, paused, resumed, deleted
    changes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        ids = ", ".join(self.recurring_run_ids) or "-"
        text = f"schedule {self.name!r} ({ids}): {self.action}"
        if self.action == UNCHANGED:
            text += ", the same spec is already scheduled: nothing to do"
        return text + "".join(f"\n  {change}" for change in self.changes)


# --- connection ---------------------------------------------------------------------------------------------------


def connect(connection: Connection) -> kfp.client.Client:
    """A ``kfp.Client`` whose every request gives up after ``connection.timeout`` seconds. Its health check at
    construction is one attempt, and a multi-user server without a namespace is refused with a clear error."""
    with _explained(connection.host or "the KFP server", connection.timeout, connection.namespace):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="This client only works with", category=FutureWarning)
            client = _bounded_client_class()(
                request_timeout=connection.timeout,
                host=connection.host or None,
                namespace=connection.namespace or "kubeflow",  # kfp.Client's "not set"
                existing_token=connection.existing_token or None,
                kube_context=connection.kube_context or None,
                ssl_ca_cert=connection.ssl_ca_cert or None,
                ui_host=connection.ui_host or None,
            )
    if client.multi_user and not client.get_user_namespace():
        raise KfpApiError(f"{client.kfp_host} is a multi-user deployment: pass --namespace (your profile)", 2)
    return client


@functools.cache
def _bounded_client_class() -> type:
    """Defined on first use: importing kfp takes a second, and the CLI imports this module for every command."""
    import kfp.client
    import kfp_server_api
    import urllib3

    class BoundedRESTClient(kfp_server_api.rest.RESTClientObject):
        """Gives every request a (connect, read) timeout unless the call sets its own."""

        def __init__(self, configuration: Any, timeout: float) -> None:
            super().__init__(configuration)
            self.timeout = (timeout, timeout)

        def request(self, method: str, url: str, *args: Any, _request_timeout: Any = None, **kwargs: Any) -> Any:
            return super().request(method, url, *args, _request_timeout=_request_timeout or self.timeout, **kwargs)

    class BoundedClient(kfp.client.Client):
        """kfp.Client with bounded requests: kfp.Client sets no timeout, urllib3 would retry a stalled read 3 times,
        and the constructor's health check is tried 5 times, 5 s apart, even on 401. Requests are not retried and
        redirects are returned, not followed, so a login page in front of the API is reported as such."""

        def __init__(self, *, request_timeout: float, **kwargs: Any) -> None:
            self.request_timeout = request_timeout
            self.multi_user = False
            super().__init__(**kwargs)
            self._bound_requests()
            self.kfp_host = kwargs.get("host") or self._existing_config.host  # named in error messages
            self.kfp_namespace = self.get_user_namespace()

        def _bound_requests(self) -> None:
            api_client = self._healthz_api.api_client  # one ApiClient, shared by every API of this client
            if not isinstance(api_client.rest_client, BoundedRESTClient):
                api_client.configuration.retries = urllib3.Retry(total=0, redirect=0, raise_on_redirect=False)
                api_client.rest_client = BoundedRESTClient(api_client.configuration, self.request_timeout)

        def get_kfp_healthz(self, sleep_duration: int = 5) -> Any:
            self._bound_requests()  # called from kfp.Client.__init__, before the constructor above returns
            healthz = self._healthz_api.healthz_service_get_healthz()
            self.multi_user = bool(healthz.multi_user)
            return healthz

    return BoundedClient


@contextmanager
def _explained(host: str, timeout: float, namespace: str = "") -> Iterator[None]:
    """Turn kfp_server_api and urllib3 errors into one-line KfpApiErrors naming the fix."""
    import kfp_server_api
    import urllib3

    try:
        yield
    except kfp_server_api.ApiException as exc:
        raise _http_error(exc, host, namespace) from None
    except urllib3.exceptions.HTTPError as exc:
        reason = exc.reason if isinstance(exc, urllib3.exceptions.MaxRetryError) and exc.reason else exc
        if isinstance(reason, urllib3.exceptions.TimeoutError) and not isinstance(
            reason,
            urllib3.exceptions.NewConnectionError,  # a refused or unresolved connection, despite its base
        ):
            raise KfpApiError(
                f"no answer from {host} within {timeout:g} s (raise --request-timeout, or check that the server is up)"
            ) from None
        detail = str(reason).split("connection: ")[-1]  # drop urllib3's "<HTTPConnection object at 0x...>"
        raise KfpApiError(f"cannot reach {host}: {detail} (check --host, env KFP_HOST)") from None


def _http_error(exc: Any, host: str, namespace: str) -> KfpApiError:
    status = exc.status or 0
    message = _server_message(exc.body)
    if status == 401:
        return KfpApiError(
            f"{host} refused the request as unauthenticated (HTTP 401{': ' + message if message else ''}): pass a "
            "valid bearer token with --existing-token (env KFP_EXISTING_TOKEN), or --kube-context",
            2,
        )
    if status == 403:
        where = f" in namespace {namespace}" if namespace else ""
        return KfpApiError(
            f"{host} denied access{where} (HTTP 403{': ' + message if message else ''}): the identity of "
            "--existing-token (or of your kube credentials) lacks permission; check --namespace",
            2,
        )
    if 300 <= status < 400:
        location = (exc.headers or {}).get("Location", "?")
        return KfpApiError(
            f"{host} redirected to {location} (a login page?): pass --existing-token, or --host of the API itself", 2
        )
    if status == 404:
        return KfpApiError(f"not found at {host} (HTTP 404): {message or 'is --host the KFP API endpoint?'}", 2)
    if status == 400:
        return KfpApiError(f"{host} rejected the request (HTTP 400): {message}", 2)
    if status == 0:
        return KfpApiError(f"TLS error with {host}: {exc.reason} (pass --ssl-ca-cert for a private CA)")
    return KfpApiError(f"{host} failed (HTTP {status} {exc.reason or ''}): {message or 'no details'}".strip())


def _server_message(body: Any) -> str:
    """The message of an error body: grpc-gateway's ``message``, the upload handler's ``error_message``, or text."""
    if isinstance(body, bytes):
        body = body.decode(errors="replace")
    try:
        document = json.loads(body or "")
    except (TypeError, ValueError):
        return " ".join(str(body or "").split())[:300]
    if isinstance(document, dict):
        return str(document.get("message") or document.get("error_message") or "").strip()
    return ""


def _on_server(func: Callable) -> Callable:
    """Explain the errors of an operation on ``client`` (its first argument)."""

    @functools.wraps(func)
    def wrapper(client: Any, *args: Any, **kwargs: Any) -> Any:
        host = getattr(client, "kfp_host", "") or "the KFP server"
        timeout = getattr(client, "request_timeout", DEFAULT_TIMEOUT_SECONDS)
        with _explained(host, timeout, getattr(client, "kfp_namespace", "")):
            return func(client, *args, **kwargs)

    return wrapper


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
    from kfp_mlops import __version__

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


@_on_server
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
    if version.pipeline_spec is not None and _normalised(version.pipeline_spec) != _normalised(spec_struct(package)):
        raise KfpApiError(
            f"version {version_name!r} of pipeline {display_name!r} exists with a different pipeline spec: "
            "pass another --version",
            2,
        )
    return UploadResult(pipeline.pipeline_id, display_name, version.pipeline_version_id, version_name, UNCHANGED)


def _find_pipeline(client: Any, display_name: str, namespace: str) -> Any:
    matches = list(
        _pages(
            lambda token: client.list_pipelines(
                page_token=token, page_size=PAGE_SIZE, filter=_name_filter(display_name), namespace=namespace or None
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
    versions = _pages(
        lambda token: client.list_pipeline_versions(
            pipeline_id, page_token=token, page_size=PAGE_SIZE, filter=_name_filter(version_name)
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


@_on_server
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


@_on_server
def find_experiment(client: Any, name: str, namespace: str = "") -> str:
    """The id of the experiment named ``name``, or ""."""
    experiments = _pages(
        lambda token: client.list_experiments(
            page_token=token, page_size=PAGE_SIZE, filter=_name_filter(name), namespace=namespace or None
        ),
        "experiments",
    )
    return next((e.experiment_id for e in experiments if e.display_name == name), "")


@_on_server
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


@_on_server
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
        raise KfpApiError(f"no pipeline named {pipeline_name!r} is uploaded: kfp-mlops upload training first", 2)
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


@_on_server
def wait_for_run(
    client: Any,
    run_id: str,
    *,
    timeout_seconds: float | None = None,
    poll_seconds: float = 10.0,
    on_state: Callable[[str], None] = lambda state: None,
) -> RunOutcome:
    """Poll the run until it ends (SUCCEEDED, FAILED, SKIPPED, CANCELED), calling ``on_state`` at each change.
    Raises KfpApiError when ``timeout_seconds`` pass first; the run goes on on the server."""
    started = time.monotonic()
    state = ""
    while True:
        run = client.get_run(run_id)
        if (run.state or "") != state:
            state = run.state or ""
            on_state(state)
        seconds = time.monotonic() - started
        if state in TERMINAL_STATES:
            error = (run.error.message or "") if run.error else ""
            return RunOutcome(run_id, state, error, seconds)
        if timeout_seconds is not None and seconds + poll_seconds > timeout_seconds:
            raise KfpApiError(
                f"run {run_id} is still {state or 'pending'} after {seconds:.0f} s (--timeout "
                f"{timeout_seconds:g}); it goes on on the server"
            )
        time.sleep(poll_seconds)


@_on_server
def list_runs(client: Any, *, experiment: str = "", limit: int = 20, namespace: str = "") -> list[Any]:
    """The latest ``limit`` runs, newest first, of one experiment or of all."""
    if limit < 1:
        raise ValueError(f"--limit {limit}: expected at least 1")
    experiment_id = None
    if experiment:
        experiment_id = find_experiment(client, experiment, namespace)
        if not experiment_id:
            raise KfpApiError(f"no experiment named {experiment!r}", 2)
    runs = _pages(
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


# --- schedules (recurring runs) -----------------------------------------------------------------------------------


def validate_cron(expression: str) -> str:
    """Check a KFP cron expression: 6 fields, seconds first (robfig/cron), or a descriptor such as ``@daily``.
    A 5-field expression is refused: the server would read its first field as seconds."""
    text = " ".join(expression.split())
    if text.startswith("@"):
        if text in _CRON_DESCRIPTORS or _CRON_EVERY.fullmatch(text):
            return text
        raise ValueError(
            f"cron {expression!r}: unknown descriptor; use one of {', '.join(_CRON_DESCRIPTORS)}, "
            "'@every <duration>' or 6 fields"
        )
    fields = text.split(" ")
    if len(fields) == 5:
        raise ValueError(
            f"cron {expression!r}: KFP cron expressions have 6 fields, seconds first: did you mean '0 {text}'?"
        )
    if len(fields) != 6:
        raise ValueError(
            f"cron {expression!r}: KFP cron expressions have 6 fields (second minute hour "
            f"day-of-month month day-of-week), got {len(fields)}"
        )
    for value, (name, low, high, names) in zip(fields, _CRON_FIELDS, strict=True):
        for part in value.split(","):
            match = _CRON_PART.fullmatch(part)
            if not match:
                raise ValueError(f"cron {expression!r}: {name} field {value!r} is not valid")
            if match["step"] is not None and int(match["step"]) < 1:
                raise ValueError(f"cron {expression!r}: {name} step must be at least 1")
            if match["range"] in ("*", "?"):
                continue
            bounds = [_cron_number(bound, name, low, high, names, expression) for bound in match["range"].split("-")]
            if len(bounds) == 2 and bounds[0] > bounds[1]:
                raise ValueError(f"cron {expression!r}: {name} range {match['range']!r} runs backwards")
    return text


def _cron_number(text: str, name: str, low: int, high: int, names: Sequence[str], expression: str) -> int:
    if text.upper() in names:
        return names.index(text.upper()) + low
    if not text.isdigit() or not low <= int(text) <= high:
        raise ValueError(f"cron {expression!r}: {name} {text!r} is out of range {low}-{high}")
    return int(text)


@_on_server
def ensure_schedule(
    client: Any, package: Path, schedule: Schedule, *, experiment: str = DEFAULT_EXPERIMENT, namespace: str = ""
) -> ScheduleResult:
    """Make exactly one recurring run named ``schedule.name`` run this YAML on this spec. The same spec again is a
    no-op; a different one is created first, then the old one is deleted (the API has no update). A replacement
    keeps the old one's paused/enabled mode."""
    uploaded = upload_pipeline(client, package, namespace=namespace)
    experiment_id = ensure_experiment(client, experiment, namespace)
    desired = _desired_schedule(schedule, uploaded, experiment_id)
    existing = find_schedules(client, schedule.name, namespace)
    keep = next((r for r in existing if not _schedule_changes(r, desired)), None)
    if keep is not None:
        _delete_all(client, [r for r in existing if r is not keep])
        return ScheduleResult(schedule.name, [keep.recurring_run_id], UNCHANGED)
    enabled = all(r.mode != "DISABLE" for r in existing)
    created = client.create_recurring_run(
        experiment_id=experiment_id,
        job_name=schedule.name,
        start_time=_rfc3339(schedule.start),
        end_time=_rfc3339(schedule.end),
        cron_expression=desired["cron"],
        max_concurrency=schedule.max_concurrency,
        no_catchup=not schedule.catchup,
        params=dict(schedule.arguments),
        pipeline_id=uploaded.pipeline_id,
        version_id=uploaded.version_id,
        enabled=enabled,
        service_account=schedule.service_account or None,
    )
    _delete_all(client, existing)
    if not existing:
        return ScheduleResult(schedule.name, [created.recurring_run_id], "created")
    changes = _schedule_changes(existing[0], desired)
    old = ", ".join(r.recurring_run_id for r in existing)
    return ScheduleResult(schedule.name, [created.recurring_run_id], f"replaced {old}", changes)


@_on_server
def find_schedules(client: Any, name: str, namespace: str = "") -> list[Any]:
    """The recurring runs named ``name`` (normally one)."""
    runs = _pages(
        lambda token: client.list_recurring_runs(
            page_token=token, page_size=PAGE_SIZE, filter=_name_filter(name), namespace=namespace or None
        ),
        "recurring_runs",
    )
    return [r for r in runs if r.display_name == name]


@_on_server
def set_schedule_enabled(client: Any, name: str, enabled: bool, namespace: str = "") -> ScheduleResult:
    """Resume (``enabled``) or pause the recurring runs named ``name``."""
    schedules = _existing_schedules(client, name, namespace)
    for recurring_run in schedules:
        if enabled:
            client.enable_recurring_run(recurring_run.recurring_run_id)
        else:
            client.disable_recurring_run(recurring_run.recurring_run_id)
    return ScheduleResult(name, [r.recurring_run_id for r in schedules], "resumed" if enabled else "paused")


@_on_server
def delete_schedule(client: Any, name: str, namespace: str = "") -> ScheduleResult:
    """Delete the recurring runs named ``name``; their past runs stay."""
    schedules = _existing_schedules(client, name, namespace)
    _delete_all(client, schedules)
    return ScheduleResult(name, [r.recurring_run_id for r in schedules], "deleted")


@_on_server
def list_schedules(client: Any, *, namespace: str = "") -> list[Any]:
    """Every recurring run, oldest first."""
    return list(
        _pages(
            lambda token: client.list_recurring_runs(
                page_token=token, page_size=PAGE_SIZE, sort_by="created_at", namespace=namespace or None
            ),
            "recurring_runs",
        )
    )


def _existing_schedules(client: Any, name: str, namespace: str) -> list[Any]:
    schedules = find_schedules(client, name, namespace)
    if not schedules:
        raise KfpApiError(f"no schedule named {name!r} (see `kfp-mlops schedules`)", 2)
    return schedules


def _delete_all(client: Any, recurring_runs: list[Any]) -> None:
    for recurring_run in recurring_runs:
        client.delete_recurring_run(recurring_run.recurring_run_id)


def _desired_schedule(schedule: Schedule, uploaded: UploadResult, experiment_id: str) -> dict[str, Any]:
    return {
        "cron": validate_cron(schedule.cron),
        "start": _whole_seconds(schedule.start),
        "end": _whole_seconds(schedule.end),
        "max concurrency": schedule.max_concurrency,
        "catchup": schedule.catchup,
        "pipeline version": uploaded.version_id,
        "parameters": dict(schedule.arguments),
        "experiment": experiment_id,
        "service account": schedule.service_account,
    }


def _schedule_changes(recurring_run: Any, desired: dict[str, Any]) -> list[str]:
    """What differs between a recurring run on the server and the desired spec, one line per field."""
    trigger = recurring_run.trigger.cron_schedule if recurring_run.trigger else None
    reference = recurring_run.pipeline_version_reference
    current = {
        "cron": trigger.cron if trigger else None,
        "start": _whole_seconds(trigger.start_time) if trigger else None,
        "end": _whole_seconds(trigger.end_time) if trigger else None,
        "max concurrency": int(recurring_run.max_concurrency or 1),
        "catchup": not recurring_run.no_catchup,
        "pipeline version": reference.pipeline_version_id if reference else None,
        "parameters": (recurring_run.runtime_config.parameters if recurring_run.runtime_config else None) or {},
        "experiment": recurring_run.experiment_id,
        "service account": recurring_run.service_account or "",
    }
    return [
        f"{key}: {_shown(current[key])} -> {_shown(value)}"
        for key, value in desired.items()
        if _normalised(current[key]) != _normalised(value)
    ]


def _shown(value: Any) -> str:
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return json.dumps(value, sort_keys=True) if isinstance(value, dict) else repr(value)


def _whole_seconds(moment: datetime | None) -> datetime | None:
    """The server keeps whole seconds: compare (and send) those, or a fraction would replace the schedule forever."""
    return moment.astimezone(UTC).replace(microsecond=0) if moment else None


def _rfc3339(moment: datetime | None) -> str | None:
    return _whole_seconds(moment).strftime("%Y-%m-%dT%H:%M:%SZ") if moment else None


# --- helpers ------------------------------------------------------------------------------------------------------


def _name_filter(display_name: str) -> str:
    """A display-name equality filter, JSON as kfp.Client sends it."""
    return json.dumps({"predicates": [{"operation": _EQUALS, "key": "display_name", "stringValue": display_name}]})


def _pages(fetch: Callable[[str], Any], items: str) -> Iterator[Any]:
    """Every item of a paginated list call; ``fetch(page_token)`` returns one page."""
    token = ""
    while True:
        page = fetch(token)
        yield from getattr(page, items) or []
        token = page.next_page_token or ""
        if not token:
            return


def _normalised(value: Any) -> Any:
    """JSON through protobuf Struct turns every number into a double: compare numbers as floats."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, dict):
        return {key: _normalised(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_normalised(item) for item in value]
    return value


# --- tables -------------------------------------------------------------------------------------------------------


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns, two spaces apart, under a header row."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]
    lines = [headers, *rows]
    return "\n".join(
        "  ".join(f"{cell!s:<{w}}" for cell, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )


def runs_table(runs: Sequence[Any]) -> str:
    rows = [(r.run_id, r.display_name or "", r.state or "", _when(r.created_at), _when(r.finished_at)) for r in runs]
    return format_table(("RUN ID", "NAME", "STATE", "CREATED", "FINISHED"), rows)


def schedules_table(schedules: Sequence[Any]) -> str:
    rows = []
    for r in schedules:
        trigger = r.trigger or None
        cron = trigger.cron_schedule.cron if trigger and trigger.cron_schedule else ""
        if not cron and trigger and trigger.periodic_schedule:
            cron = f"every {trigger.periodic_schedule.interval_second} s"
        status = "paused" if r.mode == "DISABLE" else "enabled"
        catchup = "no" if r.no_catchup else "yes"
        rows.append(
            (
                r.recurring_run_id,
                r.display_name or "",
                status,
                cron,
                str(r.max_concurrency or 1),
                catchup,
                _when(r.created_at),
            )
        )
    return format_table(("SCHEDULE ID", "NAME", "STATUS", "CRON", "MAX CONCURRENCY", "CATCHUP", "CREATED"), rows)


def _when(moment: datetime | None) -> str:
    if moment is None or moment <= EPOCH:
        return "-"
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
