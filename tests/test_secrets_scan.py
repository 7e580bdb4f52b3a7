"""No credential in what this project ships or compiles: manifests/, examples/ and both pipelines compiled now,
scanned by detect-secrets with its default plugins; every finding left is in the baseline with its reason
(tests/support/secret_scan.py), and a planted AWS key or private key is found. The logs of a real local run are
scanned in tests/test_local_run.py."""

from __future__ import annotations

import base64
import secrets
import shutil
import string
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from support.secret_scan import BASELINE, REFERENCE_NAMES, files_under, scan, unaccepted

from kfp_mlops.components.shared.images import ImageConfig
from kfp_mlops.pipelines import compile_all

REPO = Path(__file__).resolve().parents[1]
SHIPPED = ("manifests", "examples")


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> dict[str, Path]:
    """Every pipeline compiled now, named compiled/<pipeline>.yaml."""
    paths = compile_all(tmp_path_factory.mktemp("compiled"), ImageConfig("registry.example/kfp-mlops", "test"))
    return {f"compiled/{path.name}": path for path in paths}


def test_manifests_examples_and_compiled_pipelines_hold_no_credential(compiled):
    files = {**files_under(REPO, *SHIPPED), **compiled}
    assert set(compiled) == {"compiled/training.yaml", "compiled/monitoring.yaml", "compiled/inference.yaml"}
    assert len(files) > 30 and any(name.endswith(".env.example") for name in files)
    findings = scan(files)
    assert not unaccepted(findings), "credentials found:\n" + "\n".join(map(str, unaccepted(findings)))
    # the scan ran and saw what it should: the Secret references the compiled YAML carries are found and accepted
    names_seen = {f.value for f in findings if f.name.startswith("compiled/")}
    assert (
        {"AWS_SECRET_ACCESS_KEY", "mlpipeline-minio-artifact"}
        <= names_seen
        <= REFERENCE_NAMES | {a.value for a in BASELINE}
    )
    # and the baseline holds nothing stale: each exclusion still matches a finding, or it goes
    used = {f.accepted_by() for f in findings}
    assert not [a for a in BASELINE if a not in used], "baseline entries that match nothing: delete them"


def _aws_key_pair() -> tuple[str, str]:
    """An access key id and secret of AWS's shapes, random (so the test's own source holds no key)."""
    key_id = "AKIA" + "".join(secrets.choice(string.ascii_uppercase + "234567") for _ in range(16))
    return key_id, base64.b64encode(secrets.token_bytes(30)).decode()


def _private_key_pem() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def test_a_planted_aws_key_and_private_key_are_found_where_they_were_planted(tmp_path):
    for folder in SHIPPED:
        shutil.copytree(REPO / folder, tmp_path / folder)
    key_id, secret_key = _aws_key_pair()
    leak = {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "kfp-mlops-storage"},
        "stringData": {"AWS_ACCESS_KEY_ID": key_id, "AWS_SECRET_ACCESS_KEY": secret_key},
    }  # fmt: skip
    (tmp_path / "manifests" / "runner" / "storage-secret.yaml").write_text(yaml.safe_dump(leak))
    tls = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "tls"},
           "data": {"key.pem": _private_key_pem()}}  # fmt: skip
    with open(tmp_path / "manifests" / "feast" / "redis.yaml", "a") as manifest:  # appended to a real manifest
        manifest.write("---\n" + yaml.safe_dump(tls))
    with open(tmp_path / "examples" / "training.yaml", "a") as example:  # a key pasted into a config, commented
        example.write(f"# aws_access_key_id = {key_id}\n")

    found = unaccepted(scan(files_under(tmp_path, *SHIPPED)))
    by_file = {}
    for finding in found:
        by_file.setdefault(finding.name, set()).add(finding.type)
    assert set(by_file) == {"manifests/runner/storage-secret.yaml", "manifests/feast/redis.yaml",
                            "examples/training.yaml"}, [str(f) for f in found]  # fmt: skip
    assert "AWS Access Key" in by_file["manifests/runner/storage-secret.yaml"]
    assert by_file["manifests/feast/redis.yaml"] == {"Private Key"}
    assert "AWS Access Key" in by_file["examples/training.yaml"]
    assert key_id in {f.value for f in found} and secret_key in {f.value for f in found}
    assert all(key_id not in str(f) and secret_key not in str(f) for f in found)  # reported, never printed whole


def test_a_credential_a_step_printed_is_found_in_its_log(tmp_path):
    """What tests/test_local_run.py relies on when it scans a run's logs: a key a step printed is reported."""
    key_id, secret_key = _aws_key_pair()
    log = tmp_path / "ingest.log"
    log.write_text(
        "[ingest] reading s3://bucket/raw/\n"
        f"DEBUG botocore: credentials {{'aws_access_key_id': '{key_id}', 'aws_secret_access_key': '{secret_key}'}}\n"
        "[ingest] 5,000 rows\n"
    )
    model = tmp_path / "root" / "kfp-mlops-training-2026-12-02-08-30-10-200170" / "quantize-model" / "quantized_model"
    # a first line like "[train] ..." makes detect-secrets' file scan read the log as INI, losing line 2: the line pass
    # of tests/support/secret_scan.py still sees it
    (tmp_path / "train.log").write_text(
        f'[train] epoch 1/4 train_loss=0.41 val_loss=0.39 step=60 samples/s=812\n        "uri": "{model}",\n'
    )
    findings = scan({"logs/ingest.log": log, "logs/train.log": tmp_path / "train.log"})
    found = unaccepted(findings, paths_under=[tmp_path / "root"])
    assert {(f.name, f.line) for f in found} == {("logs/ingest.log", 2)}
    # the run's own path looks random to the entropy plugin: accepted only as a path under the root named
    assert ("logs/train.log", 2) in {(f.name, f.line) for f in unaccepted(findings)}
    assert {key_id, secret_key} <= {f.value for f in found} and "AWS Access Key" in {f.type for f in found}
