"""Triton model config: round trips through config.pbtxt (Triton's own protobuf), signatures derived from ONNX files,
and invalid configs refused with messages that name the fault. No server needed."""

from __future__ import annotations

import textwrap

import pytest
from pydantic import ValidationError
from support.packages import regression_package
from support.triton import signature_model

from kfp_mlops.components.deploy.package import model_config
from kfp_mlops.components.shared.config import DeployConfig
from kfp_mlops.components.shared.triton_config import (
    DynamicBatching,
    InstanceGroup,
    ModelConfig,
    Tensor,
    VersionPolicy,
    config_for_onnx,
    signature_from_onnx,
)
from kfp_mlops.sample_data import CATEGORICAL, ENTITY, NUMERIC, TIMESTAMP, make_sample_table

CLUSTER_PBTXT = textwrap.dedent("""\
    name: "churn"
    platform: "onnxruntime_onnx"
    version_policy {
      specific {
        versions: 1
        versions: 3
      }
    }
    max_batch_size: 32
    input {
      name: "numeric"
      data_type: TYPE_FP32
      dims: 3
    }
    input {
      name: "categorical"
      data_type: TYPE_STRING
      dims: 2
    }
    output {
      name: "probabilities"
      data_type: TYPE_FP32
      dims: 3
    }
    output {
      name: "label"
      data_type: TYPE_INT64
      dims: 1
      reshape {
      }
    }
    instance_group {
      count: 2
      gpus: 0
      gpus: 1
      kind: KIND_GPU
    }
    dynamic_batching {
      preferred_batch_size: 8
      preferred_batch_size: 16
      max_queue_delay_microseconds: 100
    }
    parameters {
      key: "intra_op_thread_count"
      value {
        string_value: "1"
      }
    }
""")


def cluster_config() -> ModelConfig:
    return ModelConfig(
        name="churn",
        platform="onnxruntime_onnx",
        max_batch_size=32,
        inputs=[
            Tensor(name="numeric", data_type="TYPE_FP32", dims=[3]),
            Tensor(name="categorical", data_type="TYPE_STRING", dims=[2]),
        ],
        outputs=[
            Tensor(name="probabilities", data_type="TYPE_FP32", dims=[3]),
            Tensor(name="label", data_type="TYPE_INT64", dims=[1], reshape=[]),
        ],
        dynamic_batching=DynamicBatching(preferred_batch_size=[8, 16], max_queue_delay_microseconds=100),
        instance_group=[InstanceGroup(kind="KIND_GPU", count=2, gpus=[0, 1])],
        version_policy=VersionPolicy(specific=[1, 3]),
        parameters={"intra_op_thread_count": "1"},
    )


def test_to_pbtxt_renders_triton_text_format():
    assert cluster_config().to_pbtxt() == CLUSTER_PBTXT


def test_from_pbtxt_reads_back_the_same_config():
    assert ModelConfig.from_pbtxt(CLUSTER_PBTXT) == cluster_config()


@pytest.mark.parametrize(
    "policy, text",
    [
        (VersionPolicy(latest=2), "version_policy {\n  latest {\n    num_versions: 2\n  }\n}"),
        (VersionPolicy(all=True), "version_policy {\n  all {\n  }\n}"),
    ],
)
def test_version_policies_round_trip(policy, text):
    config = cluster_config().model_copy(update={"version_policy": policy})
    assert text in config.to_pbtxt()
    assert ModelConfig.from_pbtxt(config.to_pbtxt()) == config


def test_python_backend_config_round_trips_through_files(tmp_path):
    config = ModelConfig(
        name="local-churn",
        backend="python",
        max_batch_size=0,
        inputs=[Tensor(name="numeric", data_type="TYPE_FP64", dims=[-1, 4])],
        outputs=[Tensor(name="label", data_type="TYPE_STRING", dims=[-1, 1])],
        instance_group=[InstanceGroup(kind="KIND_CPU", count=1)],
    )
    path = config.write(tmp_path / "local-churn")
    assert path.name == "config.pbtxt" and 'backend: "python"' in path.read_text()
    assert ModelConfig.read(tmp_path / "local-churn") == config


def test_signature_from_onnx_removes_the_batch_dimension(tmp_path):
    inputs, outputs = signature_from_onnx(signature_model(tmp_path / "model.onnx"), max_batch_size=8)
    assert inputs == [
        Tensor(name="numeric", data_type="TYPE_FP32", dims=[3]),
        Tensor(name="categorical", data_type="TYPE_STRING", dims=[2]),
    ]
    assert outputs == [
        Tensor(name="probabilities", data_type="TYPE_FP32", dims=[3]),
        Tensor(name="label", data_type="TYPE_STRING", dims=[1]),
    ]


