"""Storage against the local filesystem, a real SeaweedFS S3 server and a real fake-gcs-server."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest

from kfp_mlops.components.shared import storage

pytestmark = pytest.mark.servers


def test_write_then_read_round_trips_bytes(root):
    uri = storage.parse(root).child("a/b/data.bin").uri
    payload = bytes(range(256)) * 1000
    storage.write_bytes(uri, payload)
    assert storage.read_bytes(uri) == payload


def test_read_of_missing_object_raises_file_not_found_naming_it(root):
    uri = storage.parse(root).child("missing.parquet").uri
    with pytest.raises(FileNotFoundError, match="missing.parquet"):
        storage.read_bytes(uri)


def test_listing_a_prefix_matches_whole_path_segments_only(root):
    base = storage.parse(root)
    for key in ["data/x.parquet", "data/sub/y.parquet", "database/z.parquet"]:
        storage.write_bytes(base.child(key).uri, b"1")
    assert storage.list_uris(base.child("data").uri) == [
        base.child("data/sub/y.parquet").uri,
        base.child("data/x.parquet").uri,
    ]


def test_glob_lists_only_matching_files(root):
    base = storage.parse(root)
    for key in ["d/part-0.csv", "d/part-1.csv", "d/part-2.parquet", "d/x/part-3.csv"]:
        storage.write_bytes(base.child(key).uri, b"1")
    assert storage.list_uris(base.child("d/part-*.csv").uri) == [
        base.child("d/part-0.csv").uri,
        base.child("d/part-1.csv").uri,
    ]
    # "*" stays within one path segment, as in a shell: d/x/part-3.csv is not under d/*.csv
    assert storage.list_uris(base.child("d/*.csv").uri) == [
        base.child("d/part-0.csv").uri,
        base.child("d/part-1.csv").uri,
    ]


def test_copy_tree_to_and_from_a_location_preserves_relative_paths(root, tmp_path):
    source = tmp_path / "src"
    (source / "nested").mkdir(parents=True)
    (source / "a.txt").write_text("alpha")
    (source / "nested" / "b.txt").write_text("beta")
    remote = storage.parse(root).child("tree").uri
    storage.copy_tree(str(source), remote)
    back = tmp_path / "back"
    copied = storage.copy_tree(remote, str(back))
    assert sorted(Path(p).relative_to(back).as_posix() for p in copied) == ["a.txt", "nested/b.txt"]
    assert (back / "nested" / "b.txt").read_text() == "beta"


@pytest.mark.parametrize(
    ("source", "uri"),
    [("s3://b/ckpt/step25", "s3://b/ckpt/step25/../escaped.txt"),
     ("gs://b/ckpt/step25/", "gs://b/ckpt/step25/nested/../../escaped.txt"),
     ("s3://b/ckpt/step25", "s3://b/ckpt/step25//etc/escaped.txt"),
     ("/data/ckpt/step25", "/data/ckpt/escaped.txt")],
)  # fmt: skip
def test_a_key_that_would_land_outside_a_copy_destination_is_refused_naming_it(source, uri):
    with pytest.raises(storage.UnsafeKeyError, match=f"refusing to copy {re.escape(uri)}: .*outside the destination"):
        storage.relative_key(uri, source)
    assert storage.relative_key(f"{source.rstrip('/')}/nested/model.pt", source) == "nested/model.pt"


def test_copy_tree_from_s3_writes_nothing_outside_the_destination(s3, tmp_path):
    """SeaweedFS refuses to store a ``..`` key (AWS S3 stores it: ``relative_key`` above is the guard there) and
    folds ``//``; whatever the store keeps, a copy of the tree lands inside its destination only."""
    tree = s3.uri(f"t-{uuid.uuid4().hex[:8]}/ckpt/step25")
    storage.write_bytes(f"{tree}/model.pt", b"weights")
    with pytest.raises(Exception, match="InvalidRequest"):
        storage.write_bytes(f"{tree}/../escaped.txt", b"payload")
    storage.write_bytes(f"{tree}//etc/escaped.txt", b"payload")
    destination = tmp_path / "out" / "step25"
    storage.copy_tree(tree, str(destination))
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert written == ["out/step25/etc/escaped.txt", "out/step25/model.pt"]


def test_upload_and_download_of_a_file(root, tmp_path):
    local = tmp_path / "in.bin"
    local.write_bytes(b"x" * 10_000)
    uri = storage.parse(root).child("file.bin").uri
    storage.upload_file(local, uri)
    storage.download_file(uri, tmp_path / "out" / "file.bin")
    assert (tmp_path / "out" / "file.bin").read_bytes() == local.read_bytes()


