"""Tabular preprocessing fitted on the training split: no torch, so every image can load it.

Numeric features become a float32 matrix with missing values (null, NaN) replaced by the training median;
categorical features become int64 indices into vocabularies fitted on the training split (0 = missing or unseen:
the reserved category); labels become int64 class indices (binary, multiclass) or float32 values standardised with
the training split's mean and standard deviation (regression; ``resolve_task`` decides which). A *missing
category* is a null, a floating NaN or the empty string (``MISSING_CATEGORY``, what a client sends for one);
booleans read as categories are ``"true"`` and ``"false"``, integers and floats their Arrow string form
(``category_values`` is the one conversion, used by ingest, training, the serving inputs and drift alike). The
model standardises numeric inputs with the means and standard deviations kept here. The exported serving graph
applies the same imputation and vocabularies to raw values (see ``serving_graph``), so training and serving share
one definition.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kfp_mlops.components.shared.errors import InputError

FILE_NAME = "preprocessing.json"
MISSING_CATEGORY = ""  # what a caller sends for a missing category; never part of a vocabulary
Task = Literal["binary", "multiclass", "regression"]


def looks_continuous(values: pa.ChunkedArray | pa.Array) -> bool:
    """A floating-point column holding a finite value with a fraction: ``schema.task: auto`` reads it as a
    regression target (the one rule; ingest applies it to every row, training to its splits when ingest did not)."""
    if not pa.types.is_floating(values.type):
        return False
    finite = pc.filter(values, pc.is_finite(values))
    return len(finite) > 0 and bool(pc.any(pc.not_equal(finite, pc.floor(finite))).as_py())


def resolve_task(requested: str, labels: pa.ChunkedArray | pa.Array, column: str) -> Task:
    """The task for ``schema.task`` (auto, classification, regression) and the label values: regression, or
    binary/multiclass by the number of classes. A regression label must be numeric (InputError naming it)."""
    regression = requested == "regression" or (requested == "auto" and looks_continuous(labels))
    if regression:
        if not (pa.types.is_integer(labels.type) or pa.types.is_floating(labels.type)):
            raise InputError(
                f"label {column!r} is {labels.type}, not a number: schema.task regression needs a numeric label"
            )
        return "regression"
    return "binary" if len(pc.drop_null(pc.unique(labels))) <= 2 else "multiclass"


@dataclass(frozen=True)
class Preprocessing:
    numeric: list[str]
    categorical: list[str]
    label: str
    means: list[float]
    stds: list[float]
    medians: list[float]
    vocabularies: dict[str, list[str]]
    classes: list[str | int]  # empty for regression
    task: Task = "binary"
    label_mean: float = 0.0  # regression: the model learns (label - label_mean) / label_std
    label_std: float = 1.0

    @classmethod
    def fit(
        cls, table: pa.Table, features: list[str], categorical: list[str], label: str, task: Task | None = None
    ) -> Preprocessing:
        """Fit on the training split: median/mean/std of numeric features (over present values), sorted
        vocabularies, sorted label classes (or the label's mean and standard deviation for regression; ``task``
        None: ``resolve_task("auto", …)``). A numeric feature with no value at all is an InputError."""
        numeric = [f for f in features if f not in categorical]
        means, stds, medians = [], [], []
        for name in numeric:
            values = numeric_values(table[name])
            present = values[~np.isnan(values)]
            if present.size == 0:
                raise InputError(f"train split: column {name!r} has no value in any row; drop it from schema.features")
            means.append(float(present.mean()))
            medians.append(float(np.median(present)))
            std = float(present.std())
            stds.append(std if std > 1e-12 else 1.0)
        vocabularies = {name: vocabulary(table[name]) for name in categorical}
        task = task or resolve_task("auto", table[label], label)
        if task == "regression":
            target = regression_targets(table[label], label, "train split")
            std = float(target.std())
            return cls(numeric, list(categorical), label, means, stds, medians, vocabularies, [], task,
                       float(target.mean()), std if std > 1e-12 else 1.0)  # fmt: skip
        classes = sorted(pc.unique(table[label]).to_pylist(), key=lambda v: (str(type(v)), v))
        return cls(numeric, list(categorical), label, means, stds, medians, vocabularies, classes, task)

    @property
    def outputs(self) -> int:
        """Width of the network's output: one logit per class, or one value for regression."""
        return 1 if self.task == "regression" else len(self.classes)

    @property
    def features(self) -> list[str]:
        return self.numeric + self.categorical

    def cardinalities(self) -> list[int]:
        """Embedding table sizes: the vocabulary plus index 0 for missing and unseen values."""
        return [len(self.vocabularies[name]) + 1 for name in self.categorical]

    def numeric_matrix(self, table: pa.Table) -> np.ndarray:
        """Raw (unstandardised) numeric features, missing values imputed with the training median."""
        if not self.numeric:
            return np.zeros((table.num_rows, 0), dtype=np.float32)
        columns = []
        for name, median in zip(self.numeric, self.medians, strict=True):
            values = numeric_values(table[name])
            values[np.isnan(values)] = median
            columns.append(values)
        return np.stack(columns, axis=1).astype(np.float32)

    def categorical_matrix(self, table: pa.Table) -> np.ndarray:
        if not self.categorical:
            return np.zeros((table.num_rows, 0), dtype=np.int64)
        columns = []
        for name in self.categorical:
            vocabulary = pa.array(self.vocabularies[name], pa.string())
            positions = pc.index_in(category_values(table[name]), value_set=vocabulary)
            columns.append(pc.fill_null(pc.add(positions, 1), 0).to_numpy(zero_copy_only=False))
        return np.stack(columns, axis=1).astype(np.int64)

    def labels(self, table: pa.Table, split: str = "data") -> np.ndarray:
        """Class indices (int64), or for regression the standardised targets (float32)."""
        if self.task == "regression":
            target = regression_targets(table[self.label], self.label, split)
            return ((target - self.label_mean) / self.label_std).astype(np.float32)
        values = table[self.label].to_pylist()
        index = {value: i for i, value in enumerate(self.classes)}
        try:
            return np.array([index[v] for v in values], dtype=np.int64)
        except KeyError as missing:
            raise InputError(
                f"{split}: label {missing.args[0]!r} in column {self.label!r} does not occur in the training split: "
                "the model cannot learn it; set split.stratify: true to put rows of every class into train, or "
                "remove those rows"
            ) from None

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / FILE_NAME
        path.write_text(json.dumps(asdict(self), indent=2))
        return path

    @classmethod
    def load(cls, directory: str | Path) -> Preprocessing:
        return cls(**json.loads((Path(directory) / FILE_NAME).read_text()))


