"""A real local Triton Inference Server (2.51, from the nvidia-pytriton wheel) serving models with the python
backend, for local work, tests and benchmarks.

Triton runs from its own small virtualenv (default ``<repo>/.venv-triton``, or ``KFP_MLOPS_TRITON_VENV``) with
numpy<2 and onnxruntime: the python-backend stub imports numpy from the environment the server starts in, and with
numpy 2 every output comes back empty. ``ensure_venv`` creates it; ``up`` / ``down`` / ``status`` manage a server
whose pid, settings and log live in a state directory (default ``build/triton``); ``serve`` is the context manager
for tests and benchmarks. A repository is a directory or ``s3://bucket/prefix`` (endpoint and credentials from
the AWS_* variables, passed in the server's environment only).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from kfp_mlops.components.shared import layout, triton_access, triton_config
from kfp_mlops.components.shared.errors import ServiceError
from kfp_mlops.processes import free_ports, port_free, wait_until

PYTRITON_VERSION = "0.7.0"  # ships Triton 2.51 with the python backend
DEFAULT_ONNXRUNTIME = "1.32.0"
VENV_ENV = "KFP_MLOPS_TRITON_VENV"
DEFAULT_STATE_DIR = "build/triton"
DEFAULT_MODEL_REPOSITORY = "build/triton/models"
VENV_COMMAND = "kfp-mlops local venv"
_STAMP = "kfp-mlops-triton.json"
_STATE = "server.json"
_S3_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_REGION")
ControlMode = Literal["explicit", "poll"]


class TritonError(ServiceError):
    """The local Triton could not be prepared, started or reached; the message says what to do."""


def default_venv() -> Path:
    """``KFP_MLOPS_TRITON_VENV``, else ``.venv-triton`` at the repository root."""
    return Path(os.environ.get(VENV_ENV) or Path(__file__).resolve().parents[1] / ".venv-triton")


def venv_requirements() -> list[str]:
    """What the Triton venv holds besides nvidia-pytriton (installed with --no-deps): numpy<2 and this project's
    onnxruntime version."""
    try:
        from importlib.metadata import PackageNotFoundError, version

        onnxruntime = version("onnxruntime")
    except PackageNotFoundError:
        onnxruntime = DEFAULT_ONNXRUNTIME
    return ["numpy<2", f"onnxruntime=={onnxruntime}"]


def _stamp(requirements: list[str]) -> dict[str, Any]:
    return {"requirements": requirements, "no_deps": [f"nvidia-pytriton=={PYTRITON_VERSION}"]}


@dataclass(frozen=True)
class TritonInstall:
    """The pieces of the Triton venv a server start needs."""

    venv: Path
    python: Path
    tritonserver: Path
    backends: Path  # the wheel's backends/ (the python backend without a stub)
    stub: Path  # triton_python_backend_stub for the venv's Python minor version
    libs: Path  # nvidia_pytriton.libs
    python_libdir: str  # the venv's base Python's shared library directory


def ensure_venv(venv: str | Path | None = None, python: str | None = None) -> TritonInstall:
    """Create or refresh the Triton venv; a no-op (a file read) when it already holds the pinned packages."""
    path = Path(venv) if venv else default_venv()
    stamp = _stamp(venv_requirements())
    path.parent.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256(bytes(path.resolve())).hexdigest()[:16]
    with open(Path(tempfile.gettempdir()) / f"kfp-mlops-triton-venv-{key}.lock", "w") as lock:  # one creator at a time
        fcntl.flock(lock, fcntl.LOCK_EX)
        with contextlib.suppress(TritonError):
            install = find_install(path)
            if json.loads((path / _STAMP).read_text()).get("packages") == stamp:
                return install
        (path / _STAMP).unlink(missing_ok=True)
        if not (path / "bin" / "python").exists():
            _pip_step([python or sys.executable, "-m", "venv", str(path)], path)
        (path / ".gitignore").write_text("*\n")  # kept out of git, and so out of linters that follow .gitignore
        pip = [str(path / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        _pip_step([*pip, *stamp["requirements"]], path)
        _pip_step([*pip, "--no-deps", *stamp["no_deps"]], path)
        libdir = subprocess.run(
            [str(path / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR') or '')"],
            check=True, capture_output=True, text=True,
        ).stdout.strip()  # fmt: skip
        (path / _STAMP).write_text(json.dumps({"packages": stamp, "python_libdir": libdir}, indent=2))
    return find_install(path)


def _pip_step(command: list[str], venv: Path) -> None:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        output = (result.stdout + result.stderr)[-3000:]
        raise TritonError(f"creating the Triton venv {venv} failed at `{' '.join(command)}`:\n{output}")


def find_install(venv: str | Path | None = None) -> TritonInstall:
    """Locate tritonserver, the python backend and its stub in the Triton venv, or say how to create it."""
    path = Path(venv) if venv else default_venv()
    where = "" if path == default_venv() and not os.environ.get(VENV_ENV) else f" --venv {path}"
    fix = f"create it with `{VENV_COMMAND}{where}`"
    if not (path / "bin" / "python").exists():
        raise TritonError(f"the Triton venv is missing ({path}): {fix}")
    site = next(iter(sorted(path.glob("lib/python3.*/site-packages"))), None)
    stamp_file = path / _STAMP
    if site is None or not stamp_file.exists():
        raise TritonError(f"the Triton venv {path} is incomplete (an interrupted install?): {fix}")
    if list(site.glob("numpy-2.*.dist-info")):
        raise TritonError(f"the Triton venv {path} has numpy 2, which makes the python backend return empty outputs: "
                          f"{fix}")  # fmt: skip
    server = site / "pytriton" / "tritonserver"
    minor = site.parent.name.removeprefix("python")
    install = TritonInstall(
        venv=path,
        python=path / "bin" / "python",
        tritonserver=server / "bin" / "tritonserver",
        backends=server / "backends",
        stub=server / "python_backend_stubs" / minor / "triton_python_backend_stub",
        libs=site / "nvidia_pytriton.libs",
        python_libdir=json.loads(stamp_file.read_text()).get("python_libdir", ""),
    )
    for needed in (install.tritonserver, install.backends / "python" / "libtriton_python.so", install.libs):
        if not needed.exists():
            raise TritonError(f"the Triton venv {path} lacks {needed}: {fix}")
    if not install.stub.exists():
        raise TritonError(f"nvidia-pytriton {PYTRITON_VERSION} has no python backend stub for Python {minor}; "
                          f"recreate {path} with a Python it supports (3.8-3.13)")  # fmt: skip
    return install


def backends_dir(install: TritonInstall, state_dir: Path) -> Path:
    """A backends directory for this server (the venv stays untouched): the wheel's python backend plus the stub
    for the venv's Python."""
    target = state_dir / "backends"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(install.backends, target, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(install.stub, target / "python" / "triton_python_backend_stub")
    return target


def triton_repository(repository: str, env: Mapping[str, str]) -> str:
    """Triton's form of a repository: a local path made absolute, or ``s3://bucket/prefix`` with the endpoint of
    ``AWS_ENDPOINT_URL`` folded in (``s3://http://host:port/bucket/prefix``)."""
    if repository.startswith("s3://"):
        endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
        return f"s3://{endpoint.rstrip('/')}/{repository[5:]}" if endpoint else repository
    if "://" in repository:
        raise TritonError(f"model repository {repository!r}: use a local directory or s3://bucket/prefix")
    return str(Path(repository).resolve())


@dataclass(frozen=True)
class TritonServer:
    """A started server. ``http_url`` and ``grpc_url`` are ``host:port``, the form tritonclient takes."""

    pid: int
    http_port: int
    grpc_port: int
    metrics_port: int
    repository: str
    model_control_mode: str
    state_dir: str
    log: str
    control_restricted: bool = False  # model control needs the key header (triton_access)

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"


@dataclass
class TritonStatus:
    """What ``status`` found: whether the server runs and is ready, and its repository index."""

    running: bool
    server: TritonServer | None = None
    ready: bool = False
    models: list[dict[str, Any]] = field(default_factory=list)  # the repository index: name, version, state
    refused: str = ""  # why Triton refused the repository index (model control restricted to a key)

    def describe(self) -> str:
        if not self.running or self.server is None:
            return "Triton: not running"
        server = self.server
        lines = [
            f"Triton: running (pid {server.pid}){'' if self.ready else ', not ready'}",
            f"  http {server.http_url}  grpc {server.grpc_url}  metrics 127.0.0.1:{server.metrics_port}",
            f"  repository {server.repository} ({server.model_control_mode}"
            + (f"; model control needs the key of {triton_access.CONTROL_ENV})" if server.control_restricted else ")"),
            f"  log {server.log}",
        ]
        for model in self.models:
            reason = f" ({model['reason'].strip().splitlines()[0][:160]})" if model.get("reason") else ""
            lines.append(f"  model {model['name']} version {model.get('version', '-')}: "
                         f"{model.get('state', 'UNAVAILABLE')}{reason}")  # fmt: skip
        if self.refused:
            lines.append(f"  repository index refused: {self.refused}")
        elif not self.models:
            lines.append("  no models in the repository index")
        return "\n".join(lines)


def _http(
    port: int, path: str, body: bytes | None = None, timeout: float = 5.0, headers: Mapping[str, str] | None = None
) -> bytes:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=body, method="POST" if body else "GET", headers=dict(headers or {})
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.read()


def _alive(pid: int) -> bool:
    """The pid is a running tritonserver (not a reused pid, not a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z" and b"tritonserver" in command.split(b"\0")[0]


def _read_state(state_dir: Path) -> TritonServer | None:
    try:
        return TritonServer(**json.loads((state_dir / _STATE).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def up(
    model_repository: str | Path = DEFAULT_MODEL_REPOSITORY,
    *,
    http_port: int = 8000,
    grpc_port: int = 8001,
    metrics_port: int = 8002,
    state_dir: str | Path = DEFAULT_STATE_DIR,
    model_control_mode: ControlMode = "explicit",
    poll_seconds: int = 2,
    load: tuple[str, ...] | list[str] = (),
    env: Mapping[str, str] | None = None,
    venv: str | Path | None = None,
    timeout: float = 120.0,
) -> TritonServer:
    """Start tritonserver in the background and wait until ``/v2/health/ready``; pid, settings and log go to
    ``state_dir``. ``env`` (default: this process's) supplies AWS_* for an s3:// repository. ``load`` names
    models to load at start in explicit mode. A server already running from ``state_dir`` is returned as it is.
    With ``KFP_MLOPS_TRITON_CONTROL_KEY`` in ``env``, model control is restricted to requests carrying that key, as
    the cluster's Triton is (``triton_access``); inference stays open."""
    state = Path(state_dir).resolve()
    repository = str(model_repository)
    if "://" not in repository:
        repository = str(Path(repository).resolve())
    running = _read_state(state)
    if running is not None and _alive(running.pid):
        wanted = (repository, http_port, grpc_port, metrics_port)
        if (running.repository, running.http_port, running.grpc_port, running.metrics_port) != wanted:
            raise TritonError(
                f"Triton already runs from {state} (pid {running.pid}, http {running.http_port}, repository "
                f"{running.repository}): stop it first (`kfp-mlops local down --state-dir {state_dir}`)"
            )
        return running
    install = find_install(venv)
    if model_control_mode not in ("explicit", "poll"):
        raise TritonError(f"model control mode {model_control_mode!r}: use explicit or poll")
    ports = {"http": http_port, "grpc": grpc_port, "metrics": metrics_port}
    if len(set(ports.values())) != 3:
        raise TritonError(f"the http, grpc and metrics ports must differ, got {ports}")
    for name, port in ports.items():
        if not port_free(port):
            raise TritonError(f"port {port} ({name}) is in use: stop what holds it or pass --{name}-port")
    source = dict(os.environ if env is None else env)
    triton_path = triton_repository(repository, source)
    if "://" not in repository:
        Path(repository).mkdir(parents=True, exist_ok=True)
    state.mkdir(parents=True, exist_ok=True)
    command = [
        str(install.tritonserver), f"--model-repository={triton_path}",
        f"--backend-directory={backends_dir(install, state)}", f"--model-control-mode={model_control_mode}",
        "--http-address=127.0.0.1", f"--http-port={http_port}", "--grpc-address=127.0.0.1", f"--grpc-port={grpc_port}",
        "--metrics-address=127.0.0.1", f"--metrics-port={metrics_port}", "--allow-gpu-metrics=false",
        "--exit-timeout-secs=5",
    ]  # fmt: skip
    if model_control_mode == "poll":
        command.append(f"--repository-poll-secs={poll_seconds}")
    command += [f"--load-model={name}" for name in load]
    control_key = source.get(triton_access.CONTROL_ENV, "")
    if control_key:
        command += triton_access.restriction_args(control_key)
    log = state / "tritonserver.log"
    process = spawn(command, log, server_env(install, source))
    server = TritonServer(process.pid, http_port, grpc_port, metrics_port, repository, model_control_mode,
                          str(state), str(log), bool(control_key))  # fmt: skip
    (state / "tritonserver.pid").write_text(f"{process.pid}\n")
    (state / _STATE).write_text(json.dumps(asdict(server), indent=2))
    try:
        wait_until(lambda: _http(http_port, "/v2/health/ready", timeout=2), "tritonserver", process, log, timeout)
    except RuntimeError:
        code = process.poll()
        stop_process(process.pid, timeout=10)
        _forget(state)
        what = f"exited with {code}" if code is not None else f"not ready after {timeout:.0f}s"
        raise TritonError(f"tritonserver {what}; from its log {log}:\n{_log_problems(log)}") from None
    return server


def _log_problems(log: Path, lines: int = 20) -> str:
    """The error lines of a Triton log (``E1128 ...`` and ``error: ...``), else its tail."""
    text = log.read_text(errors="replace")
    harmless = ("CudaDriverHelper", "NVML", "DCGM")  # no GPU here
    errors = [line for line in text.splitlines()
              if re.match(r"(E\d{4} |error: )", line) and not any(word in line for word in harmless)]  # fmt: skip
    return "\n".join(errors[-lines:]) if errors else text[-3000:]


def server_env(install: TritonInstall, source: Mapping[str, str]) -> dict[str, str]:
    """This process's environment with the Triton venv's python first on PATH (the stub takes numpy from it),
    the wheel's libraries on LD_LIBRARY_PATH and AWS_* from ``source``."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}
    env.update({key: value for key, value in source.items() if key.startswith("AWS_")})
    if any(key in env for key in _S3_ENV[:2]):
        env.setdefault("AWS_DEFAULT_REGION", env.get("AWS_REGION", "us-east-1"))
    env.pop("PYTHONHOME", None)
    env.pop("PYTHONPATH", None)
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # no __pycache__ in the model repository's version directories
    env["VIRTUAL_ENV"] = str(install.venv)
    env["PATH"] = f"{install.venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    libraries = [path for path in (install.python_libdir, str(install.libs), env.get("LD_LIBRARY_PATH")) if path]
    env["LD_LIBRARY_PATH"] = os.pathsep.join(libraries)
    return env


def spawn(command: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    """Start the server in its own session (a stop signals its whole group), its output going to ``log``."""
    with open(log, "wb") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)  # fmt: skip


def stop_process(pid: int, timeout: float) -> None:
    """SIGTERM (Triton unloads its models and stops its stubs), then SIGKILL to the process group."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # reap it when it is our child
        if not _alive(pid):
            break
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)  # the server's session: leftover stubs go with it
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def _forget(state: Path) -> None:
    for name in (_STATE, "tritonserver.pid"):
        (state / name).unlink(missing_ok=True)


def down(state_dir: str | Path = DEFAULT_STATE_DIR, timeout: float = 30.0) -> bool:
    """Stop the server started from ``state_dir``; False when none was running."""
    state = Path(state_dir).resolve()
    server = _read_state(state)
    if server is None:
        return False
    was_running = _alive(server.pid)
    if was_running:
        stop_process(server.pid, timeout)
    _forget(state)
    return was_running


def status(state_dir: str | Path = DEFAULT_STATE_DIR) -> TritonStatus:
    """Whether the server of ``state_dir`` runs, its ports and repository, and the models in its repository
    index (name, version, state: READY, UNAVAILABLE with a reason, LOADING...)."""
    server = _read_state(Path(state_dir).resolve())
    if server is None or not _alive(server.pid):
        return TritonStatus(running=False)
    result = TritonStatus(running=True, server=server)
    try:
        _http(server.http_port, "/v2/health/ready")
        result.ready = True
    except (OSError, urllib.error.URLError):
        pass
    with contextlib.suppress(OSError, urllib.error.URLError, ValueError):
        control = triton_access.control_headers("http")
        try:
            result.models = json.loads(_http(server.http_port, "/v2/repository/index", body=b"{}", headers=control))
        except urllib.error.HTTPError as exc:
            if exc.code != 403:
                raise
            result.refused = triton_access.refusal_hint()
    return result


@contextlib.contextmanager
def serve(
    model_repository: str | Path,
    *,
    state_dir: str | Path | None = None,
    model_control_mode: ControlMode = "explicit",
    poll_seconds: int = 2,
    load: tuple[str, ...] | list[str] = (),
    env: Mapping[str, str] | None = None,
    venv: str | Path | None = None,
    timeout: float = 120.0,
) -> Iterator[TritonServer]:
    """A Triton on free loopback ports for tests and benchmarks, stopped on exit. Its log stays in ``state_dir``
    (a fresh temporary directory when omitted, removed on exit)."""
    with contextlib.ExitStack() as stack:
        if state_dir is None:
            state_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="kfp-mlops-triton-"))
        http_port, grpc_port, metrics_port = free_ports(3)
        server = up(model_repository, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port,
                    state_dir=state_dir, model_control_mode=model_control_mode, poll_seconds=poll_seconds, load=load,
                    env=env, venv=venv, timeout=timeout)  # fmt: skip
        stack.callback(down, state_dir)
        yield server


def add_onnx_model(
    repository: str | Path,
    name: str,
    onnx_path: str | Path,
    version: int = 1,
    *,
    max_batch_size: int = 64,
    **settings: Any,
):
    """Put ``onnx_path`` into a local repository as ``<name>/<version>/model.onnx`` served by the python backend
    (``model.py`` beside it), with ``<name>/config.pbtxt`` derived from the ONNX signature. ``settings`` are
    ModelConfig fields (dynamic_batching, instance_group, version_policy, parameters). Returns the config."""
    config = triton_config.config_for_onnx(name, onnx_path, backend="python", max_batch_size=max_batch_size,
                                           **settings)  # fmt: skip
    model_dir = Path(repository) / name
    version_dir = model_dir / str(version)
    version_dir.mkdir(parents=True, exist_ok=True)
    for relative, path in layout.version_files(onnx_path, python_backend=True).items():
        shutil.copyfile(path, version_dir / relative)
    config.write(model_dir)
    return config
