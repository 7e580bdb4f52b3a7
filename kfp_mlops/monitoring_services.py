"""Real monitoring servers for local work and tests: Prometheus Alertmanager and Pushgateway (Debian's
prometheus-alertmanager 0.25 and prometheus-pushgateway 1.5 packages) on free loopback ports with fresh data. Each
yields a ``Service`` (kfp_mlops.local_services) whose ``bucket`` is the server's URL and ``env`` names it.
"""

from __future__ import annotations

import contextlib
import shutil
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from kfp_mlops.local_services import Service
from kfp_mlops.processes import free_port, running, wait_until

ALERTMANAGER_URL_ENV = "ALERTMANAGER_URL"
PUSHGATEWAY_URL_ENV = "PUSHGATEWAY_URL"
# One route to one receiver without integrations: alerts are held and listed (GET /api/v2/alerts), sent nowhere.
ALERTMANAGER_CONFIG = """\
route:
  receiver: "null"
receivers:
  - name: "null"
"""


def binary(name: str) -> str:
    """The path of a monitoring server's binary; RuntimeError naming the package when it is missing."""
    found = shutil.which(name) or f"/usr/bin/{name}"
    if not Path(found).exists():
        raise RuntimeError(f"{name} is missing: apt-get install -y --no-install-recommends {name}")
    return found


def _ready(url: str) -> None:
    with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as response:
        response.read()


def _fresh(directory: Path) -> Path:
    """``directory``, empty: what an earlier start of the same server left there (its alerts, its figures) goes."""
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    return directory


@contextlib.contextmanager
def alertmanager(workdir: Path, timeout: float = 60.0) -> Iterator[Service]:
    """Alertmanager on a free loopback port: the config above, fresh storage, clustering off (its gossip would
    listen on 0.0.0.0:9094); ready when ``/-/ready`` answers."""
    directory = _fresh(Path(workdir) / "alertmanager")
    config = directory / "alertmanager.yml"
    config.write_text(ALERTMANAGER_CONFIG)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [binary("prometheus-alertmanager"), f"--config.file={config}", f"--storage.path={directory / 'data'}",
               f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="]  # fmt: skip
    log = Path(workdir) / "alertmanager.log"
    with running(command, log) as process:
        wait_until(lambda: _ready(url), "Alertmanager", process, log, timeout)
        yield Service("alertmanager", url, {ALERTMANAGER_URL_ENV: url})


@contextlib.contextmanager
def pushgateway(workdir: Path, timeout: float = 60.0) -> Iterator[Service]:
    """Pushgateway on a free loopback port, persisting to a fresh file (Debian's default is a system path);
    ready when ``/-/ready`` answers."""
    directory = _fresh(Path(workdir) / "pushgateway")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [binary("prometheus-pushgateway"), f"--web.listen-address=127.0.0.1:{port}",
               f"--persistence.file={directory / 'pushgateway.data'}"]  # fmt: skip
    log = Path(workdir) / "pushgateway.log"
    with running(command, log) as process:
        wait_until(lambda: _ready(url), "Pushgateway", process, log, timeout)
        yield Service("pushgateway", url, {PUSHGATEWAY_URL_ENV: url})
