"""Entry points that break the model contract, one way each (``train.model.entry_point: tests.support.models:…``)."""

from __future__ import annotations

import torch
from torch import nn

from kfp_mlops.components.train.architectures import mlp

NOT_A_FUNCTION = 42


class _Wrapped(nn.Module):
    def __init__(self, spec, transform):
        super().__init__()
        self.inner, self.transform = mlp(spec), transform

    def forward(self, numeric: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        return self.transform(self.inner(numeric, categorical))


def returns_a_dict(spec):
    return {"layers": [64, 32]}


def one_output_too_many(spec):
    return _Wrapped(spec, lambda out: torch.cat([out, out[:, :1]], dim=1))


def nan_outputs(spec):
    return _Wrapped(spec, lambda out: out * float("nan"))


def fails_to_build(spec, width: int = 8):
    raise RuntimeError("CUDA is required")


def unexportable(spec):
    """``torch.linalg.eigvalsh`` has no ONNX symbolic in opset 17."""
    return _Wrapped(spec, lambda out: out + torch.linalg.eigvalsh(out.T @ out)[:1])


def batch_fixed_shape(spec):
    """Reshapes with the traced batch size as a constant: the export works, a batch of another size does not."""
    return _Wrapped(spec, lambda out: out.reshape(8, -1))


def no_parameters(spec):
    class Constant(nn.Module):
        def forward(self, numeric, categorical):
            return torch.zeros(numeric.shape[0], spec.outputs)

    return Constant()
