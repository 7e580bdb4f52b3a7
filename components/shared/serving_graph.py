"""The served model as one ONNX graph that takes features as the data holds them (TFX Transform's guarantee:
training and serving share one transformation, so no client repeats it).

``compose`` wraps the trained network (the *core*: standardised numeric and category indices → probabilities) in
ai.onnx.ml operators: ``Imputer`` replaces missing numeric values (NaN) with the training medians and one
``LabelEncoder`` per categorical column maps raw strings to vocabulary indices (missing ``""`` and unseen → 0, the
reserved category). After the core, the graph emits the predicted class under the model's decision threshold
(classifiers); a regression core's output is the ``prediction`` itself (in the label's units).
``core_of``/``with_core`` cut the core out and put a converted one back (fp16 for GPU targets); the cut is at named
tensors, so every other node stays as trained.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx
from onnx import TensorProto, helper

from kfp_mlops.components.shared import model_package as package
from kfp_mlops.components.shared.tabular import Preprocessing

ML_DOMAIN = "ai.onnx.ml"
ML_OPSET = 3  # LabelEncoder with keys_strings/values_int64s and default_int64
CORE_NUMERIC = "serving/numeric_imputed"  # the core's inputs inside the serving graph
CORE_CATEGORICAL = "serving/categorical_index"
_PREFIX = "serving/"


def compose(core: onnx.ModelProto, preprocessing: Preprocessing, decision_threshold: float) -> onnx.ModelProto:
    """The serving graph around ``core`` (inputs ``numeric`` float [N, k] and ``categorical`` int64 [N, m], output
    ``probabilities``, or ``prediction`` [N, 1] for regression; an input the core does not use may be absent)."""
    core_inputs = {value.name for value in core.graph.input}
    rename = {package.NUMERIC_INPUT: CORE_NUMERIC, package.CATEGORICAL_INPUT: CORE_CATEGORICAL}
    nodes: list[onnx.NodeProto] = []
    inputs, initializers, value_info = [], [], []
    if preprocessing.numeric:
        inputs.append(
            helper.make_tensor_value_info(package.NUMERIC_INPUT, TensorProto.FLOAT, ["N", len(preprocessing.numeric)])
        )
        if package.NUMERIC_INPUT in core_inputs:
            imputer = helper.make_node(
                "Imputer",
                [package.NUMERIC_INPUT],
                [CORE_NUMERIC],
                name=f"{_PREFIX}impute_numeric",
                domain=ML_DOMAIN,
                imputed_value_floats=[float(m) for m in preprocessing.medians],
                replaced_value_float=float("nan"),
            )
            nodes.append(imputer)
            value_info.append(
                helper.make_tensor_value_info(CORE_NUMERIC, TensorProto.FLOAT, ["N", len(preprocessing.numeric)])
            )
    if preprocessing.categorical:
        width = len(preprocessing.categorical)
        inputs.append(helper.make_tensor_value_info(package.CATEGORICAL_INPUT, TensorProto.STRING, ["N", width]))
        if package.CATEGORICAL_INPUT in core_inputs:
            encoded = []
            for position, column in enumerate(preprocessing.categorical):
                vocabulary = preprocessing.vocabularies[column]
                index, raw, code = f"{_PREFIX}{column}/position", f"{_PREFIX}{column}/raw", f"{_PREFIX}{column}/index"
                initializers.append(helper.make_tensor(index, TensorProto.INT64, [1], [position]))
                nodes.append(
                    helper.make_node(
                        "Gather", [package.CATEGORICAL_INPUT, index], [raw], name=f"{_PREFIX}{column}/select", axis=1
                    )
                )
                encoder = helper.make_node(
                    "LabelEncoder",
                    [raw],
                    [code],
                    name=f"{_PREFIX}{column}/encode",
                    domain=ML_DOMAIN,
                    keys_strings=vocabulary or ["\x00unused"],  # an empty vocabulary: every value is index 0
                    values_int64s=list(range(1, len(vocabulary) + 1)) or [0],
                    default_int64=0,
                )
                nodes.append(encoder)
                encoded.append(code)
            nodes.append(helper.make_node("Concat", encoded, [CORE_CATEGORICAL], name=f"{_PREFIX}categorical", axis=1))
            value_info.append(helper.make_tensor_value_info(CORE_CATEGORICAL, TensorProto.INT64, ["N", width]))
    core_nodes = []
    for position, node in enumerate(core.graph.node):
        renamed = onnx.NodeProto()
        renamed.CopyFrom(node)
        renamed.input[:] = [rename.get(name, name) for name in node.input]
        renamed.name = node.name or f"core/{position}"  # with_core finds the core's nodes by name
        core_nodes.append(renamed)
    if preprocessing.task == "regression":
        label_nodes, label_initializers = [], []
        outputs = [helper.make_tensor_value_info(package.PREDICTION_OUTPUT, TensorProto.FLOAT, ["N", 1])]
    else:
        label_nodes, label_initializers, label_type = _label_nodes(preprocessing.classes, decision_threshold)
        outputs = [
            helper.make_tensor_value_info(
                package.PROBABILITIES_OUTPUT, TensorProto.FLOAT, ["N", len(preprocessing.classes)]
            ),
            helper.make_tensor_value_info(package.LABEL_OUTPUT, label_type, ["N", 1]),
        ]
    graph = helper.make_graph(
        [*nodes, *core_nodes, *label_nodes],
        "kfp_mlops_serving",
        inputs,
        outputs,
        initializer=[*initializers, *core.graph.initializer, *label_initializers],
        value_info=value_info,
    )
    opsets = [o for o in core.opset_import if o.domain not in ("", ML_DOMAIN)]
    default = max((o.version for o in core.opset_import if o.domain == ""), default=17)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", default), helper.make_opsetid(ML_DOMAIN, ML_OPSET), *opsets],
        producer_name="kfp-mlops",
    )
    model.ir_version = core.ir_version
    onnx.checker.check_model(model, full_check=True)
    return model


def _label_nodes(classes: list, threshold: float) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto], int]:
    """Nodes from ``probabilities`` to ``label`` [N, 1]: the positive class at ``threshold`` (two classes) or the
    most probable class; class values as INT64 when every class is an integer, else STRING."""
    probabilities, index = package.PROBABILITIES_OUTPUT, f"{_PREFIX}label_index"
    initializers = []
    if len(classes) == 2:
        positive, cut, hit = f"{_PREFIX}positive", f"{_PREFIX}threshold", f"{_PREFIX}is_positive"
        initializers += [
            helper.make_tensor(f"{_PREFIX}positive_column", TensorProto.INT64, [1], [1]),
            helper.make_tensor(cut, TensorProto.FLOAT, [], [float(threshold)]),
        ]
        nodes = [
            helper.make_node("Gather", [probabilities, f"{_PREFIX}positive_column"], [positive], name=positive, axis=1),
            helper.make_node("GreaterOrEqual", [positive, cut], [hit], name=hit),
            helper.make_node("Cast", [hit], [index], name=index, to=TensorProto.INT64),
        ]
    else:
        nodes = [helper.make_node("ArgMax", [probabilities], [index], name=index, axis=1, keepdims=1)]
    if all(isinstance(c, int | bool | np.integer) for c in classes):
        values, label_type = (
            helper.make_tensor(f"{_PREFIX}classes", TensorProto.INT64, [len(classes)], [int(c) for c in classes]),
            TensorProto.INT64,
        )
    else:
        encoded = [str(c).encode() for c in classes]
        values, label_type = (
            helper.make_tensor(f"{_PREFIX}classes", TensorProto.STRING, [len(classes)], encoded),
            TensorProto.STRING,
        )
    initializers.append(values)
    nodes.append(
        helper.make_node("Gather", [values.name, index], [package.LABEL_OUTPUT], name=f"{_PREFIX}label", axis=0)
    )
    return nodes, initializers, label_type


def core_of(model: onnx.ModelProto) -> onnx.ModelProto:
    """The trained network inside a serving graph, from the core's inputs to ``probabilities`` (or ``prediction``)."""
    from onnx.utils import Extractor

    inputs = [name for name in (CORE_NUMERIC, CORE_CATEGORICAL) if name in _tensor_names(model)]
    outputs = [value.name for value in model.graph.output]
    core_output = package.PREDICTION_OUTPUT if package.PREDICTION_OUTPUT in outputs else package.PROBABILITIES_OUTPUT
    return Extractor(model).extract_model(inputs, [core_output])


