"""The deploy lease: one deployment of a model name at a time, across runs, pipelines and clusters.

The lease is one small JSON object beside the model's folder, ``<repo>/<name>.deploy-lease.json`` (a file, not a
folder: Triton's repository scan lists folders only), taken and handed on by compare-and-swap
(``storage.write_if``: S3 ``If-None-Match``/``If-Match``, GCS generation preconditions, a local ``flock``). It
expires ``lease_seconds`` after its last renewal, so a deployment that died (its pod killed) holds nobody up for
long; the deployment renews it at each stage boundary and stops, without promoting, when it finds it lost.
Releasing writes ``released`` (the object stays: no conditional delete is needed, and the next holder swaps it).
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from kfp_mlops.components.deploy.errors import DeployError, Stage
from kfp_mlops.components.shared import storage

LEASE_SUFFIX = ".deploy-lease.json"
POLL_SECONDS = 2.0


def lease_uri(repository_uri: str, name: str) -> str:
    return storage.parse(repository_uri).child(f"{name}{LEASE_SUFFIX}").uri


class Lease:
    """The lease on deploying ``name`` into the repository at ``repository_uri``, held by ``holder`` (the run id, or
    host and process where there is none)."""

    def __init__(self, repository_uri: str, name: str, holder: str, lease_seconds: float):
        self.uri = lease_uri(repository_uri, name)
        self.name = name
        self.holder = holder or f"{socket.gethostname()} pid {os.getpid()}"
        self.token = secrets.token_hex(8)
        self.lease_seconds = lease_seconds
        self.version: str | None = None  # of the object as we last wrote it, while we hold it
        self.acquired_at = ""

    def acquire(self, wait_seconds: float) -> None:
        """Take the lease, waiting up to ``wait_seconds`` for a holder to release it or for its lease to expire;
        DeployError at LEASE naming the holder when it is still held then."""
        deadline = time.monotonic() + wait_seconds
        while True:
            current = storage.read_versioned(self.uri)
            held = _held(current)
            if held is None:
                self.acquired_at = _now().isoformat()
                try:
                    self.version = storage.write_if(self.uri, self._document(), current.version if current else None)
                    return
                except storage.ConflictError:
                    continue  # another deployment came first: look again
            if time.monotonic() + POLL_SECONDS > deadline:
                raise DeployError(
                    Stage.LEASE,
                    f"another deploy of {self.name} holds the lease since {held.get('acquired_at', '?')} "
                    f"(run {held.get('holder', '?')}; it expires at {held.get('expires_at', '?')} unless renewed); "
                    f"waited {wait_seconds:.0f}s (deploy.lease_wait_seconds); nothing was changed. Lease: {self.uri}",
                    rolled_back=True,
                )
            time.sleep(POLL_SECONDS)

    def renew(self) -> None:
        """Extend the lease; DeployError at LEASE when another deployment took it over (ours expired)."""
        try:
            self.version = self._swap(self._document())
        except storage.ConflictError:
            current = _held(storage.read_versioned(self.uri)) or {}
            self.version = None
            raise DeployError(
                Stage.LEASE,
                f"the deploy lease of {self.name} expired and run {current.get('holder', '?')} took it over "
                f"(deploy.lease_seconds {self.lease_seconds:.0f} too short?): stopped before changing what serves",
            ) from None

    def release(self) -> None:
        """Hand the lease back (a no-op when it is no longer ours)."""
        if self.version is None:
            return
        try:
            self._swap(self._document(released=True))
        except storage.ConflictError:
            pass  # taken over after it expired: nothing of ours to release
        self.version = None

    def _swap(self, document: bytes) -> str:
        """Write ``document`` over our lease; returns the new version. Ownership is the token in the object, not
        only the version we last saw: a write interrupted (SIGTERM) after it landed but before its version was kept
        leaves the object ours at a version we do not know. ConflictError when the object is another's."""
        try:
            return storage.write_if(self.uri, document, self.version)
        except storage.ConflictError:
            current = storage.read_versioned(self.uri)
            if current is None or _token(current) != self.token:
                raise
            return storage.write_if(self.uri, document, current.version)

    def _document(self, released: bool = False) -> bytes:
        now = _now()
        return json.dumps(
            {
                "holder": self.holder,
                "token": self.token,
                "model_name": self.name,
                "acquired_at": self.acquired_at,
                "renewed_at": now.isoformat(),
                "expires_at": (now + timedelta(seconds=self.lease_seconds)).isoformat(),
                "released": released,
            },
            indent=2,
        ).encode()


def _held(current: storage.Versioned | None) -> dict[str, Any] | None:
    """The lease document while somebody holds it (not released, not expired, readable); None when it is free."""
    if current is None:
        return None
    try:
        document = json.loads(current.data)
        expires = datetime.fromisoformat(document["expires_at"])
    except (ValueError, KeyError, TypeError):
        return None  # unreadable: nobody can be holding it through this object
    if document.get("released") or expires <= _now():
        return None
    return document


def _token(current: storage.Versioned) -> str:
    try:
        return str(json.loads(current.data).get("token", ""))
    except (ValueError, AttributeError):
        return ""


def _now() -> datetime:
    return datetime.now(UTC)
