"""Each task of a compiled pipeline in its own step image: ``kfp.local.DockerRunner``, made honest and given what a
step needs on this machine.

- **Exit codes.** kfp.local's runner starts containers with ``auto_remove=True`` and asks for the exit code after
  the logs end; podman has often removed the container by then, the request gets 404 and kfp reports SUCCESS for a
  failed step. While a run lasts, ``kfp.local.docker_task_handler.run_docker_container`` is replaced by
  ``run_container``: no auto-remove, ``wait()`` for the exit code, then remove. An image that is not built here is a
  failed task naming it (never a pull: no registry answers here).
- **The images' user.** Step images run as uid 10001 (non-root), with a read-only root filesystem and a ``/tmp``
  in memory. The pipeline root is made writable for it (mode 1777; the run creates its folders with umask 0) and
  every local path the run reads or writes (the config's data source, baseline, model repository, checkpoint folder;
  a parameter that is a local path; the serving model and reference data the serving record names) is bind-mounted
  at the same path, made readable, and writable where a step writes.
- **The host's services** (local Triton, SeaweedFS, Redis, ...) are reached through host networking; the variables
  that configure them (``AWS_*``, ``STORAGE_EMULATOR_HOST``, ``FEAST_*``, ``KFP_MLOPS_*`` ...) are passed on.
"""

from __future__ import annotations

import codecs
import contextlib
import glob
import json
import os
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml

from kfp_mlops import containers

# Environment passed from this shell into every step's container (names, or prefixes ending in "_").
PASSED_ENV = ("AWS_", "STORAGE_EMULATOR_HOST", "GOOGLE_", "FEAST_", "KFP_MLOPS_", "KFP_MINIO_", "OMP_NUM_THREADS")
# Config settings that name a local path a step reads (ro) or writes (rw).
CONFIG_PATHS = {
    ("data", "source"): "ro",
    ("evaluate", "baseline"): "rw",  # record-baseline writes the serving record there
    ("deploy", "model_repository"): "rw",
    ("train", "checkpoint_dir"): "rw",
}
SHM_SIZE = "1g"  # the cluster's train pod mounts a 1Gi /dev/shm (pipelines/train_and_deploy.py); the default is 64 MB
MISSING_IMAGE_EXIT = 125


def run_container(client: Any, image: str, command: list[str], volumes: dict[str, Any], **run_args: Any) -> int:
    """Stands in for ``kfp.local.docker_task_handler.run_docker_container``: the container's real exit code."""
    import docker

    if ":" not in image.rsplit("/", 1)[-1]:
        image = f"{image}:latest"
    try:
        client.images.get(image)
    except docker.errors.ImageNotFound:
        print(f"ImageNotFoundError: {image} is not built here (make images-local builds the step images)")
        return MISSING_IMAGE_EXIT
    run_args.pop("auto_remove", None)
    print(f"container: running {image}")
    container = client.containers.run(image=image, command=command, volumes=volumes, detach=True, **run_args)
    try:
        print_lines(container.logs(stream=True, follow=True))
        code = container.wait()["StatusCode"]
    finally:
        with contextlib.suppress(docker.errors.APIError):
            container.remove(force=True)
    if code != 0:
        print(f"\ncontainer: {image} exited with status {code}")
    return code


