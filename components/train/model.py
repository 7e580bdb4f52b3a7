"""The model contract: the feature spec a network is built from, the entry point that builds it, the wrapper the
step trains (standardisation inside the network) and the serving head it exports.

A network is built by ``train.model.entry_point`` — a built-in architecture (``BUILT_IN``) or the
user's ``package.module:function`` — called as ``function(spec, **train.model.options)``. It returns a
``torch.nn.Module`` whose ``forward(numeric, categorical)`` takes numeric features standardised with the training
split's statistics (float, [N, len(spec.numeric)], in the network's dtype) and category indices (int64,
[N, len(spec.categorical)], 0 = missing or unseen) and returns [N, spec.outputs]: one logit per class, or one value
for regression (the standardised target; [N] is accepted too). Everything else is the step's.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from kfp_mlops.components.shared.errors import ConfigError
from kfp_mlops.components.shared.tabular import Preprocessing


@dataclass(frozen=True)
class FeatureSpec:
    """What a network is built from: the feature columns, each categorical column's embedding table size (its
    vocabulary plus index 0 for missing and unseen values), the task and the output width."""

    numeric: list[str]
    categorical: list[str]
    cardinalities: list[int]
    task: str  # binary, multiclass or regression
    outputs: int  # classes, or 1 for regression
    classes: list[str | int]  # empty for regression

    @classmethod
    def of(cls, preprocessing: Preprocessing) -> FeatureSpec:
        return cls(list(preprocessing.numeric), list(preprocessing.categorical), preprocessing.cardinalities(),
                   preprocessing.task, preprocessing.outputs, list(preprocessing.classes))  # fmt: skip


class ModelContractError(ConfigError):
    """The entry point, its options or the network it builds break the contract; the message names the entry point
    and what was expected."""


BUILT_IN = {  # the built-in architectures (architectures.py) by name
    "mlp": "kfp_mlops.components.train.architectures:mlp",
    "ft_transformer": "kfp_mlops.components.train.architectures:ft_transformer",
}


def resolve_entry_point(entry_point: str) -> str:
    """A built-in name as its ``module:function``; a user entry point as it is."""
    if ":" in entry_point:
        return entry_point
    if entry_point not in BUILT_IN:
        raise ModelContractError(
            f"train.model.entry_point {entry_point!r} is not a built-in architecture ({', '.join(BUILT_IN)}) nor "
            "'package.module:function'"
        )
    return BUILT_IN[entry_point]


def load_entry_point(entry_point: str) -> Callable[..., Any]:
    """The function ``entry_point`` names; ModelContractError when it cannot be imported or is not callable."""
    target = resolve_entry_point(entry_point)
    module_name, _, attribute = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise ModelContractError(
            f"train.model.entry_point {entry_point!r}: module {module_name!r} cannot be imported "
            f"({type(exc).__name__}: {exc}); install it in the train image (FROM the kfp-mlops train image) or, "
            "locally, in the virtualenv"
        ) from None
    function = getattr(module, attribute, None)
    if function is None:
        raise ModelContractError(
            f"train.model.entry_point {entry_point!r}: module {module_name!r} has no {attribute!r}"
        )
    if not callable(function):
        raise ModelContractError(
            f"train.model.entry_point {entry_point!r}: {attribute!r} is not callable (a {type(function).__name__}); "
            "expected a function returning a torch.nn.Module"
        )
    return function


def build_network(entry_point: str, options: dict[str, Any], spec: FeatureSpec) -> nn.Module:
    """Call the entry point; ModelContractError when it fails or returns something that is not a Module."""
    function = load_entry_point(entry_point)
    try:
        network = function(spec, **options)
    except Exception as exc:
        raise ModelContractError(
            f"train.model.entry_point {entry_point!r} failed when called with the feature spec and train.model.options "
            f"{options}: {type(exc).__name__}: {exc}"
        ) from None
    if not isinstance(network, nn.Module):
        raise ModelContractError(
            f"train.model.entry_point {entry_point!r} returned a {type(network).__name__}; expected a torch.nn.Module"
        )
    return network


class TabularModel(nn.Module):
    """What the step trains: numeric inputs standardised with training-split statistics (buffers, so they travel
    with the weights and the ONNX graph), then the network."""

    def __init__(self, network: nn.Module, preprocessing: Preprocessing):
        super().__init__()
        self.network = network
        self.register_buffer("mean", torch.tensor(preprocessing.means, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(preprocessing.stds, dtype=torch.float32))
        # the parameter whose dtype the network runs in: DeepSpeed casts parameters in place (the same objects), so
        # it is looked up once, not per step (a walk over the modules costs as much as a small network's forward)
        self._dtype_of = [p for p in network.parameters() if p.is_floating_point()][:1]

    def forward(self, numeric: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        """Standardise in fp32, then run in the weights' dtype (bf16/fp16 under DeepSpeed on a GPU)."""
        dtype = self._dtype_of[0].dtype if self._dtype_of else torch.float32
        standardised = ((numeric.float() - self.mean.float()) / self.std.float()).to(dtype)
        return self.network(standardised, categorical)


def build_model(entry_point: str, options: dict[str, Any], preprocessing: Preprocessing) -> TabularModel:
    return TabularModel(build_network(entry_point, options, FeatureSpec.of(preprocessing)), preprocessing)


def training_loss(output: torch.Tensor, target: torch.Tensor, task: str, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy over the logits, or the mean squared error of the standardised target (regression)."""
    import torch.nn.functional as F

    if task == "regression":
        return F.mse_loss(output.float().reshape(-1), target.float(), reduction=reduction)
    return F.cross_entropy(output.float(), target, reduction=reduction)


class ServingHead(nn.Module):
    """The exported network: class probabilities (softmax over the logits), or the prediction in the label's units
    [N, 1] (regression)."""

    def __init__(self, model: TabularModel, preprocessing: Preprocessing):
        super().__init__()
        self.model = model
        self.regression = preprocessing.task == "regression"
        self.label_mean, self.label_std = float(preprocessing.label_mean), float(preprocessing.label_std)

    def forward(self, numeric: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        output = self.model(numeric, categorical).float()
        if self.regression:
            return output.reshape(-1, 1) * self.label_std + self.label_mean
        return torch.softmax(output, dim=1)


ONNX_OPSET = 17


def export_onnx(head: ServingHead, numeric: torch.Tensor, categorical: torch.Tensor, path: str, output: str) -> None:
    """The serving head as ONNX (opset ``ONNX_OPSET``, dynamic batch), traced on these rows."""
    torch.onnx.export(
        head.eval(),
        (numeric, categorical),
        path,
        input_names=["numeric", "categorical"],
        output_names=[output],
        dynamic_axes={"numeric": {0: "batch"}, "categorical": {0: "batch"}, output: {0: "batch"}},
        opset_version=ONNX_OPSET,
        dynamo=False,
    )
