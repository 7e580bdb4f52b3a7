"""``FakeKfpApiServer``: an in-process HTTP **test double** of the Kubeflow Pipelines v2beta1 REST API.

Not a KFP server: no database, no Argo, nothing runs. It is a real ``http.server`` on a free loopback port, in a
thread, that answers the requests ``kfp.Client`` sends the way the API server (backend 2.15+) does, so the real
client can be driven against it:

- every JSON request body is checked against the ``kfp_server_api`` models, unknown fields rejected with 400 (the
  server's grpc-gateway marshaler has ``DiscardUnknown: false``), then deserialised with those models;
- uploads (multipart ``/pipelines/upload`` and ``/pipelines/upload_version``) are parsed like the server parses them:
  the pipeline spec and platform spec documents into the installed kfp-pipeline-spec protobuf messages, unknown
  fields rejected, schemaVersion 2.1.0 and a DNS-style pipelineInfo.name required;
- lists page with ``page_size`` (default 20, at most 200) and opaque ``page_token``/``next_page_token`` that carry
  the sort and filter, sort with ``sort_by`` ("<field>[ desc]"), and filter with the ``filter`` query parameter
  (Filter JSON, camelCase or snake_case, operations as numbers or names: EQUALS, NOT_EQUALS, IN, IS_SUBSTRING);
- 404 for unknown ids, 409 for a duplicate pipeline name (per namespace), version name (per pipeline) or experiment
  name; runtime parameters are checked against the version's root inputs as the server does; cron must parse as
  robfig/cron v1 does (5 or 6 fields, or a descriptor: the server accepts 5 fields and reads seconds first);
- errors are grpc-gateway status JSON ``{"code", "message", "details"}``; the upload handler's are
  ``{"error_message", "error_details"}``.

Runs never start by themselves: a test moves them with ``set_run_state`` or ``run_progress`` (states a new run
goes through, one per GET). ``POST /runs/{id}:terminate`` moves a PENDING, RUNNING, PAUSED or unspecified run to
CANCELING and refuses any other with 400, as the server does (backend/src/apiserver/storage/run_store.go
``TerminateRun``: "Row not found"); the double never moves it on to CANCELED. ``token`` requires
``Authorization: Bearer <token>`` (401 otherwise; ``read_only_token`` may only GET, 403 otherwise). ``stall()``
makes it accept requests and never answer, until ``release()``. ``inject_failures(method, path, failures)`` makes
the next requests to one path fail, each as the next of ``failures`` says: an HTTP status (answered with a
grpc-gateway error body), ``DROP`` (the connection closed without an answer) or None (answered as usual); an endless
iterable makes the failures persist.

Over 500 lines on purpose: one test double of every v2beta1 endpoint kfp.Client calls, with the server's
validation of each body; its routes read as one table.
"""

from __future__ import annotations

import base64
import itertools
import json
import re
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import kfp_server_api
import yaml
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

API = "/apis/v2beta1"
DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 200
TERMINAL_STATES = {"SUCCEEDED", "FAILED", "SKIPPED", "CANCELED"}
TERMINABLE_STATES = {"PENDING", "RUNNING", "PAUSED", "RUNTIME_STATE_UNSPECIFIED"}  # run_store.go TerminateRun
DROP = "drop"  # an injected failure: the connection closes unanswered
# grpc codes as grpc-gateway puts them in error bodies
INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS, PERMISSION_DENIED, UNAUTHENTICATED = 3, 5, 6, 7, 16
RESOURCE_EXHAUSTED, INTERNAL, UNAVAILABLE = 8, 13, 14
# Fields typed 'str' in the generated models that are int64 in the protos: protojson accepts a JSON number there.
INT64_FIELDS = {"max_concurrency", "interval_second", "long_value"}
FILTER_OPERATIONS = {
    1: "EQUALS",
    2: "NOT_EQUALS",
    3: "GREATER_THAN",
    5: "GREATER_THAN_EQUALS",
    6: "LESS_THAN",
    7: "LESS_THAN_EQUALS",
    8: "IN",
    9: "IS_SUBSTRING",
}
PIPELINE_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
# Sortable and filterable fields per list, as in the backend's APIToModelFieldMap (those the double keeps).
LIST_FIELDS = {
    "pipelines": {"pipeline_id", "display_name", "name", "created_at", "namespace", "description"},
    "pipeline_versions": {"pipeline_version_id", "display_name", "name", "created_at", "description"},
    "experiments": {"experiment_id", "display_name", "created_at", "namespace", "storage_state"},
    "runs": {
        "run_id",
        "display_name",
        "created_at",
        "finished_at",
        "state",
        "experiment_id",
        "storage_state",
        "recurring_run_id",
        "namespace",
    },
    "recurringRuns": {"recurring_run_id", "display_name", "created_at", "updated_at", "experiment_id", "namespace"},
}
_CRON_DESCRIPTORS = {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}


