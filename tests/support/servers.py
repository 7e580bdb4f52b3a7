"""Real servers as pytest fixtures, started once per session on free loopback ports: SeaweedFS S3
(kfp_mlops.local_services), fake-gcs-server, redis-server, PostgreSQL and the MLflow tracking server on SQLite and
on PostgreSQL (tests/support/services.py); and the
Kubernetes API test double (no cluster runs here). tests/conftest.py registers this module as a plugin; tests that
use a server carry the ``servers`` marker."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from kfp_mlops import local_services
from kfp_mlops.components.shared import storage
from support import services
from support.kube_api import FakeKubeApiServer


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> Iterator[local_services.Service]:
    with local_services.seaweedfs_s3(tmp_path_factory.mktemp("s3"), bucket="kfp-mlops-test") as service:
        yield service


@pytest.fixture(scope="session")
def gcs_server(tmp_path_factory) -> Iterator[local_services.Service]:
    with services.fake_gcs(tmp_path_factory.mktemp("gcs"), bucket="kfp-mlops-test") as service:
        yield service


def _use(service: local_services.Service, monkeypatch: pytest.MonkeyPatch) -> local_services.Service:
    for key, value in service.env.items():
        monkeypatch.setenv(key, value)
    storage.reset_clients()
    return service


@pytest.fixture
def s3(s3_server, monkeypatch) -> Iterator[local_services.Service]:
    """The S3 server, with this process's environment (and so its subprocesses') pointing at it."""
    yield _use(s3_server, monkeypatch)
    storage.reset_clients()


@pytest.fixture
def gcs(gcs_server, monkeypatch) -> Iterator[local_services.Service]:
    """The GCS emulator, with this process's environment pointing at it."""
    yield _use(gcs_server, monkeypatch)
    storage.reset_clients()


@dataclass(frozen=True)
class RedisServer:
    connection_string: str  # Feast's form: host:port,password=...

    @property
    def password(self) -> str:
        return self.connection_string.split("password=", 1)[1]

    @property
    def port(self) -> int:
        return int(self.connection_string.split(",", 1)[0].rsplit(":", 1)[1])


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory) -> Iterator[RedisServer]:
    """A real redis-server (Debian's package), started for this session."""
    with services.redis_server(tmp_path_factory.mktemp("redis")) as service:
        yield RedisServer(service.env["FEAST_REDIS_CONNECTION_STRING"])


@pytest.fixture(scope="session")
def postgres_registry_url(tmp_path_factory) -> Iterator[str]:
    """A real PostgreSQL server (Debian's package) for Feast's SQL registry, started for this session."""
    with services.postgres_server(tmp_path_factory.mktemp("postgres")) as service:
        yield service.env["FEAST_REGISTRY_URL"]


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory) -> Iterator[local_services.Service]:
    """A real MLflow tracking server (SQLite backend store, artifacts served by the server), for this session."""
    with services.mlflow_server(tmp_path_factory.mktemp("mlflow")) as service:
        yield service


@pytest.fixture(scope="session")
def mlflow_postgres_server(tmp_path_factory) -> Iterator[local_services.Service]:
    """A real MLflow tracking server on a real PostgreSQL backend store (its own cluster), for this session."""
    work = tmp_path_factory.mktemp("mlflow-postgres")
    with services.postgres_server(work, database="mlflow") as database:
        with services.mlflow_server(work, backend_store_uri=database.env["FEAST_REGISTRY_URL"]) as service:
            yield service


@pytest.fixture
def kube_api() -> Iterator[FakeKubeApiServer]:
    """The Kubernetes API server test double."""
    with FakeKubeApiServer() as server:
        yield server
