"""Object storage behind one set of functions: local paths and ``file://``, ``s3://`` (boto3) and ``gs://``
(google-cloud-storage).

S3 takes its endpoint, region and credentials from the standard AWS environment variables and config files
(``AWS_ENDPOINT_URL`` for SeaweedFS, MinIO or Ceph). GCS honours ``STORAGE_EMULATOR_HOST`` (then it connects
anonymously) and otherwise uses Application Default Credentials. Clients are created on first use.

``minio://bucket/key`` (KFP's default pipeline root, ``minio://mlpipeline/v2/artifacts``) is S3 on the cluster's
MinIO. It works out of the box with KFP's own MinIO Secret (``mlpipeline-minio-artifact``, keys ``accesskey`` and
``secretkey``, mounted as ``KFP_MINIO_ACCESS_KEY``/``KFP_MINIO_SECRET_KEY``): when no ``AWS_ACCESS_KEY_ID`` is set,
S3 uses those keys and, unless ``AWS_ENDPOINT_URL`` says otherwise, KFP's object store Service.

Writes are atomic: a local file is written to a temporary name in the same directory and renamed; an S3 or GCS
object becomes visible only when its upload completes, so a failed write never leaves a partial object.

Compare-and-swap (``read_versioned``, ``write_if``) for state that concurrent runs share (a deploy lease, the serving
record): S3's conditional writes (``If-None-Match: *``, ``If-Match: <ETag>``), GCS's generation preconditions
(``ifGenerationMatch``), and locally an exclusive ``flock`` around read-compare-replace (hard link for create-only).
"""

from __future__ import annotations

import contextlib
import fcntl
import fnmatch
import functools
import hashlib
import os
import secrets
import shutil
import socket
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REMOTE_SCHEMES = ("s3", "gs")
# The keys of the Kubernetes Secret with S3 credentials; each becomes the environment variable of the same name.
CREDENTIAL_SECRET_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION")
STORAGE_SECRET = "kfp-mlops-storage"
# KFP's own MinIO credentials (Secret mlpipeline-minio-artifact): key in the Secret -> environment variable
KFP_MINIO_SECRET = "mlpipeline-minio-artifact"
KFP_MINIO_SECRET_KEYS = {"accesskey": "KFP_MINIO_ACCESS_KEY", "secretkey": "KFP_MINIO_SECRET_KEY"}
# KFP's object store Service, for its MinIO credentials: SeaweedFS's S3 port, Service seaweedfs port 8333 in KFP
# 2.15-2.17 (manifests/kustomize/third-party/seaweedfs/base/seaweedfs/seaweedfs-service.yaml); a 2.15 install with
# MinIO serves minio-service:9000 (third-party/minio/base/minio-service.yaml), gone since 2.16.
KFP_OBJECT_STORE_ENDPOINTS = ("http://seaweedfs.kubeflow:8333", "http://minio-service.kubeflow:9000")
_GLOB_CHARS = "*?["


def credential_secret_env(secret: str) -> dict[str, tuple[str, str]]:
    """The storage credentials a pod outside KFP (a TrainJob node) takes from Secrets, as KFP's tasks do: variable ->
    (Secret, key) from ``secret`` (when named) and from KFP's MinIO Secret (the fallback, see the module docstring)."""
    variables = {key: (secret, key) for key in CREDENTIAL_SECRET_KEYS} if secret else {}
    return variables | {variable: (KFP_MINIO_SECRET, key) for key, variable in KFP_MINIO_SECRET_KEYS.items()}


@dataclass(frozen=True)
class Location:
    """A parsed URI: ``scheme`` is "file", "s3" or "gs"; ``bucket`` is empty for local paths."""

    scheme: str
    bucket: str
    key: str

    @property
    def uri(self) -> str:
        return self.key if self.scheme == "file" else f"{self.scheme}://{self.bucket}/{self.key}"

    def child(self, relative: str) -> Location:
        if self.scheme == "file":
            return Location("file", "", os.path.join(self.key, relative))
        prefix = self.key.rstrip("/")
        return Location(self.scheme, self.bucket, f"{prefix}/{relative}" if prefix else relative)