def regression_targets(values: pa.ChunkedArray | pa.Array, column: str, split: str) -> np.ndarray:
    """The label as float64; a missing or non-finite value is an InputError naming split, column and row."""
    target = numeric_values(values)
    bad = ~np.isfinite(target)
    if bad.any():
        row = int(np.argmax(bad))
        raise InputError(
            f"{split}: column {column!r} row {row + 1}: regression label {values[row].as_py()!r} is not a finite number"
        )
    return target


def numeric_values(values: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A writable float64 copy with null (and NaN) as NaN."""
    return values.cast(pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64, copy=True)


def category_values(values: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    """Categories as strings, every missing spelling as null: null, a floating NaN and the empty string."""
    if pa.types.is_floating(values.type):
        values = pc.if_else(pc.is_nan(values), pa.scalar(None, values.type), values)
    strings = values.cast(pa.string())
    return pc.if_else(pc.equal(strings, MISSING_CATEGORY), pa.scalar(None, pa.string()), strings)


def vocabulary(values: pa.ChunkedArray | pa.Array) -> list[str]:
    """The sorted distinct categories present: missing values (see ``category_values``) are never part of it, so
    a column with no value at all has an empty vocabulary (every row then takes the reserved category)."""
    return sorted(pc.drop_null(pc.unique(category_values(values))).to_pylist())
