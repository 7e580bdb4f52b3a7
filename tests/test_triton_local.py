"""The local Triton (2.51, python backend running model.py with onnxruntime) on real servers: inference over HTTP and
gRPC equal to onnxruntime in-process, batching, reloads while clients send requests, an S3 repository, up/status/down
and the errors a user sees. Nothing is mocked."""

from __future__ import annotations

import os
import shutil
import socket
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from support.triton import onnxruntime_outputs, running_triton, sample_inputs, signature_model
from support.waiting import wait_for

from kfp_mlops import triton_local
from kfp_mlops.cli import main
from kfp_mlops.components.shared import layout, storage
from kfp_mlops.processes import free_port, free_ports, port_free

pytestmark = pytest.mark.servers


@pytest.fixture(scope="session")
def triton_venv() -> triton_local.TritonInstall:
    """The Triton venv at the repository's .venv-triton, created once (about 60 MB of wheels)."""
    return triton_local.ensure_venv()


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("onnx")
    return {
        "churn": signature_model(directory / "churn.onnx"),
        "churn_int": signature_model(directory / "churn_int.onnx", classes=(0, 7), label_shape="vector", seed=3),
        "v1": signature_model(directory / "v1.onnx", seed=11),
        "v2": signature_model(directory / "v2.onnx", seed=12),
    }


@pytest.fixture(scope="module")
def repository(tmp_path_factory, models) -> Path:
    root = tmp_path_factory.mktemp("triton-models")
    triton_local.add_onnx_model(root, "churn", models["churn"], dynamic_batching={})
    triton_local.add_onnx_model(root, "churn_int", models["churn_int"], max_batch_size=8)
    # A 50 ms queue delay makes the dynamic batcher gather concurrent requests into one execute call.
    triton_local.add_onnx_model(
        root, "batched", models["churn"], dynamic_batching={"max_queue_delay_microseconds": 50_000}
    )
    triton_local.add_onnx_model(root, "reloaded", models["v1"], dynamic_batching={})
    return root


@pytest.fixture(scope="module")
def server(triton_venv, repository, tmp_path_factory):
    with running_triton(repository, state_dir=tmp_path_factory.mktemp("triton-state")) as server:
        yield server


def http_inputs(inputs: dict[str, np.ndarray]):
    import tritonclient.http as http

    return [_input(http.InferInput, name, array) for name, array in inputs.items()]


def grpc_inputs(inputs: dict[str, np.ndarray]):
    import tritonclient.grpc as grpc

    return [_input(grpc.InferInput, name, array) for name, array in inputs.items()]


def _input(kind, name: str, array: np.ndarray):
    tensor = kind(name, list(array.shape), "BYTES" if array.dtype == object else "FP32")
    tensor.set_data_from_numpy(array)
    return tensor


def assert_same(result, expected: dict[str, np.ndarray]) -> None:
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected["probabilities"], rtol=0, atol=1e-6)
    label = result.as_numpy("label")
    want = expected["label"].reshape(len(expected["probabilities"]), 1)
    if want.dtype == object:
        label = np.vectorize(bytes.decode, otypes=[object])(label)
    np.testing.assert_array_equal(label, want)


def test_serves_the_onnx_model_over_http_and_grpc_as_onnxruntime_does(server, models):
    import tritonclient.grpc as grpc
    import tritonclient.http as http

    inputs = sample_inputs(rows=6)
    assert {"", "purple", "xl"} <= set(inputs["categorical"].ravel()) and np.isnan(inputs["numeric"]).any()
    http_client, grpc_client = http.InferenceServerClient(server.http_url), grpc.InferenceServerClient(server.grpc_url)
    try:
        for name in ("churn", "churn_int"):
            grpc_client.load_model(name)
            expected = onnxruntime_outputs(models[name], inputs)
            assert_same(http_client.infer(name, http_inputs(inputs)), expected)
            assert_same(grpc_client.infer(name, grpc_inputs(inputs)), expected)
        metadata = http_client.get_model_metadata("churn_int")
        assert [(o["name"], o["datatype"], o["shape"]) for o in metadata["outputs"]] == [
            ("probabilities", "FP32", [-1, 2]),
            ("label", "INT64", [-1, 1]),
        ]
    finally:
        http_client.close()
        grpc_client.close()