def parse(uri: str | os.PathLike[str]) -> Location:
    """Parse a local path, ``file://``, ``s3://bucket/key`` (``minio://`` too) or ``gs://bucket/key`` URI."""
    text = os.fspath(uri)
    if text.startswith("file://"):
        return Location("file", "", text[len("file://") :])
    scheme, sep, rest = text.partition("://")
    if not sep:
        return Location("file", "", text)
    scheme = "s3" if scheme == "minio" else scheme
    if scheme not in REMOTE_SCHEMES:
        raise ValueError(f"unsupported URI scheme {scheme!r} in {text!r}: use a local path, file://, s3:// or gs://")
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise ValueError(f"{text!r} names no bucket")
    return Location(scheme, bucket, key)


def is_remote(uri: str) -> bool:
    return parse(uri).scheme in REMOTE_SCHEMES


class StorageAccessError(RuntimeError):
    """Object storage refused or could not be reached; the message says which Secret and keys to provide."""


@functools.cache
def _s3_client():
    import boto3

    if not os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("KFP_MINIO_ACCESS_KEY"):
        return boto3.session.Session(
            aws_access_key_id=os.environ["KFP_MINIO_ACCESS_KEY"],
            aws_secret_access_key=os.environ.get("KFP_MINIO_SECRET_KEY", ""),
            region_name=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
        ).client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or kfp_object_store_endpoint())
    return boto3.session.Session().client("s3")


def kfp_object_store_endpoint() -> str:
    """The first of KFP's object store Services that resolves in this cluster (the newest release's by default)."""
    for endpoint in KFP_OBJECT_STORE_ENDPOINTS:
        try:
            socket.getaddrinfo(urllib.parse.urlsplit(endpoint).hostname, None)
            return endpoint
        except OSError:
            continue
    return KFP_OBJECT_STORE_ENDPOINTS[0]


@functools.cache
def _gcs_client():
    from google.cloud import storage

    if os.environ.get("STORAGE_EMULATOR_HOST"):
        from google.auth.credentials import AnonymousCredentials

        project = os.environ.get("GOOGLE_CLOUD_PROJECT", "emulator")
        return storage.Client(project=project, credentials=AnonymousCredentials())
    return storage.Client()


def reset_clients() -> None:
    """Forget the S3 and GCS clients, so the next call builds them from the environment as it is now."""
    _s3_client.cache_clear()
    _gcs_client.cache_clear()


def check_access(uri: str) -> None:
    """Write, read and delete a small object under ``uri``: fails early, naming what to provide, when the
    credentials or endpoint are missing or wrong (instead of at a checkpoint an hour into training)."""
    probe = parse(uri).child(f".kfp-mlops-access-check-{secrets.token_hex(4)}").uri
    try:
        write_bytes(probe, b"ok")
        read_bytes(probe)
        delete_tree(probe)
    except StorageAccessError as exc:
        raise StorageAccessError(f"cannot write to {uri}: {exc}") from None
    except Exception as exc:
        if parse(uri).scheme == "file":
            raise
        raise StorageAccessError(f"cannot write to {uri} ({type(exc).__name__}: {exc}); {_access_hint(uri)}") from None


# What a client raises when the credentials or the endpoint are missing or wrong (not a missing object).
_ACCESS_ERRORS = {"NoCredentialsError", "PartialCredentialsError", "EndpointConnectionError", "ConnectTimeoutError",
                  "DefaultCredentialsError", "Forbidden", "Unauthorized", "RefreshError"}  # fmt: skip
_ACCESS_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403", "ExpiredToken", "InvalidToken"}


def _access_hint(uri: str) -> str:
    if parse(uri).scheme == "s3":
        return (
            f"set {', '.join(CREDENTIAL_SECRET_KEYS)} (in a cluster: the Kubernetes Secret {STORAGE_SECRET} with "
            f"those keys, or, for KFP's object store, its Secret {KFP_MINIO_SECRET} with keys accesskey and secretkey)"
        )
    return (
        "give the pod's service account access to the bucket (workload identity) or set GOOGLE_APPLICATION_CREDENTIALS"
    )


