"""One Triton replica, driven over gRPC (model control over HTTP stalls concurrent HTTP inference), and the
replicas a deployment must bring in line."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from kfp_mlops.components.deploy.errors import DeployError, Stage
from kfp_mlops.components.shared import layout, triton_access
from kfp_mlops.components.shared.config import DeployConfig

RETRIES = 4
SETTLE_SECONDS = 120.0  # at least this long, an unload waits for a load its client gave up on
CALL_SECONDS = 30.0  # the bound of one gRPC call (a load's is what remains of its readiness budget)
_T = TypeVar("_T")


def replica_endpoints(settings: DeployConfig) -> list[str]:
    """The gRPC ``host:port`` of every Triton replica: each address ``replicas_host`` resolves to (with the port of
    ``triton_url``), or ``triton_url`` alone when no replicas host is set."""
    if not settings.replicas_host:
        return [settings.triton_url]
    port = settings.triton_url.rsplit(":", 1)[-1]
    for attempt in range(RETRIES):
        try:
            infos = socket.getaddrinfo(settings.replicas_host, int(port), type=socket.SOCK_STREAM)
            break
        except socket.gaierror as exc:
            if attempt == RETRIES - 1:
                raise DeployError(
                    Stage.REPLICAS, f"deploy.replicas_host {settings.replicas_host!r} does not resolve: {exc}"
                ) from None
            time.sleep(0.5 * 2**attempt)
    addresses = sorted({info[4][0] for info in infos})
    return [f"[{address}]:{port}" if ":" in address else f"{address}:{port}" for address in addresses]


def check_resolves(endpoint: str, key: str) -> None:
    """Fail at once (DeployError at REPLICAS, naming ``key``) when the host of the gRPC ``host:port`` ``endpoint``
    does not resolve: it never will within a readiness wait, while a name that resolves but refuses connections keeps
    the wait (a pod may be starting). A temporary resolver failure is retried; a target that is not ``host:port``
    (``dns:///``, ``unix:``) is left to gRPC."""
    host, _, port = endpoint.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not host or not port.isdigit() or "/" in endpoint:
        return
    for attempt in range(RETRIES):
        try:
            socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)  # bounded by the resolver's own timeouts
            return
        except socket.gaierror as exc:
            if exc.errno != socket.EAI_AGAIN or attempt == RETRIES - 1:
                raise DeployError(
                    Stage.REPLICAS,
                    f"{key} {endpoint!r}: the host {host!r} does not resolve ({exc.strerror}); nothing was changed",
                    rolled_back=True,
                ) from None
            time.sleep(0.5 * 2**attempt)


def retry(call: Callable[[], _T], endpoint: str = "") -> _T:
    """``call()``, again after a pause while the server is unreachable (gRPC UNAVAILABLE); DeployError at once when
    Triton refuses model control for want of its key (also UNAVAILABLE: never retried)."""
    for attempt in range(RETRIES):
        try:
            return call()
        except InferenceServerException as exc:
            if triton_access.REFUSED_MESSAGE in (exc.message() or ""):
                hint = triton_access.refusal_hint()
                raise DeployError(Stage.REPLICAS, f"Triton at {endpoint} refused model control: {hint}") from None
            if exc.status() != "StatusCode.UNAVAILABLE" or attempt == RETRIES - 1:
                raise
            time.sleep(0.5 * 2**attempt)
    raise AssertionError("unreachable")


