"""The container engine on this machine: a working Docker engine, else rootful podman with this repository's settings.

Where ``docker info`` answers, Docker is used as it is. Otherwise podman runs with ``images/podman/containers.conf``
and ``storage.conf`` (runc, cgroupfs, ulimits within the host's hard limits, the host's CA bundle; images kept in
``/var/lib/kfp-mlops-containers``, outside the repository) and serves the Docker API on a socket of its own while a
run needs it (``podman system service``), so ``kfp.local``'s Docker runner and the ``docker`` SDK talk to it.
``KFP_MLOPS_CONTAINER_ENGINE=docker|podman`` forces one. See /work/shared/ENVIRONMENT.md, "Containers".
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from kfp_mlops.components.shared.errors import ServiceError
from kfp_mlops.processes import running, wait_until

ENGINE_ENV = "KFP_MLOPS_CONTAINER_ENGINE"
PODMAN_SETTINGS = Path(__file__).resolve().parents[1] / "images" / "podman"
# The images `make images-local` builds: `compile --image-registry` with this prefix names them.
LOCAL_REGISTRY = "localhost/kfp-mlops"
API_TIMEOUT_S = 30.0


class ContainerEngineError(ServiceError):
    """No container engine answers here, or its API does not start."""


@dataclass(frozen=True)
class Engine:
    name: str  # "docker" or "podman"
    env: dict[str, str] = field(default_factory=dict)  # the engine's settings (podman: CONTAINERS_CONF, ...)

    def command(self, *args: str) -> list[str]:
        return [self.name, *args]

    def run(self, *args: str, check: bool = True, timeout: float | None = None) -> subprocess.CompletedProcess:
        """``<engine> args...``, output captured as text."""
        return subprocess.run(
            self.command(*args),
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            check=check,
            timeout=timeout,
        )


def podman_env() -> dict[str, str]:
    """This repository's podman settings, unless the environment names others."""
    env = {}
    for variable, name in (("CONTAINERS_CONF", "containers.conf"), ("CONTAINERS_STORAGE_CONF", "storage.conf")):
        env[variable] = os.environ.get(variable) or str(PODMAN_SETTINGS / name)
    return env


def _docker_works() -> bool:
    if not shutil.which("docker"):
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=15, check=False).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def detect() -> Engine:
    """Docker where its engine answers, else podman; ``KFP_MLOPS_CONTAINER_ENGINE`` forces one."""
    forced = os.environ.get(ENGINE_ENV, "")
    if forced not in ("", "docker", "podman"):
        raise ContainerEngineError(f"{ENGINE_ENV}={forced!r}: expected docker or podman")
    if forced == "docker" or (not forced and _docker_works()):
        return Engine("docker")
    if shutil.which("podman"):
        return Engine("podman", podman_env())
    raise ContainerEngineError(
        "no container engine: no Docker engine answers `docker info` and podman is not installed "
        "(make container-deps installs podman, runc and debootstrap)"
    )


@contextlib.contextmanager
def docker_api(engine: Engine) -> Iterator[str]:
    """A Docker API URL for ``engine`` while the block runs: Docker's own (``DOCKER_HOST`` or its socket), or
    ``podman system service`` on a fresh socket, stopped on exit. Fails within ``API_TIMEOUT_S`` if it does not
    answer a ping."""
    import docker

    if engine.name == "docker":
        yield os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        return
    with tempfile.TemporaryDirectory(prefix="kfp-mlops-podman-") as tmp:
        url = f"unix://{tmp}/docker.sock"
        log = Path(tmp) / "service.log"
        command = engine.command("system", "service", "--time=0", url)
        with running(command, log, env={**os.environ, **engine.env}) as process:

            def ping() -> None:
                with contextlib.closing(docker.DockerClient(base_url=url, timeout=5)) as client:
                    client.ping()

            try:
                wait_until(ping, "podman system service", process, log, API_TIMEOUT_S)
            except RuntimeError as exc:
                raise ContainerEngineError(str(exc)) from None
            yield url
