"""The deploy step against a real local Triton (2.51, python backend) and real SeaweedFS: stage → verify → promote →
roll back, with a trained model package, clients sending requests throughout, and the repository checked after each
step. Nothing is mocked.

Over 500 lines on purpose: every deploy scenario shares one running Triton and one trained package.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from mlflow import MlflowClient
from onnx import helper, numpy_helper
from support.packages import edited_package
from support.triton import running_pod, running_triton
from support.waiting import holds_for, wait_for

from kfp_mlops.components.deploy import core, executor
from kfp_mlops.components.evaluate.core import record_baseline
from kfp_mlops.components.shared import storage
from kfp_mlops.components.shared.config import DeployConfig
from kfp_mlops.components.shared.model_package import Predictor
from kfp_mlops.components.shared.records import Deployment
from kfp_mlops.components.shared.registry import CHAMPION, PREVIOUS, RegistryState
from kfp_mlops.components.shared.triton_access import CONTROL_ENV
from kfp_mlops.components.shared.triton_config import ModelConfig
from kfp_mlops.processes import free_port

pytestmark = pytest.mark.servers

ROWS = 8  # rows per client request


@pytest.fixture(scope="module")
def noisy_package(trained_package, tmp_path_factory) -> Path:
    """A package whose graph adds random noise to its probabilities: every run answers differently, so Triton's
    answers never match the package's own (its labels stay as trained)."""

    def add_noise(graph) -> None:
        for node in graph.node:
            node.output[:] = ["raw_probabilities" if name == "probabilities" else name for name in node.output]
            node.input[:] = ["raw_probabilities" if name == "probabilities" else name for name in node.input]
        graph.node.extend(
            [
                helper.make_node("RandomUniformLike", ["raw_probabilities"], ["noise"], low=0.01, high=0.05),
                helper.make_node("Add", ["raw_probabilities", "noise"], ["probabilities"]),
            ]
        )

    return edited_package(trained_package, tmp_path_factory.mktemp("noisy") / "model", add_noise)


@pytest.fixture(scope="module")
def nan_package(trained_package, tmp_path_factory) -> Path:
    """A package whose graph answers NaN for the first class's probability (in Triton and in onnxruntime alike)."""

    def poison(graph) -> None:
        for node in graph.node:
            node.output[:] = ["raw_probabilities" if name == "probabilities" else name for name in node.output]
            node.input[:] = ["raw_probabilities" if name == "probabilities" else name for name in node.input]
        graph.initializer.append(numpy_helper.from_array(np.array([np.nan, 1.0], np.float32), "poison"))
        graph.node.append(helper.make_node("Mul", ["raw_probabilities", "poison"], ["probabilities"]))

    return edited_package(trained_package, tmp_path_factory.mktemp("nan") / "model", poison)


@pytest.fixture(scope="module")
def validation(ingested) -> str:
    return ingested[1].validation