def _explained_access(func):
    """``func(uri, …)`` (or ``func(path, uri)``), with credential and endpoint failures raised as StorageAccessError
    naming the URI and what to provide, instead of a client's traceback."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except Exception as exc:
            response = getattr(exc, "response", None)
            code = response.get("Error", {}).get("Code") if isinstance(response, dict) else None
            if type(exc).__name__ not in _ACCESS_ERRORS and code not in _ACCESS_CODES:
                raise
            uri = next((a for a in args if isinstance(a, str) and "://" in a), str(args[0]))
            raise StorageAccessError(f"{uri}: {type(exc).__name__}: {exc}; {_access_hint(uri)}") from None

    return wrapper


def _gcs_blob(loc: Location):
    return _gcs_client().bucket(loc.bucket).blob(loc.key)


def _is_missing(exc: Exception) -> bool:
    response = getattr(exc, "response", None)  # botocore ClientError
    if isinstance(response, dict):
        return response.get("Error", {}).get("Code") in {"NoSuchKey", "404", "NotFound"}
    return type(exc).__name__ == "NotFound"  # google.api_core.exceptions.NotFound


@_explained_access
def read_bytes(uri: str) -> bytes:
    """Read a whole object; raises FileNotFoundError naming the URI when it does not exist."""
    loc = parse(uri)
    try:
        if loc.scheme == "file":
            return Path(loc.key).read_bytes()
        if loc.scheme == "s3":
            return _s3_client().get_object(Bucket=loc.bucket, Key=loc.key)["Body"].read()
        return _gcs_blob(loc).download_as_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{uri} does not exist") from None
    except Exception as exc:
        if _is_missing(exc):
            raise FileNotFoundError(f"{uri} does not exist") from None
        raise


@_explained_access
def write_bytes(uri: str, data: bytes) -> None:
    """Write an object atomically (see the module docstring)."""
    loc = parse(uri)
    if loc.scheme == "file":
        _atomic_local_write(Path(loc.key), lambda handle: handle.write(data))
    elif loc.scheme == "s3":
        _s3_client().put_object(Bucket=loc.bucket, Key=loc.key, Body=data)
    else:
        _gcs_blob(loc).upload_from_string(data)


@_explained_access
def upload_file(path: str | os.PathLike[str], uri: str) -> None:
    """Copy a local file to ``uri`` (any scheme), atomically."""
    loc = parse(uri)
    if loc.scheme == "file":
        with open(path, "rb") as source:
            _atomic_local_write(Path(loc.key), lambda handle: shutil.copyfileobj(source, handle, 1 << 20))
    elif loc.scheme == "s3":
        _s3_client().upload_file(os.fspath(path), loc.bucket, loc.key)
    else:
        _gcs_blob(loc).upload_from_filename(os.fspath(path))


@_explained_access
def download_file(uri: str, path: str | os.PathLike[str]) -> None:
    """Copy ``uri`` (any scheme) to a local file, atomically."""
    loc = parse(uri)
    target = Path(path)
    if loc.scheme == "file":
        with open(loc.key, "rb") as source:
            _atomic_local_write(target, lambda handle: shutil.copyfileobj(source, handle, 1 << 20))
        return
    try:
        with atomic_local_path(target) as temporary:
            if loc.scheme == "s3":
                _s3_client().download_file(loc.bucket, loc.key, str(temporary))
            else:
                _gcs_blob(loc).download_to_filename(str(temporary))
    except Exception as exc:
        if _is_missing(exc):
            raise FileNotFoundError(f"{uri} does not exist") from None
        raise


@contextlib.contextmanager
def atomic_local_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """A fresh temporary path beside ``target``: renamed to ``target`` if the block succeeds, removed if not.
    The one local commit primitive of the project (files keep the default permissions)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.stem}.{secrets.token_hex(4)}.tmp{target.suffix}")  # keeps the extension
    try:
        yield temporary
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def _atomic_local_write(target: Path, write) -> None:
    with atomic_local_path(target) as temporary, open(temporary, "wb") as handle:
        write(handle)


def _list_prefix(loc: Location) -> list[str]:
    """Every object under a prefix (S3/GCS) or every file under a directory, as URIs, sorted."""
    if loc.scheme == "file":
        root = Path(loc.key)
        if root.is_file():
            return [loc.key]
        return sorted(str(p) for p in root.rglob("*") if p.is_file())
    if loc.scheme == "s3":
        pages = _s3_client().get_paginator("list_objects_v2").paginate(Bucket=loc.bucket, Prefix=loc.key)
        keys = [obj["Key"] for page in pages for obj in page.get("Contents", [])]
    else:
        keys = [blob.name for blob in _gcs_client().list_blobs(loc.bucket, prefix=loc.key)]
    return sorted(Location(loc.scheme, loc.bucket, key).uri for key in keys if not key.endswith("/"))


