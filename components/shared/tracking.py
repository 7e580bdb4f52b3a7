"""MLflow tracking for the steps: one MLflow run per KFP run, a nested run per step that has something to say.

A step fills a ``StepLog`` (params, metrics, per-epoch series, tags, artifacts) and hands it to ``Tracker.log_step``
once, at its end: the step's run is found or created (keyed by the KFP run id and the task, so a retried task
reuses it), everything goes in ``log_batch`` calls within MLflow's batch limits, then the artifacts. The pipeline's
run is found or created the same way (tag ``kfp.run_id``) by the first step that logs.

Tracking never fails a step by itself: the first call that fails (server unreachable, refused credentials) is
reported once and tracking is off for the rest of the step, unless ``tracking.required`` (then TrackingError).
Every request is bounded: ``tracking.timeout_seconds`` each, ``tracking.retries`` retries (MLflow's own
MLFLOW_HTTP_REQUEST_* settings, set from the config).

Where: ``tracking.uri``, else the environment's MLFLOW_TRACKING_URI (with MLFLOW_TRACKING_USERNAME/PASSWORD or
MLFLOW_TRACKING_TOKEN, from the Secret kfp-mlops-tracking in a cluster); neither: no tracking. A SQLite URI keeps
its artifacts in ``mlartifacts/`` beside the database file (the local default of ``kfp-mlops run --local``).
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import re
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from kfp_mlops.components.shared import runs
from kfp_mlops.components.shared.config import TrackingConfig, check_tracking_uri
from kfp_mlops.components.shared.errors import ConfigError

URI_ENV = "MLFLOW_TRACKING_URI"
# The clients' settings in a cluster: every task reads this Secret's keys as environment variables, if it exists
# (manifests/secrets/kfp-mlops-tracking.env.example; pipelines/train_and_deploy.py with_tracking_settings)
SECRET = "kfp-mlops-tracking"
SECRET_KEYS = (URI_ENV, "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
TAG_RUN = "kfp.run_id"  # the KFP run id, on the pipeline's MLflow run and each step's
TAG_PIPELINE = "kfp.pipeline"
TAG_TASK = "kfp.task"
TAG_RUN_URL = "kfp.run_url"
TAG_LEVEL = "kfp_mlops.level"  # pipeline or step
TAG_PACKAGE = "kfp_mlops.version"
TAG_IMAGE = "kfp_mlops.image"
TAG_COMPARED_WITH = "kfp_mlops.compared_with"  # a drift check's run: the registered model/version it compared with
TAG_PARENT = "mlflow.parentRunId"  # MLflow's own: nests the step's run under the pipeline's in the UI
TAG_RUN_NAME = "mlflow.runName"
IMAGE_ENV = "KFP_MLOPS_IMAGE"  # set by each step image's Dockerfile: which image (and version) the step ran in
ARTIFACTS_FOLDER = "mlartifacts"  # beside a SQLite database: the file artifact store of the local default
# MLflow's limits on one log_batch request (mlflow/utils/validation.py)
MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_TAGS_PER_BATCH = 100
MAX_PARAM_LENGTH = 6000
MAX_TAG_LENGTH = 8000

HEADER_PLUGINS = "mlflow.request_header_provider"  # an entry-point group of MLflow plugins (see connect)
WARM_UP_IMPORT_SECONDS = 120  # beyond the requests' own bound: importing MLflow on a loaded node
T = TypeVar("T")
_CREDENTIALS_IN_URL = re.compile(r"://([^:/@\s]+):[^@/\s]+@")  # user:password@ in a URL an error message quotes
_HIDDEN = r"://\1:***@"


class TrackingError(RuntimeError):
    """The tracking server failed while ``tracking.required`` is true."""


def for_step(settings: TrackingConfig, run_id: str, run_dir: str, task: str) -> Tracker:
    """The Tracker of the step ``task`` of the KFP run ``run_id`` (whose directory ``run_dir`` names the pipeline),
    warming up at once (``Tracker.start``): build it when the step starts, log when it ends."""
    return Tracker(settings, run_id, run_dir, task, runs.pipeline_name(run_dir, run_id) if run_dir else "").start()


def resolve_uri(settings: TrackingConfig) -> str:
    """The tracking URI the step uses: ``tracking.uri``, else MLFLOW_TRACKING_URI; "" when neither is set.
    A malformed one is a ConfigError naming where it came from (ingest calls this first, before any data work)."""
    if settings.uri:
        return settings.uri
    uri = os.environ.get(URI_ENV, "").strip()
    if uri:
        try:
            check_tracking_uri(uri, f"the environment variable {URI_ENV}")
        except ValueError as exc:
            if "holds a password" not in str(exc):  # from a Secret, the whole URI may carry one
                raise ConfigError(str(exc)) from None
    return uri


def redacted(uri: str) -> str:
    """``uri`` without a password, for messages."""
    parts = urlsplit(uri)
    if not parts.password:
        return uri
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def flatten(document: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """A nested mapping as MLflow params: dotted keys, lists and scalars as JSON text (within MLflow's length)."""
    params: dict[str, str] = {}
    for key, value in document.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            params.update(flatten(value, f"{name}."))
        else:
            text = value if isinstance(value, str) else json.dumps(value, default=str)
            params[name] = text[:MAX_PARAM_LENGTH]
    return params


@dataclass
class StepLog:
    """What one step reports: MLflow params, metrics (one value each), series (``key -> [(step, value)]``, e.g.
    per-epoch losses), tags and artifacts (``local path -> artifact folder``, "" for the run's root)."""

    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    series: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)