class ApiError(Exception):
    """Answered as ``status`` with a grpc-gateway status body."""

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


def bad_request(message: str) -> ApiError:
    return ApiError(400, INVALID_ARGUMENT, message)


def not_found(kind: str, key: str) -> ApiError:
    return ApiError(404, NOT_FOUND, f"{kind} {key} not found")


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    body: Any  # parsed JSON, or for multipart {"fields": {...}, "filename": ...}
    authorization: str


class FakeKfpApiServer:
    """The test double described in this module's docstring. Its state (``pipelines``, ``versions``,
    ``experiments``, ``runs``, ``recurring_runs``: id -> JSON as served) may be read and changed by tests."""

    def __init__(
        self, *, token: str = "", read_only_token: str = "", multi_user: bool = False, tag_name: str = "2.15.0"
    ) -> None:
        self.token, self.read_only_token = token, read_only_token
        self.multi_user, self.tag_name = multi_user, tag_name
        self.requests: list[RecordedRequest] = []
        self.pipelines: dict[str, dict[str, Any]] = {}
        self.versions: dict[str, dict[str, Any]] = {}
        self.experiments: dict[str, dict[str, Any]] = {}
        self.runs: dict[str, dict[str, Any]] = {}
        self.recurring_runs: dict[str, dict[str, Any]] = {}
        self.run_progress: list[str] = []
        self._run_steps: dict[str, Iterator[str]] = {}
        self._clock = itertools.count(1)
        self._lock = threading.RLock()
        self._stalled = False
        self._released = threading.Event()
        self._failures: dict[tuple[str, str], Iterator[int | str | None]] = {}
        self._models = kfp_server_api.ApiClient()
        self._routes = self._route_table()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                fake._serve(self)

            do_GET = do_POST = do_DELETE = do_PATCH = do_PUT = _serve

            def log_message(self, *args: Any) -> None:
                pass

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._http.server_port}"
        self._thread = threading.Thread(target=self._http.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> FakeKfpApiServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._released.set()
        self._http.shutdown()
        self._http.server_close()

    # --- what tests use -------------------------------------------------------------------------------------------

    def stall(self) -> None:
        """Accept every later request and never answer it (until ``release``)."""
        self._released.clear()
        self._stalled = True

    def release(self) -> None:
        self._stalled = False
        self._released.set()

    def inject_failures(self, method: str, path: str, failures: Iterable[int | str | None]) -> None:
        """Fail the next requests ``method path`` (``path`` below the API prefix, e.g. ``/runs/<id>``), one per item
        of ``failures``: an HTTP status, DROP, or None (answered). The request is recorded first, like every request."""
        with self._lock:
            self._failures[(method, API + path)] = iter(failures)

    def _injected_failure(self, method: str, path: str) -> int | str | None:
        with self._lock:
            return next(self._failures.get((method, path), iter(())), None)

    def set_run_state(self, run_id: str, state: str, error: str = "") -> None:
        """Move a run to ``state`` (a V2beta1RuntimeState); terminal states set finished_at, ``error`` its message."""
        if state not in kfp_server_api.V2beta1RuntimeState.allowable_values:
            raise ValueError(f"not a run state: {state}")
        with self._lock:
            run = self.runs[run_id]
            run["state"] = state
            run["state_history"].append({"update_time": self._now(), "state": state})
            if state in TERMINAL_STATES:
                run["finished_at"] = self._now()
            if error:
                run["error"] = {"code": 2, "message": error, "details": []}

    def requests_to(self, method: str, path: str) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if r.method == method and r.path == API + path]

    def versions_of(self, pipeline_id: str) -> list[dict[str, Any]]:
        with self._lock:
            return [v for v in self.versions.values() if v["pipeline_id"] == pipeline_id]

    # --- HTTP -----------------------------------------------------------------------------------------------------

    def _route_table(self) -> list[tuple[str, re.Pattern[str], Callable[..., Any]]]:
        routes = [
            ("GET", "/healthz", self._healthz),
            ("POST", "/pipelines/upload", self._upload_pipeline),
            ("POST", "/pipelines/upload_version", self._upload_version),
            ("POST", "/pipelines", self._create_pipeline),
            ("GET", "/pipelines", self._list_pipelines),
            ("GET", "/pipelines/{pipeline_id}", self._get_pipeline),
            ("DELETE", "/pipelines/{pipeline_id}", self._delete_pipeline),
            ("GET", "/pipelines/{pipeline_id}/versions", self._list_versions),
            ("GET", "/pipelines/{pipeline_id}/versions/{version_id}", self._get_version),
            ("DELETE", "/pipelines/{pipeline_id}/versions/{version_id}", self._delete_version),
            ("POST", "/experiments", self._create_experiment),
            ("GET", "/experiments", self._list_experiments),
            ("GET", "/experiments/{experiment_id}", self._get_experiment),
            ("POST", "/runs", self._create_run),
            ("GET", "/runs", self._list_runs),
            ("GET", "/runs/{run_id}", self._get_run),
            ("POST", "/runs/{run_id}:terminate", self._terminate_run),
            ("POST", "/recurringruns", self._create_recurring_run),
            ("GET", "/recurringruns", self._list_recurring_runs),
            ("GET", "/recurringruns/{recurring_run_id}", self._get_recurring_run),
            ("POST", "/recurringruns/{recurring_run_id}:enable", self._enable_recurring_run),
            ("POST", "/recurringruns/{recurring_run_id}:disable", self._disable_recurring_run),
            ("DELETE", "/recurringruns/{recurring_run_id}", self._delete_recurring_run),
        ]
        return [
            (method, re.compile(API + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/:]+)", path)), handler)
            for method, path, handler in routes
        ]

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        url = urlsplit(handler.path)
        query = parse_qs(url.query)
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        authorization = handler.headers.get("Authorization", "")
        is_upload = url.path.startswith(f"{API}/pipelines/upload")
        try:
            body = self._form(handler.headers.get("Content-Type", ""), raw) if is_upload else _json(raw)
            with self._lock:
                self.requests.append(RecordedRequest(handler.command, url.path, query, body, authorization))
            if self._stalled:
                self._released.wait(timeout=60)
                return  # the connection closes unanswered
            failure = self._injected_failure(handler.command, url.path)
            if failure == DROP:
                handler.close_connection = True
                return  # the connection closes unanswered
            if failure is not None:
                code = RESOURCE_EXHAUSTED if failure == 429 else UNAVAILABLE if failure in (502, 503, 504) else INTERNAL
                raise ApiError(int(failure), code, f"injected failure {failure}")
            self._authorize(handler.command, authorization)
            status, payload = 200, self._dispatch(handler.command, url.path, query, body)
        except ApiError as error:
            status = error.status
            payload = (
                {"error_message": str(error), "error_details": str(error)}
                if is_upload
                else {"code": error.code, "message": str(error), "details": []}
            )
        except Exception as exc:  # a bug of the double: say so instead of dropping the connection
            status, payload = 500, {"code": 13, "message": f"test double: {type(exc).__name__}: {exc}", "details": []}
        data = json.dumps(payload).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def _authorize(self, method: str, authorization: str) -> None:
        if not self.token:
            return
        read_only = bool(self.read_only_token) and authorization == f"Bearer {self.read_only_token}"
        if authorization != f"Bearer {self.token}" and not read_only:
            raise ApiError(401, UNAUTHENTICATED, "Request header error: there is no user identity header.")
        if read_only and method != "GET":
            raise ApiError(403, PERMISSION_DENIED, "PermissionDenied: this identity may not create or change here")

    def _dispatch(self, method: str, path: str, query: dict[str, list[str]], body: Any) -> Any:
        known_path = False
        for route_method, pattern, route in self._routes:
            match = pattern.fullmatch(path)
            if match:
                known_path = True
                if route_method == method:
                    with self._lock:
                        return route(query=query, body=body, **{k: unquote(v) for k, v in match.groupdict().items()})
        if known_path:
            raise ApiError(405, 12, f"Method Not Allowed: {method} {path}")
        raise ApiError(404, NOT_FOUND, "Not Found")

    def _form(self, content_type: str, raw: bytes) -> dict[str, Any]:
        if not content_type.startswith("multipart/form-data"):
            raise bad_request("Failed to read pipeline from file: expected multipart/form-data")
        message = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + raw)
        fields, filename = {}, ""
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            fields[name] = part.get_payload(decode=True)
            if name == "uploadfile":
                filename = part.get_filename() or ""
        return {"fields": fields, "filename": filename}

    # --- request and response models ------------------------------------------------------------------------------

    def _parse(self, body: Any, model: str) -> dict[str, Any]:
        """Check ``body`` against the kfp_server_api model (unknown fields: 400), deserialise it, and return it as
        the JSON the model serialises to."""
        if not isinstance(body, dict):
            raise bad_request(f"expected a JSON object ({model})")
        check_fields(body, model, model)
        try:
            instance = self._models.deserialize(_Response(body), model)
        except (kfp_server_api.ApiException, ValueError) as exc:
            raise bad_request(f"invalid {model}: {getattr(exc, 'reason', exc)}") from None
        return self._models.sanitize_for_serialization(instance)

    def _served(self, document: dict[str, Any], model: str) -> dict[str, Any]:
        check_fields(document, model, f"response {model}")  # the double only serves what the real API could
        return document

    def _now(self) -> str:
        moment = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=next(self._clock))
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")

    # --- healthz --------------------------------------------------------------------------------------------------

    def _healthz(self, **_: Any) -> dict[str, Any]:
        return {"commit_sha": "test-double", "tag_name": self.tag_name, "multi_user": self.multi_user}

    # --- pipelines and versions -----------------------------------------------------------------------------------

    def _create_pipeline(self, body: Any, **_: Any) -> dict[str, Any]:
        request = self._parse(body, "V2beta1Pipeline")
        if not request.get("display_name") and not request.get("name"):
            raise bad_request("Failed to create a pipeline: pipeline display_name is empty")
        return self._new_pipeline(
            request.get("name") or request["display_name"],
            request.get("display_name", ""),
            request.get("description", ""),
            request.get("namespace", ""),
        )

    def _new_pipeline(self, name: str, display_name: str, description: str, namespace: str) -> dict[str, Any]:
        if any(p["name"] == name and p.get("namespace", "") == namespace for p in self.pipelines.values()):
            raise ApiError(409, ALREADY_EXISTS, f"Failed to create a pipeline: pipeline {name!r} already exists")
        pipeline = {
            "pipeline_id": str(uuid.uuid4()),
            "name": name,
            "display_name": display_name or name,
            "created_at": self._now(),
        }
        if description:
            pipeline["description"] = description
        if namespace:
            pipeline["namespace"] = namespace
        self.pipelines[pipeline["pipeline_id"]] = pipeline
        return self._served(pipeline, "V2beta1Pipeline")

    def _upload_pipeline(self, query: dict[str, list[str]], body: dict[str, Any], **_: Any) -> dict[str, Any]:
        spec = self._uploaded_spec(body)
        name = _first(query, "name") or _first(query, "display_name") or body["filename"].rsplit(".", 1)[0]
        try:
            pipeline = self._new_pipeline(
                name, _first(query, "display_name"), _first(query, "description"), _first(query, "namespace")
            )
        except ApiError as error:
            message = f"Failed to create a pipeline and a pipeline version: {error}"
            raise ApiError(409, ALREADY_EXISTS, message) from None
        self._new_version(pipeline["pipeline_id"], name, pipeline["display_name"], _first(query, "description"), spec)
        return pipeline

    def _upload_version(self, query: dict[str, list[str]], body: dict[str, Any], **_: Any) -> dict[str, Any]:
        pipeline_id = _first(query, "pipelineid")
        if not pipeline_id:
            raise bad_request("Failed to create a pipeline version: pipeline id is empty")
        if pipeline_id not in self.pipelines:
            raise not_found("Pipeline", pipeline_id)
        spec = self._uploaded_spec(body)
        name = _first(query, "name") or _first(query, "display_name") or body["filename"].rsplit(".", 1)[0]
        return self._new_version(pipeline_id, name, _first(query, "display_name"), _first(query, "description"), spec)

    def _new_version(
        self, pipeline_id: str, name: str, display_name: str, description: str, spec: dict[str, Any]
    ) -> dict[str, Any]:
        if any(v["pipeline_id"] == pipeline_id and v["name"] == name for v in self.versions.values()):
            raise ApiError(409, ALREADY_EXISTS, f"Failed to create a pipeline version: {name!r} already exists")
        version = {
            "pipeline_id": pipeline_id,
            "pipeline_version_id": str(uuid.uuid4()),
            "name": name,
            "display_name": display_name or name,
            "created_at": self._now(),
            "pipeline_spec": spec,
        }
        if description:
            version["description"] = description
        self.versions[version["pipeline_version_id"]] = version
        return self._served(version, "V2beta1PipelineVersion")

    def _uploaded_spec(self, body: dict[str, Any]) -> dict[str, Any]:
        """Parse the uploaded YAML as the server does (NewV2SpecTemplate); the spec as the server serves it."""
        data = body["fields"].get("uploadfile")
        if data is None:
            raise bad_request("Failed to read pipeline from file")
        if not body["filename"].endswith((".yaml", ".yml")):
            raise bad_request(
                f"Failed to read a pipeline spec file: unexpected file {body['filename']!r} (the test "
                "double reads YAML only)"
            )
        try:
            documents = [d for d in yaml.safe_load_all(data) if d]
        except yaml.YAMLError as exc:
            raise bad_request(f"Failed to read a pipeline spec file: {exc}") from None
        pipeline = [d for d in documents if "pipelineInfo" in d or "root" in d]
        platform = [d for d in documents if isinstance(d.get("platforms"), dict) and "kubernetes" in d["platforms"]]
        if len(pipeline) != 1 or len(platform) > 1:
            raise bad_request("invalid v2 pipeline spec: expected one pipeline spec and at most one platform spec")
        spec = pipeline_spec_pb2.PipelineSpec()
        try:
            json_format.ParseDict(pipeline[0], spec)
        except json_format.ParseError as exc:
            raise bad_request(f"invalid v2 pipeline spec: {exc}") from None
        if spec.schema_version != "2.1.0":
            raise bad_request(
                f"KFP only supports schema version 2.1.0, but the pipeline spec has version {spec.schema_version}"
            )
        if not PIPELINE_NAME.fullmatch(spec.pipeline_info.name):
            raise bad_request(
                "invalid v2 pipeline spec: name should consist of lower case alphanumeric characters, "
                "'-' or '.', and must start and end with an alphanumeric character"
            )
        if not spec.HasField("root"):
            raise bad_request("invalid v2 pipeline spec: root component is empty")
        if platform:
            try:
                json_format.ParseDict(platform[0], pipeline_spec_pb2.PlatformSpec())
            except json_format.ParseError as exc:
                raise bad_request(f"cannot unmarshal platform specific configs: {exc}") from None
            return {"pipeline_spec": pipeline[0], "platform_spec": platform[0]}
        return pipeline[0]

    def _list_pipelines(self, query: dict[str, list[str]], **_: Any) -> dict[str, Any]:
        namespace = _first(query, "namespace")
        items = [p for p in self.pipelines.values() if not namespace or p.get("namespace", "") == namespace]
        return self._page(items, query, "pipelines", "V2beta1ListPipelinesResponse")

    def _get_pipeline(self, pipeline_id: str, **_: Any) -> dict[str, Any]:
        return self._pipeline(pipeline_id)

    def _pipeline(self, pipeline_id: str) -> dict[str, Any]:
        if pipeline_id not in self.pipelines:
            raise not_found("Pipeline", pipeline_id)
        return self.pipelines[pipeline_id]

    def _delete_pipeline(self, pipeline_id: str, **_: Any) -> dict[str, Any]:
        self._pipeline(pipeline_id)
        if self.versions_of(pipeline_id):
            raise ApiError(400, 9, f"Failed to delete pipeline {pipeline_id}: it has versions; delete them first")
        del self.pipelines[pipeline_id]
        return {}

    def _list_versions(self, pipeline_id: str, query: dict[str, list[str]], **_: Any) -> dict[str, Any]:
        self._pipeline(pipeline_id)
        return self._page(
            self.versions_of(pipeline_id), query, "pipeline_versions", "V2beta1ListPipelineVersionsResponse"
        )

    def _get_version(self, pipeline_id: str, version_id: str, **_: Any) -> dict[str, Any]:
        return self._version(pipeline_id, version_id)

    def _version(self, pipeline_id: str, version_id: str) -> dict[str, Any]:
        version = self.versions.get(version_id)
        if version is None or version["pipeline_id"] != pipeline_id:
            raise not_found("PipelineVersion", version_id)
        return version

    def _delete_version(self, pipeline_id: str, version_id: str, **_: Any) -> dict[str, Any]:
        self._version(pipeline_id, version_id)
        del self.versions[version_id]
        return {}

    # --- experiments ----------------------------------------------------------------------------------------------

    def _create_experiment(self, body: Any, **_: Any) -> dict[str, Any]:
        request = self._parse(body, "V2beta1Experiment")
        name, namespace = request.get("display_name", ""), request.get("namespace", "")
        if not name:
            raise bad_request("Experiment display_name is empty")
        if any(e["display_name"] == name and e.get("namespace", "") == namespace for e in self.experiments.values()):
            raise ApiError(409, ALREADY_EXISTS, f"Failed to create an experiment: {name!r} already exists")
        experiment = {
            "experiment_id": str(uuid.uuid4()),
            "display_name": name,
            "created_at": self._now(),
            "storage_state": "AVAILABLE",
        }
        if namespace:
            experiment["namespace"] = namespace
        self.experiments[experiment["experiment_id"]] = experiment
        return self._served(experiment, "V2beta1Experiment")

    def _list_experiments(self, query: dict[str, list[str]], **_: Any) -> dict[str, Any]:
        namespace = _first(query, "namespace")
        items = [e for e in self.experiments.values() if not namespace or e.get("namespace", "") == namespace]
        return self._page(items, query, "experiments", "V2beta1ListExperimentsResponse")

    def _get_experiment(self, experiment_id: str, **_: Any) -> dict[str, Any]:
        if experiment_id not in self.experiments:
            raise not_found("Experiment", experiment_id)
        return self.experiments[experiment_id]

    # --- runs -----------------------------------------------------------------------------------------------------

    def _create_run(self, body: Any, **_: Any) -> dict[str, Any]:
        request = self._parse(body, "V2beta1Run")
        if not request.get("display_name"):
            raise bad_request("Failed to create a run: display_name is empty")
        experiment = self._get_experiment(request.get("experiment_id", ""))
        version = self._referenced_version(request)
        parameters = (request.get("runtime_config") or {}).get("parameters") or {}
        _check_parameters(version["pipeline_spec"], parameters)
        now = self._now()
        run = {
            "run_id": str(uuid.uuid4()),
            "display_name": request["display_name"],
            "experiment_id": experiment["experiment_id"],
            "pipeline_version_reference": request["pipeline_version_reference"],
            "runtime_config": request.get("runtime_config") or {},
            **({"service_account": request["service_account"]} if request.get("service_account") else {}),
            "storage_state": "AVAILABLE",
            "created_at": now,
            "scheduled_at": now,
            "finished_at": "1970-01-01T00:00:00Z",  # what the server sends before a run ends
            "state": "PENDING",
            "state_history": [{"update_time": now, "state": "PENDING"}],
        }
        self.runs[run["run_id"]] = run
        self._run_steps[run["run_id"]] = iter(list(self.run_progress))
        return self._served(run, "V2beta1Run")

    def _referenced_version(self, request: dict[str, Any]) -> dict[str, Any]:
        reference = request.get("pipeline_version_reference")
        if request.get("pipeline_spec") is not None or not reference:
            raise bad_request("the test double runs uploaded pipeline versions only (pipeline_version_reference)")
        self._pipeline(reference.get("pipeline_id", ""))
        return self._version(reference["pipeline_id"], reference.get("pipeline_version_id", ""))

    def _list_runs(self, query: dict[str, list[str]], **_: Any) -> dict[str, Any]:
        experiment_id, namespace = _first(query, "experiment_id"), _first(query, "namespace")
        items = [r for r in self.runs.values() if not experiment_id or r["experiment_id"] == experiment_id]
        if namespace:
            items = [r for r in items if self.experiments[r["experiment_id"]].get("namespace", "") == namespace]
        return self._page(items, query, "runs", "V2beta1ListRunsResponse")

    def _get_run(self, run_id: str, **_: Any) -> dict[str, Any]:
        if run_id not in self.runs:
            raise not_found("Run", run_id)
        step = next(self._run_steps.get(run_id, iter(())), None)
        if step:
            self.set_run_state(run_id, step)
        return self._served(self.runs[run_id], "V2beta1Run")

    def _terminate_run(self, run_id: str, **_: Any) -> dict[str, Any]:
        if run_id not in self.runs:
            raise not_found("Run", run_id)
        if self.runs[run_id]["state"] not in TERMINABLE_STATES:
            raise bad_request(f"Failed to terminate a run {run_id}. Row not found")
        self.set_run_state(run_id, "CANCELING")
        return {}

    # --- recurring runs -------------------------------------------------------------------------------------------

    def _create_recurring_run(self, body: Any, **_: Any) -> dict[str, Any]:
        request = self._parse(body, "V2beta1RecurringRun")
        if not request.get("display_name"):
            raise bad_request("Failed to create a recurring run: display_name is empty")
        max_concurrency = int(request.get("max_concurrency") or 0)
        if not 1 <= max_concurrency <= 10:
            raise bad_request(
                f"Max concurrency of a recurring run must be at least 1 and at most 10. Received {max_concurrency}"
            )
        cron = ((request.get("trigger") or {}).get("cron_schedule") or {}).get("cron")
        if cron is not None and not _robfig_v1_parses(cron):
            raise bad_request(
                f"Schedule cron is not a supported format(https://godoc.org/github.com/robfig/cron). Error: {cron!r}"
            )
        experiment = self._get_experiment(request.get("experiment_id", ""))
        version = self._referenced_version(request)
        _check_parameters(version["pipeline_spec"], (request.get("runtime_config") or {}).get("parameters") or {})
        enabled = request.get("mode", "ENABLE") != "DISABLE"
        now = self._now()
        recurring_run = {
            **request,
            "recurring_run_id": str(uuid.uuid4()),
            "max_concurrency": str(max_concurrency),  # int64: a string in protojson
            "mode": "ENABLE" if enabled else "DISABLE",
            "status": "ENABLED" if enabled else "DISABLED",
            "created_at": now,
            "updated_at": now,
        }
        if not recurring_run.get("no_catchup"):
            recurring_run.pop("no_catchup", None)  # protojson leaves false out
        if experiment.get("namespace"):
            recurring_run["namespace"] = experiment["namespace"]
        self.recurring_runs[recurring_run["recurring_run_id"]] = recurring_run
        return self._served(recurring_run, "V2beta1RecurringRun")

    def _list_recurring_runs(self, query: dict[str, list[str]], **_: Any) -> dict[str, Any]:
        experiment_id, namespace = _first(query, "experiment_id"), _first(query, "namespace")
        items = [r for r in self.recurring_runs.values() if not experiment_id or r["experiment_id"] == experiment_id]
        items = [r for r in items if not namespace or r.get("namespace", "") == namespace]
        return self._page(items, query, "recurringRuns", "V2beta1ListRecurringRunsResponse")

    def _get_recurring_run(self, recurring_run_id: str, **_: Any) -> dict[str, Any]:
        if recurring_run_id not in self.recurring_runs:
            raise not_found("RecurringRun", recurring_run_id)
        return self.recurring_runs[recurring_run_id]

    def _enable_recurring_run(self, recurring_run_id: str, **_: Any) -> dict[str, Any]:
        self._get_recurring_run(recurring_run_id).update(mode="ENABLE", status="ENABLED", updated_at=self._now())
        return {}

    def _disable_recurring_run(self, recurring_run_id: str, **_: Any) -> dict[str, Any]:
        self._get_recurring_run(recurring_run_id).update(mode="DISABLE", status="DISABLED", updated_at=self._now())
        return {}

    def _delete_recurring_run(self, recurring_run_id: str, **_: Any) -> dict[str, Any]:
        self._get_recurring_run(recurring_run_id)
        del self.recurring_runs[recurring_run_id]
        return {}

    # --- lists ----------------------------------------------------------------------------------------------------

    def _page(self, items: list[dict[str, Any]], query: dict[str, list[str]], key: str, model: str) -> dict[str, Any]:
        """One page of ``items``, sorted and filtered as requested (or as the page token says)."""
        token = _first(query, "page_token")
        if token:
            try:
                state = json.loads(base64.urlsafe_b64decode(token))
                offset, sort_by, predicates = state["offset"], state["sort_by"], state["predicates"]
            except (ValueError, KeyError, TypeError):
                raise bad_request("Invalid page token") from None
        else:
            offset, sort_by = 0, _first(query, "sort_by")
            predicates = _parse_filter(_first(query, "filter"), LIST_FIELDS[key])
        size = _page_size(_first(query, "page_size"))
        selected = [item for item in items if all(_matches(item, p) for p in predicates)]
        selected = _sorted(selected, sort_by, LIST_FIELDS[key])
        page = selected[offset : offset + size]
        response: dict[str, Any] = {"total_size": len(selected)}
        if page:
            response[key] = page
        if offset + size < len(selected):
            state = {"offset": offset + size, "sort_by": sort_by, "predicates": predicates}
            response["next_page_token"] = base64.urlsafe_b64encode(json.dumps(state).encode()).decode()
        return self._served(response, model)


