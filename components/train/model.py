"""The tabular classifier: standardisation and category embeddings inside the network, then an MLP."""

from __future__ import annotations

import torch
from torch import nn

from kfp_mlops.components.shared.tabular import Preprocessing


class TabularClassifier(nn.Module):
    """Standardises numeric inputs with training-split statistics (buffers, so they travel with the weights and
    the ONNX graph), embeds each categorical input, and feeds both to an MLP that returns class logits."""

    def __init__(self, preprocessing: Preprocessing, hidden_layers: list[int], dropout: float, embedding_dim: int):
        super().__init__()
        self.register_buffer("mean", torch.tensor(preprocessing.means, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(preprocessing.stds, dtype=torch.float32))
        self.embeddings = nn.ModuleList(nn.Embedding(size, embedding_dim) for size in preprocessing.cardinalities())
        width = len(preprocessing.numeric) + embedding_dim * len(preprocessing.categorical)
        layers: list[nn.Module] = []
        for hidden in hidden_layers:
            layers += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(dropout)]
            width = hidden
        layers.append(nn.Linear(width, len(preprocessing.classes)))
        self.mlp = nn.Sequential(*layers)

    def forward(self, numeric: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        """Standardise in fp32, then run in the weights' dtype (bf16/fp16 under DeepSpeed on a GPU)."""
        dtype = self.mlp[0].weight.dtype
        parts = [((numeric.float() - self.mean.float()) / self.std.float()).to(dtype)]
        parts += [embedding(categorical[:, i]) for i, embedding in enumerate(self.embeddings)]
        return self.mlp(torch.cat(parts, dim=1))


class ProbabilityModel(nn.Module):
    """The exported graph: class probabilities (softmax over the logits)."""

    def __init__(self, classifier: TabularClassifier):
        super().__init__()
        self.classifier = classifier

    def forward(self, numeric: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.classifier(numeric, categorical).float(), dim=1)
