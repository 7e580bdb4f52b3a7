"""The metadata writer every step publishes through: no NaN or infinity anywhere in what it serialises (protobuf
Struct locally, strict JSON in a cluster's launcher), refused before anything is written, naming the path."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from google.protobuf import json_format, struct_pb2

from kfp_mlops.components.shared.artifacts import NonFiniteMetadataError, check_finite, log_metrics, update_metadata

REPO = Path(__file__).resolve().parents[1]


def artifact(name: str = "blessing") -> SimpleNamespace:
    logged: dict[str, float] = {}
    return SimpleNamespace(name=name, metadata={"kept": 1}, logged=logged, log_metric=logged.__setitem__)


@pytest.mark.parametrize(
    ("values", "path"),
    [
        ({"roc_auc": float("nan")}, "blessing.metadata.roc_auc"),
        ({"baseline_metrics": {"f1": 0.5, "roc_auc": float("inf")}}, "blessing.metadata.baseline_metrics.roc_auc"),
        ({"curve": [0.1, [0.2, -float("inf")]]}, r"blessing.metadata.curve\[1\]\[1\]"),
        ({"rows": ({"p": np.float32("nan")},)}, r"blessing.metadata.rows\[0\].p"),
        ({"score": np.float64("inf")}, "blessing.metadata.score"),
    ],
)
def test_a_non_finite_number_anywhere_is_refused_naming_its_path_and_nothing_is_written(values, path):
    target = artifact()
    with pytest.raises(NonFiniteMetadataError, match=rf"^{path} is (nan|inf|-inf): artifact metadata holds finite"):
        update_metadata(target, values)
    assert target.metadata == {"kept": 1}


def test_finite_trees_are_written_and_serialise_as_the_runner_and_the_launcher_read_them():
    target = artifact()
    values = {"blessed": False, "reasons": ["x"], "undefined_metrics": {"roc_auc": "one class"}, "n": np.int64(3),
              "scores": {"f1": 0.5, "deep": [1, 2.5, {"p": np.float32(0.25)}]}, "text": "nan"}  # fmt: skip
    update_metadata(target, values)
    assert target.metadata["undefined_metrics"] == {"roc_auc": "one class"}
    plain = json.loads(json.dumps(target.metadata, default=float, allow_nan=False))
    json_format.MessageToJson(json_format.ParseDict(plain, struct_pb2.Struct()))


def test_metrics_are_logged_only_when_every_value_is_finite():
    metrics = artifact("metrics")
    with pytest.raises(NonFiniteMetadataError, match=r"^metrics.roc_auc is nan"):
        log_metrics(metrics, {"accuracy": 0.9, "roc_auc": float("nan")})
    assert metrics.logged == {}
    log_metrics(metrics, {"accuracy": 0.9, "rows": 10})
    assert metrics.logged == {"accuracy": 0.9, "rows": 10.0}
    check_finite({"ok": [True, False, 1, "inf"]})  # booleans, integers and text are not numbers to refuse


def test_every_executor_writes_metadata_through_the_checked_writer():
    """``artifact.metadata.update(...)`` or ``artifact.metadata[key] = ...`` in an executor would bypass the check."""
    offenders = []
    for path in sorted((REPO / "components").glob("*/executor.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            target = None
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "update":
                target = node.func.value
            elif isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Subscript):
                target = node.targets[0].value
            if isinstance(target, ast.Attribute) and target.attr == "metadata":
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert offenders == []