class _Response:
    """What ``ApiClient.deserialize`` reads: JSON text in ``data``."""

    def __init__(self, document: Any) -> None:
        self.data = json.dumps(document)


def check_fields(value: Any, openapi_type: str, path: str) -> None:
    """Reject what the server's protojson parser would: unknown fields, wrong JSON types, unknown enum values."""
    if value is None:
        return
    if openapi_type.startswith("list["):
        if not isinstance(value, list):
            raise bad_request(f"{path}: expected a list")
        for index, item in enumerate(value):
            check_fields(item, openapi_type[5:-1], f"{path}[{index}]")
        return
    if openapi_type.startswith("dict("):
        if not isinstance(value, dict):
            raise bad_request(f"{path}: expected an object")
        item_type = openapi_type[5:-1].split(", ", 1)[1]
        for key, item in value.items():
            check_fields(item, item_type, f"{path}.{key}")
        return
    expected = {"str": str, "int": int, "bool": bool, "float": (int, float), "datetime": str, "object": object}
    if openapi_type in expected:
        field_name = path.rsplit(".", 1)[-1]
        ok = isinstance(value, expected[openapi_type]) and not (openapi_type == "int" and isinstance(value, bool))
        if openapi_type == "str" and field_name in INT64_FIELDS:
            ok = isinstance(value, str | int) and not isinstance(value, bool)
        if not ok:
            raise bad_request(f"{path}: expected {openapi_type}, got {type(value).__name__}")
        return
    model = getattr(kfp_server_api.models, openapi_type)
    if not model.openapi_types:  # an enum
        if value not in getattr(model, "allowable_values", ()):
            raise bad_request(f"{path}: invalid value {value!r} for enum {openapi_type}")
        return
    if not isinstance(value, dict):
        raise bad_request(f"{path}: expected an object ({openapi_type})")
    by_json_name = {json_name: name for name, json_name in model.attribute_map.items()}
    for key, item in value.items():
        if key not in by_json_name:
            raise bad_request(f'{path}: unknown field "{key}"')
        check_fields(item, model.openapi_types[by_json_name[key]], f"{path}.{key}")


