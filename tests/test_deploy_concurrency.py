"""Two deployments of one model name at once (issue 15), each in its own process as two runs' deploy pods would be,
against a real Triton reading a real SeaweedFS S3 model repository: one holds the deploy lease, the other waits
for it (or, told not to wait, fails naming the holder); no version mixes two packages' files; the serving record
names what serves."""

from __future__ import annotations

import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor

import pytest
from support.deploys import deploy_in_process
from support.triton import running_triton

from kfp_mlops.components.deploy import core
from kfp_mlops.components.deploy.lease import lease_uri
from kfp_mlops.components.shared import records, storage
from kfp_mlops.components.shared.config import DeployConfig

pytestmark = pytest.mark.servers


def _settings(url: str, repository: str, **overrides) -> dict:
    verify = {"rows": 64, "requests": 10, "max_p50_ms": 500, "max_p99_ms": 5000}
    values = {"model_repository": repository, "triton_url": url, "model_name": "shared", "backend": "python"}
    return {**values, "verify": verify, "ready_timeout_seconds": 60, "lease_seconds": 180, **overrides}


def _lease_holder(repository: str) -> str | None:
    current = storage.read_versioned(lease_uri(repository, "shared"))
    return json.loads(current.data)["holder"] if current else None


def _version_files(repository: str, version: int) -> dict[str, bytes]:
    prefix = f"{repository}/shared/{version}/"
    return {uri[len(prefix) :]: storage.read_bytes(uri) for uri in storage.list_uris(prefix.rstrip("/"))}


def test_two_concurrent_deployments_of_one_name_promote_one_after_the_other(
    s3, trained_package, other_package, ingested, tmp_path
):
    validation_split = ingested[1].validation
    repository = s3.uri("concurrent/models")
    storage.write_bytes(f"{repository}/.keep", b"")  # Triton needs the prefix to exist when it starts
    spawn = multiprocessing.get_context("spawn")
    with (
        running_triton(repository, env=s3.env, state_dir=tmp_path / "state") as server,
        ProcessPoolExecutor(2, mp_context=spawn) as pool,
    ):
        settings = _settings(server.grpc_url, repository)
        packages = {"run-a": trained_package, "run-b": other_package}
        futures = [
            pool.submit(deploy_in_process, str(package), validation_split, settings, holder, s3.env)
            for holder, package in packages.items()
        ]
        results = sorted((future.result(timeout=300) for future in futures), key=lambda r: r.get("version", 0))
        assert [(r.get("status"), r.get("version")) for r in results] == [("deployed", 1), ("deployed", 2)], results

        # each version holds exactly one package's files, and its marker names the deployment that wrote it
        for result in results:
            files = _version_files(repository, result["version"])
            marker = json.loads(files["kfp-mlops.json"])
            assert marker["deployed_by"] == result["holder"]
            package = packages[result["holder"]]
            assert files["model.onnx"] == (package / "model.onnx").read_bytes()
            assert (
                marker["content_hash"] == core.Package.read(str(package), DeployConfig(**settings), False).content_hash
            )
        assert "versions: 2" in storage.read_bytes(f"{repository}/shared/config.pbtxt").decode()
        lease = json.loads(storage.read_bytes(lease_uri(repository, "shared")))
        assert lease["released"] and lease["holder"] == results[1]["holder"]
        assert not storage.list_key_prefix(f"{repository}/shared-candidate-")  # every staging folder removed

        # the record steps of the two runs, in the wrong order: the record keeps naming version 2, which serves
        record_uri = s3.uri("concurrent/serving.json")
        for result in reversed(results):
            deployment = records.Deployment(endpoint=server.grpc_url, model_name="shared",
                                            version=result["version"], repository=repository)  # fmt: skip
            record = records.ServingRecord(model=str(packages[result["holder"]]), metrics={}, deployment=deployment,
                                           run_id=result["holder"])  # fmt: skip
            records.write_record(record_uri, record)
        assert records.read_record(record_uri).deployment.version == 2

        # a deployment told not to wait, while another one holds the lease: refused, naming the holder; no change
        older = packages[results[0]["holder"]]  # not the package that serves: deploying it makes version 3
        third = pool.submit(deploy_in_process, str(older), validation_split, settings, "run-c", s3.env)
        deadline = time.monotonic() + 60
        while _lease_holder(repository) != "run-c":
            assert time.monotonic() < deadline and not third.done(), "run-c never took the lease"
            time.sleep(0.05)
        started = time.monotonic()
        impatient = deploy_in_process(
            str(other_package), validation_split, {**settings, "lease_wait_seconds": 0}, "run-d", s3.env
        )
        assert time.monotonic() - started < 10
        assert impatient["stage"] == "lease" and impatient["rolled_back"], impatient
        assert "another deploy of shared holds the lease since " in impatient["error"]
        assert "(run run-c;" in impatient["error"]
        assert third.result(timeout=300) == {"holder": "run-c", "status": "deployed", "version": 3}
        served = storage.read_bytes(f"{repository}/shared/config.pbtxt").decode()
        assert "versions: 3" in served
        assert _version_files(repository, 3)["model.onnx"] == (older / "model.onnx").read_bytes()