class Replica:
    """One Triton server, over gRPC. Every call has a client timeout; model control (index, load, unload) carries
    the control key header where one is configured (``triton_access``)."""

    def __init__(self, endpoint: str):
        self.endpoint = endpoint
        self.client = grpcclient.InferenceServerClient(endpoint)
        self.control = triton_access.control_headers()
        self.deadline: float | None = None  # a cancelled deployment's rollback: no call lasts beyond it

    @property
    def call_seconds(self) -> float:
        """The client timeout of one call: CALL_SECONDS, or what remains before ``deadline``."""
        if self.deadline is None:
            return CALL_SECONDS
        return max(min(CALL_SECONDS, self.deadline - time.monotonic()), 0.1)

    def wait_until_live(self, timeout: float) -> None:
        """Wait for the server to answer: a pod that is starting loads the repository before it listens."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.client.is_server_live(client_timeout=min(5.0, self.call_seconds)):
                    return
            except InferenceServerException as exc:
                if exc.status() not in ("StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED"):
                    raise
            if time.monotonic() > deadline:
                raise DeployError(Stage.REPLICAS, f"Triton at {self.endpoint} did not answer within {timeout:.0f}s")
            time.sleep(1.0)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()

    def _retry(self, call: Callable[[], _T]) -> _T:
        return retry(call, self.endpoint)

    def states(self, name: str) -> dict[int, str]:
        """Triton's state of each version of ``name`` it knows (READY, LOADING, UNLOADING, UNAVAILABLE)."""
        index = self._retry(
            lambda: self.client.get_model_repository_index(
                headers=self.control, as_json=True, client_timeout=self.call_seconds
            )
        ).get("models", [])
        return {
            int(entry["version"]): entry.get("state", "")
            for entry in index
            if entry.get("name") == name and str(entry.get("version")).isdigit()
        }

    def settled(self, name: str, deadline: float) -> dict[int, str]:
        """The states once no version of ``name`` is loading (a load whose client gave up goes on in Triton; an
        unload sent meanwhile would block until it ends)."""
        while True:
            states = self.states(name)
            if "LOADING" not in states.values() or time.monotonic() > deadline:
                return states
            time.sleep(0.2)

    def is_ready(self, name: str, version: int | None = None) -> bool:
        version_text = str(version or "")
        return self._retry(lambda: self.client.is_model_ready(name, version_text, client_timeout=self.call_seconds))

    def load(self, name: str, version: int, timeout: float) -> None:
        """Load (or reload) ``name`` from the repository and wait until ``version`` is ready."""
        deadline = time.monotonic() + timeout
        late = f"{name} version {version} on {self.endpoint} was not ready within {timeout:.0f}s"
        try:
            self._retry(
                lambda: self.client.load_model(
                    name, headers=self.control, client_timeout=max(deadline - time.monotonic(), 0.1)
                )
            )
        except InferenceServerException as exc:
            if exc.status() == "StatusCode.DEADLINE_EXCEEDED":
                raise DeployError(Stage.READINESS, late) from None
            message = f"{name} version {version} failed to load on {self.endpoint}: {first_line(exc.message())}"
            raise DeployError(Stage.LOAD, message) from None
        while not self.is_ready(name, version):
            if time.monotonic() > deadline:
                raise DeployError(Stage.READINESS, late)
            time.sleep(0.2)

    def unload(self, name: str, timeout: float) -> None:
        """Unload every version of ``name`` and wait until none is loading or ready."""
        deadline = time.monotonic() + timeout
        while True:
            states = self.settled(name, deadline)
            if "READY" in states.values() or not states:
                self._retry(  # a no-op for a model Triton does not hold
                    lambda: self.client.unload_model(name, headers=self.control, client_timeout=self.call_seconds)
                )
                states = self.states(name)
            if not {"LOADING", "READY"} & set(states.values()):
                return
            if time.monotonic() > deadline:
                raise DeployError(Stage.LOAD, f"{name} on {self.endpoint} is still loaded after {timeout:.0f}s")
            time.sleep(0.2)

    def converge(self, name: str, version: int, timeout: float, settle: float = SETTLE_SECONDS) -> None:
        """Make ``version`` the only ready version of ``name``; load only when it is not so already (a load of a
        loaded model reloads it). A load in progress is waited for up to ``settle`` seconds first."""
        states = self.settled(name, time.monotonic() + settle)
        if {v for v, state in states.items() if state == "READY"} != {version}:
            self.load(name, version, timeout)

    def infer(
        self, name: str, version: int, inputs: dict[str, np.ndarray], outputs: Sequence[str]
    ) -> list[np.ndarray | None]:
        """The arrays of ``outputs`` (the package's ``ModelConfig.outputs``), None for one Triton did not return."""
        tensors, requested = layout.infer_inputs(grpcclient, inputs), layout.requested_outputs(grpcclient, outputs)
        result = self.client.infer(
            name, tensors, model_version=str(version), outputs=requested, client_timeout=self.call_seconds
        )
        return [result.as_numpy(output) for output in outputs]


def first_line(message: str) -> str:
    return message.strip().splitlines()[0][:500] if message.strip() else "(no message)"