def _json(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        raise bad_request("request body is not JSON") from None


def _first(query: dict[str, list[str]], key: str) -> str:
    return (query.get(key) or [""])[0]


def _page_size(text: str) -> int:
    try:
        size = int(text or 0)
    except ValueError:
        raise bad_request(f"page_size {text!r} is not a number") from None
    if size < 0:
        raise bad_request(f"The page size should be greater than 0. Got {size}")
    return min(size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def _parse_filter(text: str, fields: set[str]) -> list[dict[str, Any]]:
    """The Filter JSON as protojson reads it (json or proto names, enum numbers or names) into predicates."""
    if not text:
        return []
    try:
        document = json.loads(text)
    except ValueError:
        raise bad_request(f"Invalid filter: not JSON: {text!r}") from None
    if not isinstance(document, dict) or set(document) - {"predicates"}:
        raise bad_request(f"Invalid filter: expected {{'predicates': [...]}}, got {text!r}")
    predicates = []
    for raw in document.get("predicates") or []:
        predicate = {_snake(key): value for key, value in raw.items()}
        operation = predicate.get("operation")
        if isinstance(operation, int):
            predicate["operation"] = FILTER_OPERATIONS.get(operation, operation)
        check_fields(predicate, "V2beta1Predicate", "filter.predicates")
        if predicate.get("key") not in fields:
            raise bad_request(f"Invalid filter: no such field {predicate.get('key')!r}")
        if predicate["operation"] not in ("EQUALS", "NOT_EQUALS", "IN", "IS_SUBSTRING"):
            raise bad_request(f"the test double does not filter with {predicate['operation']}")
        predicates.append(predicate)
    return predicates


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z])([A-Z])", r"_\1", name).lower()