@_explained_access
def list_uris(uri: str) -> list[str]:
    """The files a URI names, sorted: the file itself, everything under a directory or prefix, or a glob's matches.

    A prefix matches whole path segments: ``s3://b/data`` lists ``s3://b/data/x`` but not ``s3://b/database``.
    """
    loc = parse(uri)
    glob_at = min((i for i, ch in enumerate(loc.key) if ch in _GLOB_CHARS), default=-1)
    if glob_at >= 0:
        static = loc.key[:glob_at].rsplit("/", 1)[0] if "/" in loc.key[:glob_at] else ""
        base = Location(loc.scheme, loc.bucket, static)
        pattern = loc.key
        return [u for u in _list_prefix(base) if _glob_matches(parse(u).key, pattern)]
    if loc.scheme == "file":
        return _list_prefix(loc)
    exact_or_under = [u for u in _list_prefix(loc) if parse(u).key == loc.key or _is_under(parse(u).key, loc.key)]
    return exact_or_under


@_explained_access
def list_key_prefix(uri: str) -> list[str]:
    """The objects whose key starts with ``uri``'s key (not only whole segments: ``s3://b/m-`` lists
    ``s3://b/m-1/x``), sorted; S3 and GCS only."""
    loc = parse(uri)
    if loc.scheme == "file":
        raise ValueError(f"list_key_prefix needs object storage, not the local path {uri}")
    return _list_prefix(loc)


def _glob_matches(key: str, pattern: str) -> bool:
    """Shell-style match segment by segment: ``*`` never crosses a ``/`` (``raw/*.parquet`` skips ``raw/old/x``)."""
    key_parts, pattern_parts = key.strip("/").split("/"), pattern.strip("/").split("/")
    return len(key_parts) == len(pattern_parts) and all(
        fnmatch.fnmatchcase(part, wanted) for part, wanted in zip(key_parts, pattern_parts, strict=True)
    )


def _is_under(key: str, prefix: str) -> bool:
    return not prefix or key.startswith(prefix.rstrip("/") + "/")


@_explained_access
def delete_tree(uri: str) -> int:
    """Delete every file under ``uri`` (a directory or prefix, whole path segments); returns how many."""
    uris = list_uris(uri)
    for item in uris:
        loc = parse(item)
        if loc.scheme == "file":
            Path(loc.key).unlink(missing_ok=True)
        elif loc.scheme == "s3":
            _s3_client().delete_object(Bucket=loc.bucket, Key=loc.key)
        else:
            _gcs_blob(loc).delete()
    root = parse(uri)
    if root.scheme == "file" and Path(root.key).is_dir():
        shutil.rmtree(root.key, ignore_errors=True)
    return len(uris)


def exists(uri: str) -> bool:
    return bool(list_uris(uri))


class ConflictError(RuntimeError):
    """A conditional write found the object changed (or present, or absent) since it was read."""


@dataclass(frozen=True)
class Versioned:
    """An object's bytes and the version they were read at: S3's ETag, GCS's generation, a local file's SHA-256."""

    data: bytes
    version: str


@_explained_access
def read_versioned(uri: str) -> Versioned | None:
    """The object and its version (for ``write_if``), None when it does not exist."""
    loc = parse(uri)
    try:
        if loc.scheme == "file":
            data = Path(loc.key).read_bytes()
            return Versioned(data, hashlib.sha256(data).hexdigest())
        if loc.scheme == "s3":
            response = _s3_client().get_object(Bucket=loc.bucket, Key=loc.key)
            return Versioned(response["Body"].read(), response["ETag"])
        for _attempt in range(3):  # the bytes of the generation read (a writer may replace it in between)
            blob = _gcs_client().bucket(loc.bucket).get_blob(loc.key)
            if blob is None:
                return None
            try:
                return Versioned(blob.download_as_bytes(if_generation_match=blob.generation), str(blob.generation))
            except Exception as exc:
                if not _is_precondition_failure(exc):
                    raise
        raise ConflictError(f"{uri} keeps changing while it is read")
    except FileNotFoundError:
        return None
    except Exception as exc:
        if _is_missing(exc):
            return None
        raise