def test_concurrent_requests_are_batched_and_split_back(server, models):
    import tritonclient.grpc as grpc

    client = grpc.InferenceServerClient(server.grpc_url)
    try:
        client.load_model("batched")
        requests = [sample_inputs(rows=1 + index % 4, seed=index) for index in range(16)]
        results: dict[int, object] = {}
        done = threading.Semaphore(0)

        def keep(index):
            def callback(result, error):
                results[index] = error or result
                done.release()

            return callback

        for index, inputs in enumerate(requests):
            client.async_infer("batched", grpc_inputs(inputs), keep(index))
        for _ in requests:
            assert done.acquire(timeout=60)
        for index, inputs in enumerate(requests):
            assert_same(results[index], onnxruntime_outputs(models["churn"], inputs))
        stats = client.get_inference_statistics("batched", as_json=True)["model_stats"][0]
        assert int(stats["inference_count"]) == sum(len(inputs["numeric"]) for inputs in requests)
        assert int(stats["execution_count"]) < len(requests)  # several requests per execute
    finally:
        client.close()


def test_a_bad_request_fails_alone_in_its_batch(server, models):
    import tritonclient.grpc as grpc
    from tritonclient.utils import InferenceServerException

    client = grpc.InferenceServerClient(server.grpc_url)
    try:
        client.load_model("batched")
        good = sample_inputs(rows=2)
        bad = {"numeric": good["numeric"], "categorical": np.array([[b"\xff", b"s"], [b"m", b"s"]], dtype=object)}
        results: dict[str, object] = {}
        done = threading.Semaphore(0)
        for name, inputs in (("good", good), ("bad", bad), ("good2", good)):

            def callback(result, error, name=name):
                results[name] = error or result
                done.release()

            client.async_infer("batched", grpc_inputs(inputs), callback)
        for _ in range(3):
            assert done.acquire(timeout=60)
        assert isinstance(results["bad"], InferenceServerException)
        assert "UnicodeDecodeError" in str(results["bad"])
        expected = onnxruntime_outputs(models["churn"], good)
        assert_same(results["good"], expected)
        assert_same(results["good2"], expected)
    finally:
        client.close()


def _slow_model_py(seconds: float) -> str:
    """model.py whose initialize first sleeps: a new version that takes long to load (this sleep is the behaviour
    under test, inside Triton's model process)."""
    slow = (
        "\n_initialize = TritonPythonModel.initialize\n\n\ndef _slow_initialize(self, args):\n"
        f"    import time\n\n    time.sleep({seconds})\n    _initialize(self, args)\n\n\n"
        "TritonPythonModel.initialize = _slow_initialize\n"
    )
    return layout.python_backend_model().read_text() + slow


def test_reload_serves_the_old_version_until_the_new_one_is_ready(server, repository, models):
    """While an HTTP client sends unversioned requests: loading version 2 (slow to load) keeps version 1 answering
    until version 2 is ready, then only version 2 answers; a broken version 3 fails to load and version 2 goes on
    serving. No request fails or stalls. (Model control goes over gRPC: loads sent over HTTP were seen to stall
    concurrent HTTP inference requests for the whole load, the failed ones included.)"""
    import tritonclient.grpc as grpc
    import tritonclient.http as http
    from tritonclient.utils import InferenceServerException

    inputs = sample_inputs(rows=3)
    reference = {version: onnxruntime_outputs(models[f"v{version}"], inputs)["probabilities"] for version in (1, 2)}
    control = grpc.InferenceServerClient(server.grpc_url)
    control.load_model("reloaded")
    answers: list[tuple[float, float, object]] = []  # (sent, answered, version or error)
    stop = threading.Event()

    def send() -> None:
        client = http.InferenceServerClient(server.http_url)
        request = http_inputs(inputs)
        try:
            while not stop.is_set():
                sent = time.monotonic()
                try:
                    probabilities = client.infer("reloaded", request).as_numpy("probabilities")
                    which = [v for v, p in reference.items() if np.allclose(probabilities, p, rtol=0, atol=1e-6)]
                    answers.append((sent, time.monotonic(), which[0] if which else "unknown output"))
                except InferenceServerException as exc:
                    answers.append((sent, time.monotonic(), str(exc)))
        finally:
            client.close()

    def sent_since(moment: float) -> int:
        return sum(sent >= moment for sent, _, _ in list(answers))

    sender = threading.Thread(target=send)
    sender.start()
    try:
        wait_for(lambda: sent_since(0) > 10, "version 1 answering before version 2 loads")
        version = repository / "reloaded" / "2"
        version.mkdir()
        shutil.copyfile(models["v2"], version / "model.onnx")
        (version / "model.py").write_text(_slow_model_py(2.0))
        started = time.monotonic()
        control.load_model("reloaded")
        loaded = time.monotonic()
        wait_for(lambda: sent_since(loaded) > 10, "answers once version 2 is loaded")
        broken = repository / "reloaded" / "3"
        broken.mkdir()
        (broken / "model.onnx").write_bytes(b"not an onnx file")
        shutil.copyfile(layout.python_backend_model(), broken / "model.py")
        with pytest.raises(InferenceServerException, match="version 3 is at UNAVAILABLE state"):
            control.load_model("reloaded")
        failed = time.monotonic()
        wait_for(lambda: sent_since(failed) > 10, "answers after version 3 failed to load")
    finally:
        stop.set()
        sender.join()
        index = control.get_model_repository_index(as_json=True)["models"]
        control.close()

    def versions(first: float, last: float) -> Counter:
        return Counter(answer for sent, _, answer in answers if first <= sent < last)

    order = [answer for _, _, answer in answers]
    assert set(order) <= {1, 2}, [answer for answer in order if answer not in (1, 2)][:3]
    assert order == sorted(order), "a version 1 answer after a version 2 answer"
    assert set(versions(0, started)) == {1}
    during = versions(started, loaded)
    assert set(during) <= {1, 2} and during[1] > 10, f"while version 2 loaded for {loaded - started:.1f}s: {during}"
    assert set(versions(loaded, float("inf"))) == {2}
    assert max(answered - sent for sent, answered, _ in answers if sent >= started) < 1.0
    assert versions(failed, float("inf"))[2] > 10
    # this model's versions only: a model of the shared repository no test loaded yet is listed without a version
    states = {entry["version"]: entry["state"] for entry in index if entry["name"] == "reloaded"}
    assert states["2"] == "READY" and states["3"] == "UNAVAILABLE" and states["1"] in ("UNAVAILABLE", "UNLOADING")