def print_lines(chunks: Iterable[bytes]) -> None:
    """The container's output, one ``print`` per whole line: the engine streams arbitrary pieces (podman: often
    single words), and kfp.local indents every ``print`` call, which would break lines at each piece."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pending = ""
    for chunk in chunks:
        pending += decoder.decode(chunk)
        *lines, pending = pending.split("\n")
        for line in lines:
            print(line)
    pending += decoder.decode(b"", final=True)
    if pending:
        print(pending)


@contextlib.contextmanager
def _patched_runner() -> Iterator[None]:
    from kfp.local import docker_task_handler

    original = docker_task_handler.run_docker_container
    docker_task_handler.run_docker_container = run_container
    try:
        yield
    finally:
        docker_task_handler.run_docker_container = original


@contextlib.contextmanager
def _environment(name: str, value: str) -> Iterator[None]:
    previous = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous


@contextlib.contextmanager
def _umask(mask: int) -> Iterator[None]:
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


def passed_environment(environ: dict[str, str] | None = None) -> dict[str, str]:
    environ = os.environ if environ is None else environ
    return {
        key: value
        for key, value in environ.items()
        if any(key.startswith(name) if name.endswith("_") else key == name for name in PASSED_ENV)
    }


def _local(value: object) -> Path | None:
    """The local absolute path a setting or parameter names, or None (a URI, a relative or empty value)."""
    if not isinstance(value, str) or not value:
        return None
    text = value.removeprefix("file://")
    if "://" in text or not text.startswith("/"):
        return None
    return Path(text.split("*", 1)[0].split("?", 1)[0].split("[", 1)[0]) if glob.has_magic(text) else Path(text)


def _named_in_record(record: Path | None) -> list[Path]:
    """The local paths a serving record (JSON) names: the serving model and its reference data, which a later run
    (evaluate's comparison, the drift check) reads from wherever the run that deployed it kept them."""
    if record is None or not record.is_file():
        return []
    try:
        document = json.loads(record.read_text())
    except (OSError, ValueError):
        return []  # the step that reads it says what is wrong
    values, paths = [document], []
    while values:
        value = values.pop()
        if isinstance(value, dict):
            values.extend(value.values())
        elif isinstance(value, list):
            values.extend(value)
        elif (path := _local(value)) and path.exists():
            paths.append(path)
    return paths


def paths_to_mount(arguments: dict[str, Any]) -> dict[Path, str]:
    """Local paths a run's arguments name (the config text's path settings, and parameters holding an absolute path),
    each with "ro" or "rw". A file is mounted by its folder; a path that does not exist yet (a model repository, a
    serving record) is created as a folder (or its parent folder, for a file name with a suffix)."""
    found: dict[Path, str] = {}
    config = arguments.get("config")
    document = yaml.safe_load(config) if isinstance(config, str) and config.strip() else {}
    for (section, key), mode in CONFIG_PATHS.items():
        if path := _local((document or {}).get(section, {}).get(key) if isinstance(document, dict) else None):
            found[path] = "rw" if found.get(path) == "rw" else mode
    for name, value in arguments.items():
        if name != "config" and (path := _local(value)):
            found.setdefault(path, "ro")
    baseline = (document or {}).get("evaluate", {}).get("baseline") if isinstance(document, dict) else None
    for path in _named_in_record(_local(baseline)):
        found.setdefault(path, "ro")
    mounts: dict[Path, str] = {}
    for path, mode in found.items():
        if path.is_file() or (not path.exists() and path.suffix):
            path = path.parent
        if mode == "rw":
            path.mkdir(parents=True, exist_ok=True)
        elif not path.exists():
            continue  # nothing to read there: the step fails naming it, as it would without containers
        mounts[path.resolve()] = "rw" if mounts.get(path.resolve()) == "rw" else mode
    return mounts


def open_to_run_user(path: Path, writable: bool) -> None:
    """Make ``path`` (a folder, recursively) readable, and writable where asked, by the images' user (uid 10001):
    folders a+rx (a+rwx), files a+r (a+rw). Only missing bits are added."""
    want_dir = stat.S_IRWXU | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH
    want_dir |= stat.S_IWGRP | stat.S_IWOTH if writable else 0
    want_file = stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH
    want_file |= stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH if writable else 0
    for item in [path, *path.rglob("*")] if path.is_dir() else [path]:
        if item.is_symlink():
            continue
        mode = item.stat().st_mode
        want = want_dir if item.is_dir() else want_file
        if mode & want != want:
            item.chmod(stat.S_IMODE(mode) | want)


def _parents_traversable(path: Path) -> None:
    """Every folder above ``path`` lets others through (x), or uid 10001 cannot reach the mount's own path."""
    for parent in path.parents:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)


@contextlib.contextmanager
def docker_runner(pipeline_root: Path, arguments: dict[str, Any]) -> Iterator[Any]:
    """A ``kfp.local.DockerRunner`` for one run, with the container engine's API up (``kfp_mlops.containers``) and
    ``run_container`` in place while the block runs."""
    from docker.types import Mount
    from kfp import local

    engine = containers.detect()
    pipeline_root.mkdir(parents=True, exist_ok=True)
    pipeline_root.chmod(0o1777)
    _parents_traversable(pipeline_root)
    mounts = []
    for path, mode in paths_to_mount(arguments).items():
        if path == pipeline_root or pipeline_root in path.parents:
            continue  # the runner mounts the pipeline root itself
        open_to_run_user(path, writable=mode == "rw")
        _parents_traversable(path)
        mounts.append(Mount(target=str(path), source=str(path), type="bind", read_only=mode == "ro"))
    runner = local.DockerRunner(
        network_mode="host",
        mounts=mounts,
        environment=passed_environment(),
        shm_size=SHM_SIZE,
        read_only=True,
        tmpfs={"/tmp": "rw,exec,mode=1777"},
    )
    with containers.docker_api(engine) as url, _environment("DOCKER_HOST", url), _umask(0), _patched_runner():
        yield runner