@pytest.fixture(scope="module")
def repository(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("model-repository")


@pytest.fixture(scope="module")
def server(repository, tmp_path_factory):
    with running_triton(repository, state_dir=tmp_path_factory.mktemp("triton-state")) as server:
        yield server


def settings(server, repository, name: str, **overrides) -> DeployConfig:
    """Settings for the local Triton; the latency budget is loose (the machine is shared) unless a test sets it."""
    verify = {"rows": 256, "requests": 20, "max_p50_ms": 500, "max_p99_ms": 5000, **overrides.pop("verify", {})}
    values = {"model_repository": str(repository), "triton_url": server.grpc_url, "model_name": name}
    return DeployConfig(**values, backend="python", verify=verify, **{"ready_timeout_seconds": 60, **overrides})


def feeds(package: Path, validation: str, rows: int) -> dict[str, np.ndarray]:
    return Predictor(package).feeds(pq.read_table(validation).slice(0, rows))


def infer(client, name: str, inputs: dict[str, np.ndarray], version: str = "") -> tuple[np.ndarray, np.ndarray]:
    import tritonclient.grpc as grpc

    tensors = []
    for key, array in inputs.items():
        tensor = grpc.InferInput(key, list(array.shape), "BYTES" if array.dtype == object else "FP32")
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    result = client.infer(name, tensors, model_version=version)
    labels = [v.decode() if isinstance(v, bytes) else v.item() for v in result.as_numpy("label").ravel()]
    return result.as_numpy("probabilities"), np.array(labels)


def _url(server) -> str:
    return server if isinstance(server, str) else server.grpc_url


def assert_serves(server, name: str, package: Path, validation: str) -> None:
    """Unversioned requests to ``name`` answer as the package does (onnxruntime in this process), on 256 rows."""
    import tritonclient.grpc as grpc

    inputs = feeds(package, validation, 256)
    expected_probabilities, expected_labels = Predictor(package).run(inputs)
    client = grpc.InferenceServerClient(_url(server))
    try:
        for start in range(0, 256, 64):
            probabilities, labels = infer(client, name, {k: v[start : start + 64] for k, v in inputs.items()})
            np.testing.assert_allclose(probabilities, expected_probabilities[start : start + 64], rtol=0, atol=1e-5)
            assert labels.tolist() == [
                v.item() if hasattr(v, "item") else v for v in expected_labels[start : start + 64]
            ]
    finally:
        client.close()


def files(repository: Path | str, name: str) -> list[str]:
    """The files under ``<repository>/<name>/`` (without the bytecode the local python backend leaves)."""
    root = storage.parse(str(repository)).child(name).uri
    return sorted(uri[len(root) + 1 :] for uri in storage.list_uris(root) if "/__pycache__/" not in uri)


def served_policy(repository: Path, name: str) -> list[int] | None:
    policy = ModelConfig.read(repository / name).version_policy
    return policy.specific if policy else None


def candidate(name: str) -> str:
    """The pattern of ``name``'s staging names (one per deployment): for ``states``, ``loads`` and messages."""
    return rf"{re.escape(name)}-candidate-[0-9a-f]{{8}}"


def staged(repository: Path | str, name: str) -> list[str]:
    """The staging folders of ``name`` left in the repository."""
    if storage.is_remote(str(repository)):
        root = storage.parse(str(repository)).key.rstrip("/")
        keys = [storage.parse(uri).key for uri in storage.list_key_prefix(f"{repository}/{name}-candidate-")]
        entries = {(key[len(root) + 1 :] if root else key).split("/")[0] for key in keys}
    else:
        entries = set(os.listdir(repository))
    return sorted(entry for entry in entries if re.fullmatch(candidate(name), entry))


def states(server, name: str) -> dict[str, str]:
    """Triton's state of each version of the models whose name matches ``name`` (a pattern) in its index."""
    import tritonclient.grpc as grpc

    client = grpc.InferenceServerClient(_url(server))
    try:
        index = client.get_model_repository_index(as_json=True).get("models", [])
    finally:
        client.close()
    return {m["version"]: m.get("state", "") for m in index if re.fullmatch(name, m["name"]) and "version" in m}


def ready_versions(server, name: str) -> set[str]:
    return {version for version, state in states(server, name).items() if state == "READY"}


def loads(log: str | Path, name: str, version: int) -> list[int]:
    """Offsets in a server log where a load of ``name`` (a pattern) version ``version`` starts."""
    log = Path(log).read_text()
    return [m.start() for m in re.finditer(rf'"loading: {name}:{version}"', log)]


def test_first_deploy_then_another_model_then_the_same_again(
    server, repository, trained_package, other_package, validation
):
    name = "churn"
    first = core.deploy(str(trained_package), validation, settings(server, repository, name))
    assert first.status == "deployed" and first.version == 1 and first.previous_version is None
    assert first.deployment.endpoint == server.grpc_url and first.deployment.repository == str(repository)
    assert first.deployment.verified["rows"] == 256 and first.deployment.verified["max_abs_diff"] <= 1e-4
    assert 0 < first.deployment.verified["p50_ms"] <= first.deployment.verified["p99_ms"]
    assert files(repository, name) == ["1/kfp-mlops.json", "1/model.onnx", "1/model.py", "config.pbtxt"]
    assert served_policy(repository, name) == [1] and not staged(repository, name)
    marker = json.loads((repository / name / "1" / "kfp-mlops.json").read_text())
    assert marker["content_hash"].startswith("sha256:") and marker["verified"] == first.deployment.verified
    assert_serves(server, name, trained_package, validation)

    second = core.deploy(str(other_package), validation, settings(server, repository, name))
    assert (second.status, second.version, second.previous_version) == ("deployed", 2, 1)
    assert served_policy(repository, name) == [2] and ready_versions(server, name) == {"2"}
    assert_serves(server, name, other_package, validation)
    verified, promoted = loads(server.log, candidate(name), 2), loads(server.log, name, 2)
    assert len(verified) == 1 and len(promoted) == 1 and verified[0] < promoted[0]  # verified before promoted
    assert staged(repository, name) == []

    before = {path: (repository / name / path).stat().st_mtime_ns for path in files(repository, name)}
    again = core.deploy(str(other_package), validation, settings(server, repository, name))
    assert (again.status, again.version) == ("already_serving", 2)
    assert again.deployment.verified == second.deployment.verified
    assert {path: (repository / name / path).stat().st_mtime_ns for path in files(repository, name)} == before
    assert len(loads(server.log, name, 2)) == 1 and loads(server.log, candidate(name), 3) == []  # no reload, no version

    third = core.deploy(str(trained_package), validation, settings(server, repository, name, keep_versions=2))
    assert (third.status, third.version, third.pruned) == ("deployed", 3, [1])  # an older package: a new version
    assert sorted({path.split("/")[0] for path in files(repository, name)}) == ["2", "3", "config.pbtxt"]
    assert_serves(server, name, trained_package, validation)


def test_a_broken_version_rolls_back_while_clients_are_served(
    server, repository, trained_package, other_package, noisy_package, validation
):
    """A client sends requests to the served name throughout: the promotion of version 2 and the failed version 3
    (its answers differ from its package's) cost no request, and version 3 never answers."""
    import tritonclient.grpc as grpc

    name = "steady"
    core.deploy(str(trained_package), validation, settings(server, repository, name))
    inputs = feeds(trained_package, validation, ROWS)
    reference = {1: Predictor(trained_package).run(inputs)[0], 2: Predictor(other_package).run(inputs)[0]}
    assert np.abs(reference[1] - reference[2]).max() > 1e-3
    answers: list[object] = []
    stop = threading.Event()

    def send() -> None:
        client = grpc.InferenceServerClient(server.grpc_url)
        try:
            while not stop.is_set():
                try:
                    probabilities, _ = infer(client, name, inputs)
                    which = [v for v, p in reference.items() if np.allclose(probabilities, p, rtol=0, atol=1e-5)]
                    answers.append(which[0] if which else "an unknown answer")
                except Exception as exc:
                    answers.append(f"{type(exc).__name__}: {exc}")
        finally:
            client.close()

    sender = threading.Thread(target=send)
    sender.start()
    try:
        wait_for(lambda: answers.count(1) > 5, "version 1 answering before the promotion")
        promoted = core.deploy(str(other_package), validation, settings(server, repository, name))
        at_promotion = len(answers)
        with pytest.raises(core.DeployError) as failed:
            core.deploy(str(noisy_package), validation, settings(server, repository, name))
        at_failure = len(answers)
        wait_for(lambda: len(answers) > at_failure + 5, "answers after the failed deployment")
    finally:
        stop.set()
        sender.join()
    assert promoted.version == 2
    assert failed.value.stage == "verification" and failed.value.rolled_back
    assert re.search(
        r"steady-candidate-[0-9a-f]{8} version 3 .* answers differently from the package: max \|probability "
        r"difference\| 0\.0\d+ over 256 rows \(allowed 0\.0001\); rolled back: version 2 keeps serving$",
        str(failed.value),
    ), str(failed.value)
    assert set(answers) <= {1, 2}, [answer for answer in answers if answer not in (1, 2)][:3]
    assert answers == sorted(answers) and answers.count(1) > 5 and answers[at_promotion:].count(2) > 5
    assert files(repository, name) == [
        "1/kfp-mlops.json",
        "1/model.onnx",
        "1/model.py",
        "2/kfp-mlops.json",
        "2/model.onnx",
        "2/model.py",
        "config.pbtxt",
    ]
    assert served_policy(repository, name) == [2] and ready_versions(server, name) == {"2"}
    assert staged(repository, name) == [] and ready_versions(server, candidate(name)) == set()
    assert loads(server.log, name, 3) == [] and len(loads(server.log, candidate(name), 3)) == 1


def test_a_version_that_fails_to_load_or_is_not_ready_in_time_rolls_back(
    server, repository, trained_package, validation
):
    """KIND_GPU instances on a server without GPUs: the candidate fails to load in Triton. Eight instances (eight
    python-backend processes) within a 1 s readiness timeout: the candidate is not ready in time."""
    name = "gpuless"
    core.deploy(str(trained_package), validation, settings(server, repository, name))
    with pytest.raises(
        core.DeployError, match=r"gpuless-candidate-[0-9a-f]{8} version 2 failed to load .*gpu id 0"
    ) as failed:
        core.deploy(str(trained_package), validation, settings(server, repository, name), gpu=True)
    assert failed.value.stage == "load" and failed.value.rolled_back
    assert files(repository, name) == ["1/kfp-mlops.json", "1/model.onnx", "1/model.py", "config.pbtxt"]
    assert served_policy(repository, name) == [1] and ready_versions(server, name) == {"1"}
    assert not staged(repository, name)

    slow = settings(server, repository, name, instance_count=8, ready_timeout_seconds=1)
    with pytest.raises(
        core.DeployError, match=r"gpuless-candidate-[0-9a-f]{8} version 2 on .* was not ready within 1s"
    ) as late:
        core.deploy(str(trained_package), validation, slow)
    assert late.value.stage == "readiness" and late.value.rolled_back
    assert files(repository, name) == ["1/kfp-mlops.json", "1/model.onnx", "1/model.py", "config.pbtxt"]
    assert served_policy(repository, name) == [1] and not staged(repository, name)
    # the rollback waited for the load it gave up on and unloaded it (an unload sent while loading is lost)
    assert not {"LOADING", "READY"} & set(states(server, candidate(name)).values())
    # a lost unload would show later, when the abandoned load completes: observed over a window (no event marks
    # "it will not happen"), and at every check rather than once at its end
    holds_for(lambda: not {"LOADING", "READY"} & set(states(server, candidate(name)).values()),
              "the abandoned candidate staying unloaded", seconds=3)  # fmt: skip
    assert ready_versions(server, name) == {"1"}


def test_a_model_answering_nan_fails_verification_instead_of_matching_its_own_nan(
    server, repository, nan_package, validation
):
    """The package and Triton agree (both NaN), but a NaN is no answer: verification fails naming the rows."""
    with pytest.raises(core.DeployError, match=r"probabilities that are not finite numbers .* rows \[0, 1, 2, 3, 4\]"):
        core.deploy(str(nan_package), validation, settings(server, repository, "poisoned"))
    assert ready_versions(server, "poisoned") == set() and not (repository / "poisoned").exists()


def noisy_regression(package: Path, target: Path, noise: float) -> Path:
    """``package`` with uniform noise in [noise / 2, noise] (label units) added to its prediction on every run."""

    def add_noise(graph) -> None:
        for node in graph.node:
            node.output[:] = ["raw_prediction" if name == "prediction" else name for name in node.output]
        graph.node.extend(
            [
                helper.make_node("RandomUniformLike", ["raw_prediction"], ["noise"], low=noise / 2, high=noise),
                helper.make_node("Add", ["raw_prediction", "noise"], ["prediction"]),
            ]
        )

    return edited_package(package, target, add_noise)


def assert_serves_prediction(server, name: str, package: Path, validation: str) -> None:
    """Triton's ``prediction`` (the served graph's only output) equals the package's own on 256 rows."""
    import tritonclient.grpc as grpc

    inputs = feeds(package, validation, 256)
    expected, _ = Predictor(package).run(inputs)
    client = grpc.InferenceServerClient(_url(server))
    try:
        assert [o["name"] for o in client.get_model_metadata(name, as_json=True)["outputs"]] == ["prediction"]
        served = []
        for start in range(0, 256, 64):
            tensors = []
            for key, array in inputs.items():
                chunk = array[start : start + 64]
                tensor = grpc.InferInput(key, list(chunk.shape), "BYTES" if chunk.dtype == object else "FP32")
                tensor.set_data_from_numpy(chunk)
                tensors.append(tensor)
            served.append(client.infer(name, tensors).as_numpy("prediction"))
        served = np.concatenate(served)
    finally:
        client.close()
    assert served.shape == (256, 1) and served.dtype == np.float32
    np.testing.assert_allclose(served, expected, rtol=1e-6, atol=0)


def test_a_regression_package_is_verified_on_its_prediction_and_served(
    server, repository, regression_package, validation
):
    name = "spend"
    deployed = core.deploy(str(regression_package), validation, settings(server, repository, name))
    assert (deployed.status, deployed.version) == ("deployed", 1)
    assert deployed.deployment.verified["rows"] == 256 and deployed.deployment.verified["max_abs_diff"] <= 1e-4
    assert files(repository, name) == ["1/kfp-mlops.json", "1/model.onnx", "1/model.py", "config.pbtxt"]
    outputs = ModelConfig.read(repository / name).outputs
    assert [(t.name, t.data_type, t.dims) for t in outputs] == [("prediction", "TYPE_FP32", [1])]
    marker = json.loads((repository / name / "1" / "kfp-mlops.json").read_text())
    assert marker["model_config"]["task"] == "regression" and marker["model_config"]["classes"] == []
    assert_serves_prediction(server, name, regression_package, validation)


@pytest.mark.parametrize("atols, deploys", [(0.1, True), (10, False)])
def test_a_regression_package_is_held_to_atol_label_standard_deviations(
    server, repository, regression_package, validation, tmp_path, atols, deploys
):
    """Triton and the package differ by random noise of ``atols`` × verify.atol × the training label's standard
    deviation: a tenth of it deploys, ten times it rolls back naming the scaled difference."""
    label_std = json.loads((regression_package / "preprocessing.json").read_text())["label_std"]
    noisy = noisy_regression(regression_package, tmp_path / "model", atols * 1e-4 * label_std)
    name = f"spend-noise-{atols:g}".replace(".", "_")
    if deploys:
        deployed = core.deploy(str(noisy), validation, settings(server, repository, name))
        assert deployed.version == 1 and 0 < deployed.deployment.verified["max_abs_diff"] <= 1e-4
        return
    message = (
        rf"{candidate(name)} version 1 on {re.escape(server.grpc_url)} answers differently from the package: max "
        rf"\|prediction difference\| / label std {label_std:.4g} \d\.\d+(e-0\d)? over 256 rows \(allowed 0\.0001\)"
    )
    with pytest.raises(core.DeployError, match=message) as failed:
        core.deploy(str(noisy), validation, settings(server, repository, name))
    assert failed.value.stage == "verification" and not (repository / name).exists()


def test_a_missed_latency_budget_rolls_back_and_leaves_nothing_on_a_first_deploy(
    server, repository, trained_package, validation
):
    name = "slow"
    budget = settings(server, repository, name, verify={"max_p50_ms": 0.001})
    with pytest.raises(core.DeployError, match=r"misses the latency budget: p50 \d+\.\d+ ms \(max 0\.001\)") as failed:
        core.deploy(str(trained_package), validation, budget)
    assert failed.value.stage == "latency" and "nothing was serving, nothing serves" in str(failed.value)
    assert not (repository / name).exists() and not staged(repository, name)
    assert ready_versions(server, name) == set() and ready_versions(server, candidate(name)) == set()
    assert core.deploy(str(trained_package), validation, settings(server, repository, name)).version == 1


def test_a_retry_after_a_crash_between_commit_and_promotion_resumes(
    server, repository, trained_package, other_package, validation
):
    """The state a crash leaves: version 2 committed (its marker written) but the served config still naming 1,
    plus an uncommitted version directory, a staging directory and the candidate. The retry promotes version 2."""
    import tritonclient.grpc as grpc

    name = "resumed"
    core.deploy(str(trained_package), validation, settings(server, repository, name))
    core.deploy(str(other_package), validation, settings(server, repository, name))
    config = repository / name / "config.pbtxt"
    config.write_text(config.read_text().replace("versions: 2", "versions: 1"))
    client = grpc.InferenceServerClient(server.grpc_url)
    client.load_model(name)
    client.close()
    assert ready_versions(server, name) == {"1"}
    (repository / name / "3").mkdir()
    (repository / name / "3" / "model.onnx").write_bytes(b"half")
    (repository / name / ".staging-dead").mkdir()
    shutil.copytree(repository / name / "2", repository / f"{name}-candidate-deadbeef" / "2")

    resumed = core.deploy(str(other_package), validation, settings(server, repository, name))
    assert (resumed.status, resumed.version, resumed.previous_version) == ("deployed", 2, 1)
    assert sorted({path.split("/")[0] for path in files(repository, name)}) == ["1", "2", "config.pbtxt"]
    assert not (repository / name / ".staging-dead").exists() and not staged(repository, name)
    assert served_policy(repository, name) == [2] and ready_versions(server, name) == {"2"}
    assert_serves(server, name, other_package, validation)


def test_sigterm_during_verification_rolls_back(server, repository, trained_package, other_package, validation):
    """SIGTERM (a cancelled run) once the candidate is loaded, in a verification that would take minutes."""
    name = "cancelled"
    core.deploy(str(trained_package), validation, settings(server, repository, name))

    def cancel_when_the_candidate_is_ready() -> None:
        deadline = time.monotonic() + 60
        while ready_versions(server, candidate(name)) != {"2"} and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    canceller = threading.Thread(target=cancel_when_the_candidate_is_ready)
    canceller.start()
    started = time.monotonic()
    with pytest.raises(core.DeployError, match=r"cancelled \(signal 15\); rolled back: version 1") as failed:
        core.deploy(str(other_package), validation, settings(server, repository, name, verify={"requests": 100_000}))
    canceller.join()
    assert failed.value.stage == "cancelled" and time.monotonic() - started < 30
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the handler is restored
    assert sorted({path.split("/")[0] for path in files(repository, name)}) == ["1", "config.pbtxt"]
    assert ready_versions(server, name) == {"1"} and ready_versions(server, candidate(name)) == set()


def test_a_cancelled_rollback_fits_the_grace_period_even_with_a_replica_that_froze(
    trained_package, other_package, validation, tmp_path, monkeypatch
):
    """Two real Triton "pods" on one port; SIGTERM once the candidate is ready on the first, the second frozen
    (SIGSTOP: its node hangs; connections open, no answer). The rollback must end within Kubernetes' 30 s grace
    period (unbounded, its waits on the frozen pod alone would take minutes), name what it could not finish, and
    leave the first pod serving version 1; once the pod thaws, the next deployment clears the leftover candidate."""
    resolve = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        if host != "frozen-pods.test":
            return resolve(host, port, *args, **kwargs)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port)) for address in ("127.0.0.1", "127.0.0.2")]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    repository, name = tmp_path / "models", "frozen"
    with running_triton(repository, state_dir=tmp_path / "a") as first:
        port = first.grpc_port
        pods = settings(first, repository, name, replicas_host="frozen-pods.test", verify={"rows": 64, "requests": 10})
        pods = pods.model_copy(update={"ready_timeout_seconds": 120, "lease_seconds": 600})
        with running_pod(repository, address="127.0.0.2", grpc_port=port, state_dir=tmp_path / "b"):
            assert core.deploy(str(trained_package), validation, pods).version == 1
            pod_pid = int((tmp_path / "b" / "tritonserver.pid").read_text())
            cancelled: list[float] = []

            def freeze_and_cancel_when_the_candidate_is_ready() -> None:
                deadline = time.monotonic() + 60
                while ready_versions(first, candidate(name)) != {"2"} and time.monotonic() < deadline:
                    time.sleep(0.05)
                os.kill(pod_pid, signal.SIGSTOP)
                cancelled.append(time.monotonic())
                os.kill(os.getpid(), signal.SIGTERM)

            canceller = threading.Thread(target=freeze_and_cancel_when_the_candidate_is_ready)
            canceller.start()
            try:
                with pytest.raises(core.DeployError, match=r"cancelled \(signal 15\); rollback incomplete: ") as failed:
                    core.deploy(str(other_package), validation, pods)
                ended = time.monotonic()
            finally:
                canceller.join()
                os.kill(pod_pid, signal.SIGCONT)
            assert failed.value.stage == "cancelled" and not failed.value.rolled_back
            assert f"127.0.0.2:{port}" in str(failed.value)
            assert ended - cancelled[0] < 30, f"the rollback took {ended - cancelled[0]:.1f}s"
            assert ready_versions(first, name) == {"1"} and served_policy(repository, name) == [1]
            at_once = pods.model_copy(update={"lease_wait_seconds": 0})  # the cancelled one released its lease
            assert core.deploy(str(other_package), validation, at_once).version == 2
            assert staged(repository, name) == []
            for pod in (first.grpc_url, f"127.0.0.2:{port}"):
                assert ready_versions(pod, name) == {"2"} and ready_versions(pod, candidate(name)) == set()