def test_serves_from_an_s3_repository(triton_venv, s3, repository, models, tmp_path):
    import tritonclient.http as http

    prefix = "triton/models"
    for path in (repository / "churn").rglob("*"):
        if path.is_file():
            storage.upload_file(path, s3.uri(f"{prefix}/{path.relative_to(repository)}"))
    inputs = sample_inputs(rows=4)
    with running_triton(s3.uri(prefix), env=s3.env, load=["churn"], state_dir=tmp_path / "state") as server:
        client = http.InferenceServerClient(server.http_url)
        try:
            assert_same(client.infer("churn", http_inputs(inputs)), onnxruntime_outputs(models["churn"], inputs))
        finally:
            client.close()
        argv = Path(f"/proc/{server.pid}/cmdline").read_bytes().decode()
        assert f"--model-repository=s3://{s3.env['AWS_ENDPOINT_URL']}/{s3.bucket}/{prefix}" in argv
        secret = s3.env["AWS_SECRET_ACCESS_KEY"]
        assert secret not in argv and secret not in Path(server.log).read_text()
        assert secret not in (tmp_path / "state" / "server.json").read_text()


def cli(*argv: str) -> int:
    """``kfp-mlops`` through the command line's entry point (its exit codes and error messages)."""
    return main(list(argv))


def test_up_status_down_through_the_command_line(triton_venv, repository, tmp_path, capsys):
    import tritonclient.grpc as grpc

    state = str(tmp_path / "state")
    ports = [str(port) for port in free_ports(3)]
    flags = ["--http-port", ports[0], "--grpc-port", ports[1], "--metrics-port", ports[2], "--state-dir", state]
    assert cli("local", "status", "--state-dir", state) == 1
    assert "Triton: not running" in capsys.readouterr().out
    try:
        assert cli("local", "up", "--model-repository", str(repository), *flags) == 0
        assert f"http 127.0.0.1:{ports[0]}  grpc 127.0.0.1:{ports[1]}" in capsys.readouterr().out
        pid = int((tmp_path / "state" / "tritonserver.pid").read_text())
        assert cli("local", "up", "--model-repository", str(repository), *flags) == 0  # already up: the same server
        assert triton_local.status(state).server.pid == pid
        client = grpc.InferenceServerClient(f"127.0.0.1:{ports[1]}")
        client.load_model("churn")
        client.close()
        assert cli("local", "status", "--state-dir", state) == 0
        out = capsys.readouterr().out
        assert f"Triton: running (pid {pid})" in out and f"repository {repository} (explicit)" in out
        assert "model churn version 1: READY" in out
        result = triton_local.status(state)
        assert result.ready and {"name": "churn", "version": "1", "state": "READY"} in result.models
    finally:
        assert cli("local", "down", "--state-dir", state) == 0
    assert "Triton: stopped" in capsys.readouterr().out
    assert not Path(f"/proc/{pid}").exists()
    assert triton_local.status(state).running is False
    assert triton_local.down(state) is False


def test_poll_mode_loads_every_model_at_start(triton_venv, models, tmp_path):
    root = tmp_path / "models"
    triton_local.add_onnx_model(root, "churn", models["churn"])
    with running_triton(root, model_control_mode="poll", poll_seconds=1, state_dir=tmp_path / "state") as server:
        assert triton_local.status(server.state_dir).models == [{"name": "churn", "version": "1", "state": "READY"}]