@_explained_access
def write_if(uri: str, data: bytes, version: str | None) -> str:
    """Write ``data`` only if the object is still at ``version`` (None: only if it does not exist); returns the new
    version. ConflictError when another writer came first: nothing is written then."""
    loc = parse(uri)
    if loc.scheme == "file":
        return _write_if_local(Path(loc.key), data, version)
    condition = f"{uri} changed since it was read" if version else f"{uri} exists already"
    try:
        if loc.scheme == "s3":
            precondition = {"IfMatch": version} if version else {"IfNoneMatch": "*"}
            return _s3_client().put_object(Bucket=loc.bucket, Key=loc.key, Body=data, **precondition)["ETag"]
        blob = _gcs_client().bucket(loc.bucket).blob(loc.key)
        blob.upload_from_string(data, if_generation_match=int(version) if version else 0)
        return str(blob.generation)
    except Exception as exc:
        if _is_precondition_failure(exc) or (version and _is_missing(exc)):
            raise ConflictError(condition) from None
        raise


def _is_precondition_failure(exc: Exception) -> bool:
    response = getattr(exc, "response", None)  # botocore ClientError; 409: a concurrent conditional write on S3
    if isinstance(response, dict):
        return response.get("Error", {}).get("Code") in {"PreconditionFailed", "412", "ConditionalRequestConflict"}
    return type(exc).__name__ == "PreconditionFailed"  # google.api_core.exceptions.PreconditionFailed


def _write_if_local(target: Path, data: bytes, version: str | None) -> str:
    """Read-compare-replace under an exclusive lock on ``.<name>.lock`` beside ``target`` (every writer through
    ``write_if`` takes it), so that two writers cannot both see the old version."""
    target.parent.mkdir(parents=True, exist_ok=True)
    # read-only is enough for flock: another user (a step image's uid) may have made the lock file
    lock = os.open(target.with_name(f".{target.name}.lock"), os.O_RDONLY | os.O_CREAT, 0o666)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        current = read_versioned(str(target))
        if (current.version if current else None) != version:
            raise ConflictError(f"{target} changed since it was read" if version else f"{target} exists already")
        _atomic_local_write(target, lambda handle: handle.write(data))
    finally:
        os.close(lock)
    return hashlib.sha256(data).hexdigest()


class UnsafeKeyError(ValueError):
    """A source key that would land outside a copy's destination (absolute, or with a ``..`` segment)."""


def relative_key(uri: str, source: str) -> str:
    """``uri``'s path below ``source``, refused (``UnsafeKeyError``) when absolute or when any segment is ``..``."""
    key, src = parse(uri).key, parse(source)
    if src.scheme == "file":
        relative = os.path.relpath(key, src.key)
    else:
        relative = key[len(src.key) :]
        if src.key and not src.key.endswith("/"):
            relative = relative.removeprefix("/")  # the one separator after the prefix
    if relative in ("", "."):
        relative = os.path.basename(key)
    if relative.startswith("/") or os.path.isabs(relative) or ".." in relative.replace("\\", "/").split("/"):
        raise UnsafeKeyError(
            f"refusing to copy {uri}: its path below {src.uri} "
            f"({relative!r}) is absolute or has a '..' segment, so it would land outside the destination"
        )
    return relative


def copy_tree(source: str, destination: str) -> list[str]:
    """Copy every file under ``source`` to the same relative path under ``destination``; returns the new URIs.

    Works in every direction (local ↔ S3 ↔ GCS); each file is written atomically. A key whose relative path is
    absolute or has a ``..`` segment raises ``UnsafeKeyError`` before anything is copied.
    """
    src = parse(source)
    dst = parse(destination)
    uris = list_uris(source)
    relatives = [relative_key(uri, source) for uri in uris]
    copied = []
    for uri, relative in zip(uris, relatives, strict=True):
        key = parse(uri).key
        target = dst.child(relative)
        if src.scheme == "file":
            upload_file(key, target.uri)
        elif target.scheme == "file":
            download_file(uri, target.key)
        else:
            write_bytes(target.uri, read_bytes(uri))
        copied.append(target.uri)
    return copied