def test_model_control_restricted_to_a_key_deploys_with_it_and_fails_clearly_without(
    trained_package, validation, tmp_path, monkeypatch
):
    """Triton started as the cluster's is locked down (triton_access): without the key, or with a wrong one, the
    deploy fails before writing anything, saying which variable and Secret to provide; with it, it deploys, and
    inference needs no key."""
    import tritonclient.grpc as grpc
    from tritonclient.utils import InferenceServerException

    key = f"key-{secrets.token_hex(8)}"
    repository = tmp_path / "repo"
    with running_triton(repository, env={**os.environ, CONTROL_ENV: key}, state_dir=tmp_path / "state") as server:
        monkeypatch.delenv(CONTROL_ENV, raising=False)
        with pytest.raises(core.DeployError, match=rf"refused model control: .*{CONTROL_ENV} is not set") as refused:
            core.deploy(str(trained_package), validation, settings(server, repository, "locked"))
        assert (
            refused.value.stage == "replicas"
            and refused.value.rolled_back
            and "nothing was changed" in str(refused.value)
        )
        assert not (repository / "locked").exists() and staged(repository, "locked") == []
        monkeypatch.setenv(CONTROL_ENV, "not-the-key")
        wrong = r"is not the one Triton was started with .*kfp-mlops-triton-control"
        with pytest.raises(core.DeployError, match=wrong):
            core.deploy(str(trained_package), validation, settings(server, repository, "locked"))

        monkeypatch.setenv(CONTROL_ENV, key)
        assert core.deploy(str(trained_package), validation, settings(server, repository, "locked")).version == 1
        assert_serves(server, "locked", trained_package, validation)  # inference: no key
        client = grpc.InferenceServerClient(server.grpc_url)
        try:
            with pytest.raises(InferenceServerException, match="This protocol is restricted"):
                client.unload_model("locked")  # anyone else: no model control
        finally:
            client.close()
        assert key not in Path(server.log).read_text()


