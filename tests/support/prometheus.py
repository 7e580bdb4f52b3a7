"""Prometheus test support: promtool, a real Prometheus server on a free loopback port and its query API, and the
rule files promtool reads, extracted from the PrometheusRules of manifests/monitoring/ (a real Pushgateway:
kfp_mlops.monitoring_services). The binaries are Debian's Prometheus 2.42 (`make system-deps`;
/work/shared/ENVIRONMENT.md, "Monitoring servers from Debian")."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kfp_mlops.processes import free_port, running, wait_until

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
INSTALL_HINT = "install Debian's prometheus package: `make system-deps`"


def promtool(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    """``promtool ARGS`` in ``cwd``; its result, whatever the exit code (the caller judges it)."""
    if not Path(PROMTOOL).exists():
        raise FileNotFoundError(f"promtool is missing: {INSTALL_HINT}")
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def rule_file(prometheus_rule: dict[str, Any], path: Path) -> Path:
    """Write a PrometheusRule's ``spec`` (its ``groups``) as the plain rule file promtool and Prometheus read."""
    assert prometheus_rule["kind"] == "PrometheusRule", prometheus_rule["kind"]
    path.write_text(yaml.safe_dump(prometheus_rule["spec"], sort_keys=False))
    return path


@dataclass(frozen=True)
class PrometheusServer:
    url: str  # http://127.0.0.1:PORT
    log: Path

    def query(self, expr: str, *, timeout: float = 10) -> tuple[int, dict[str, Any]]:
        """GET /api/v1/query: (HTTP status, the JSON body). A PromQL parse error is a 400 with errorType
        bad_data."""
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"{}")

    def series(self, expr: str) -> list[dict[str, Any]]:
        """The result of a query that must succeed (a vector; empty when nothing matches)."""
        status, body = self.query(expr)
        assert status == 200 and body["status"] == "success", (expr, status, body)
        return body["data"]["result"]

    def targets(self) -> list[dict[str, Any]]:
        with urllib.request.urlopen(f"{self.url}/api/v1/targets", timeout=10) as response:
            return json.loads(response.read())["data"]["activeTargets"]


@contextlib.contextmanager
def running_prometheus(config: dict[str, Any], directory: Path, *, timeout: float = 30) -> Iterator[PrometheusServer]:
    """A real Prometheus on a free loopback port with ``config`` (rule files relative to ``directory``) and fresh
    storage under ``directory``; stopped on exit. Ready when /-/ready answers, within ``timeout`` seconds."""
    if not Path(PROMETHEUS).exists():
        raise FileNotFoundError(f"prometheus is missing: {INSTALL_HINT}")
    directory.mkdir(parents=True, exist_ok=True)
    config_file = directory / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    port = free_port()
    log = directory / "prometheus.log"
    command = [
        PROMETHEUS, f"--config.file={config_file}", f"--storage.tsdb.path={directory / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}", "--web.enable-lifecycle",
    ]  # fmt: skip
    with running(command, log) as process:
        server = PrometheusServer(f"http://127.0.0.1:{port}", log)
        wait_until(lambda: urllib.request.urlopen(f"{server.url}/-/ready", timeout=2), "prometheus", process, log,
                   timeout)  # fmt: skip
        yield server