def test_signature_from_onnx_reshapes_a_batch_only_tensor(tmp_path):
    path = signature_model(tmp_path / "model.onnx", classes=(0, 1), label_shape="vector")
    _, outputs = signature_from_onnx(path, max_batch_size=8)
    assert outputs[1] == Tensor(name="label", data_type="TYPE_INT64", dims=[1], reshape=[])
    assert "reshape {\n  }" in config_for_onnx("m", path, max_batch_size=8).to_pbtxt()


def test_signature_from_onnx_keeps_every_dimension_without_batching(tmp_path):
    inputs, outputs = signature_from_onnx(signature_model(tmp_path / "model.onnx"), max_batch_size=0)
    assert [tensor.dims for tensor in inputs + outputs] == [[-1, 3], [-1, 2], [-1, 3], [-1, 1]]


def test_signature_from_onnx_follows_the_inputs_the_model_has(tmp_path):
    numeric_only = signature_model(tmp_path / "numeric.onnx", categories=())
    categorical_only = signature_model(tmp_path / "categorical.onnx", numeric_means=())
    assert [t.name for t in signature_from_onnx(numeric_only, 4)[0]] == ["numeric"]
    assert [t.name for t in signature_from_onnx(categorical_only, 4)[0]] == ["categorical"]


def test_signature_from_onnx_maps_element_types(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    types = {
        TensorProto.DOUBLE: "TYPE_FP64",
        TensorProto.FLOAT16: "TYPE_FP16",
        TensorProto.INT32: "TYPE_INT32",
        TensorProto.BOOL: "TYPE_BOOL",
        TensorProto.UINT8: "TYPE_UINT8",
        TensorProto.BFLOAT16: "TYPE_BF16",
    }
    values = [helper.make_tensor_value_info(f"x{t}", t, ["N", 2]) for t in types]
    outputs = [helper.make_tensor_value_info(f"y{t}", t, ["N", 2]) for t in types]
    nodes = [helper.make_node("Identity", [f"x{t}"], [f"y{t}"]) for t in types]
    model = helper.make_model(helper.make_graph(nodes, "types", values, outputs))
    onnx.save(model, str(tmp_path / "types.onnx"))
    inputs, _ = signature_from_onnx(tmp_path / "types.onnx", max_batch_size=4)
    assert [tensor.data_type for tensor in inputs] == list(types.values())


def test_config_for_onnx_serves_the_signature(tmp_path):
    config = config_for_onnx("churn", signature_model(tmp_path / "model.onnx"), max_batch_size=16,
                             dynamic_batching={"max_queue_delay_microseconds": 0})  # fmt: skip
    assert config.platform == "onnxruntime_onnx" and config.backend is None
    assert [t.name for t in config.inputs] == ["numeric", "categorical"]
    assert ModelConfig.from_pbtxt(config.to_pbtxt()) == config


REGRESSION_PBTXT = textwrap.dedent("""\
    name: "spend"
    platform: "onnxruntime_onnx"
    version_policy {
      specific {
        versions: 2
      }
    }
    max_batch_size: 64
    input {
      name: "numeric"
      data_type: TYPE_FP32
      dims: 6
    }
    input {
      name: "categorical"
      data_type: TYPE_STRING
      dims: 3
    }
    output {
      name: "prediction"
      data_type: TYPE_FP32
      dims: 1
    }
    instance_group {
      count: 1
      kind: KIND_CPU
    }
    dynamic_batching {
      preferred_batch_size: 8
      preferred_batch_size: 32
      preferred_batch_size: 64
    }
""")


def test_config_of_a_regression_package_serves_its_prediction_only(tmp_path):
    """A regression serving graph's one output, ``prediction`` FP32 [N, 1], becomes ``dims: [1]`` (no probabilities,
    no label), as the deploy step generates it; the text parses back to the same config."""
    package = regression_package(tmp_path / "model", make_sample_table(400), NUMERIC + CATEGORICAL, CATEGORICAL,
                                 ENTITY, TIMESTAMP)  # fmt: skip
    config = model_config("spend", package / "model.onnx", DeployConfig(), gpu=False, version=2)
    assert config.outputs == [Tensor(name="prediction", data_type="TYPE_FP32", dims=[1])]
    assert config.to_pbtxt() == REGRESSION_PBTXT
    assert ModelConfig.from_pbtxt(REGRESSION_PBTXT) == config


def test_signature_from_onnx_raise_error_when_the_batch_dimension_is_fixed(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])
    onnx.save(helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])),
              str(tmp_path / "fixed.onnx"))  # fmt: skip
    with pytest.raises(ValueError, match=r"'x' has shape \[1, 3\], without a variable batch dimension"):
        signature_from_onnx(tmp_path / "fixed.onnx", max_batch_size=8)
    assert signature_from_onnx(tmp_path / "fixed.onnx", max_batch_size=0)[0][0].dims == [1, 3]