def test_replicas_are_resolved_from_the_headless_host_with_the_port_of_triton_url():
    local = DeployConfig(model_repository="x", triton_url="localhost:8123", replicas_host="localhost")
    assert "127.0.0.1:8123" in core.replica_endpoints(local)
    assert core.replica_endpoints(local.model_copy(update={"replicas_host": ""})) == ["localhost:8123"]
    assert core.replica_endpoints(local.model_copy(update={"replicas_host": "::1"})) == ["[::1]:8123"]


def test_an_unresolvable_triton_url_fails_within_seconds_naming_it_and_changes_nothing(
    trained_package, validation, tmp_path
):
    """The default cluster address with a model repository set, run locally: under the reserved ``.invalid`` TLD
    (RFC 6761) the name never resolves. Once this waited out the readiness budget, then the rollback again."""
    repository = tmp_path / "models"
    repository.mkdir()
    unresolvable = DeployConfig(
        model_repository=str(repository), triton_url="triton.kfp-mlops-serving.svc.invalid:8001", backend="python"
    )
    assert unresolvable.ready_timeout_seconds == 180
    started = time.monotonic()
    with pytest.raises(core.DeployError, match=r"deploy\.triton_url 'triton\.kfp-mlops-serving\.svc\.invalid:8001'"
                       r": the host 'triton\.kfp-mlops-serving\.svc\.invalid' does not resolve") as failed:  # fmt: skip
        core.deploy(str(trained_package), validation, unresolvable)
    assert time.monotonic() - started < 10
    assert failed.value.stage == "replicas" and failed.value.rolled_back
    assert list(repository.iterdir()) == []  # failed before anything was written: no rollback to wait on


