"""Serving throughput and latency: the project's local serving path (Triton's python backend running the deploy
step's ``model.py`` with dynamic batching) against a hand-written FastAPI model server (the anchor), on the same int8
MLP, driven by the same load generator (wrk, 1 thread, one keep-alive connection per concurrent client, JSON bodies
of the same row) at concurrency 1, 8 and 32. Run: ``python benchmarks/serve.py [--seconds 4] [--rounds 3]``
(needs ``wrk``: ``apt-get install -y wrk``; the Triton venv is created when missing).

Both servers run side by side and their runs alternate (FastAPI, Triton, Triton, FastAPI, ...), so that load from
other processes on the machine falls on both alike; each figure is the mean over the rounds. A bare in-process
onnxruntime session is the ceiling; a Triton model whose ``model.py`` returns constants is the server's floor (HTTP,
scheduling, the python backend's IPC: what is left when the model costs nothing).

The model: 64 float inputs -> 512 -> 512 -> 2 (ReLU, softmax; outputs ``probabilities`` and ``label``), exported
from torch (``dynamo=False``) and quantized with onnxruntime's ``quantize_dynamic`` (QInt8).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from kfp_mlops import triton_local
from kfp_mlops.processes import free_port, running, wait_until

CONCURRENCY = (1, 8, 32)
FEATURES = 64
# The serving config under test: no queue delay (a lone request runs at once; under load, requests queue while
# the instance is busy and the next execute takes them all), one instance and one onnxruntime thread (the server,
# its python-backend stub and the clients share the cores).
TRITON_MODEL = {
    "max_batch_size": 64,
    "dynamic_batching": {"max_queue_delay_microseconds": 0},
    "instance_group": [{"kind": "KIND_CPU", "count": 1}],
    "parameters": {"intra_op_num_threads": "1"},
}

FASTAPI_APP = '''\
"""A typical hand-written model server: one onnxruntime session, one request per call, JSON in and out."""
import os

import numpy as np
import onnxruntime
from fastapi import FastAPI
from pydantic import BaseModel

app = FastAPI()
session = onnxruntime.InferenceSession(os.environ["MODEL_PATH"], providers=["CPUExecutionProvider"])


class PredictRequest(BaseModel):
    numeric: list[list[float]]


@app.post("/predict")
def predict(request: PredictRequest) -> dict:
    probabilities, label = session.run(["probabilities", "label"], {"numeric": np.asarray(request.numeric, np.float32)})
    return {"probabilities": probabilities.tolist(), "label": label.tolist()}
'''

FLOOR_MODEL = '''\
"""Triton's floor: answers every request with constants of the model's output shapes, without running a model."""
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.outputs = [np.zeros((1, 2), np.float32), np.zeros((1, 1), np.int64)]

    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("probabilities", self.outputs[0]),
                                            pb_utils.Tensor("label", self.outputs[1])]) for _ in requests]
'''

# wrk: POST the body; when done, print requests, errors, seconds and latency percentiles (microseconds) as JSON.
WRK_SCRIPT = """\
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = io.open("{body}", "rb"):read()
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('{{"requests": %d, "errors": %d, "seconds": %f, "p50": %d, "p99": %d}}\\n',
    summary.requests, e.status + e.connect + e.read + e.write + e.timeout, summary.duration / 1e6,
    latency:percentile(50), latency:percentile(99)))
