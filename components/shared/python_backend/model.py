"""Triton python-backend model for local serving: runs the version directory's ONNX file with onnxruntime.

The cluster serves the same ``model.onnx`` with ``platform: onnxruntime_onnx``; this file stands in for that
backend where only the python backend exists. Everything comes from the ONNX session and the model config:
inputs are fed to onnxruntime by name (BYTES decoded as UTF-8 for string tensors), every output is returned.
Config parameters: ``onnx_file`` (default ``model.onnx``), ``intra_op_num_threads`` (default 1: a batch-1 MLP
gains nothing from more, and pool threads compete with the server's), ``inter_op_num_threads`` (default 1),
``allow_spinning`` (default 0: idle pool threads sleep instead of spinning on cores the server shares).

The dynamic batcher hands ``execute`` several requests: their inputs are concatenated, run once and split back.
"""

from __future__ import annotations

import gc
import json
import os

import numpy as np
import onnxruntime
import triton_python_backend_utils as pb_utils

_decode = np.frompyfunc(lambda value: value.decode("utf-8"), 1, 1)


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        parameters = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        path = os.path.join(args["model_repository"], args["model_version"], parameters.get("onnx_file", "model.onnx"))
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = int(parameters.get("intra_op_num_threads", "1"))
        options.inter_op_num_threads = int(parameters.get("inter_op_num_threads", "1"))
        options.add_session_config_entry("session.intra_op.allow_spinning", parameters.get("allow_spinning", "0"))
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self._run = session.run
        self._batched = config.get("max_batch_size", 0) > 0
        declared = {tensor["name"]: tensor for tensor in config.get("input", []) + config.get("output", [])}

        def model_shape(name: str) -> tuple[int, ...] | None:
            """The shape onnxruntime takes or gives when the config declares a reshape (batch dimension first)."""
            reshape = declared.get(name, {}).get("reshape")
            if reshape is None:
                return None
            return ((-1,) if self._batched else ()) + tuple(int(d) for d in reshape.get("shape", []))

        def client_shape(name: str) -> tuple[int, ...] | None:
            if model_shape(name) is None:
                return None
            return ((-1,) if self._batched else ()) + tuple(int(d) for d in declared[name]["dims"])

        # (name, is a string tensor, reshape for onnxruntime or None)
        self._inputs = [(i.name, i.type == "tensor(string)", model_shape(i.name)) for i in session.get_inputs()]
        self._outputs = [(o.name, client_shape(o.name)) for o in session.get_outputs()]
        self._output_names = [name for name, _ in self._outputs]
        gc.freeze()  # the objects of onnxruntime and numpy stay out of the collector's full passes

    def _feed(self, request) -> dict[str, np.ndarray]:
        feeds = {}
        for name, is_string, shape in self._inputs:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:
                raise ValueError(f"input {name!r} is missing")
            array = tensor.as_numpy()
            if is_string:
                array = _decode(array)
            if shape is not None:
                array = array.reshape(shape)
            feeds[name] = array
        return feeds

    def _response(self, arrays: list[np.ndarray]):
        tensors = []
        for (name, shape), array in zip(self._outputs, arrays, strict=True):
            if shape is not None:
                array = array.reshape(shape)
            tensors.append(pb_utils.Tensor(name, array))
        return pb_utils.InferenceResponse(output_tensors=tensors)

    def _run_one(self, request):
        try:
            return self._response(self._run(self._output_names, self._feed(request)))
        except Exception as exc:  # the error goes back to this request's client
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{type(exc).__name__}: {exc}"))

    def execute(self, requests: list) -> list:
        if len(requests) == 1 or not self._batched:
            return [self._run_one(request) for request in requests]
        try:
            feeds = [self._feed(request) for request in requests]
        except Exception:  # a malformed request fails alone
            return [self._run_one(request) for request in requests]
        sizes = [len(next(iter(feed.values()))) for feed in feeds]
        batch = {name: np.concatenate([feed[name] for feed in feeds]) for name, _, _ in self._inputs}
        try:
            outputs = self._run(self._output_names, batch)
        except Exception:  # one request's bad values must not fail the others
            return [self._run_one(request) for request in requests]
        bounds = np.cumsum(sizes)[:-1]
        parts = [np.split(output, bounds) for output in outputs]
        return [self._response([part[index] for part in parts]) for index in range(len(requests))]