def with_core(model: onnx.ModelProto, core: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with its core replaced by ``core`` (same boundary tensors), nodes kept in topological order."""
    old_core = core_of(model)
    old_nodes = {node.name for node in old_core.graph.node}
    old_initializers = {init.name for init in old_core.graph.initializer}
    kept = [node for node in model.graph.node if node.name not in old_nodes]
    initializers = [i for i in model.graph.initializer if i.name not in old_initializers] + list(core.graph.initializer)
    available = [v.name for v in model.graph.input] + [i.name for i in initializers]
    nodes = _topological(list(kept) + list(core.graph.node), available)
    graph = helper.make_graph(nodes, model.graph.name, model.graph.input, model.graph.output, initializer=initializers,
                              value_info=model.graph.value_info)  # fmt: skip
    result = helper.make_model(graph, opset_imports=model.opset_import, producer_name=model.producer_name)
    result.ir_version = model.ir_version
    onnx.checker.check_model(result, full_check=True)
    return result


def _tensor_names(model: onnx.ModelProto) -> set[str]:
    return {name for node in model.graph.node for name in node.output}


def _topological(nodes: list[onnx.NodeProto], available: Iterable[str]) -> list[onnx.NodeProto]:
    ready, ordered, pending = set(available) | {""}, [], list(nodes)
    while pending:
        progress = [node for node in pending if all(name in ready for name in node.input)]
        if not progress:
            raise ValueError(f"ONNX graph has a cycle or a missing input near node {pending[0].name!r}")
        for node in progress:
            ordered.append(node)
            ready.update(node.output)
        done = {id(node) for node in progress}
        pending = [node for node in pending if id(node) not in done]
    return ordered