def test_an_unresolvable_replica_of_the_replicas_host_is_named(trained_package, validation, tmp_path, monkeypatch):
    """A replica address that does not resolve (played: real headless Services answer IP addresses) fails at once,
    naming deploy.replicas_host."""
    resolve = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        if host == "pods.test":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("pod-0.pods.invalid", port))]
        return resolve(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    pods = DeployConfig(
        model_repository=str(tmp_path), triton_url="127.0.0.1:8001", replicas_host="pods.test", backend="python"
    )
    started = time.monotonic()
    with pytest.raises(core.DeployError, match=r"a replica of deploy\.replicas_host 'pods\.test' "
                       r"'pod-0\.pods\.invalid:8001': the host 'pod-0\.pods\.invalid' does not resolve"):  # fmt: skip
        core.deploy(str(trained_package), validation, pods)
    assert time.monotonic() - started < 10
    assert list(tmp_path.iterdir()) == []


def test_a_triton_url_that_resolves_but_refuses_keeps_the_readiness_budget(trained_package, validation, tmp_path):
    """A pod that is starting refuses connections until it has loaded its repository: that is waited for."""
    refused = DeployConfig(
        model_repository=str(tmp_path), triton_url=f"127.0.0.1:{free_port()}", backend="python", ready_timeout_seconds=3
    )
    started = time.monotonic()
    with pytest.raises(core.DeployError, match=r"Triton at 127\.0\.0\.1:\d+ did not answer within 3s") as failed:
        core.deploy(str(trained_package), validation, refused)
    assert time.monotonic() - started >= 3
    assert failed.value.stage == "replicas"


def test_deploys_through_the_replicas_host(server, repository, trained_package, validation):
    """triton_url names the Service (here: localhost), replicas_host the pods (here: the loopback address)."""
    name = "replicated"
    port = server.grpc_url.rsplit(":", 1)[1]
    result = core.deploy(
        str(trained_package),
        validation,
        settings(server, repository, name, replicas_host="127.0.0.1").model_copy(
            update={"triton_url": f"localhost:{port}"}
        ),
    )
    assert result.version == 1 and result.replicas == [server.grpc_url]
    assert result.deployment.endpoint == f"localhost:{port}"


def test_every_pod_is_verified_and_promoted_and_a_pod_found_at_the_end_is_brought_in_line(
    trained_package, other_package, validation, tmp_path, monkeypatch
):
    """Two real Triton "pods" on one gRPC port (127.0.0.1 and 127.0.0.2), the second started as the cluster starts
    them (--load-model=*). Only the headless Service's DNS answer is played here: ``answers`` lists what each
    resolution of ``triton-pods.test`` returns (the last one repeats)."""
    answers: list[list[str]] = []
    resolve = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        if host != "triton-pods.test":
            return resolve(host, port, *args, **kwargs)
        addresses = answers.pop(0) if len(answers) > 1 else answers[0]
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port)) for address in addresses]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    repository, name = tmp_path / "models", "pods"
    with running_triton(repository, state_dir=tmp_path / "a") as first:
        port = first.grpc_port
        pods = settings(first, repository, name, replicas_host="triton-pods.test", verify={"rows": 64, "requests": 10})
        a, b = f"127.0.0.1:{port}", f"127.0.0.2:{port}"
        answers[:] = [["127.0.0.1"]]
        assert core.deploy(str(trained_package), validation, pods).replicas == [a]
        with running_pod(repository, address="127.0.0.2", grpc_port=port, state_dir=tmp_path / "b") as second:
            assert second == b and ready_versions(b, name) == {"1"}  # loaded from the repository at start
            answers[:] = [["127.0.0.1", "127.0.0.2"]]
            both = core.deploy(str(other_package), validation, pods)
            assert both.version == 2 and both.replicas == [a, b]
            assert len(loads(tmp_path / "b" / "tritonserver.log", candidate(name), 2)) == 1  # verified on b too
            for pod in (a, b):
                assert ready_versions(pod, name) == {"2"} and ready_versions(pod, candidate(name)) == set()
                assert_serves(pod, name, other_package, validation)

            answers[:] = [["127.0.0.1"], ["127.0.0.1", "127.0.0.2"]]  # b shows up only at the final resolution
            late = core.deploy(str(trained_package), validation, pods)
            assert late.version == 3 and late.replicas == [a, b]
            assert loads(tmp_path / "b" / "tritonserver.log", candidate(name), 3) == []
            assert ready_versions(a, name) == {"3"} and ready_versions(b, name) == {"3"}
            assert_serves(b, name, trained_package, validation)


