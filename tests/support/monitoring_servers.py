"""Real monitoring servers as pytest fixtures, started once per session on free loopback ports: Alertmanager and
Pushgateway (kfp_mlops.monitoring_services). tests/conftest.py registers this module as a plugin; tests that use a
server carry the ``servers`` marker. The servers are shared: each test sends alerts and groups of its own names."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kfp_mlops import monitoring_services
from kfp_mlops.local_services import Service


@pytest.fixture(scope="session")
def alertmanager_server(tmp_path_factory) -> Iterator[Service]:
    """A real Alertmanager (API v2); its URL is ``.bucket``."""
    with monitoring_services.alertmanager(tmp_path_factory.mktemp("alertmanager")) as service:
        yield service


@pytest.fixture(scope="session")
def pushgateway_server(tmp_path_factory) -> Iterator[Service]:
    """A real Pushgateway; its URL is ``.bucket``."""
    with monitoring_services.pushgateway(tmp_path_factory.mktemp("pushgateway")) as service:
        yield service
