"""Tabular preprocessing shared by training, evaluation and serving: no torch, so every image can load it.

Numeric features become a float32 matrix (nulls/NaN → the training mean, so standardisation maps them to 0);
categorical features become int64 indices into vocabularies fitted on the training split (0 = unseen/null);
labels become int64 class indices. Statistics come from the training split only and are saved with the model.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kfp_mlops.components.shared.errors import InputError

FILE_NAME = "preprocessing.json"


@dataclass(frozen=True)
class Preprocessing:
    numeric: list[str]
    categorical: list[str]
    label: str
    means: list[float]
    stds: list[float]
    vocabularies: dict[str, list[str]]
    classes: list[str | int | bool]

    @classmethod
    def fit(cls, table: pa.Table, features: list[str], categorical: list[str], label: str) -> Preprocessing:
        """Fit on the training split: means/stds of numeric features, sorted vocabularies, sorted label classes."""
        numeric = [f for f in features if f not in categorical]
        means, stds = [], []
        for name in numeric:
            values = table[name].cast(pa.float64()).to_numpy(zero_copy_only=False)
            finite = values[np.isfinite(values)]
            means.append(float(finite.mean()) if finite.size else 0.0)
            std = float(finite.std()) if finite.size else 0.0
            stds.append(std if std > 1e-12 else 1.0)
        vocabularies = {
            name: sorted(str(v) for v in pc.unique(table[name].cast(pa.string())).to_pylist() if v is not None)
            for name in categorical
        }
        classes = sorted(pc.unique(table[label]).to_pylist(), key=lambda v: (str(type(v)), v))
        return cls(numeric, list(categorical), label, means, stds, vocabularies, classes)

    @property
    def features(self) -> list[str]:
        return self.numeric + self.categorical

    def cardinalities(self) -> list[int]:
        """Embedding table sizes: the vocabulary plus index 0 for unseen values."""
        return [len(self.vocabularies[name]) + 1 for name in self.categorical]

    def numeric_matrix(self, table: pa.Table) -> np.ndarray:
        """Raw (unstandardised) numeric features; nulls and NaN become the training mean. The model standardises."""
        if not self.numeric:
            return np.zeros((table.num_rows, 0), dtype=np.float32)
        columns = []
        for name, mean in zip(self.numeric, self.means, strict=True):
            values = table[name].cast(pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64, copy=True)
            values[np.isnan(values)] = mean
            columns.append(values)
        return np.stack(columns, axis=1).astype(np.float32)

    def categorical_matrix(self, table: pa.Table) -> np.ndarray:
        if not self.categorical:
            return np.zeros((table.num_rows, 0), dtype=np.int64)
        columns = []
        for name in self.categorical:
            vocabulary = pa.array(self.vocabularies[name], pa.string())
            positions = pc.index_in(table[name].cast(pa.string()), value_set=vocabulary)
            columns.append(pc.fill_null(pc.add(positions, 1), 0).to_numpy(zero_copy_only=False))
        return np.stack(columns, axis=1).astype(np.int64)

    def labels(self, table: pa.Table, split: str = "data") -> np.ndarray:
        values = table[self.label].to_pylist()
        index = {value: i for i, value in enumerate(self.classes)}
        try:
            return np.array([index[v] for v in values], dtype=np.int64)
        except KeyError as missing:
            raise InputError(
                f"{split}: label {missing.args[0]!r} in column {self.label!r} does not occur in the training split"
            ) from None

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / FILE_NAME
        path.write_text(json.dumps(asdict(self), indent=2))
        return path

    @classmethod
    def load(cls, directory: str | Path) -> Preprocessing:
        return cls(**json.loads((Path(directory) / FILE_NAME).read_text()))