def valid(**changes) -> dict:
    document = cluster_config().model_dump()
    document.update(changes)
    return document


@pytest.mark.parametrize(
    "changes, message",
    [
        (
            {"dynamic_batching": {"preferred_batch_size": [8, 64]}},
            r"preferred_batch_size: \[8, 64\] must lie in 1..max",
        ),
        ({"max_batch_size": 0}, "dynamic_batching needs max_batch_size > 0"),
        ({"instance_group": [{"kind": "KIND_GPU", "count": 1}]}, "KIND_GPU needs gpus"),
        ({"instance_group": [{"kind": "KIND_CPU", "gpus": [0]}]}, r"KIND_CPU takes no gpus, got \[0\]"),
        ({"instance_group": [{"kind": "KIND_GPU", "gpus": [0, 0]}]}, "gpus are distinct device ids"),
        ({"instance_group": [{"kind": "KIND_CPU", "count": 0}]}, "count\n  Input should be greater than or equal to 1"),
        ({"backend": "python"}, "set exactly one of platform"),
        ({"platform": None}, "set exactly one of platform"),
        ({"platform": "tensorrt_plan"}, "platform\n  Input should be 'onnxruntime_onnx'"),
        (
            {"version_policy": {"latest": 1, "all": True}},
            r"exactly one of latest, specific, all \(got \['latest', 'all'\]",
        ),
        ({"version_policy": {"specific": [0]}}, r"versions are integers >= 1, got \[0\]"),
        (
            {"inputs": [{"name": "x", "data_type": "TYPE_FP32", "dims": [3]}] * 2},
            r"inputs: duplicate tensor names \['x'\]",
        ),
        (
            {"inputs": [{"name": "x", "data_type": "TYPE_FP32", "dims": [0]}]},
            "dimensions are -1 .variable. or positive",
        ),
        ({"inputs": [{"name": "x", "data_type": "TYPE_FP32", "dims": [3], "reshape": [2]}]}, "reshape .2. holds 2"),
        ({"inputs": [{"name": "x", "data_type": "FP32", "dims": [3]}]}, "data_type\n  Input should be 'TYPE_BOOL'"),
        ({"name": "../escape"}, "name\n  String should match pattern"),
        ({"max_batch": 8}, "max_batch\n  Extra inputs are not permitted"),
        ({"dynamic_batching": {"max_queue_delay": 100}}, "max_queue_delay\n  Extra inputs are not permitted"),
    ],
)
def test_model_config_raise_error_when_invalid(changes, message):
    with pytest.raises(ValidationError, match=message):
        ModelConfig.model_validate(valid(**changes))


def test_from_pbtxt_raise_error_when_a_field_is_unknown_to_triton():
    with pytest.raises(
        ValueError, match=r'config.pbtxt: 1:1 : Message type "inference.ModelConfig" has no field named "max_batch"'
    ):
        ModelConfig.from_pbtxt("max_batch: 8\n" + CLUSTER_PBTXT)


MINIMAL_PBTXT = """\
name: "m"
backend: "python"
max_batch_size: 4
input { name: "x" data_type: TYPE_FP32 dims: 2 }
output { name: "y" data_type: TYPE_FP32 dims: 2 }
"""


@pytest.mark.parametrize(
    "extra, field",
    [
        ("sequence_batching {}", "sequence_batching"),
        ("optimization { priority: PRIORITY_MAX }", "optimization"),
        ('instance_group { kind: KIND_CPU host_policy: "numa0" }', "instance_group.host_policy"),
        ("dynamic_batching { preserve_ordering: true }", "dynamic_batching.preserve_ordering"),
        ('input { name: "z" data_type: TYPE_FP32 dims: 1 optional: true }', "input.optional"),
    ],
)
def test_from_pbtxt_raise_error_when_a_field_is_not_modelled(extra, field):
    assert ModelConfig.from_pbtxt(MINIMAL_PBTXT).backend == "python"
    with pytest.raises(ValueError, match=f"config.pbtxt: {field} is not supported"):
        ModelConfig.from_pbtxt(MINIMAL_PBTXT + extra)
