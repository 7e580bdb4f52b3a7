"""Multi-node training through a TrainJob, end to end except Kubernetes itself.

The API server is the FakeKubeApiServer test double (no Kubernetes runs here). When the step creates the TrainJob,
the double plays kubelet: it starts the job's own command on two local "nodes" (torchrun with the PET_* variables
the torch-distributed runtime sets), with secrets resolved from this environment. Data, checkpoints and the result
travel through a real S3 server (SeaweedFS), as they would between the step's pod and the job's pods.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from support.configs import pipeline_config
from support.kube_api import COMPLETE, FakeKubeApiServer, api_client_for, not_found, stored

from kfp_mlops.components.shared import storage
from kfp_mlops.components.shared.errors import ConfigError
from kfp_mlops.components.train.core import ClusterContext, train
from kfp_mlops.components.train.trainjob import trainjob_name
from kfp_mlops.processes import free_port

pytestmark = pytest.mark.servers
NAMESPACE = "ml-team"
RUN_ID = "run-3f2a"


def run_nodes(manifest: dict, nodes: int, secrets: dict[str, dict[str, str]]) -> list[int]:
    """What the cluster would do: every node runs the trainer command with the environment the kubelet gives it
    (plain values, and Secret keys from ``secrets``: an optional reference to a missing key sets nothing); torchrun
    reads its PET_* settings."""
    trainer = manifest["spec"]["trainer"]
    command = [str(Path(sys.executable).with_name(trainer["command"][0])), *trainer["command"][1:]]
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "KFP_MINIO_"))}
    env |= {e["name"]: e["value"] for e in trainer.get("env", []) if "value" in e}
    for entry in trainer.get("env", []):
        if "valueFrom" in entry:
            reference = entry["valueFrom"]["secretKeyRef"]
            value = secrets.get(reference["name"], {}).get(reference["key"])
            assert value is not None or reference["optional"], reference
            if value is not None:
                env[entry["name"]] = value
    processes = [
        subprocess.Popen(
            command,
            env=env
            | {
                "PET_NNODES": str(nodes),
                "PET_NODE_RANK": str(rank),
                "PET_NPROC_PER_NODE": "1",
                "PET_MASTER_ADDR": "127.0.0.1",
                "PET_MASTER_PORT": str(port),
            },
        )  # fmt: skip
        for rank in range(nodes)
    ]
    return [p.wait(timeout=300) for p in processes]


@pytest.mark.timeout(300)  # a rank that skips a ZeRO-3 collective would hang here, not fail
def test_two_node_zero3_trainjob_trains_through_object_storage(s3, ingested, tmp_path):
    config, paths = ingested
    config = pipeline_config(
        config.data.source,
        train={"nodes": 2, "workers": 1, "epochs": 2, "micro_batch_size": 128, "namespace": NAMESPACE,
               "zero_stage": 3, "checkpoint_every_steps": 20},
    )  # fmt: skip
    name = trainjob_name(RUN_ID, "train")
    collection = f"/apis/trainer.kubeflow.org/v1alpha1/namespaces/{NAMESPACE}/trainjobs"
    checkpoint_uri = s3.uri(f"pipeline-root/checkpoints/{RUN_ID}/train")
    exit_codes: list[int] = []

    with FakeKubeApiServer() as kube_api:
        kube_api.script("GET", f"{collection}/{name}", not_found(name))

        def created(request):
            manifest = request.body
            kube_api.script("POST", collection, (201, stored(manifest)[1]))
            kube_api.script("GET", f"{collection}/{name}", stored(manifest, active=2))

            def cluster():
                exit_codes.extend(run_nodes(manifest, nodes=2, secrets=secrets))
                kube_api.script("GET", f"{collection}/{name}", stored(manifest, **COMPLETE))

            threading.Thread(target=cluster, daemon=True).start()

        kube_api.on("POST", collection, created)
        # The cluster has KFP's own MinIO Secret, and a project Secret naming only the endpoint: the nodes must
        # get KFP's credentials as the pipeline's pods do (storage.credential_secret_env).
        secrets = {
            "mlpipeline-minio-artifact": {"accesskey": s3.env["AWS_ACCESS_KEY_ID"],
                                          "secretkey": s3.env["AWS_SECRET_ACCESS_KEY"]},
            "kfp-mlops-storage": {"AWS_ENDPOINT_URL": s3.env["AWS_ENDPOINT_URL"]},
        }  # fmt: skip
        context = ClusterContext(image="registry.example/kfp-mlops-train:test", run_id=RUN_ID, gpus_per_node=0,
                                 cpu="2", memory="4Gi", node_selector={"pool": "cpu"},
                                 storage_secret="kfp-mlops-storage", api_client=api_client_for(kube_api))  # fmt: skip
        result = train(config, paths.train, paths.validation, str(tmp_path / "model"), checkpoint_uri,
                       str(tmp_path / "train.log"), context)  # fmt: skip

        (post,) = kube_api.requests_of("POST")
    assert exit_codes == [0, 0]
    trainer = post.body["spec"]["trainer"]
    assert trainer["numNodes"] == 2 and trainer["numProcPerNode"] == 1
    assert trainer["command"][:3] == ["torchrun", "-m", "kfp_mlops.components.train.worker"]
    secret_refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in trainer["env"] if "valueFrom" in e}
    assert secret_refs["AWS_SECRET_ACCESS_KEY"] == {
        "name": "kfp-mlops-storage",
        "key": "AWS_SECRET_ACCESS_KEY",
        "optional": True,
    }
    assert secret_refs["KFP_MINIO_ACCESS_KEY"] == {"name": "mlpipeline-minio-artifact", "key": "accesskey",
                                                   "optional": True}  # fmt: skip
    assert trainer["resourcesPerNode"] == {"limits": {"cpu": "2", "memory": "4Gi"},
                                           "requests": {"cpu": "2", "memory": "4Gi"}}  # fmt: skip
    (patch,) = post.body["spec"]["runtimePatches"]
    (job,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    assert job["template"]["spec"]["template"]["metadata"]["labels"] == {"sidecar.istio.io/inject": "false"}
    assert s3.env["AWS_SECRET_ACCESS_KEY"] not in str(post.body)
    assert result.metrics["world_size"] == 2 and result.metrics["epochs"] == 2
    assert result.deepspeed_config["train_batch_size"] == 128 * 2
    assert (tmp_path / "model" / "model.onnx").exists()
    assert storage.read_bytes(storage.parse(checkpoint_uri).child("latest").uri).decode().strip() == "epoch2"
    tags = {storage.parse(u).key.split("/train/")[1].split("/")[0] for u in storage.list_uris(checkpoint_uri)}
    assert {"epoch2", "best.pt", "latest"} <= tags and len(tags) == 4  # the two newest kept on object storage too
    assert "TrainJob ml-team/" in (tmp_path / "train.log").read_text()


def test_multi_node_needs_object_storage_for_checkpoints(ingested, tmp_path):
    config, paths = ingested
    config = pipeline_config(config.data.source, train={"nodes": 2})
    context = ClusterContext(image="i:1", run_id=RUN_ID)
    with pytest.raises(ConfigError, match=r"train.nodes > 1 runs a TrainJob: .*checkpoint_dir on object storage"):
        train(config, paths.train, paths.validation, str(tmp_path / "m"), str(tmp_path / "ckpt"), None, context)
