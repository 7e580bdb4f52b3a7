"""Where the project's files lie and how the served graph's tensors cross the wire, in one module (as TFX keeps its
model layout in ``tfx/utils/path_utils.py``): the deploy step writes these layouts; serving, the local Triton and
the train step read or write the same names from here.

A Triton model repository (a local path, ``s3://`` or ``gs://``)::

    <repo>/<name>/config.pbtxt              triton_config.CONFIG_FILE
    <repo>/<name>/<N>/model.onnx            the package's serving graph (model_package.ONNX_FILE)
    <repo>/<name>/<N>/model.py              the python backend only (the local Triton): python_backend_model()
    <repo>/<name>/<N>/kfp-mlops.json        VERSION_METADATA_FILE: the deploy step's commit marker, holding the
                                            package's model config, which ``kfp-mlops predict`` reads

A feature repository (the features step writes it, serving reads it): ``feature_store.yaml`` and the Feast files.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from kfp_mlops.components.shared.model_package import ONNX_FILE

VERSION_METADATA_FILE = "kfp-mlops.json"  # written last into a version directory: the version is committed
PYTHON_BACKEND_FILE = "model.py"
FEATURE_STORE_YAML = "feature_store.yaml"


def version_path(model: str, version: int | str, file: str = "") -> str:
    """``<model>/<version>[/<file>]``, relative to the model repository."""
    return f"{model}/{version}/{file}" if file else f"{model}/{version}"


def python_backend_model() -> Path:
    """The python-backend ``model.py`` that serves an ONNX file with onnxruntime (Triton's local stand-in for
    ``platform: onnxruntime_onnx``)."""
    return Path(__file__).parent / "python_backend" / PYTHON_BACKEND_FILE


def version_files(onnx_path: str | Path, python_backend: bool) -> dict[str, Path]:
    """A version directory's files besides the marker: its name there → the file to copy."""
    files = {ONNX_FILE: Path(onnx_path)}
    if python_backend:
        files[PYTHON_BACKEND_FILE] = python_backend_model()
    return files


def infer_inputs(client: ModuleType, feeds: dict[str, np.ndarray]) -> list[Any]:
    """The graph's inputs as Triton tensors of ``client`` (``tritonclient.http`` or ``tritonclient.grpc``):
    numeric FP32, categorical BYTES."""
    from tritonclient.utils import np_to_triton_dtype

    tensors = []
    for name, array in feeds.items():
        tensor = client.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    return tensors


def requested_outputs(client: ModuleType, outputs: Sequence[str]) -> list[Any]:
    """The graph's outputs (``ModelConfig.outputs``: probabilities and label, or a regression model's prediction) as
    ``client``'s requested outputs."""
    return [client.InferRequestedOutput(name) for name in outputs]


def decode_labels(labels: Any) -> list[Any]:
    """Labels (the graph's ``label`` output, any shape) as plain Python values: BYTES decoded, numpy scalars
    unwrapped."""
    return [
        value.decode("utf-8") if isinstance(value, bytes) else value.item() if isinstance(value, np.generic) else value
        for value in np.asarray(labels).ravel()
    ]
