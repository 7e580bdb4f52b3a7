"""``FakeKubeApiServer``: an in-process HTTP test double of the Kubernetes API server (no cluster runs here), and
helpers to script it with TrainJob objects as the API server would store them."""

from __future__ import annotations

import copy
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from kubeflow_trainer_api.models import TrainerV1alpha1TrainJob
from kubernetes.client import ApiClient, Configuration


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    body: Any


class FakeKubeApiServer:
    """In-process HTTP test double of the Kubernetes API server on a free loopback port. It records every request
    and answers each (method, path) from its script of (status, JSON body) responses, in order; the last one
    repeats. Unscripted requests get 501, which the code under test reports as an error."""

    def __init__(self) -> None:
        self.requests: list[RecordedRequest] = []
        self._script: dict[tuple[str, str], list[tuple[int, Any]]] = {}
        self._hooks: dict[tuple[str, str], Callable[[RecordedRequest], None]] = {}
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                fake._serve(self)

            do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = _serve

            def log_message(self, *args: Any) -> None:
                pass

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._http.server_port}"
        self._thread = threading.Thread(target=self._http.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> FakeKubeApiServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._http.shutdown()
        self._http.server_close()

    def script(self, method: str, path: str, *responses: tuple[int, Any]) -> None:
        with self._lock:
            self._script[(method, path)] = list(responses)

    def on(self, method: str, path: str, hook: Callable[[RecordedRequest], None]) -> None:
        """Call ``hook`` with each matching request before it is answered (it may re-script responses)."""
        with self._lock:
            self._hooks[(method, path)] = hook

    def requests_of(self, method: str) -> list[RecordedRequest]:
        with self._lock:
            return [request for request in self.requests if request.method == method]

    def wait_for(self, condition: Callable[[], bool], timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, f"timed out; requests so far: {self.requests}"
            time.sleep(0.02)

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        url = urlsplit(handler.path)
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        request = RecordedRequest(handler.command, url.path, parse_qs(url.query), json.loads(raw) if raw else None)
        with self._lock:
            self.requests.append(request)
            hook = self._hooks.get((handler.command, url.path))
        if hook:
            hook(request)
        with self._lock:
            responses = self._script.get((handler.command, url.path))
            if not responses:
                status, body = 501, status_body(501, "NotImplemented", f"unscripted {handler.command} {url.path}")
            else:
                status, body = responses.pop(0) if len(responses) > 1 else responses[0]
        payload = json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        handler.wfile.write(payload)


def status_body(code: int, reason: str, message: str) -> dict[str, Any]:
    """A metav1.Status, as the API server sends with an error."""
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def not_found(name: str) -> tuple[int, Any]:
    return 404, status_body(404, "NotFound", f'trainjobs.trainer.kubeflow.org "{name}" not found')


def stored(manifest: dict[str, Any], active: int = 0, **conditions: tuple[str, str]) -> tuple[int, Any]:
    """The job as the server returns it: manifest plus status (child Jobs active; condition type -> reason, message)."""
    job = copy.deepcopy(manifest)
    job["metadata"].update(uid="5f1c1f0e-0000-4000-8000-000000000001", resourceVersion="1")
    job["status"] = {
        "conditions": [
            {
                "type": kind,
                "status": "True",
                "reason": reason,
                "message": message,
                "lastTransitionTime": "2025-01-01T00:00:00Z",
            }
            for kind, (reason, message) in conditions.items()
        ],
        "jobsStatus": [
            {"name": "node", "active": active, "ready": active, "succeeded": 0, "failed": 0, "suspended": 0}
        ],
    }
    TrainerV1alpha1TrainJob.from_dict(job)  # the test double only serves what the real API could
    return 200, job


COMPLETE = {"Complete": ("JobsCompleted", "TrainJob is completed")}
FAILED = {"Failed": ("JobsFailed", "jobset failed: node-1 exited with code 1 (CUDA out of memory)")}


def api_client_for(server: FakeKubeApiServer) -> ApiClient:
    return ApiClient(Configuration(host=server.url))
