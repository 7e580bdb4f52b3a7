"""The built-in networks, each an entry point of the model contract (``model.py``), named in ``model.BUILT_IN``:
``function(spec, **options)``.

``mlp``: category embeddings beside the numeric features, then fully connected layers; small and fast.
``ft_transformer``: the FT-Transformer of Gorishniy et al., "Revisiting Deep Learning Models for Tabular Data"
(NeurIPS 2021): every feature becomes a token (numeric: a learned vector scaled by the value plus a bias;
categorical: an embedding plus a bias), a [CLS] token is appended, pre-norm transformer blocks with ReGLU
feed-forward layers mix them, and the head reads the [CLS] token. Its size is set by the options, so ZeRO stages,
bf16 and activation checkpointing have something to do.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from kfp_mlops.components.train.model import FeatureSpec


class MLP(nn.Module):
    def __init__(self, spec: FeatureSpec, hidden_layers: list[int], dropout: float, embedding_dim: int):
        super().__init__()
        self.embeddings = nn.ModuleList(nn.Embedding(size, embedding_dim) for size in spec.cardinalities)
        width = len(spec.numeric) + embedding_dim * len(spec.categorical)
        layers: list[nn.Module] = []
        for hidden in hidden_layers:
            layers += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(dropout)]
            width = hidden
        layers.append(nn.Linear(width, spec.outputs))
        self.layers = nn.Sequential(*layers)

    def forward(self, numeric: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        parts = [numeric, *(embedding(categorical[:, i]) for i, embedding in enumerate(self.embeddings))]
        return self.layers(torch.cat(parts, dim=1))


def mlp(spec: FeatureSpec, hidden_layers: list[int] = (64, 32), dropout: float = 0.1, embedding_dim: int = 4) -> MLP:
    """An MLP over the standardised numeric features and an embedding per categorical feature."""
    if not hidden_layers or any(int(h) < 1 for h in hidden_layers):
        raise ValueError(f"hidden_layers must be a non-empty list of positive widths, got {list(hidden_layers)}")
    if not 0 <= dropout < 1 or embedding_dim < 1:
        raise ValueError(f"need 0 <= dropout < 1 and embedding_dim >= 1, got {dropout} and {embedding_dim}")
    return MLP(spec, [int(h) for h in hidden_layers], float(dropout), int(embedding_dim))


class FeatureTokenizer(nn.Module):
    """One d_token vector per feature: numeric ``x * W_i + b_i``, categorical ``E[index] + b_i``."""

    def __init__(self, spec: FeatureSpec, d_token: int):
        super().__init__()
        n_numeric, bound = len(spec.numeric), 1 / math.sqrt(d_token)
        self.numeric_weight = nn.Parameter(torch.empty(n_numeric, d_token).uniform_(-bound, bound))
        self.numeric_bias = nn.Parameter(torch.empty(n_numeric, d_token).uniform_(-bound, bound))
        offsets = torch.tensor([0, *spec.cardinalities[:-1]], dtype=torch.int64).cumsum(0)
        self.register_buffer("offsets", offsets, persistent=False)
        self.categories = nn.Embedding(max(sum(spec.cardinalities), 1), d_token)
        nn.init.uniform_(self.categories.weight, -bound, bound)
        self.categorical_bias = nn.Parameter(torch.empty(len(spec.categorical), d_token).uniform_(-bound, bound))
        self.cls = nn.Parameter(torch.empty(1, 1, d_token).uniform_(-bound, bound))
        self.has_categorical = bool(spec.categorical)

    def forward(self, numeric: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        tokens = [numeric.unsqueeze(-1) * self.numeric_weight + self.numeric_bias]
        if self.has_categorical:
            tokens.append(self.categories(categorical + self.offsets) + self.categorical_bias)
        tokens.append(self.cls.expand(numeric.shape[0], 1, -1))
        return torch.cat(tokens, dim=1)


class TransformerBlock(nn.Module):
    """Pre-norm multi-head self-attention and a ReGLU feed-forward layer, each with a residual connection."""

    def __init__(self, d_token: int, heads: int, ffn_hidden: int, attention_dropout: float, ffn_dropout: float,
                 residual_dropout: float, first: bool):  # fmt: skip
        super().__init__()
        self.heads, self.attention_dropout = heads, attention_dropout
        self.attention_norm = nn.Identity() if first else nn.LayerNorm(d_token)  # the paper drops the first one
        self.qkv = nn.Linear(d_token, 3 * d_token)
        self.attention_out = nn.Linear(d_token, d_token)
        self.ffn_norm = nn.LayerNorm(d_token)
        self.ffn_in = nn.Linear(d_token, 2 * ffn_hidden)
        self.ffn_out = nn.Linear(ffn_hidden, d_token)
        self.ffn_dropout = nn.Dropout(ffn_dropout)
        self.residual_dropout = nn.Dropout(residual_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, width = x.shape
        qkv = self.qkv(self.attention_norm(x)).reshape(batch, tokens, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        dropout = self.attention_dropout if self.training else 0.0
        attended = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
        x = x + self.residual_dropout(self.attention_out(attended.transpose(1, 2).reshape(batch, tokens, width)))
        value, gate = self.ffn_in(self.ffn_norm(x)).chunk(2, dim=-1)
        return x + self.residual_dropout(self.ffn_out(self.ffn_dropout(value * F.relu(gate))))


class FTTransformer(nn.Module):
    def __init__(self, spec: FeatureSpec, d_token: int, n_blocks: int, heads: int, ffn_hidden: int,
                 attention_dropout: float, ffn_dropout: float, residual_dropout: float,
                 activation_checkpointing: bool):  # fmt: skip
        super().__init__()
        self.tokenizer = FeatureTokenizer(spec, d_token)
        self.blocks = nn.ModuleList(
            TransformerBlock(d_token, heads, ffn_hidden, attention_dropout, ffn_dropout, residual_dropout, i == 0)
            for i in range(n_blocks)
        )
        self.head = nn.Sequential(nn.LayerNorm(d_token), nn.ReLU(), nn.Linear(d_token, spec.outputs))
        self.activation_checkpointing = activation_checkpointing

    def forward(self, numeric: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        x = self.tokenizer(numeric, categorical)
        for block in self.blocks:
            if self.activation_checkpointing and self.training:
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return self.head(x[:, -1])


def ft_transformer(
    spec: FeatureSpec,
    d_token: int = 192,
    n_blocks: int = 3,
    heads: int = 8,
    ffn_factor: float = 4 / 3,
    attention_dropout: float = 0.2,
    ffn_dropout: float = 0.1,
    residual_dropout: float = 0.0,
    activation_checkpointing: bool = False,
) -> FTTransformer:
    """An FT-Transformer; the defaults are the paper's default configuration (about 0.9M parameters for ten
    features). ``activation_checkpointing`` recomputes each block's activations in the backward pass."""
    if d_token < 1 or heads < 1 or d_token % heads:
        raise ValueError(f"d_token ({d_token}) must be a positive multiple of heads ({heads})")
    if n_blocks < 1 or ffn_factor <= 0:
        raise ValueError(f"need n_blocks >= 1 and ffn_factor > 0, got {n_blocks} and {ffn_factor}")
    ffn_hidden = max(1, int(d_token * ffn_factor))
    return FTTransformer(spec, int(d_token), int(n_blocks), int(heads), ffn_hidden, float(attention_dropout),
                         float(ffn_dropout), float(residual_dropout), bool(activation_checkpointing))  # fmt: skip
