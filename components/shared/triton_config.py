"""Typed Triton model config, rendered to ``config.pbtxt`` through Triton's own protobuf and parsed back.

``ModelConfig`` covers what the deploy step sets: the serving runtime (``platform: onnxruntime_onnx`` in a
cluster, ``backend: python`` locally), batching, tensors, instance groups, version policy and parameters.
``signature_from_onnx`` derives the tensors from an ONNX file, so no tensor name is ever written by hand.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

DataType = Literal[
    "TYPE_BOOL", "TYPE_UINT8", "TYPE_UINT16", "TYPE_UINT32", "TYPE_UINT64", "TYPE_INT8", "TYPE_INT16", "TYPE_INT32",
    "TYPE_INT64", "TYPE_FP16", "TYPE_FP32", "TYPE_FP64", "TYPE_STRING", "TYPE_BF16",
]  # fmt: skip

# ONNX TensorProto element type -> Triton data type.
ONNX_TO_TRITON: dict[int, str] = {
    1: "TYPE_FP32", 2: "TYPE_UINT8", 3: "TYPE_INT8", 4: "TYPE_UINT16", 5: "TYPE_INT16", 6: "TYPE_INT32",
    7: "TYPE_INT64", 8: "TYPE_STRING", 9: "TYPE_BOOL", 10: "TYPE_FP16", 11: "TYPE_FP64", 12: "TYPE_UINT32",
    13: "TYPE_UINT64", 16: "TYPE_BF16",
}  # fmt: skip

CONFIG_FILE = "config.pbtxt"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _count(shape: list[int]) -> int | None:
    """Element count of a shape, or None when a dimension is variable (-1)."""
    total = 1
    for dim in shape:
        if dim < 0:
            return None
        total *= dim
    return total


class Tensor(_Strict):
    """One input or output. ``dims`` exclude the batch dimension when ``max_batch_size > 0``; ``reshape`` is the
    shape the model itself takes or gives (``[]`` for a model tensor of shape ``[batch]``)."""

    name: str = Field(min_length=1)
    data_type: DataType
    dims: list[int] = Field(min_length=1)
    reshape: list[int] | None = None

    @model_validator(mode="after")
    def _check(self) -> Tensor:
        for dim in [*self.dims, *(self.reshape or [])]:
            if dim == 0 or dim < -1:
                raise ValueError(f"tensor {self.name!r}: dimensions are -1 (variable) or positive, got {dim}")
        if self.reshape is not None:
            dims, reshape = _count(self.dims), _count(self.reshape)
            if dims is not None and reshape is not None and dims != reshape:
                raise ValueError(f"tensor {self.name!r}: reshape {self.reshape} holds {reshape} elements, "
                                 f"dims {self.dims} hold {dims}")  # fmt: skip
        return self


class DynamicBatching(_Strict):
    """Triton's dynamic batcher: ``max_queue_delay_microseconds`` is how long a request may wait for others."""

    preferred_batch_size: list[int] = []
    max_queue_delay_microseconds: int = Field(default=0, ge=0)


class InstanceGroup(_Strict):
    """Model instances: ``KIND_GPU`` names its devices (``gpus``); ``KIND_CPU`` and ``KIND_AUTO`` take none."""

    kind: Literal["KIND_CPU", "KIND_GPU", "KIND_AUTO"] = "KIND_CPU"
    count: int = Field(default=1, ge=1)
    gpus: list[int] = []

    @model_validator(mode="after")
    def _check(self) -> InstanceGroup:
        if self.kind == "KIND_GPU" and not self.gpus:
            raise ValueError("instance_group: KIND_GPU needs gpus (the device ids, e.g. [0])")
        if self.kind != "KIND_GPU" and self.gpus:
            raise ValueError(f"instance_group: {self.kind} takes no gpus, got {self.gpus}")
        if any(gpu < 0 for gpu in self.gpus) or len(set(self.gpus)) != len(self.gpus):
            raise ValueError(f"instance_group: gpus are distinct device ids >= 0, got {self.gpus}")
        return self


class VersionPolicy(_Strict):
    """Which versions Triton serves: exactly one of the ``latest`` n, ``specific`` versions, or ``all``."""

    latest: int | None = Field(default=None, ge=1)
    specific: list[int] | None = None
    all: bool = False

    @model_validator(mode="after")
    def _check(self) -> VersionPolicy:
        chosen = [key for key, value in (("latest", self.latest), ("specific", self.specific), ("all", self.all))
                  if value not in (None, False)]  # fmt: skip
        if len(chosen) != 1:
            raise ValueError(f"version_policy: set exactly one of latest, specific, all (got {chosen or 'none'})")
        if self.specific is not None and (not self.specific or min(self.specific) < 1):
            raise ValueError(f"version_policy.specific: versions are integers >= 1, got {self.specific}")
        return self