def connect(uri: str, timeout_seconds: int, retries: int) -> Any:
    """An MlflowClient for tracking and registry at ``uri``: requests bounded, MLflow's own console links and INFO
    lines off, and no request-header plugins (see ``_without_header_plugins``)."""
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(timeout_seconds)
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(retries)
    os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] = "1"
    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"  # each terminated run's link, in every log
    for name in ("mlflow", "alembic"):  # their INFO lines (schema migrations) are not the step's story
        logging.getLogger(name).setLevel(logging.WARNING)
    # MLflow's SQL store on SQLAlchemy 2.1 (the local SQLite default): a deprecation of SQLAlchemy's, not ours
    warnings.filterwarnings("ignore", message=r".*``noload`` loader strategy is deprecated")
    _without_header_plugins()
    from mlflow import MlflowClient  # 1.5 s to import: paid only by steps that track, in the warm-up thread

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _without_header_plugins() -> None:
    """MLflow loads every installed ``mlflow.request_header_provider`` plugin when its header registry is first
    imported (mlflow/tracking/request_header/registry.py, ``register_entrypoints``). Feast installs one whose loading
    imports all of Feast (5–10 s in each step of the local virtualenv; benchmarks/tracking.py) and that adds a header
    only inside Feast's own requests; no step needs any. The registry is imported here with the plugin lookup
    answering none for that group, and stays so for the process."""
    if "mlflow.tracking.request_header.registry" in sys.modules:
        return
    from mlflow.utils import plugins

    lookup = plugins.get_entry_points
    plugins.get_entry_points = lambda group: [] if group == HEADER_PLUGINS else lookup(group)
    try:
        importlib.import_module("mlflow.tracking.request_header.registry")
    finally:
        plugins.get_entry_points = lookup