def test_deploys_to_an_s3_model_repository(s3, trained_package, other_package, validation, tmp_path):
    prefix = "deploy/models"
    storage.write_bytes(s3.uri(f"{prefix}/.keep"), b"")  # Triton needs the prefix to exist when it starts
    uri = s3.uri(prefix)
    with running_triton(uri, env=s3.env, state_dir=tmp_path / "state") as server:
        deployed = core.deploy(str(trained_package), validation, settings(server, uri, "churn"))
        assert deployed.version == 1 and deployed.deployment.repository == uri
        assert files(uri, "churn") == ["1/kfp-mlops.json", "1/model.onnx", "1/model.py", "config.pbtxt"]
        assert (
            storage.read_bytes(s3.uri(f"{prefix}/churn/1/model.onnx")) == (trained_package / "model.onnx").read_bytes()
        )
        assert_serves(server, "churn", trained_package, validation)
        second = core.deploy(str(other_package), validation, settings(server, uri, "churn"))
        assert second.version == 2 and ready_versions(server, "churn") == {"2"}
        assert "versions: 2" in storage.read_bytes(s3.uri(f"{prefix}/churn/config.pbtxt")).decode()
        assert staged(uri, "churn") == []
        assert_serves(server, "churn", other_package, validation)
        again = core.deploy(str(other_package), validation, settings(server, uri, "churn"))
        assert (again.status, again.version) == ("already_serving", 2)