end
"""


def build_model(directory: Path) -> Path:
    """The int8 MLP: ``numeric`` [N, 64] -> ``probabilities`` [N, 2] and ``label`` [N, 1] (INT64)."""
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    class MLP(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = torch.nn.Sequential(
                torch.nn.Linear(FEATURES, 512), torch.nn.ReLU(), torch.nn.Linear(512, 512), torch.nn.ReLU(),
                torch.nn.Linear(512, 2),
            )  # fmt: skip

        def forward(self, numeric: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            probabilities = torch.softmax(self.layers(numeric), dim=1)
            return probabilities, torch.argmax(probabilities, dim=1, keepdim=True)

    torch.manual_seed(0)
    fp32, int8 = directory / "mlp-fp32.onnx", directory / "mlp-int8.onnx"
    axes = {name: {0: "batch"} for name in ("numeric", "probabilities", "label")}
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation notice
        warnings.simplefilter("ignore")
        torch.onnx.export(MLP().eval(), (torch.randn(1, FEATURES),), str(fp32), input_names=["numeric"],
                          output_names=["probabilities", "label"], dynamic_axes=axes, dynamo=False)  # fmt: skip
    logging.disable(logging.WARNING)  # quantize_dynamic's advice to pre-process the model first
    try:
        quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8)
    finally:
        logging.disable(logging.NOTSET)
    return int8


def ceiling(model: Path, seconds: float) -> tuple[float, float]:
    """A bare onnxruntime session in this process (1 thread, as model.py): batch-1 calls/s; rows/s at batch 32."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    rates = []
    for batch in (1, 32):
        feed = {"numeric": np.random.default_rng(0).normal(size=(batch, FEATURES)).astype(np.float32)}
        for _ in range(50):
            session.run(None, feed)
        calls, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            session.run(None, feed)
            calls += 1
        rates.append(calls * batch / (time.perf_counter() - start))
    return rates[0], rates[1]


def wrk(url: str, body: Path, concurrency: int, seconds: float) -> dict[str, float]:
    """One wrk run (1 thread, ``concurrency`` connections) after a 1 s warm-up run: req/s, p50 and p99 in ms."""
    script = body.with_suffix(".lua")
    script.write_text(WRK_SCRIPT.format(body=body))
    command = ["wrk", "-t1", f"-c{concurrency}", "--timeout", "10s", "-s", str(script), url]
    subprocess.run([*command[:1], "-d1s", *command[1:]], check=True, capture_output=True)
    output = subprocess.run([*command[:1], f"-d{seconds:.0f}s", *command[1:]], check=True, capture_output=True,
                            text=True).stdout  # fmt: skip
    result = json.loads(re.findall(r"^\{.*\}$", output, re.MULTILINE)[-1])
    if result["errors"]:
        raise SystemExit(f"wrk saw {result['errors']} errors against {url}:\n{output}")
    return {"rps": result["requests"] / result["seconds"], "p50": result["p50"] / 1e3, "p99": result["p99"] / 1e3}


def check(url: str, body: Path, expected: np.ndarray) -> None:
    """One request through the server: its probabilities equal onnxruntime's."""
    request = urllib.request.Request(url, data=body.read_bytes(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        answer = json.loads(response.read())
    if "outputs" in answer:  # KServe v2
        answer = {output["name"]: output["data"] for output in answer["outputs"]}
    if not np.allclose(np.ravel(answer["probabilities"]), np.ravel(expected), rtol=0, atol=1e-6):
        raise SystemExit(f"{url} answered {answer['probabilities']}, onnxruntime {expected.tolist()}")


@contextlib.contextmanager
def fastapi_server(model: Path, work: Path) -> Iterator[str]:
    """uvicorn (1 process) serving FASTAPI_APP; yields the /predict URL."""
    (work / "fastapi_app.py").write_text(FASTAPI_APP)
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "fastapi_app:app", "--app-dir", str(work), "--host", "127.0.0.1",
               "--port", str(port), "--log-level", "warning", "--no-access-log"]  # fmt: skip
    log = work / "fastapi.log"
    with running(command, log, env={**os.environ, "MODEL_PATH": str(model)}) as process:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: urllib.request.urlopen(f"{url}/docs", timeout=2), "uvicorn", process, log, 60)
        yield f"{url}/predict"


@contextlib.contextmanager
def triton_server(model: Path, work: Path) -> Iterator[dict[str, str]]:
    """The local Triton serving the model with the deploy step's model.py (``mlp``) and the floor model (``floor``);
    yields their KServe v2 infer URLs."""
    triton_local.ensure_venv()
    repository = work / "triton-models"
    triton_local.add_onnx_model(repository, "mlp", model, **TRITON_MODEL)
    triton_local.add_onnx_model(repository, "floor", model, **TRITON_MODEL)
    (repository / "floor" / "1" / "model.py").write_text(FLOOR_MODEL)
    with triton_local.serve(repository, state_dir=work / "triton", load=["mlp", "floor"]) as server:
        yield {name: f"http://{server.http_url}/v2/models/{name}/infer" for name in ("mlp", "floor")}