class ModelConfig(_Strict):
    """A Triton model config. Exactly one of ``platform`` (the cluster's ONNX Runtime) or ``backend`` (the local
    python backend) is set; ``max_batch_size`` 0 means the model takes no batch dimension."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    platform: Literal["onnxruntime_onnx"] | None = None
    backend: Literal["python"] | None = None
    max_batch_size: int = Field(default=0, ge=0)
    inputs: list[Tensor] = Field(min_length=1)
    outputs: list[Tensor] = Field(min_length=1)
    dynamic_batching: DynamicBatching | None = None
    instance_group: list[InstanceGroup] = []
    version_policy: VersionPolicy | None = None
    parameters: dict[str, str] = {}

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        if (self.platform is None) == (self.backend is None):
            raise ValueError("set exactly one of platform (onnxruntime_onnx) or backend (python)")
        for kind, tensors in (("inputs", self.inputs), ("outputs", self.outputs)):
            names = [tensor.name for tensor in tensors]
            duplicates = sorted({name for name in names if names.count(name) > 1})
            if duplicates:
                raise ValueError(f"{kind}: duplicate tensor names {duplicates}")
        batching = self.dynamic_batching
        if batching is not None:
            if self.max_batch_size == 0:
                raise ValueError("dynamic_batching needs max_batch_size > 0 (0 means the model cannot batch)")
            too_big = [size for size in batching.preferred_batch_size if size > self.max_batch_size]
            if too_big or any(size < 1 for size in batching.preferred_batch_size):
                raise ValueError(
                    f"dynamic_batching.preferred_batch_size: {batching.preferred_batch_size} must lie in "
                    f"1..max_batch_size ({self.max_batch_size})"
                )
        return self

    def to_proto(self) -> Any:
        """The config as ``tritonclient.grpc.model_config_pb2.ModelConfig``."""
        from tritonclient.grpc import model_config_pb2 as pb

        config = pb.ModelConfig(name=self.name, max_batch_size=self.max_batch_size)
        if self.platform:
            config.platform = self.platform
        if self.backend:
            config.backend = self.backend
        for tensors, field in ((self.inputs, config.input), (self.outputs, config.output)):
            for tensor in tensors:
                message = field.add(name=tensor.name, data_type=pb.DataType.Value(tensor.data_type), dims=tensor.dims)
                if tensor.reshape is not None:
                    message.reshape.shape.extend(tensor.reshape)
                    message.reshape.SetInParent()  # an empty reshape (a scalar per batch item) is still set
        if self.dynamic_batching is not None:
            config.dynamic_batching.SetInParent()
            config.dynamic_batching.preferred_batch_size.extend(self.dynamic_batching.preferred_batch_size)
            config.dynamic_batching.max_queue_delay_microseconds = self.dynamic_batching.max_queue_delay_microseconds
        for group in self.instance_group:
            config.instance_group.add(kind=pb.ModelInstanceGroup.Kind.Value(group.kind), count=group.count,
                                      gpus=group.gpus)  # fmt: skip
        policy = self.version_policy
        if policy is not None:
            if policy.latest is not None:
                config.version_policy.latest.num_versions = policy.latest
            elif policy.specific is not None:
                config.version_policy.specific.versions.extend(policy.specific)
            else:
                config.version_policy.all.SetInParent()
        for key, value in self.parameters.items():
            config.parameters[key].string_value = value
        return config

    def to_pbtxt(self) -> str:
        """The ``config.pbtxt`` text (protobuf text format)."""
        from google.protobuf import text_format

        return text_format.MessageToString(self.to_proto())

    def write(self, model_dir: str | Path) -> Path:
        """Write ``<model_dir>/config.pbtxt``."""
        path = Path(model_dir) / CONFIG_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_pbtxt())
        return path

    @classmethod
    def from_proto(cls, config: Any) -> ModelConfig:
        """Read a ``model_config_pb2.ModelConfig``; fields this class does not model are refused by name."""
        from tritonclient.grpc import model_config_pb2 as pb

        _refuse_unmodelled(config, "")
        tensors = [
            [
                Tensor(
                    name=t.name,
                    data_type=pb.DataType.Name(t.data_type),
                    dims=list(t.dims),
                    reshape=list(t.reshape.shape) if t.HasField("reshape") else None,
                )  # fmt: skip
                for t in field
            ]
            for field in (config.input, config.output)
        ]
        document: dict[str, Any] = {
            "name": config.name,
            "platform": config.platform or None,
            "backend": config.backend or None,
            "max_batch_size": config.max_batch_size,
            "inputs": tensors[0],
            "outputs": tensors[1],
            "instance_group": [
                {"kind": pb.ModelInstanceGroup.Kind.Name(g.kind), "count": g.count or 1, "gpus": list(g.gpus)}
                for g in config.instance_group
            ],
            "parameters": {key: value.string_value for key, value in config.parameters.items()},
        }
        if config.HasField("dynamic_batching"):
            batching = config.dynamic_batching
            document["dynamic_batching"] = {
                "preferred_batch_size": list(batching.preferred_batch_size),
                "max_queue_delay_microseconds": batching.max_queue_delay_microseconds,
            }
        if config.HasField("version_policy"):
            choice = config.version_policy.WhichOneof("policy_choice")
            policy = config.version_policy
            document["version_policy"] = (
                {"latest": policy.latest.num_versions} if choice == "latest"
                else {"specific": list(policy.specific.versions)} if choice == "specific"
                else {"all": True}
            )  # fmt: skip
        return cls.model_validate(document)

    @classmethod
    def from_pbtxt(cls, text: str) -> ModelConfig:
        """Parse ``config.pbtxt`` text; a field unknown to Triton or not modelled here is an error naming it."""
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2 as pb

        try:
            config = text_format.Parse(text, pb.ModelConfig())
        except text_format.ParseError as exc:
            raise ValueError(f"config.pbtxt: {exc}") from None
        return cls.from_proto(config)

    @classmethod
    def read(cls, model_dir: str | Path) -> ModelConfig:
        """Read ``<model_dir>/config.pbtxt``."""
        return cls.from_pbtxt((Path(model_dir) / CONFIG_FILE).read_text())


# What from_proto reads, per message; any other field set in a config.pbtxt is refused rather than dropped.
_MODELLED = {
    "ModelConfig": {"name", "platform", "backend", "max_batch_size", "input", "output", "dynamic_batching",
                    "instance_group", "version_policy", "parameters"},
    "ModelInput": {"name", "data_type", "dims", "reshape"},
    "ModelOutput": {"name", "data_type", "dims", "reshape"},
    "ModelTensorReshape": {"shape"},
    "ModelDynamicBatching": {"preferred_batch_size", "max_queue_delay_microseconds"},
    "ModelInstanceGroup": {"kind", "count", "gpus"},
    "ModelVersionPolicy": {"latest", "specific", "all"},
    "Latest": {"num_versions"},
    "Specific": {"versions"},
    "All": set(),
    "ModelParameter": {"string_value"},
}  # fmt: skip


def _refuse_unmodelled(message: Any, where: str) -> None:
    for field, value in message.ListFields():
        path = f"{where}.{field.name}" if where else field.name
        if field.name not in _MODELLED.get(message.DESCRIPTOR.name, set()):
            raise ValueError(f"config.pbtxt: {path} is not supported by kfp-mlops' ModelConfig")
        if field.message_type is None:
            continue
        if field.message_type.GetOptions().map_entry:
            values = value.values()
        elif field.label == field.LABEL_REPEATED:
            values = value
        else:
            values = [value]
        for item in values:
            if hasattr(item, "ListFields"):
                _refuse_unmodelled(item, path)


def signature_from_onnx(path: str | Path, max_batch_size: int = 0) -> tuple[list[Tensor], list[Tensor]]:
    """The Triton inputs and outputs of an ONNX model: names, types and shapes from the graph.

    With ``max_batch_size > 0`` the leading (variable) batch dimension is removed; a tensor of shape ``[batch]``
    becomes ``dims: [1]`` with ``reshape: []`` so that clients send and receive ``[batch, 1]``. Symbolic dimensions
    become -1.
    """
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {init.name for init in graph.initializer}
    inputs = [_tensor(value, max_batch_size, path) for value in graph.input if value.name not in initializers]
    outputs = [_tensor(value, max_batch_size, path) for value in graph.output]
    return inputs, outputs


def _tensor(value: Any, max_batch_size: int, path: str | Path) -> Tensor:
    kind = value.type.WhichOneof("value")
    if kind != "tensor_type":
        raise ValueError(f"{path}: {value.name!r} is a {kind}, not a tensor; Triton serves tensors only")
    tensor_type = value.type.tensor_type
    data_type = ONNX_TO_TRITON.get(tensor_type.elem_type)
    if data_type is None:
        raise ValueError(f"{path}: {value.name!r} has ONNX element type {tensor_type.elem_type}, which Triton lacks")
    if not tensor_type.HasField("shape"):
        raise ValueError(f"{path}: {value.name!r} has no shape in the graph; export it with a static rank")
    shape = [dim.dim_value if dim.HasField("dim_value") else -1 for dim in tensor_type.shape.dim]
    if max_batch_size == 0:
        return Tensor(name=value.name, data_type=data_type, dims=shape or [1], reshape=None if shape else [])
    if not shape or shape[0] != -1:
        raise ValueError(
            f"{path}: {value.name!r} has shape {shape}, without a variable batch dimension first; "
            "export it with a dynamic batch axis or use max_batch_size=0"
        )
    if len(shape) == 1:
        return Tensor(name=value.name, data_type=data_type, dims=[1], reshape=[])
    return Tensor(name=value.name, data_type=data_type, dims=shape[1:])


def config_for_onnx(
    name: str,
    onnx_path: str | Path,
    *,
    backend: Literal["python"] | None = None,
    max_batch_size: int = 0,
    **settings: Any,
) -> ModelConfig:
    """A config whose tensors come from the ONNX file: ``platform: onnxruntime_onnx`` unless ``backend`` is given.
    ``settings`` are the other ModelConfig fields (dynamic_batching, instance_group, version_policy, parameters)."""
    inputs, outputs = signature_from_onnx(onnx_path, max_batch_size)
    platform = None if backend else "onnxruntime_onnx"
    return ModelConfig(name=name, platform=platform, backend=backend, max_batch_size=max_batch_size, inputs=inputs,
                       outputs=outputs, **settings)  # fmt: skip