def test_an_empty_model_repository_deploys_nothing_and_contacts_nothing(trained_package, validation):
    result = core.deploy(str(trained_package), validation, DeployConfig(triton_url="127.0.0.1:1"))
    assert (result.status, result.version, result.deployment) == ("not_deployed", 0, None)
    assert result.describe() == "deploy.model_repository is empty: not deployed"


def _artifact(path: Path, uri: str = "") -> SimpleNamespace:
    return SimpleNamespace(path=str(path), uri=uri or str(path), metadata={})


def test_executor_records_the_deployment(server, repository, trained_package, validation, ingested, tmp_path, capsys):
    config = ingested[0]
    document = yaml.safe_load(config.to_yaml())
    document["deploy"] = json.loads(settings(server, repository, "executed").model_dump_json())
    model, data = _artifact(trained_package, "s3://bucket/run/model"), _artifact(Path(validation))
    deployment = _artifact(tmp_path / "deployment")

    assert executor.run(yaml.safe_dump(document), model, data, deployment) == 1
    assert deployment.metadata["deployed"] is True and deployment.metadata["model_name"] == "executed"
    assert deployment.metadata["version"] == 1 and deployment.metadata["model"] == "s3://bucket/run/model"
    assert deployment.metadata["verified"]["rows"] == 256.0
    assert json.loads((tmp_path / "deployment").read_text()) == deployment.metadata
    assert re.search(
        r"^\[deploy\] executed version 1 serves at 127\.0\.0\.1:\d+ .*first version; verified 256 rows",
        capsys.readouterr().out,
        re.M,
    )

    document["quantize"] = {**document.get("quantize", {}), "target": "gpu"}  # auto instance kind: KIND_GPU
    with pytest.raises(core.DeployError, match="gpu id 0"):
        executor.run(yaml.safe_dump(document), model, data, _artifact(tmp_path / "failed"))
    assert re.search(r"\[deploy\] FAILED at load: executed-candidate-[0-9a-f]{8} version 2 failed to load",
                     capsys.readouterr().out)  # fmt: skip
    assert not (tmp_path / "failed").exists()

    document["deploy"] = {"model_repository": ""}
    empty = _artifact(tmp_path / "empty")
    assert executor.run(yaml.safe_dump(document), model, data, empty) == 0
    assert empty.metadata["deployed"] is False and json.loads((tmp_path / "empty").read_text())["status"] == (
        "not_deployed"
    )
    assert "[deploy] deploy.model_repository is empty: not deployed" in capsys.readouterr().out