def test_failed_local_write_leaves_neither_file_nor_temporary(tmp_path):
    target = tmp_path / "out" / "data.bin"

    def explode(handle):
        handle.write(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        storage._atomic_local_write(target, explode)
    assert list((tmp_path / "out").iterdir()) == []


def test_failed_download_leaves_the_previous_file_intact(s3, tmp_path):
    target = tmp_path / "kept.bin"
    target.write_bytes(b"old")
    with pytest.raises(FileNotFoundError):
        storage.download_file(s3.uri("no/such/object"), target)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["kept.bin"]


def test_s3_credentials_come_from_the_environment(s3, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    storage.reset_clients()
    with pytest.raises(Exception, match="SignatureDoesNotMatch|AccessDenied|InvalidAccessKeyId"):
        storage.write_bytes(s3.uri("denied.txt"), b"no")


def test_parse_rejects_unsupported_schemes():
    with pytest.raises(ValueError, match="unsupported URI scheme 'hdfs'"):
        storage.parse("hdfs://namenode/data")
    assert storage.parse("file:///tmp/x").key == "/tmp/x"
    assert storage.parse("gs://bucket/a/b") == storage.Location("gs", "bucket", "a/b")


def test_kfp_default_minio_root_is_s3():
    assert storage.parse("minio://mlpipeline/v2/artifacts") == storage.Location("s3", "mlpipeline", "v2/artifacts")


def test_kfp_minio_credentials_work_when_no_aws_credentials_are_set(s3, monkeypatch):
    """KFP's own MinIO Secret (accesskey/secretkey) is enough for the default minio:// pipeline root."""
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("KFP_MINIO_ACCESS_KEY", s3.env["AWS_ACCESS_KEY_ID"])
    monkeypatch.setenv("KFP_MINIO_SECRET_KEY", s3.env["AWS_SECRET_ACCESS_KEY"])
    storage.reset_clients()
    uri = f"minio://{s3.bucket}/v2/artifacts/probe.txt"
    storage.write_bytes(uri, b"minio")
    assert storage.read_bytes(s3.uri("v2/artifacts/probe.txt")) == b"minio"


def test_access_check_names_the_secret_to_create_when_credentials_are_missing(s3, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    storage.reset_clients()
    with pytest.raises(storage.StorageAccessError, match=r"cannot write to s3://.*set AWS_ACCESS_KEY_ID, "
                       r"AWS_SECRET_ACCESS_KEY.*the Kubernetes Secret kfp-mlops-storage with those keys"):  # fmt: skip
        storage.check_access(s3.uri("access-check-root"))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3.env["AWS_ACCESS_KEY_ID"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3.env["AWS_SECRET_ACCESS_KEY"])
    storage.reset_clients()
    storage.check_access(s3.uri("access-check-root"))
    assert storage.list_uris(s3.uri("access-check-root")) == []  # the probe is removed


def test_delete_tree_removes_only_whole_segments(root):
    base = storage.parse(root)
    for key in ["ckpt/step10/a", "ckpt/step10/b", "ckpt/step100/a"]:
        storage.write_bytes(base.child(key).uri, b"1")
    assert storage.delete_tree(base.child("ckpt/step10").uri) == 2
    assert storage.list_uris(base.child("ckpt").uri) == [base.child("ckpt/step100/a").uri]


def test_kfp_object_store_endpoint_is_the_first_that_resolves(monkeypatch):
    """KFP 2.16+ serves its store as seaweedfs.kubeflow, 2.15 as minio-service.kubeflow: the one this cluster has."""
    monkeypatch.setattr(
        storage, "KFP_OBJECT_STORE_ENDPOINTS", ("http://no-such-host.invalid:9000", "http://localhost:9000")
    )
    assert storage.kfp_object_store_endpoint() == "http://localhost:9000"
    monkeypatch.setattr(storage, "KFP_OBJECT_STORE_ENDPOINTS", ("http://a.invalid:9000", "http://b.invalid:9000"))
    assert storage.kfp_object_store_endpoint() == "http://a.invalid:9000"


@pytest.mark.servers
def test_missing_or_wrong_credentials_fail_naming_the_uri_and_what_to_set(s3, monkeypatch, tmp_path):
    """A user's first run against object storage without credentials: one line naming the URI and the variables or
    Secret to provide, not a client traceback (SeaweedFS checks the signature for real)."""
    uri = s3.uri("secure/object.txt")
    storage.write_bytes(uri, b"ok")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    storage.reset_clients()
    with pytest.raises(storage.StorageAccessError, match=rf"^{re.escape(uri)}: ClientError: .*set AWS_ACCESS_KEY_ID"):
        storage.read_bytes(uri)
    for variable in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(variable)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-metadata lookup from a test
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    storage.reset_clients()
    prefix = s3.uri("secure/")
    with pytest.raises(storage.StorageAccessError, match=rf"^{re.escape(prefix)}: NoCredentialsError: .*Secret kfp-"):
        storage.list_uris(prefix)
    with pytest.raises(storage.StorageAccessError, match="^cannot write to .*NoCredentialsError"):
        storage.check_access(prefix)
