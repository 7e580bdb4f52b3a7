"""components/shared/layout.py: the file names, version directories and wire conversions every reader shares."""

from __future__ import annotations

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from kfp_mlops.components.shared import layout
from kfp_mlops.components.shared.model_package import output_names


def test_version_paths_and_files_name_the_graph_the_backend_and_the_marker(tmp_path):
    assert layout.version_path("churn", 3) == "churn/3"
    assert layout.version_path("churn", "3", layout.VERSION_METADATA_FILE) == "churn/3/kfp-mlops.json"
    onnx = tmp_path / "model.onnx"
    assert layout.version_files(onnx, python_backend=False) == {"model.onnx": onnx}
    files = layout.version_files(onnx, python_backend=True)
    assert list(files) == ["model.onnx", "model.py"] and files["model.py"].is_file()
    assert "TritonPythonModel" in layout.python_backend_model().read_text()


def test_decode_labels_gives_plain_python_values_for_string_and_integer_labels():
    assert layout.decode_labels(np.array([[b"yes"], [b"no"]], dtype=object)) == ["yes", "no"]
    decoded = layout.decode_labels(np.array([[1], [0]], dtype=np.int64))
    assert decoded == [1, 0] and all(type(v) is int for v in decoded)


def test_infer_inputs_are_fp32_and_bytes_and_the_outputs_follow_the_task_for_both_clients():
    feeds = {"numeric": np.zeros((2, 3), np.float32), "categorical": np.array([["a"], [""]], dtype=object)}
    for client in (httpclient, grpcclient):
        tensors = layout.infer_inputs(client, feeds)
        assert [(t.name(), t.datatype(), t.shape()) for t in tensors] == [
            ("numeric", "FP32", [2, 3]),
            ("categorical", "BYTES", [2, 1]),
        ]
        for task, outputs in (("binary", ["probabilities", "label"]), ("regression", ["prediction"])):
            requested = layout.requested_outputs(client, output_names(task))
            assert [o.name() for o in requested] == outputs
