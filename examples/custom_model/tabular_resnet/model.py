"""The entry point ``tabular_resnet.model:build``: kfp-mlops calls ``build(spec, **train.model.options)``.

``spec`` (``kfp_mlops.components.train.model.FeatureSpec``) names the numeric and categorical columns, each
categorical column's table size (index 0: missing or unseen), the task and the output width. The returned Module's
``forward(numeric, categorical)`` takes standardised numeric features [N, len(spec.numeric)] and category indices
[N, len(spec.categorical)] and returns [N, spec.outputs]: logits, or the standardised target for regression. The
step does the rest: DeepSpeed, checkpoints, early stopping and the serving graph around this network.
"""

from __future__ import annotations

import torch
from torch import nn


class ResidualBlock(nn.Module):
    def __init__(self, width: int, hidden: int, dropout: float):
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm1d(width), nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, width)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class TabularResNet(nn.Module):
    def __init__(self, spec, width: int, blocks: int, dropout: float, embedding_dim: int):
        super().__init__()
        self.embeddings = nn.ModuleList(nn.Embedding(size, embedding_dim) for size in spec.cardinalities)
        self.stem = nn.Linear(len(spec.numeric) + embedding_dim * len(spec.categorical), width)
        self.blocks = nn.Sequential(*(ResidualBlock(width, 2 * width, dropout) for _ in range(blocks)))
        self.head = nn.Sequential(nn.BatchNorm1d(width), nn.ReLU(), nn.Linear(width, spec.outputs))

    def forward(self, numeric: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        parts = [numeric, *(table(categorical[:, i]) for i, table in enumerate(self.embeddings))]
        return self.head(self.blocks(self.stem(torch.cat(parts, dim=1))))


def build(spec, width: int = 64, blocks: int = 2, dropout: float = 0.1, embedding_dim: int = 8) -> TabularResNet:
    """A tabular ResNet for any task kfp-mlops trains (binary, multiclass, regression)."""
    return TabularResNet(spec, width, blocks, dropout, embedding_dim)
