"""Model packages derived from the trained one by editing its ONNX graph (other weights, noise, NaN)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper


def edited_package(source: Path, target: Path, edit: Callable[[onnx.GraphProto], None]) -> Path:
    """A copy of the package at ``source`` in ``target`` with ``edit`` applied to its graph."""
    shutil.copytree(source, target)
    model = onnx.load(str(target / "model.onnx"))
    edit(model.graph)
    onnx.save(model, str(target / "model.onnx"))
    return target


def halve_weights(graph: onnx.GraphProto) -> None:
    """Another model: every float weight matrix halved."""
    for index, tensor in enumerate(graph.initializer):
        array = numpy_helper.to_array(tensor)
        if array.ndim == 2 and array.dtype == np.float32:
            graph.initializer[index].CopyFrom(numpy_helper.from_array(array * 0.5, tensor.name))