def mean(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.fmean(run[key] for run in runs) for key in runs[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=4, help="measured seconds per run (after a 1 s warm-up)")
    parser.add_argument("--rounds", type=int, default=3, help="runs per server and concurrency, alternating")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is missing: apt-get install -y wrk")
    import onnxruntime

    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        work = Path(tmp)
        model = build_model(work)
        row = np.random.default_rng(1).normal(size=FEATURES).round(6)
        expected = onnxruntime.InferenceSession(str(model)).run(["probabilities"], {"numeric": row[None].astype("f4")})
        values = row.tolist()
        bodies = {
            "fastapi": {"numeric": [values]},
            "triton": {"inputs": [{"name": "numeric", "shape": [1, FEATURES], "datatype": "FP32", "data": values}]},
        }
        for name, body in bodies.items():
            (work / f"{name}.json").write_text(json.dumps(body))
        one, batched = ceiling(model, seconds=2)

        results: dict[tuple[str, int], list[dict[str, float]]] = {}
        with fastapi_server(model, work) as fastapi_url, triton_server(model, work) as triton_urls:
            targets = {
                "fastapi": (fastapi_url, work / "fastapi.json"),
                "triton": (triton_urls["mlp"], work / "triton.json"),
                "floor": (triton_urls["floor"], work / "triton.json"),
            }
            for name, (url, body) in targets.items():
                check(url, body, expected[0] if name != "floor" else np.zeros((1, 2)))
            for concurrency in CONCURRENCY:
                for round_ in range(args.rounds):
                    order = ["fastapi", "triton"] if round_ % 2 == 0 else ["triton", "fastapi"]
                    order += ["floor"] if concurrency == 1 else []
                    for name in order:
                        url, body = targets[name]
                        results.setdefault((name, concurrency), []).append(wrk(url, body, concurrency, args.seconds))

        sizes = {name: (work / f"{name}.json").stat().st_size for name in bodies}
        print(f"int8 MLP {FEATURES}-512-512-2; wrk 1 thread, {args.rounds} alternating runs of {args.seconds:.0f} s "
              f"per server and concurrency; bodies: FastAPI JSON {sizes['fastapi']} B, Triton KServe v2 JSON "
              f"{sizes['triton']} B")  # fmt: skip
        config = TRITON_MODEL["dynamic_batching"] | {"instances": 1, "onnxruntime threads": 1}
        print(f"Triton: python backend, shared/python_backend/model.py, dynamic batching {config}")
        print(f"ceiling, bare onnxruntime session in this process (1 thread): batch 1 {one:,.0f} calls/s, "
              f"batch 32 {batched:,.0f} rows/s")  # fmt: skip
        print(f"{'clients':>7} | {'FastAPI req/s':>13} {'p50 ms':>6} {'p99 ms':>6} | {'Triton req/s':>12} "
              f"{'p50 ms':>6} {'p99 ms':>6} | Triton/FastAPI: req/s  p50 time  p99 time")  # fmt: skip
        for concurrency in CONCURRENCY:
            f, t = mean(results["fastapi", concurrency]), mean(results["triton", concurrency])
            print(f"{concurrency:>7} | {f['rps']:>13,.0f} {f['p50']:>6.2f} {f['p99']:>6.2f} | {t['rps']:>12,.0f} "
                  f"{t['p50']:>6.2f} {t['p99']:>6.2f} | {t['rps'] / f['rps']:>20.2f}x {t['p50'] / f['p50']:>8.2f}x "
                  f"{t['p99'] / f['p99']:>8.2f}x")  # fmt: skip
        floor = mean(results["floor", 1])
        print(f"Triton floor at 1 client (model.py returns constants): {floor['rps']:,.0f} req/s, "
              f"p50 {floor['p50']:.2f} ms, p99 {floor['p99']:.2f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