def test_model_config_for_the_cluster_uses_onnxruntime_and_gpu_instances(trained_package):
    cluster = DeployConfig(model_repository="s3://b/m", instance_count=2, max_queue_delay_microseconds=100)
    config = core.model_config("churn", trained_package / "model.onnx", cluster, gpu=True, version=3)
    text = config.to_pbtxt()
    assert 'platform: "onnxruntime_onnx"' in text and "backend" not in text
    assert [(g.kind, g.count, g.gpus) for g in config.instance_group] == [("KIND_GPU", 2, [0])]
    assert re.search(r"version_policy \{\s*specific \{\s*versions: 3\s*\}\s*\}", text), text
    assert config.dynamic_batching.preferred_batch_size == [8, 32, 64]
    assert config.dynamic_batching.max_queue_delay_microseconds == 100
    assert [t.name for t in config.inputs] == ["numeric", "categorical"] and config.max_batch_size == 64
    cpu = core.model_config(
        "churn", trained_package / "model.onnx", cluster.model_copy(update={"instance_kind": "cpu"}), True
    )
    assert cpu.instance_group[0].kind == "KIND_CPU" and cpu.version_policy is None
    assert ModelConfig.from_pbtxt(text) == config


def test_component_compiles_with_its_image_and_artifacts(tmp_path):
    from kfp import compiler

    from kfp_mlops.components.deploy.component import build
    from kfp_mlops.components.shared.images import ImageConfig

    compiler.Compiler().compile(build(ImageConfig(registry="r.example/x", tag="t1")), str(tmp_path / "c.yaml"))
    spec = yaml.safe_load((tmp_path / "c.yaml").read_text())
    component = spec["components"]["comp-deploy-model"]
    assert sorted(component["inputDefinitions"]["artifacts"]) == ["model", "validation_data"]
    assert sorted(component["outputDefinitions"]["artifacts"]) == ["deployment"]
    assert component["outputDefinitions"]["parameters"]["Output"]["parameterType"] == "NUMBER_INTEGER"
    container = spec["deploymentSpec"]["executors"]["exec-deploy-model"]["container"]
    assert container["image"] == "r.example/x/kfp-mlops-deploy:t1"
    assert "pip install" not in " ".join(container["command"])


@pytest.mark.servers
def test_a_deploy_with_the_registry_unreachable_still_serves_and_the_next_deploy_reconciles_the_aliases(
    server, repository, trained_package, other_package, validation, ingested, mlflow_server, tmp_path, capsys
):
    """Run a: the registry is down; Triton still verifies and promotes, and the deployment (then the serving record)
    says the aliases were not moved. Run b, with the registry up: what run a deployed is registered and made the
    champion first, so b's champion has run a's model as ``previous``."""
    record_uri = tmp_path / "record.json"
    document = yaml.safe_load(ingested[0].to_yaml())
    document["deploy"] = json.loads(settings(server, repository, "churn-reconcile").model_dump_json())
    document["evaluate"] = {"baseline": str(record_uri)}
    document["tracking"] = {"uri": f"http://127.0.0.1:{free_port()}", "timeout_seconds": 2, "retries": 0}
    data = _artifact(Path(validation))

    def deploy(run_id: str, package: Path) -> SimpleNamespace:
        folder = tmp_path / "root" / "kfp-mlops-training" / run_id / "deploy-model"
        folder.mkdir(parents=True)
        deployment = _artifact(folder / "deployment")
        assert executor.run(yaml.safe_dump(document), _artifact(package), data, deployment, run_id) > 0
        return deployment

    first = deploy("run-a", trained_package)
    assert first.metadata["version"] == 1 and first.metadata["deployed"] is True
    assert first.metadata["registry"]["aliases_moved"] is False and first.metadata["registry"]["version"] == 0
    assert "registry unreachable" in first.metadata["registry"]["note"]
    out = capsys.readouterr().out
    assert "[deploy] registry: not registered (registry unreachable" in out and out.count("[tracking]") == 1
    record_baseline(str(record_uri), str(trained_package), {"roc_auc": 0.7}, "sha256:a", "run-a", "",
                    Deployment.model_validate(first.metadata["deployment"]),
                    RegistryState.model_validate(first.metadata["registry"]))  # fmt: skip

    document["tracking"] = {"uri": mlflow_server.env["MLFLOW_TRACKING_URI"], "experiment": "reconcile"}
    second = deploy("run-b", other_package)
    assert second.metadata["version"] == 2 and second.metadata["registry"]["aliases_moved"] is True
    out = capsys.readouterr().out
    assert re.search(r"registry: reconciled churn-reconcile version \d+ \(served as Triton version 1", out), out
    assert "View run" not in out  # MLflow's own links stay out of the step's log
    client = MlflowClient(mlflow_server.env["MLFLOW_TRACKING_URI"])
    champion = client.get_model_version_by_alias("churn-reconcile", CHAMPION)
    previous = client.get_model_version_by_alias("churn-reconcile", PREVIOUS)
    assert champion.tags["kfp.run_id"] == "run-b" and champion.tags["triton.version"] == "2"
    assert previous.tags["kfp.run_id"] == "run-a" and previous.tags["triton.version"] == "1"
