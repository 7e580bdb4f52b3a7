"""The Triton lock-down run for real: a Triton 2.51 (the nvidia-pytriton binary) started with the manifests' own
arguments, ``$(VAR)`` expanded from the container's environment the way the kubelet does, reading its S3 model
repository from SeaweedFS with a read-only identity created through SeaweedFS's IAM API with
manifests/examples/triton-read-only-s3-iam-policy.json (as KFP's profile controller creates its identities). Model
control without the key is refused, with it accepted; inference stays open; the identity reads and lists the
repository and writes nothing. What the NetworkPolicy does needs a cluster: tests/test_manifests.py evaluates it."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions
import pytest
import requests
from support.manifests import MANIFESTS, documents, kustomize
from support.triton import signature_model

from kfp_mlops import local_services, triton_local
from kfp_mlops.components.shared import triton_access
from kfp_mlops.processes import free_ports

pytestmark = pytest.mark.timeout(300)
BUCKET, PREFIX = "mlpipeline", "kfp-mlops-models"  # as in the example policy and triton/base/model-repository.env
POLICY = MANIFESTS / "examples" / "triton-read-only-s3-iam-policy.json"
KEY = "test-control-key-0123456789abcdef"


@pytest.fixture(scope="module")
def seaweedfs(tmp_path_factory) -> Iterator[local_services.Service]:
    with local_services.seaweedfs_s3(tmp_path_factory.mktemp("s3"), bucket=BUCKET, iam_writable=True) as service:
        yield service


def _session(access: str, secret: str) -> boto3.session.Session:
    return boto3.session.Session(aws_access_key_id=access, aws_secret_access_key=secret, region_name="us-east-1")


def identity(service: local_services.Service, user: str, policy: str) -> dict[str, str]:
    """A SeaweedFS identity with ``policy``, made through its IAM API with the admin key: its AWS_* environment."""
    admin = _session(service.env["AWS_ACCESS_KEY_ID"], service.env["AWS_SECRET_ACCESS_KEY"])
    iam = admin.client("iam", endpoint_url=service.env["AWS_ENDPOINT_URL"])
    iam.create_user(UserName=user)
    key = iam.create_access_key(UserName=user)["AccessKey"]
    iam.put_user_policy(UserName=user, PolicyName=f"{user}-policy", PolicyDocument=policy)
    return {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
            "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip


def s3_client(service: local_services.Service, env: dict[str, str]) -> Any:
    session = _session(env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"])
    return session.client("s3", endpoint_url=service.env["AWS_ENDPOINT_URL"])


def allowed(call: Any) -> bool:
    """Whether an S3 call succeeds (False: AccessDenied). A fresh key may take a moment to reach the S3 gateway."""
    for _ in range(50):
        try:
            call()
            return True
        except botocore.exceptions.ClientError as error:
            code = error.response["Error"]["Code"]
            if code == "AccessDenied":
                return False
            if code != "InvalidAccessKeyId":
                raise
            time.sleep(0.1)
    raise AssertionError("the key never became valid")


@pytest.fixture(scope="module")
def repository(seaweedfs, tmp_path_factory) -> str:
    """A model under the repository's prefix, written with the admin key (the pipelines' read-write role)."""
    root = tmp_path_factory.mktemp("models")
    model = signature_model(root / "churn.onnx")
    triton_local.add_onnx_model(root / "repo", "churn", model, dynamic_batching={})
    admin = s3_client(seaweedfs, seaweedfs.env)
    for path in (root / "repo").rglob("*"):
        if path.is_file():
            admin.upload_file(str(path), BUCKET, f"{PREFIX}/{path.relative_to(root / 'repo')}")
    admin.put_object(Bucket=BUCKET, Key="other/secret.txt", Body=b"not Triton's")
    host = seaweedfs.env["AWS_ENDPOINT_URL"].removeprefix("http://")
    return f"s3://{host}/{BUCKET}/{PREFIX}"  # the manifests' form: s3://HOST:PORT/BUCKET/PATH


def test_the_example_policy_reads_and_lists_the_repository_and_writes_nothing(seaweedfs, repository):
    client = s3_client(seaweedfs, identity(seaweedfs, "triton-reader", POLICY.read_text()))
    assert allowed(lambda: client.get_object(Bucket=BUCKET, Key=f"{PREFIX}/churn/config.pbtxt")["Body"].read())
    assert allowed(lambda: client.list_objects_v2(Bucket=BUCKET, Prefix=f"{PREFIX}/")["Contents"])
    assert not allowed(lambda: client.put_object(Bucket=BUCKET, Key=f"{PREFIX}/churn/evil", Body=b"x"))
    assert not allowed(lambda: client.delete_object(Bucket=BUCKET, Key=f"{PREFIX}/churn/config.pbtxt"))
    assert not allowed(lambda: client.get_object(Bucket=BUCKET, Key="other/secret.txt"))
    assert not allowed(lambda: client.list_objects_v2(Bucket=BUCKET, Prefix="other/"))


def test_a_policy_that_grants_writes_is_seen_writing(seaweedfs, repository):
    """The negative case: the same check on a policy with s3:PutObject finds the write allowed."""
    policy = json.loads(POLICY.read_text())
    policy["Statement"][0]["Action"].append("s3:PutObject")
    client = s3_client(seaweedfs, identity(seaweedfs, "triton-writer", json.dumps(policy)))
    assert allowed(lambda: client.put_object(Bucket=BUCKET, Key=f"{PREFIX}/churn/evil", Body=b"x"))
    s3_client(seaweedfs, seaweedfs.env).delete_object(Bucket=BUCKET, Key=f"{PREFIX}/churn/evil")


def kubelet_expand(argument: str, env: dict[str, str]) -> str:
    """Kubernetes' expansion of ``$(VAR)`` in args: a defined variable is replaced, an undefined reference is left as
    it is, ``$$`` escapes (k8s.io/kubernetes third_party/forked/golang/expansion)."""
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                  lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), argument)  # fmt: skip


def manifest_command(repository: str, key: str | None, state: Path) -> tuple[list[str], list[int]]:
    """The Triton container of triton/cpu as the kubelet would start it here: its args with $(VAR) expanded from
    its env (MODEL_REPOSITORY from the ConfigMap -> ``repository``, the control key from its Secret -> ``key``,
    absent when None), this machine's binary and free ports instead of 8000-8002."""
    (deployment,) = [d for d in documents(kustomize(MANIFESTS / "triton" / "cpu")) if d["kind"] == "Deployment"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {"MODEL_REPOSITORY": repository, **({triton_access.CONTROL_ENV: key} if key is not None else {})}
    assert {e["name"] for e in container["env"]} >= set(env)
    install = triton_local.ensure_venv()
    ports = free_ports(3)
    own_ports = dict(zip(("--http-port", "--grpc-port", "--metrics-port"), ports, strict=True))
    args = []
    for argument in container["args"][1:]:  # args[0] is the image's tritonserver
        name = argument.split("=", 1)[0]
        args.append(f"{name}={own_ports[name]}" if name in own_ports else kubelet_expand(argument, env))
    backends = triton_local.backends_dir(install, state)
    return [str(install.tritonserver), *args, f"--backend-directory={backends}", "--exit-timeout-secs=5"], ports


@pytest.fixture(scope="module")
def locked_triton(seaweedfs, repository, tmp_path_factory) -> Iterator[dict[str, Any]]:
    """Triton from the manifest's args, reading the repository with the read-only identity's key."""
    state = tmp_path_factory.mktemp("triton")
    reader = identity(seaweedfs, "kfp-mlops-triton", POLICY.read_text())
    command, (http_port, grpc_port, _) = manifest_command(repository, KEY, state)
    install = triton_local.ensure_venv()
    process = triton_local.spawn(command, state / "tritonserver.log", triton_local.server_env(install, reader))
    url = f"http://127.0.0.1:{http_port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if requests.get(f"{url}/v2/models/churn/ready", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            log = (state / "tritonserver.log").read_text(errors="replace")
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Triton did not serve churn; its log:\n{log[-3000:]}")
            time.sleep(0.5)
        yield {"http": url, "grpc": f"127.0.0.1:{grpc_port}", "command": command, "state": state, "reader": reader}
    finally:
        triton_local.stop_process(process.pid, timeout=10)


def test_the_manifest_args_expand_to_restriction_args_of_the_key(locked_triton):
    assert set(triton_access.restriction_args(KEY)) <= set(locked_triton["command"])
    assert not any("$(" in argument for argument in locked_triton["command"])


def test_triton_reads_its_repository_with_the_read_only_key_and_serves_inference_without_the_key(locked_triton):
    body = {"inputs": [
        {"name": "numeric", "shape": [1, 3], "datatype": "FP32", "data": [0.5, 1.0, -2.0]},
        {"name": "categorical", "shape": [1, 2], "datatype": "BYTES", "data": ["red", "s"]},
    ]}  # fmt: skip
    answer = requests.post(f"{locked_triton['http']}/v2/models/churn/infer", json=body, timeout=30)
    assert answer.status_code == 200, answer.text
    assert {output["name"] for output in answer.json()["outputs"]} == {"probabilities", "label"}


def test_model_control_is_refused_without_the_key_and_accepted_with_it_over_http_and_grpc(locked_triton, monkeypatch):
    import tritonclient.grpc as grpc
    from tritonclient.utils import InferenceServerException

    load = f"{locked_triton['http']}/v2/repository/models/churn/load"
    assert requests.post(load, timeout=30).status_code == 403
    assert requests.post(load, headers={triton_access.CONTROL_HEADER: "wrong"}, timeout=30).status_code == 403
    assert requests.post(load, headers={triton_access.CONTROL_HEADER: KEY}, timeout=60).status_code == 200
    assert requests.post(f"{locked_triton['http']}/v2/repository/index", timeout=30).status_code == 403

    client = grpc.InferenceServerClient(locked_triton["grpc"])
    try:
        monkeypatch.delenv(triton_access.CONTROL_ENV, raising=False)
        with pytest.raises(InferenceServerException, match=triton_access.REFUSED_MESSAGE):
            client.load_model("churn", headers=triton_access.control_headers("grpc"))
        monkeypatch.setenv(triton_access.CONTROL_ENV, KEY)
        client.load_model("churn", headers=triton_access.control_headers("grpc"))
        assert client.is_model_ready("churn")  # health and metadata stay open
    finally:
        client.close()


def test_without_the_secret_the_key_is_the_unexpanded_reference_which_is_why_it_is_required(tmp_path):
    """Were the Secret optional and missing, the kubelet would start Triton with the literal text as its key
    (tests/test_manifests.py refuses optional: true)."""
    command, _ = manifest_command("s3://127.0.0.1:1/b/p", None, tmp_path)
    literal = f"$({triton_access.CONTROL_ENV})"
    assert set(triton_access.restriction_args(literal)) <= set(command)


def test_the_identity_triton_runs_with_cannot_write_its_repository(seaweedfs, locked_triton):
    client = s3_client(seaweedfs, locked_triton["reader"])
    assert not allowed(lambda: client.put_object(Bucket=BUCKET, Key=f"{PREFIX}/churn/2/model.onnx", Body=b"x"))


# KFP 2.17.0's ListBucket isolation bucket policy, as the profile controller sets it on bucket mlpipeline
# (kubeflow/pipelines manifests/kustomize/base/installs/multi-user/pipelines-profile-controller/sync.py,
# ensure_bucket_list_policy), copied here.
KFP_217_BUCKET_POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {"Sid": "AllowOwnDeepList", "Effect": "Allow", "Principal": "*", "Action": "s3:ListBucket",
         "Resource": f"arn:aws:s3:::{BUCKET}",
         "Condition": {"StringLike": {"s3:prefix": [
             "private-artifacts/${aws:username}/*", "private/${aws:username}/*", "artifacts/*", "shared/*"]}}},
        {"Sid": "AllowHeadBucket", "Effect": "Allow", "Principal": "*", "Action": "s3:ListBucket",
         "Resource": f"arn:aws:s3:::{BUCKET}", "Condition": {"StringEquals": {"s3:RequestMethod": "HEAD"}}},
        {"Sid": "AllowTopLevelDelimitedBrowse", "Effect": "Allow", "Principal": "*", "Action": "s3:ListBucket",
         "Resource": f"arn:aws:s3:::{BUCKET}",
         "Condition": {"Null": {"s3:prefix": "true"}, "StringEquals": {"s3:delimiter": "/"}}},
        {"Sid": "DenyOtherDeepList", "Effect": "Deny", "Principal": "*", "Action": "s3:ListBucket",
         "Resource": f"arn:aws:s3:::{BUCKET}",
         "Condition": {"StringLike": {"s3:prefix": ["private-artifacts/*", "private/*"]},
                       "StringNotLike": {"s3:prefix": ["private-artifacts/${aws:username}/*",
                                                       "private/${aws:username}/*"]}}},
    ],
}  # fmt: skip