def _chunks(items: list[T], size: int) -> Iterator[list[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class Tracker:
    """One step's connection to MLflow (lazy: nothing is imported or sent before the first call). ``run_id`` is the
    KFP run id, ``run_dir`` the run's directory (``runs.run_directory``: it names the pipeline), ``task`` the step."""

    def __init__(self, settings: TrackingConfig, run_id: str, run_dir: str, task: str, pipeline: str = "") -> None:
        self.settings = settings
        self.uri = resolve_uri(settings) if run_id and settings.enabled else ""
        self.run_id, self.run_dir, self.task, self.pipeline = run_id, run_dir, task, pipeline
        self.failed = ""  # why tracking stopped in this step, once it did
        self._client: Any = None
        self._warm: threading.Thread | None = None
        self._warm_error: BaseException | None = None
        self._experiment_id = ""
        self._parent_id = ""

    @property
    def enabled(self) -> bool:
        return bool(self.uri) and not self.failed

    @property
    def client(self) -> Any:
        """The MlflowClient for tracking and registry, with every request bounded (see the module docstring); waits
        for the warm-up (``start``) and raises what it met."""
        warm = self._warm
        if warm is not None and warm is not threading.current_thread():
            bound = self.settings.timeout_seconds * (self.settings.retries + 1) * 2 + WARM_UP_IMPORT_SECONDS
            warm.join(bound)
            self._warm = None
            if warm.is_alive():
                raise TimeoutError(f"no answer within {bound} s")
            if self._warm_error is not None:
                error, self._warm_error = self._warm_error, None
                raise error
        if self._client is None:
            self._client = connect(self.uri, self.settings.timeout_seconds, self.settings.retries)
        return self._client

    def start(self) -> Tracker:
        """Import MLflow, open the store and find the pipeline's run in a background thread, while the step works (a
        step's process pays this once: 1–2 s of import, and up to a second to open a SQLite store)."""
        if self.enabled and self._warm is None and self._client is None:
            self._warm = threading.Thread(target=self._warm_up, name="mlflow-warm-up", daemon=True)
            self._warm.start()
        return self

    def _warm_up(self) -> None:
        try:
            self.pipeline_run_id()  # the experiment, and the pipeline's run (the first step to log creates it)
        except BaseException as exc:  # raised again where the step first uses the client
            self._warm_error = exc

    def guarded(self, what: str, call: Callable[[], T]) -> T | None:
        """``call()``, or None after reporting (once) that tracking failed; TrackingError when it is required."""
        if not self.enabled:
            return None
        try:
            return call()
        except Exception as exc:
            first_line = str(exc).splitlines()[0][:300] if str(exc) else ""
            problem = f"{type(exc).__name__}: {_CREDENTIALS_IN_URL.sub(_HIDDEN, first_line)}"
            if self.settings.required:
                raise TrackingError(
                    f"MLflow at {redacted(self.uri)} failed to {what} ({problem}) and tracking.required is true"
                ) from exc
            self.failed = problem
            print(f"[tracking] MLflow at {redacted(self.uri)} failed to {what} ({problem}); this step continues "
                  "without tracking (tracking.required: false)")  # fmt: skip
            return None

    def experiment_id(self) -> str:
        if not self._experiment_id:
            name = self.settings.experiment
            found = self.client.get_experiment_by_name(name)
            if found is None:
                try:
                    found_id = self.client.create_experiment(name, artifact_location=self._artifact_location())
                except Exception:  # another step created it meanwhile
                    found = self.client.get_experiment_by_name(name)
                    if found is None:
                        raise
                    found_id = found.experiment_id
                self._experiment_id = found_id
            else:
                self._experiment_id = found.experiment_id
        return self._experiment_id

    def _artifact_location(self) -> str | None:
        if self.uri.startswith("sqlite:///"):
            folder = Path(self.uri.removeprefix("sqlite:///")).parent / ARTIFACTS_FOLDER / self.settings.experiment
            return folder.as_uri()
        return None  # the server's default (--serve-artifacts: proxied to its artifact store)

    def _find_run(self, filters: str) -> Any:
        found = self.client.search_runs([self.experiment_id()], filter_string=filters, max_results=1,
                                        order_by=["attributes.start_time ASC"])  # fmt: skip
        return found[0] if found else None

    def pipeline_run_id(self) -> str:
        """The MLflow run of this KFP run (created by the first step that logs)."""
        if not self._parent_id:
            run = self._find_run(f"tags.`{TAG_RUN}` = '{self.run_id}' and tags.`{TAG_LEVEL}` = 'pipeline'")
            if run is None:
                tags = {
                    TAG_RUN: self.run_id,
                    TAG_LEVEL: "pipeline",
                    TAG_PIPELINE: self.pipeline,
                    TAG_RUN_NAME: f"{self.pipeline or 'pipeline'} {self.run_id[:8]}",
                    **self._common_tags(),
                }
                if self.settings.run_url:
                    tags[TAG_RUN_URL] = self.settings.run_url.replace("{run_id}", self.run_id)
                run = self.client.create_run(self.experiment_id(), tags=tags)
            self._parent_id = run.info.run_id
        return self._parent_id

    def _common_tags(self) -> dict[str, str]:
        from kfp_mlops import __version__

        return {TAG_PACKAGE: __version__, **({TAG_IMAGE: os.environ[IMAGE_ENV]} if IMAGE_ENV in os.environ else {})}

    def step_run(self) -> Any:
        """This step's MLflow run, nested in the pipeline's; a retried task finds the one its first attempt made."""
        parent = self.pipeline_run_id()
        run = self._find_run(f"tags.`{TAG_RUN}` = '{self.run_id}' and tags.`{TAG_TASK}` = '{self.task}'")
        if run is None:
            tags = {TAG_RUN: self.run_id, TAG_TASK: self.task, TAG_LEVEL: "step", TAG_PARENT: parent,
                    TAG_PIPELINE: self.pipeline, TAG_RUN_NAME: self.task, **self._common_tags()}  # fmt: skip
            run = self.client.create_run(self.experiment_id(), tags=tags)
        return run

    def log_step(self, log: StepLog, failed: bool = False) -> str:
        """Send ``log`` as this step's run (see the module docstring); returns its MLflow run id, "" when off."""
        return self.guarded("record this step", lambda: self._log_step(log, failed)) or ""

    def _log_step(self, log: StepLog, failed: bool) -> str:
        from mlflow.entities import Metric, Param, RunTag

        run = self.step_run()
        step_run_id = run.info.run_id
        if run.info.status == "FINISHED":  # a retry after this step logged: it is not sent twice
            return step_run_id
        now = int(time.time() * 1000)
        metrics = [Metric(key, float(value), now, 0) for key, value in log.metrics.items()]
        metrics += [Metric(key, float(value), now, int(step)) for key, points in log.series.items()
                    for step, value in points]  # fmt: skip
        logged = run.data.params
        params = [Param(key, value) for key, value in flatten(log.params).items() if key not in logged]
        tags = [RunTag(key, str(value)[:MAX_TAG_LENGTH]) for key, value in log.tags.items()]
        for chunk in _chunks(params, MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(step_run_id, params=chunk)
        for chunk in _chunks(tags, MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(step_run_id, tags=chunk)
        for chunk in _chunks(metrics, MAX_METRICS_PER_BATCH):
            self.client.log_batch(step_run_id, metrics=chunk)
        for path, folder in log.artifacts.items():
            if Path(path).is_dir():
                self.client.log_artifacts(step_run_id, path, folder or None)
            elif Path(path).is_file():
                self.client.log_artifact(step_run_id, path, folder or None)
        status = "FAILED" if failed else "FINISHED"
        self.client.set_terminated(step_run_id, status)
        parent = self.client.get_run(self.pipeline_run_id())
        if parent.info.status != "FAILED":  # a failed step's verdict stands; else the latest step's end time
            self.client.set_terminated(parent.info.run_id, status)
        return step_run_id

    def tag_pipeline(self, tags: dict[str, str]) -> None:
        """Tags on the pipeline's run (e.g. the data's content hash, the deployed version)."""
        from mlflow.entities import RunTag

        def send() -> None:
            items = [RunTag(key, str(value)[:MAX_TAG_LENGTH]) for key, value in tags.items()]
            self.client.log_batch(self.pipeline_run_id(), tags=items)

        self.guarded("tag the pipeline's run", send)