def test_up_raise_error_when_the_server_exits(triton_venv, models, tmp_path):
    root = tmp_path / "models"
    triton_local.add_onnx_model(root, "broken", models["churn"])
    (root / "broken" / "1" / "model.onnx").write_bytes(b"not an onnx file")
    with pytest.raises(
        triton_local.TritonError,
        match=r"(?s)tritonserver exited with 1; from its log .*failed to load 'broken' version 1: .*INVALID_PROTOBUF",
    ):
        with running_triton(root, model_control_mode="poll", poll_seconds=1, state_dir=tmp_path / "state"):
            pass
    assert not (tmp_path / "state" / "server.json").exists()


def test_up_raise_error_when_the_triton_venv_is_missing(tmp_path, capsys):
    with pytest.raises(
        triton_local.TritonError,
        match=r"the Triton venv is missing .*create it with `kfp-mlops local venv --venv .*no-venv`",
    ):
        triton_local.up(tmp_path / "models", venv=tmp_path / "no-venv", state_dir=tmp_path / "state")
    assert cli("local", "up", "--venv", str(tmp_path / "no-venv"), "--state-dir", str(tmp_path / "state")) == 1
    assert "kfp-mlops local up: error: the Triton venv is missing" in capsys.readouterr().err


def test_up_raise_error_when_the_triton_venv_has_numpy_2(tmp_path):
    venv = tmp_path / "venv"
    site = venv / "lib" / "python3.11" / "site-packages"
    (site / "numpy-2.1.0.dist-info").mkdir(parents=True)
    (venv / "bin").mkdir()
    (venv / "bin" / "python").symlink_to(sys.executable)
    (venv / "kfp-mlops-triton.json").write_text("{}")
    with pytest.raises(triton_local.TritonError, match="has numpy 2, which makes the python backend return empty"):
        triton_local.up(tmp_path / "models", venv=venv, state_dir=tmp_path / "state")


def test_up_raise_error_when_a_port_is_in_use(triton_venv, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(triton_local.TritonError, match=f"port {port} .grpc. is in use"):
            triton_local.up(tmp_path / "models", http_port=free_port(), grpc_port=port, metrics_port=free_port(),
                            state_dir=tmp_path / "state")  # fmt: skip


def _plain_bind_fails(port: int) -> bool:
    """The old probe: a bind without SO_REUSEADDR, refused while connections of the port sit in TIME_WAIT."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def test_the_port_probe_reports_time_wait_as_free_and_a_listener_as_busy():
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert not port_free(port)
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = listener.accept()
        accepted.close()  # the server side closes first: its end of the connection goes to TIME_WAIT
        client.recv(1)  # the server's FIN
        client.close()
    assert _plain_bind_fails(port)  # the connection sits in TIME_WAIT on the port
    assert port_free(port)


def test_up_again_at_once_after_down_on_the_same_ports(triton_venv, repository, tmp_path):
    """``local up`` right after ``local down`` (``make demo`` twice): the stopped server's connections sit in
    TIME_WAIT on its ports, and the new server starts all the same."""
    import tritonclient.grpc as grpc
    import tritonclient.http as http

    ports = dict(zip(("http_port", "grpc_port", "metrics_port"), free_ports(3), strict=True))
    state, inputs = tmp_path / "state", sample_inputs(rows=4)
    server = triton_local.up(repository, state_dir=state, load=["churn"], **ports)
    http_client, grpc_client = http.InferenceServerClient(server.http_url), grpc.InferenceServerClient(server.grpc_url)
    try:
        http_client.infer("churn", http_inputs(inputs))
        grpc_client.infer("churn", grpc_inputs(inputs))
        assert triton_local.down(state)  # with the clients' connections open: the server closes them first
    finally:
        http_client.close()
        grpc_client.close()
    assert any(_plain_bind_fails(port) for port in ports.values())  # TIME_WAIT left behind
    try:
        again = triton_local.up(repository, state_dir=state, load=["churn"], **ports)
        assert (again.http_port, again.grpc_port, again.metrics_port) == tuple(ports.values())
        client = grpc.InferenceServerClient(again.grpc_url)
        try:
            assert client.is_model_ready("churn")
            client.infer("churn", grpc_inputs(inputs))
        finally:
            client.close()
    finally:
        triton_local.down(state)


def test_ensure_venv_is_a_no_op_when_the_venv_is_there(triton_venv):
    started = time.perf_counter()
    assert triton_local.ensure_venv() == triton_venv
    assert time.perf_counter() - started < 1.0
    assert (triton_venv.venv / ".gitignore").read_text() == "*\n"
    assert os.access(triton_venv.stub, os.X_OK)
