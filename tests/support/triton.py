"""Triton test support: a small ONNX model with the project's serving signature, built with onnx.helper, and a
running local Triton on a repository (the Triton venv is created once, at the repository's ``.venv-triton``).

The signature: ``numeric`` FP32 [N, n_numeric] (NaN = missing) and ``categorical`` STRING [N, n_categorical]
("" = missing), either optional; outputs ``probabilities`` FP32 [N, n_classes] and ``label`` [N, 1] (or [N]).
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from kfp_mlops import triton_local
from kfp_mlops.processes import free_ports


def signature_model(
    path: str | Path,
    *,
    numeric_means: Sequence[float] = (1.0, -2.0, 0.5),
    categories: Sequence[Sequence[str]] = (("red", "green", "blue"), ("s", "m")),
    classes: Sequence[str] | Sequence[int] = ("no", "yes", "maybe"),
    label_shape: Literal["column", "vector"] = "column",
    seed: int = 0,
) -> Path:
    """Write a signature-conformant model: Imputer on ``numeric`` (NaN -> the mean), one LabelEncoder per
    ``categorical`` column (unknown and "" -> 0), a linear layer, Softmax, and ``label`` (the argmax mapped to
    ``classes``: STRING for strings, INT64 for integers; [N, 1] or, with label_shape="vector", [N])."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inputs, features, initializers = [], [], [], []
    if numeric_means:
        inputs.append(helper.make_tensor_value_info("numeric", TensorProto.FLOAT, ["N", len(numeric_means)]))
        nodes.append(helper.make_node("Imputer", ["numeric"], ["imputed"], domain="ai.onnx.ml",
                                      imputed_value_floats=[float(m) for m in numeric_means],
                                      replaced_value_float=float("nan")))  # fmt: skip
        features.append("imputed")
    if categories:
        inputs.append(helper.make_tensor_value_info("categorical", TensorProto.STRING, ["N", len(categories)]))
        codes = []
        for index, values in enumerate(categories):
            initializers.append(numpy_helper.from_array(np.array([index], dtype=np.int64), f"column_{index}"))
            nodes.append(helper.make_node("Gather", ["categorical", f"column_{index}"], [f"raw_{index}"], axis=1))
            nodes.append(helper.make_node("LabelEncoder", [f"raw_{index}"], [f"code_{index}"], domain="ai.onnx.ml",
                                          keys_strings=list(values), values_int64s=list(range(1, len(values) + 1)),
                                          default_int64=0))  # fmt: skip
            codes.append(f"code_{index}")
        nodes.append(helper.make_node("Concat", codes, ["codes"], axis=1))
        nodes.append(helper.make_node("Cast", ["codes"], ["codes_float"], to=TensorProto.FLOAT))
        features.append("codes_float")
    if not features:
        raise ValueError("the model needs numeric or categorical inputs")
    width = len(numeric_means) + len(categories)
    rng = np.random.default_rng(seed)
    initializers.append(numpy_helper.from_array(rng.normal(size=(width, len(classes))).astype(np.float32), "weight"))
    initializers.append(numpy_helper.from_array(rng.normal(size=len(classes)).astype(np.float32), "bias"))
    nodes.append(helper.make_node("Concat", features, ["features"], axis=1))
    nodes.append(helper.make_node("Gemm", ["features", "weight", "bias"], ["logits"]))
    nodes.append(helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1))
    keepdims = int(label_shape == "column")
    label_dims: list[Any] = ["N", 1] if keepdims else ["N"]
    nodes.append(helper.make_node("ArgMax", ["probabilities"], ["index"], axis=1, keepdims=keepdims))
    if all(isinstance(name, str) for name in classes):
        nodes.append(helper.make_node("LabelEncoder", ["index"], ["label"], domain="ai.onnx.ml",
                                      keys_int64s=list(range(len(classes))), values_strings=list(classes),
                                      default_string=""))  # fmt: skip
        label = helper.make_tensor_value_info("label", TensorProto.STRING, label_dims)
    else:
        initializers.append(numpy_helper.from_array(np.array(classes, dtype=np.int64), "classes"))
        nodes.append(helper.make_node("Gather", ["classes", "index"], ["label"], axis=0))
        label = helper.make_tensor_value_info("label", TensorProto.INT64, label_dims)
    outputs = [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", len(classes)]), label]
    graph = helper.make_graph(nodes, "signature_model", inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def sample_inputs(rows: int = 6, seed: int = 1) -> dict[str, np.ndarray]:
    """Inputs for the default signature_model with NaN, "" and unknown categories among known values."""
    rng = np.random.default_rng(seed)
    numeric = rng.normal(size=(rows, 3)).astype(np.float32)
    numeric.ravel()[::4] = np.nan  # missing values in every row and column
    pool = np.array(["red", "green", "blue", "", "purple", "s", "m", "xl", "grün"], dtype=object)
    categorical = pool[rng.integers(0, len(pool), size=(rows, 2))]
    fixed = [["", "m"], ["purple", ""], ["blue", "xl"], ["grün", "s"]]  # "" and unknown values in both columns
    categorical[: min(rows, len(fixed))] = fixed[:rows]
    return {"numeric": numeric, "categorical": categorical}


def onnxruntime_outputs(path: str | Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The reference: onnxruntime in this process on the same inputs."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(names, inputs), strict=True))


@contextlib.contextmanager
def running_triton(repository: str | Path, **options: Any) -> Iterator[triton_local.TritonServer]:
    """A real Triton on free ports serving ``repository`` (a directory or s3://...; explicit model control by
    default), stopped on exit. The Triton venv is created first when missing. ``options`` go to
    ``triton_local.serve`` (load=[...], env=..., state_dir=...)."""
    triton_local.ensure_venv()
    with triton_local.serve(repository, **options) as server:
        yield server


@contextlib.contextmanager
def running_pod(
    repository: str | Path, *, address: str, grpc_port: int, state_dir: str | Path, timeout: float = 120.0
) -> Iterator[str]:
    """A Triton started as the cluster's pods are (explicit model control, ``--load-model=*``,
    ``--exit-on-error=false``, ``--strict-readiness=false``), bound to another loopback ``address`` (e.g.
    127.0.0.2) so that it can take the same gRPC port as a first server: two "pods" behind one port. Yields its
    gRPC ``host:port``; stopped on exit; its pid is in ``<state_dir>/tritonserver.pid``. (``triton_local.up`` binds
    127.0.0.1 only, hence its internals here.)"""
    import os
    import time

    import tritonclient.grpc as grpc
    from tritonclient.utils import InferenceServerException

    install = triton_local.ensure_venv()
    http_port, metrics_port = [port for port in free_ports(3) if port != grpc_port][:2]
    state = Path(state_dir)
    state.mkdir(parents=True, exist_ok=True)
    command = [
        str(install.tritonserver), f"--model-repository={triton_local.triton_repository(str(repository), os.environ)}",
        f"--backend-directory={triton_local.backends_dir(install, state)}", "--model-control-mode=explicit",
        "--load-model=*", "--exit-on-error=false", "--strict-readiness=false",
        f"--http-address={address}", f"--http-port={http_port}", f"--grpc-address={address}",
        f"--grpc-port={grpc_port}", f"--metrics-address={address}", f"--metrics-port={metrics_port}",
        "--allow-gpu-metrics=false", "--exit-timeout-secs=5",
    ]  # fmt: skip
    log = state / "tritonserver.log"
    process = triton_local.spawn(command, log, triton_local.server_env(install, os.environ))
    (state / "tritonserver.pid").write_text(f"{process.pid}\n")
    endpoint = f"{address}:{grpc_port}"
    try:
        client = grpc.InferenceServerClient(endpoint)
        deadline = time.monotonic() + timeout
        while True:
            try:
                if client.is_server_ready():
                    break
            except InferenceServerException:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"tritonserver at {endpoint} did not start; its log {log}:\n{log.read_text()[-3000:]}"
                )
            time.sleep(0.2)
        client.close()
        yield endpoint
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGCONT)  # a test may have frozen it
        triton_local.stop_process(process.pid, timeout=10)