def _matches(item: dict[str, Any], predicate: dict[str, Any]) -> bool:
    value = item.get(predicate["key"], "")
    operation = predicate["operation"]
    if operation == "IN":
        return value in ((predicate.get("string_values") or {}).get("values") or [])
    expected = predicate.get("string_value", "")
    if operation == "IS_SUBSTRING":
        return expected in str(value)
    return (value == expected) == (operation == "EQUALS")


def _sorted(items: list[dict[str, Any]], sort_by: str, fields: set[str]) -> list[dict[str, Any]]:
    """Sorted as ``sort_by`` says ("<field>" or "<field> desc"), by creation otherwise."""
    words = sort_by.split()
    field_name = words[0] if words else "created_at"
    if field_name not in fields or len(words) > 2 or (len(words) == 2 and words[1] not in ("asc", "desc")):
        raise bad_request(f"Invalid sorting field: {sort_by!r}")
    return sorted(items, key=lambda item: str(item.get(field_name, "")), reverse=words[1:] == ["desc"])


def _check_parameters(pipeline_spec: dict[str, Any], parameters: dict[str, Any]) -> None:
    """The API server's validatePipelineJobInputs: known names, required ones present, JSON kinds by type."""
    spec = pipeline_spec.get("pipeline_spec", pipeline_spec)
    declared = ((spec.get("root") or {}).get("inputDefinitions") or {}).get("parameters") or {}
    kinds = {
        "NUMBER_INTEGER": (int, float),
        "NUMBER_DOUBLE": (int, float),
        "STRING": str,
        "BOOLEAN": bool,
        "LIST": list,
        "STRUCT": dict,
    }
    for name, definition in declared.items():
        if name not in parameters:
            if not definition.get("isOptional") and "defaultValue" not in definition:
                raise bad_request(
                    f"parameter {name} is not optional, yet has neither default value nor user provided value"
                )
            continue
        kind = kinds.get(definition.get("parameterType", ""))
        value = parameters[name]
        if kind is None or not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise bad_request(
                f"input parameter {name} requires type {definition.get('parameterType')}, but the "
                f"parameter value is {json.dumps(value)}"
            )
    extra = sorted(set(parameters) - set(declared))
    if extra:
        raise bad_request(f"parameter(s) provided are not required by pipeline: {', '.join(extra)}")


def _robfig_v1_parses(cron: str) -> bool:
    """What robfig/cron v1 ``cron.Parse`` (the backend's) accepts, in shape: a descriptor, or 5 or 6 fields
    (seconds first; day of week optional)."""
    text = cron.strip()
    if text.startswith("@"):
        return text in _CRON_DESCRIPTORS or text.startswith("@every ")
    return len(text.split()) in (5, 6) and all(re.fullmatch(r"[0-9A-Za-z*?,/-]+", f) for f in text.split())