def test_on_a_kfp_217_profile_bucket_only_the_profiles_own_identity_lists_its_private_prefix(tmp_path):
    """Why manifests/README.md gives Triton the profile's key with profiles on KFP 2.17: with the controller's bucket
    policy, a read-only identity of Triton's own (the example policy on private/<ns>/kfp-mlops-models) may read the
    repository's files but not list them, which Triton must; the identity named after the namespace may."""
    namespace, repository = "team-ml", f"private/team-ml/{PREFIX}"
    with local_services.seaweedfs_s3(tmp_path, bucket=BUCKET, iam_writable=True) as service:
        admin = s3_client(service, service.env)
        admin.put_object(Bucket=BUCKET, Key=f"{repository}/churn/config.pbtxt", Body=b"x")
        admin.put_bucket_policy(Bucket=BUCKET, Policy=json.dumps(KFP_217_BUCKET_POLICY))
        policy = POLICY.read_text().replace(f":::{BUCKET}/{PREFIX}", f":::{BUCKET}/{repository}").replace(
            f'"{PREFIX}', f'"{repository}')  # fmt: skip
        assert repository in policy
        listing = {}
        for user in ("kfp-mlops-triton", namespace):
            client = s3_client(service, identity(service, user, policy))
            assert allowed(lambda c=client: c.get_object(Bucket=BUCKET, Key=f"{repository}/churn/config.pbtxt"))
            listing[user] = allowed(lambda c=client: c.list_objects_v2(Bucket=BUCKET, Prefix=f"{repository}/"))
    assert listing == {"kfp-mlops-triton": False, namespace: True}
