"""Deploy: put a model package into a Triton model repository as the next version of the served model, verify it
inside Triton before it can answer for the served name, promote it, and roll back on any failure. Paths and values
only; no KFP. Triton is driven over gRPC only (model control over HTTP stalls concurrent HTTP inference).

Repository layout (a local path, ``s3://`` or ``gs://``; the storage Triton reads)::

    <repo>/<name>/config.pbtxt               version_policy: specific [the served version], and nothing else
    <repo>/<name>/<N>/model.onnx             + model.py (python backend) + kfp-mlops.json (the commit marker)
    <repo>/<name>-candidate/                 only while a deployment runs: the same files, loaded for verification

Protocol: stage the candidate (``<name>-candidate``, version N) → load it on every replica and verify it (rows
against the package's own outputs, batch-1 latency) → commit ``<name>/<N>/`` (invisible to Triton: the served
config names the old version only) → promote (the served config names N, load ``<name>`` on every replica, wait
until N is ready; Triton answers with the old version until then) → remove the candidate, prune old versions, resolve
the replicas again and bring any newcomer in line. Any failure rolls back to the previous version. See README.md.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from kfp_mlops.components.shared import layout, model_package, storage, triton_config
from kfp_mlops.components.shared.config import DeployConfig, VerifyConfig
from kfp_mlops.components.shared.records import Deployment
from kfp_mlops.components.shared.splits import read_split

CANDIDATE_SUFFIX = "-candidate"
WARMUP_REQUESTS = 5
_STAGING_PREFIX = ".staging-"  # local commits: a non-numeric directory Triton ignores, renamed to <N>
_RETRIES = 4
_SETTLE_SECONDS = 120.0  # at least this long, an unload waits for a load its client gave up on
_T = TypeVar("_T")

Stage = Literal[
    "package", "replicas", "load", "readiness", "verification", "latency", "commit", "promotion", "cancelled"
]
Status = Literal["not_deployed", "deployed", "already_serving"]


class DeployError(RuntimeError):
    """The deployment failed; ``stage`` says where and ``rolled_back`` whether the repository and the replicas were
    brought back to the previous version (the message adds any step of the rollback that failed)."""

    def __init__(self, stage: Stage, message: str, rolled_back: bool = False):
        super().__init__(message)
        self.stage = stage
        self.rolled_back = rolled_back


@dataclass(frozen=True)
class Verification:
    """What the candidate showed in Triton (the worst replica's figures)."""

    rows: int
    max_abs_diff: float  # largest |Triton - package| probability
    p50_ms: float
    p99_ms: float
    requests: int

    def figures(self) -> dict[str, float]:
        return {
            "rows": float(self.rows),
            "max_abs_diff": self.max_abs_diff,
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
        }


@dataclass(frozen=True)
class DeployResult:
    """``deployment`` is None when nothing was deployed (no model repository configured)."""

    status: Status
    deployment: Deployment | None = None
    previous_version: int | None = None
    pruned: list[int] = field(default_factory=list)
    replicas: list[str] = field(default_factory=list)

    @property
    def version(self) -> int:
        return self.deployment.version if self.deployment else 0

    def describe(self) -> str:
        """One line for the console."""
        if self.deployment is None:
            return "deploy.model_repository is empty: not deployed"
        d = self.deployment
        where = f"{d.model_name} version {d.version} serves at {d.endpoint} from {d.repository}"
        if self.status == "already_serving":
            return f"{where} (already serving this package: nothing changed)"
        v = d.verified
        previous = f"previous {self.previous_version}" if self.previous_version else "first version"
        return (
            f"{where} ({previous}; verified {v['rows']:.0f} rows, max |diff| {v['max_abs_diff']:.2e}, "
            f"p50 {v['p50_ms']:.2f} ms, p99 {v['p99_ms']:.2f} ms on {len(self.replicas)} replica(s)"
            f"{f'; pruned {self.pruned}' if self.pruned else ''})"
        )


def deploy(model_dir: str, validation_path: str, settings: DeployConfig, gpu: bool = False) -> DeployResult:
    """Deploy the package at ``model_dir`` as the next version of ``settings.model_name`` (see the module
    docstring), verified on ``settings.verify.rows`` rows of the validation split at ``validation_path``.
    ``gpu`` chooses KIND_GPU instances when ``settings.instance_kind`` is auto. Idempotent: the package that already
    serves (same content and config) only has its readiness checked. Raises DeployError after rolling back."""
    if not settings.model_repository:
        return DeployResult(status="not_deployed")
    package = _Package.read(model_dir, settings, gpu)
    repository = _Repository(settings.model_repository, settings.model_name)
    with _cancel_on_sigterm():
        return _Deployment(package, repository, settings).run(validation_path)


def model_config(
    name: str, onnx_path: str | Path, settings: DeployConfig, gpu: bool, version: int | None = None
) -> triton_config.ModelConfig:
    """The Triton config of the package: tensors from the ONNX signature, ``platform: onnxruntime_onnx`` (or the
    local python backend), KIND_GPU (device 0 of the pod) or KIND_CPU instances, dynamic batching, and a version
    policy that serves exactly ``version``."""
    kind = settings.instance_kind if settings.instance_kind != "auto" else ("gpu" if gpu else "cpu")
    group = {"kind": "KIND_GPU", "gpus": [0]} if kind == "gpu" else {"kind": "KIND_CPU"}
    return triton_config.config_for_onnx(
        name,
        onnx_path,
        backend="python" if settings.backend == "python" else None,
        max_batch_size=settings.max_batch_size,
        dynamic_batching={
            "preferred_batch_size": settings.preferred_batch_sizes,
            "max_queue_delay_microseconds": settings.max_queue_delay_microseconds,
        },
        instance_group=[{**group, "count": settings.instance_count}],
        version_policy={"specific": [version]} if version else None,
    )


def replica_endpoints(settings: DeployConfig) -> list[str]:
    """The gRPC ``host:port`` of every Triton replica: each address ``replicas_host`` resolves to (with the port of
    ``triton_url``), or ``triton_url`` alone when no replicas host is set."""
    if not settings.replicas_host:
        return [settings.triton_url]
    port = settings.triton_url.rsplit(":", 1)[-1]
    for attempt in range(_RETRIES):
        try:
            infos = socket.getaddrinfo(settings.replicas_host, int(port), type=socket.SOCK_STREAM)
            break
        except socket.gaierror as exc:
            if attempt == _RETRIES - 1:
                raise DeployError(
                    "replicas", f"deploy.replicas_host {settings.replicas_host!r} does not resolve: {exc}"
                ) from None
            time.sleep(0.5 * 2**attempt)
    addresses = sorted({info[4][0] for info in infos})
    return [f"[{address}]:{port}" if ":" in address else f"{address}:{port}" for address in addresses]


# -- the package ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Package:
    model_dir: str
    onnx_path: Path
    content_hash: str  # of model.onnx and model_config.json
    config: model_package.ModelConfig
    serving: triton_config.ModelConfig  # the served config without version policy
    backend: str

    @classmethod
    def read(cls, model_dir: str, settings: DeployConfig, gpu: bool) -> _Package:
        onnx_path = Path(model_dir) / model_package.ONNX_FILE
        try:
            config = model_package.read_model_config(model_dir)
            digest = hashlib.sha256()
            for name in (model_package.ONNX_FILE, model_package.MODEL_CONFIG_FILE):
                digest.update(name.encode() + b"\0" + (Path(model_dir) / name).read_bytes() + b"\0")
            serving = model_config(settings.model_name, onnx_path, settings, gpu)
        except Exception as exc:  # a missing file, an unreadable graph, a signature Triton cannot serve
            raise DeployError("package", f"model package {model_dir}: {type(exc).__name__}: {exc}") from None
        return cls(model_dir, onnx_path, f"sha256:{digest.hexdigest()}", config, serving, settings.backend)

    def files(self) -> dict[str, Path]:
        """A version directory's files besides the marker."""
        return layout.version_files(self.onnx_path, python_backend=self.backend == "python")

    def config_for(self, name: str, version: int) -> triton_config.ModelConfig:
        return self.serving.model_copy(
            update={"name": name, "version_policy": triton_config.VersionPolicy(specific=[version])}
        )


@dataclass(frozen=True)
class _Reference:
    """The verification rows as Triton inputs, and the package's own outputs on them."""

    inputs: dict[str, np.ndarray]
    probabilities: np.ndarray
    labels: list[Any]
    decision_threshold: float

    @classmethod
    def compute(cls, package: _Package, validation_path: str, rows: int, batch_size: int) -> _Reference:
        """The package's outputs in the batches verification sends (``batch_size`` rows each, one request at a
        time, so Triton runs each alone): an int8_dynamic model quantizes activations per batch, so a row's
        outputs depend on the rows it is run with."""
        try:
            table = read_split(validation_path, "validation")
            table = table.slice(0, min(rows, table.num_rows))
            predictor = model_package.Predictor(package.model_dir)
            inputs = predictor.feeds(table)
            batches = [
                predictor.run({key: value[start : start + batch_size] for key, value in inputs.items()})
                for start in range(0, table.num_rows, batch_size)
            ]
            probabilities = np.concatenate([batch[0] for batch in batches])
            labels = np.concatenate([batch[1] for batch in batches])
        except Exception as exc:
            raise DeployError(
                "package", f"reference outputs of {package.model_dir} on {validation_path}: {type(exc).__name__}: {exc}"
            ) from None
        return cls(inputs, probabilities, layout.decode_labels(labels), package.config.decision_threshold)

    @property
    def rows(self) -> int:
        return len(self.probabilities)

    def excused(self, row: int, atol: float) -> bool:
        """A label may differ where the reference sits within ``atol`` of the decision boundary."""
        p = self.probabilities[row]
        if len(p) == 2:
            return abs(float(p[1]) - self.decision_threshold) <= atol
        top = np.sort(p)[-2:]
        return float(top[1] - top[0]) <= 2 * atol


# -- the repository ---------------------------------------------------------------------------------------------


@dataclass
class _State:
    """What the repository holds for the model: versions (marker or None when uncommitted), the served version
    (from config.pbtxt) and the config text."""

    versions: dict[int, dict[str, Any] | None]
    served: int | None
    config_text: str | None
    other: list[str]  # non-version entries under <name>/ besides config.pbtxt (staging leftovers)


class _Repository:
    def __init__(self, uri: str, name: str):
        self.uri = uri
        self.root = storage.parse(uri)
        self.name = name
        self.candidate = f"{name}{CANDIDATE_SUFFIX}"

    def at(self, relative: str) -> str:
        return self.root.child(relative).uri

    def _relative_files(self, directory: str) -> list[str]:
        base = storage.parse(self.at(directory))
        uris = storage.list_uris(base.uri)
        if base.scheme == "file":
            return [os.path.relpath(uri, base.key) for uri in uris]
        return [storage.parse(uri).key[len(base.key.rstrip("/")) + 1 :] for uri in uris]

    def read_text(self, relative: str) -> str | None:
        try:
            return storage.read_bytes(self.at(relative)).decode()
        except FileNotFoundError:
            return None

    def marker(self, version: int) -> dict[str, Any] | None:
        """The commit marker of ``<name>/<version>/``; None when absent or unreadable (an uncommitted version)."""
        text = self.read_text(layout.version_path(self.name, version, layout.VERSION_METADATA_FILE))
        try:
            marker = json.loads(text) if text else None
        except ValueError:
            return None
        return marker if isinstance(marker, dict) else None

    def write_text(self, relative: str, text: str) -> None:
        storage.write_bytes(self.at(relative), text.encode())

    def delete(self, relative: str) -> None:
        storage.delete_tree(self.at(relative))

    def state(self) -> _State:
        tops = {path.split("/", 1)[0] for path in self._relative_files(self.name)}
        if self.root.scheme == "file" and os.path.isdir(self.at(self.name)):
            tops.update(os.listdir(self.at(self.name)))  # empty directories too (an interrupted local commit)
        numbered = sorted(int(top) for top in tops if top.isdigit() and int(top) > 0)
        versions: dict[int, dict[str, Any] | None] = {}
        for version in numbered:
            versions[version] = self.marker(version)
        config_text = self.read_text(f"{self.name}/{triton_config.CONFIG_FILE}")
        other = sorted(top for top in tops if not (top.isdigit() and int(top) > 0) and top != triton_config.CONFIG_FILE)
        return _State(versions, _served_version(config_text, versions), config_text, other)

    def write_version(self, name: str, version: int, files: dict[str, Path], marker: dict[str, Any]) -> None:
        """Write ``<name>/<version>/``: the files, then the marker (the commit)."""
        target = f"{name}/{version}"
        marker_bytes = json.dumps(marker, indent=2).encode()
        if self.root.scheme == "file":  # complete under a name Triton ignores, then one rename
            staging = Path(self.at(f"{name}/{_STAGING_PREFIX}{secrets.token_hex(4)}"))
            staging.mkdir(parents=True)
            try:
                for relative, path in files.items():
                    shutil.copyfile(path, staging / relative)
                (staging / layout.VERSION_METADATA_FILE).write_bytes(marker_bytes)
                os.rename(staging, self.at(target))  # fails if <version> exists: never overwrite a version
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        else:  # each object appears whole; the marker written last commits the version
            for relative, path in files.items():
                storage.upload_file(path, self.at(f"{target}/{relative}"))
            storage.write_bytes(self.at(f"{target}/{layout.VERSION_METADATA_FILE}"), marker_bytes)


def _served_version(config_text: str | None, versions: dict[int, Any]) -> int | None:
    """The version config.pbtxt serves: its ``specific`` version, else (another policy) the highest version."""
    if config_text is None:
        return None
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    try:
        config = text_format.Parse(config_text, model_config_pb2.ModelConfig())
    except text_format.ParseError:
        return max(versions, default=None)
    if config.version_policy.WhichOneof("policy_choice") == "specific" and config.version_policy.specific.versions:
        return max(config.version_policy.specific.versions)
    return max(versions, default=None)


# -- one Triton replica -----------------------------------------------------------------------------------------


def _retry(call: Callable[[], _T]) -> _T:
    """``call()``, again after a pause while the server is unreachable (gRPC UNAVAILABLE)."""
    for attempt in range(_RETRIES):
        try:
            return call()
        except InferenceServerException as exc:
            if exc.status() != "StatusCode.UNAVAILABLE" or attempt == _RETRIES - 1:
                raise
            time.sleep(0.5 * 2**attempt)
    raise AssertionError("unreachable")


class _Replica:
    """One Triton server, over gRPC."""

    def __init__(self, endpoint: str):
        self.endpoint = endpoint
        self.client = grpcclient.InferenceServerClient(endpoint)

    def wait_until_live(self, timeout: float) -> None:
        """Wait for the server to answer: a pod that is starting loads the repository before it listens."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.client.is_server_live(client_timeout=5.0):
                    return
            except InferenceServerException as exc:
                if exc.status() not in ("StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED"):
                    raise
            if time.monotonic() > deadline:
                raise DeployError("replicas", f"Triton at {self.endpoint} did not answer within {timeout:.0f}s")
            time.sleep(1.0)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()

    def states(self, name: str) -> dict[int, str]:
        """Triton's state of each version of ``name`` it knows (READY, LOADING, UNLOADING, UNAVAILABLE)."""
        index = _retry(lambda: self.client.get_model_repository_index(as_json=True)).get("models", [])
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
        return _retry(lambda: self.client.is_model_ready(name, str(version or "")))

    def load(self, name: str, version: int, timeout: float) -> None:
        """Load (or reload) ``name`` from the repository and wait until ``version`` is ready."""
        deadline = time.monotonic() + timeout
        late = f"{name} version {version} on {self.endpoint} was not ready within {timeout:.0f}s"
        try:
            _retry(lambda: self.client.load_model(name, client_timeout=max(deadline - time.monotonic(), 0.1)))
        except InferenceServerException as exc:
            if exc.status() == "StatusCode.DEADLINE_EXCEEDED":
                raise DeployError("readiness", late) from None
            message = f"{name} version {version} failed to load on {self.endpoint}: {_first_line(exc.message())}"
            raise DeployError("load", message) from None
        while not self.is_ready(name, version):
            if time.monotonic() > deadline:
                raise DeployError("readiness", late)
            time.sleep(0.2)

    def unload(self, name: str, timeout: float) -> None:
        """Unload every version of ``name`` and wait until none is loading or ready."""
        deadline = time.monotonic() + timeout
        while True:
            states = self.settled(name, deadline)
            if "READY" in states.values() or not states:
                _retry(lambda: self.client.unload_model(name))  # a no-op for a model Triton does not hold
                states = self.states(name)
            if not {"LOADING", "READY"} & set(states.values()):
                return
            if time.monotonic() > deadline:
                raise DeployError("load", f"{name} on {self.endpoint} is still loaded after {timeout:.0f}s")
            time.sleep(0.2)

    def converge(self, name: str, version: int, timeout: float) -> None:
        """Make ``version`` the only ready version of ``name``; load only when it is not so already (a load of a
        loaded model reloads it)."""
        states = self.settled(name, time.monotonic() + max(timeout, _SETTLE_SECONDS))
        if {v for v, state in states.items() if state == "READY"} != {version}:
            self.load(name, version, timeout)

    def infer(self, name: str, version: int, inputs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        tensors, outputs = layout.infer_inputs(grpcclient, inputs), layout.requested_outputs(grpcclient)
        result = self.client.infer(name, tensors, model_version=str(version), outputs=outputs)
        return result.as_numpy(model_package.PROBABILITIES_OUTPUT), result.as_numpy(model_package.LABEL_OUTPUT)


def _first_line(message: str) -> str:
    return message.strip().splitlines()[0][:500] if message.strip() else "(no message)"


def verify(replica: _Replica, name: str, version: int, reference: _Reference, settings: DeployConfig) -> Verification:
    """Send the reference rows (batches of max_batch_size) and time batch-1 requests; raise DeployError when the
    answers differ beyond ``verify.atol`` or the latency exceeds the budget."""
    check: VerifyConfig = settings.verify
    worst, mismatched = 0.0, []
    try:
        for start in range(0, reference.rows, settings.max_batch_size):
            stop = min(start + settings.max_batch_size, reference.rows)
            batch = {key: value[start:stop] for key, value in reference.inputs.items()}
            probabilities, labels = replica.infer(name, version, batch)
            if probabilities is None or probabilities.shape != reference.probabilities[start:stop].shape:
                shape = None if probabilities is None else probabilities.shape
                raise DeployError(
                    "verification",
                    f"{name} version {version} on {replica.endpoint}: probabilities "
                    f"of shape {shape}, expected "
                    f"{reference.probabilities[start:stop].shape}",
                )
            difference = np.abs(probabilities - reference.probabilities[start:stop])
            if not np.isfinite(difference).all():  # max() would drop a NaN: a model answering NaN must not pass
                rows = (start + np.flatnonzero(~np.isfinite(difference).all(axis=1)))[:5].tolist()
                raise DeployError(
                    "verification",
                    f"{name} version {version} on {replica.endpoint}: probabilities that are not finite numbers (NaN "
                    f"or infinity) from Triton or from the package itself, rows {rows}",
                )
            worst = max(worst, float(difference.max()))
            for offset, (got, want) in enumerate(
                zip(layout.decode_labels(labels), reference.labels[start:stop], strict=True)
            ):
                if got != want and not reference.excused(start + offset, check.atol):
                    mismatched.append(start + offset)
        if not worst <= check.atol or mismatched:  # NaN fails too
            labels = (
                f"; {len(mismatched)} of {reference.rows} labels differ (rows {mismatched[:5]})" if mismatched else ""
            )
            raise DeployError(
                "verification",
                f"{name} version {version} on {replica.endpoint} answers differently from the package: max "
                f"|probability difference| {worst:.3g} over {reference.rows} rows (allowed {check.atol:g}){labels}",
            )
        single = [
            {key: value[row : row + 1] for key, value in reference.inputs.items()}
            for row in range(min(reference.rows, check.requests))
        ]
        for index in range(WARMUP_REQUESTS):
            replica.infer(name, version, single[index % len(single)])
        times = []
        for index in range(check.requests):
            started = time.perf_counter()
            replica.infer(name, version, single[index % len(single)])
            times.append((time.perf_counter() - started) * 1000)
    except InferenceServerException as exc:
        raise DeployError(
            "verification",
            f"{name} version {version} on {replica.endpoint} failed a request: {_first_line(exc.message())}",
        ) from None
    p50, p99 = (float(value) for value in np.percentile(times, [50, 99]))
    if p50 > check.max_p50_ms or p99 > check.max_p99_ms:
        raise DeployError(
            "latency",
            f"{name} version {version} on {replica.endpoint} misses the latency budget: "
            f"p50 {p50:.2f} ms (max {check.max_p50_ms:g}), p99 {p99:.2f} ms "
            f"(max {check.max_p99_ms:g}) over {check.requests} batch-1 requests",
        )
    return Verification(reference.rows, worst, p50, p99, check.requests)


# -- the deployment ---------------------------------------------------------------------------------------------


class _Deployment:
    def __init__(self, package: _Package, repository: _Repository, settings: DeployConfig):
        self.package = package
        self.repository = repository
        self.settings = settings
        self.name = settings.model_name
        self.timeout = float(settings.ready_timeout_seconds)
        self.unload_timeout = max(self.timeout, _SETTLE_SECONDS)
        self.replicas: dict[str, _Replica] = {}

    def replica(self, endpoint: str) -> _Replica:
        """The replica at ``endpoint``, once it answers (within ready_timeout_seconds)."""
        if endpoint not in self.replicas:
            replica = _Replica(endpoint)
            self.replicas[endpoint] = replica
            replica.wait_until_live(self.timeout)
        return self.replicas[endpoint]

    def _converge(self, endpoint: str, version: int) -> None:
        self.replica(endpoint).converge(self.name, version, self.timeout)

    def _unload(self, endpoint: str) -> None:
        self.replica(endpoint).unload(self.name, self.unload_timeout)

    def run(self, validation_path: str) -> DeployResult:
        try:
            return self._run(validation_path)
        finally:
            for replica in self.replicas.values():
                replica.close()

    def _run(self, validation_path: str) -> DeployResult:
        state = self.repository.state()
        served = state.served
        if served is not None and self._serves_package(state, served):
            self._clear_leftovers(state)
            pruned = self._finish(served, self.repository.state())
            marker = state.versions[served] or {}
            return self._result("already_serving", served, marker.get("verified", {}), None, pruned)
        reference = _Reference.compute(
            self.package, validation_path, self.settings.verify.rows, self.settings.max_batch_size
        )
        endpoints = replica_endpoints(self.settings)
        version = self._clear_leftovers(state)
        resumed = version in state.versions
        progress = {"committed": resumed, "config_written": False}
        try:
            verification = self._verify_candidate(version, endpoints, reference)
            marker = {
                "content_hash": self.package.content_hash,
                "model_name": self.name,
                "version": version,
                "package": self.package.model_dir,
                "verified": verification.figures(),
                "committed_at": datetime.now(UTC).isoformat(),
                # what a client needs besides the graph (feature columns, classes): `kfp-mlops predict` reads it
                "model_config": self.package.config.model_dump(mode="json"),
            }
            progress["committed"] = True
            if resumed:  # committed by an interrupted attempt with this package: refresh its figures
                self.repository.write_text(
                    layout.version_path(self.name, version, layout.VERSION_METADATA_FILE), json.dumps(marker, indent=2)
                )
            else:
                self.repository.write_version(self.name, version, self.package.files(), marker)
            progress["config_written"] = True
            self.repository.write_text(
                f"{self.name}/{triton_config.CONFIG_FILE}", self.package.config_for(self.name, version).to_pbtxt()
            )
            for endpoint in endpoints:
                try:
                    self.replica(endpoint).converge(self.name, version, self.timeout)
                except DeployError as exc:
                    raise DeployError("promotion", f"promotion failed: {exc}") from None
        except BaseException as exc:
            error = (
                exc
                if isinstance(exc, DeployError)
                else DeployError(
                    "cancelled"
                    if isinstance(exc, KeyboardInterrupt | SystemExit)
                    else "promotion"
                    if progress["config_written"]
                    else "commit"
                    if progress["committed"]
                    else "verification",
                    f"{type(exc).__name__}: {exc}",
                )
            )
            problems = self._roll_back(state, version, progress, endpoints)
            outcome = (
                f"rollback incomplete: {'; '.join(problems)}"
                if problems
                else f"rolled back: version {served} keeps serving"
                if served
                else "rolled back: nothing was serving, nothing serves"
            )
            raise DeployError(error.stage, f"{error}; {outcome}", rolled_back=not problems) from None
        pruned = self._finish(version, self.repository.state())
        return self._result("deployed", version, verification.figures(), served, pruned)

    def _serves_package(self, state: _State, served: int) -> bool:
        """The served version holds this package's content and the served config is the one it would get."""
        marker = state.versions.get(served)
        if not marker or marker.get("content_hash") != self.package.content_hash or state.config_text is None:
            return False
        try:
            current = triton_config.ModelConfig.from_pbtxt(state.config_text)
        except ValueError:
            return False
        return current.model_copy(update={"version_policy": None}) == self.package.serving

    def _clear_leftovers(self, state: _State) -> int:
        """Remove what an interrupted deployment left (staging directories, uncommitted versions, versions never
        promoted, the candidate's directory); return the version to deploy: a committed, never promoted version of
        this very package (a retried step resumes it), else the one after the served version."""
        served = state.served or 0
        resumable = [
            v
            for v, marker in state.versions.items()
            if v > served and marker and marker.get("content_hash") == self.package.content_hash
        ]
        resume = max(resumable, default=None)
        for version, marker in state.versions.items():
            if version not in (served, resume) and (marker is None or version > served):
                self.repository.delete(f"{self.name}/{version}")
        for other in state.other:
            if other.startswith(_STAGING_PREFIX):
                self.repository.delete(f"{self.name}/{other}")
        self.repository.delete(self.repository.candidate)
        return resume if resume is not None else served + 1

    def _verify_candidate(self, version: int, endpoints: list[str], reference: _Reference) -> Verification:
        """Stage ``<name>-candidate`` version ``version``, load and verify it on every replica, then unload and
        remove it (before promotion: a GPU then holds two copies of the model at most, not three)."""
        candidate = self.repository.candidate
        marker = {"content_hash": self.package.content_hash, "candidate_of": self.name, "version": version}
        self.repository.write_version(candidate, version, self.package.files(), marker)
        config = self.package.config_for(candidate, version).to_pbtxt()
        self.repository.write_text(f"{candidate}/{triton_config.CONFIG_FILE}", config)
        results = []
        for endpoint in endpoints:
            replica = self.replica(endpoint)
            replica.load(candidate, version, self.timeout)
            results.append(verify(replica, candidate, version, reference, self.settings))
        problems = self._drop_candidate(endpoints)
        if problems:
            raise DeployError("verification", f"removing the verified candidate failed: {'; '.join(problems)}")
        return Verification(
            rows=reference.rows,
            max_abs_diff=max(r.max_abs_diff for r in results),
            p50_ms=max(r.p50_ms for r in results),
            p99_ms=max(r.p99_ms for r in results),
            requests=self.settings.verify.requests,
        )

    def _drop_candidate(self, endpoints: list[str]) -> list[str]:
        """Unload the candidate on every replica (a no-op where it is not loaded), then remove its directory (not
        while a replica may still be loading from it: the python backend then never finishes); returns what
        failed."""
        problems = []
        for endpoint in endpoints:
            try:
                self.replica(endpoint).unload(self.repository.candidate, self.unload_timeout)
            except Exception as exc:
                problems.append(f"unloading {self.repository.candidate} on {endpoint}: {exc}")
        if not problems:
            try:
                self.repository.delete(self.repository.candidate)
            except Exception as exc:
                problems.append(f"removing {self.repository.candidate} from {self.repository.uri}: {exc}")
        return problems

    def _roll_back(self, state: _State, version: int, progress: dict[str, bool], endpoints: list[str]) -> list[str]:
        """Back to the state before: the candidate gone, the previous config, the previous version (only) ready on
        every replica, the new version's directory removed. Returns the steps that failed."""
        with _sigterm_ignored():
            problems = self._drop_candidate(endpoints)
            previous = state.served
            config_file = f"{self.name}/{triton_config.CONFIG_FILE}"
            steps: list[tuple[str, Callable[[], None]]] = []
            if progress["config_written"] and state.config_text is not None:
                text = state.config_text
                steps.append(("restoring config.pbtxt", lambda: self.repository.write_text(config_file, text)))
            elif progress["config_written"]:
                steps.append(("removing config.pbtxt", lambda: self.repository.delete(config_file)))
            for endpoint in endpoints:
                if previous is not None:  # reloads only where the new version got loaded
                    step = functools.partial(self._converge, endpoint, previous)
                    steps.append((f"serving version {previous} on {endpoint}", step))
                else:
                    steps.append((f"unloading {self.name} on {endpoint}", functools.partial(self._unload, endpoint)))
            if progress["committed"]:
                steps.append((f"removing version {version}", lambda: self.repository.delete(f"{self.name}/{version}")))
            for what, step in steps:
                try:
                    step()
                except Exception as exc:
                    problems.append(f"{what}: {exc}")
            if previous is None and not problems and not self.repository.state().versions:
                self.repository.delete(self.name)  # nothing serves: the repository holds nothing of the model
            return problems

    def _finish(self, version: int, state: _State) -> list[int]:
        """After promotion (or when the package already serves): old versions pruned, and every replica, resolved
        again (a pod may have started meanwhile), serving ``version`` only, without the candidate."""
        keep = sorted((v for v in state.versions if v <= version), reverse=True)[: self.settings.keep_versions]
        pruned = sorted(v for v in state.versions if v not in keep and v != version)
        for old in pruned:
            self.repository.delete(f"{self.name}/{old}")
        endpoints = replica_endpoints(self.settings)
        problems = self._drop_candidate(endpoints)
        for endpoint in endpoints:
            try:
                self.replica(endpoint).converge(self.name, version, self.timeout)
            except DeployError as exc:
                problems.append(str(exc))
        if problems:
            raise DeployError(
                "promotion", f"version {version} is promoted, but not every replica is in line: {'; '.join(problems)}"
            )
        return pruned

    def _result(
        self, status: Status, version: int, verified: dict[str, float], previous: int | None, pruned: list[int]
    ) -> DeployResult:
        deployment = Deployment(
            endpoint=self.settings.triton_url,
            model_name=self.name,
            version=version,
            repository=self.settings.model_repository,
            verified=verified,
        )
        return DeployResult(status, deployment, previous, pruned, sorted(self.replicas))


# -- cancellation -----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _cancel_on_sigterm() -> Iterator[None]:
    """While active (main thread only), SIGTERM (a cancelled KFP run) raises DeployError("cancelled") where the
    deployment is, so that it rolls back before the pod goes; the old handler is restored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_sigterm(signum: int, _frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one rollback, not interrupted by a second signal
        raise DeployError("cancelled", f"cancelled (signal {signum})")

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _sigterm_ignored() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
