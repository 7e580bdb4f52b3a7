"""Model metrics, one definition for every step that scores a model (evaluate blesses with them, quantize
compares candidates with them). Needs scikit-learn (the evaluate and quantize images have it).

Binary (two classes; the positive class is the second, predicted at the decision threshold): accuracy, precision,
recall, F1, ROC AUC, log loss, expected calibration error.

Multiclass (predicted: the most probable class): accuracy; ``precision``/``recall``/``f1`` are **macro** averages
(the unweighted mean over the classes that have rows in the scored split; a class never predicted counts as
precision 0) and ``precision_weighted``/``recall_weighted``/``f1_weighted`` weight each class by its rows; log loss
over every class of the model; ``roc_auc`` is one-vs-rest, macro-averaged over the classes present in the split
(the classes left out are named in ``Scores.absent``); a per-class table.

Regression (``compute_regression_metrics``, on the ``prediction`` output in the label's units): ``mse``, ``rmse``,
``mae`` and ``r2`` (1 − residual sum of squares / total sum of squares around the scored labels' mean); no
confusion matrix, ROC curve or per-class table.

Direction: ``HIGHER_IS_BETTER`` metrics must not fall, every other one (log loss, calibration error, mse, rmse,
mae) must not rise; ``regressed`` says which way a gate reads a change.

A metric that cannot be computed on the rows (ROC AUC with a single class present, R² on constant labels, or any
value that is not a finite number) is never a number: it is left out of ``Scores.metrics`` and recorded in
``Scores.undefined`` with its reason, so that a gate needing it fails closed (``gate_failure``, which also refuses a
metric the model's task does not compute, such as roc_auc for regression) and no NaN reaches artifact metadata.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, get_args

import numpy as np

from kfp_mlops.components.shared.config import (
    CLASSIFICATION_METRICS,
    REGRESSION_METRICS,
    EvaluateConfig,
    HigherIsBetter,
)
from kfp_mlops.components.shared.errors import InputError
from kfp_mlops.components.shared.model_package import ModelConfig
from kfp_mlops.components.shared.tabular import regression_targets

MAX_ROC_POINTS = 200
WEIGHTED = ("precision_weighted", "recall_weighted", "f1_weighted")  # multiclass only
HIGHER_IS_BETTER = (*get_args(HigherIsBetter), *WEIGHTED)  # the others are lower-is-better
TASK_METRICS = {"binary": CLASSIFICATION_METRICS, "multiclass": (*CLASSIFICATION_METRICS, *WEIGHTED),
                "regression": REGRESSION_METRICS}  # fmt: skip


def regressed(metric: str, value: float, reference: float, allowed: float) -> bool:
    """Whether ``value`` is worse than ``reference`` by more than ``allowed`` (a fall for a higher-is-better
    metric, a rise for the others); a value that is not a number counts as worse."""
    change = reference - value if metric in HIGHER_IS_BETTER else value - reference
    return not change <= allowed + 1e-12


def label_values(table, config: ModelConfig, split: str) -> np.ndarray:
    """A regression model's true values (float64) from the label column; a missing or non-finite one is an
    InputError naming split, column and row."""
    return regression_targets(table[config.label], config.label, f"{split} split")


def class_indices(table, config: ModelConfig, split: str) -> np.ndarray:
    """The label column as indices into the model's classes; a label the model never saw is an InputError."""
    index = {value: i for i, value in enumerate(config.classes)}
    values = table[config.label].to_pylist()
    try:
        return np.array([index[v] for v in values], dtype=np.int64)
    except KeyError as missing:
        raise InputError(
            f"{split} split: label {missing.args[0]!r} in column {config.label!r} does not occur in the training split"
        ) from None


@dataclass(frozen=True)
class ClassScores:
    """One class's row of the per-class table; None where the class has no rows in the split (or no prediction)."""

    name: str
    support: int  # rows of the class in the split
    predicted: int  # rows predicted as the class
    precision: float | None
    recall: float | None
    f1: float | None
    roc_auc: float | None  # one-vs-rest


@dataclass(frozen=True)
class Scores:
    """What ``compute_metrics`` found: finite metrics only; the undefined ones with their reasons."""

    metrics: dict[str, float]
    undefined: dict[str, str]  # metric -> why it has no value on these rows
    confusion_matrix: list[list[int]]
    roc_curve: dict[str, list[float]]  # fpr, tpr, thresholds (binary: the positive class); empty when undefined
    per_class: list[ClassScores] = field(default_factory=list)
    absent: list[str] = field(default_factory=list)  # classes of the model with no row in the split
    multiclass: bool = False
    regression: bool = False

    def averaging(self) -> str:
        """How the metrics are defined, in one sentence for the model card."""
        if self.regression:
            return ("regression, on the predicted value in the label's units: mse, rmse and mae of the error; r2 is "
                    "1 − squared error / squared deviation of the labels from their mean")  # fmt: skip
        if not self.multiclass:
            return ("binary: precision, recall and F1 of the positive class at the decision threshold; ROC AUC of "
                    "its probability")  # fmt: skip
        present = len(self.per_class) - len(self.absent)
        left_out = f"; left out (no rows): {', '.join(map(repr, self.absent))}" if self.absent else ""
        return (
            f"multiclass, predicted class = the most probable: precision, recall and f1 are macro averages over the "
            f"{present} classes with rows (a class never predicted counts as precision 0), *_weighted weight each "
            f"class by its rows; roc_auc is one-vs-rest, macro-averaged over those {present} classes{left_out}"
        )


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int) -> float:
    """Weighted mean |accuracy - confidence| over equal-width confidence bins."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    error = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            error += mask.mean() * abs(correct[mask].mean() - confidence[mask].mean())
    return float(error)


def compute_metrics(
    y: np.ndarray,
    probabilities: np.ndarray,
    settings: EvaluateConfig,
    threshold: float = 0.5,
    classes: Sequence[Any] | None = None,
) -> Scores:
    """Score ``probabilities`` [N, classes] against true class indices ``y`` (see the module docstring).
    ``classes`` (the model's class values) name the classes in reasons and in the per-class table."""
    from sklearn import metrics as skm

    n_classes = probabilities.shape[1]
    names = [str(c) for c in (classes if classes is not None else range(n_classes))]
    labels = list(range(n_classes))
    binary = n_classes == 2
    predicted = (probabilities[:, 1] >= threshold).astype(int) if binary else probabilities.argmax(1)
    present = [int(c) for c in np.unique(y)]
    absent = [names[c] for c in labels if c not in present]
    values: dict[str, float] = {"accuracy": skm.accuracy_score(y, predicted)}
    undefined: dict[str, str] = {}
    if binary:
        for name, score in (("precision", skm.precision_score), ("recall", skm.recall_score), ("f1", skm.f1_score)):
            values[name] = score(y, predicted, average="binary", zero_division=0)
    else:
        for average, suffix in (("macro", ""), ("weighted", "_weighted")):
            precision, recall, f1, _ = skm.precision_recall_fscore_support(
                y, predicted, labels=present, average=average, zero_division=0
            )
            values |= {f"precision{suffix}": precision, f"recall{suffix}": recall, f"f1{suffix}": f1}
    values["log_loss"] = skm.log_loss(y, np.clip(probabilities, 1e-7, 1.0), labels=labels)
    one_vs_rest: dict[int, float] = {}
    if len(present) < 2:
        only = names[present[0]] if present else "none"
        undefined["roc_auc"] = (
            f"only class {only!r} has rows (class {', '.join(map(repr, absent))} "
            f"{'has' if len(absent) == 1 else 'have'} none); ROC AUC needs two"
        )
    elif binary:
        values["roc_auc"] = skm.roc_auc_score(y, probabilities[:, 1])
    else:
        one_vs_rest = {c: skm.roc_auc_score(y == c, probabilities[:, c]) for c in present}
        values["roc_auc"] = float(np.mean(list(one_vs_rest.values())))
    if binary:
        confidence, correct = probabilities[:, 1], (y == 1).astype(float)
    else:
        confidence, correct = probabilities.max(1), (predicted == y).astype(float)
    values["expected_calibration_error"] = expected_calibration_error(confidence, correct, settings.calibration_bins)
    metrics = {}
    for name, value in values.items():
        if math.isfinite(float(value)):
            metrics[name] = float(value)
        else:
            undefined[name] = f"it is not a finite number on these rows ({value})"
    return Scores(
        metrics=metrics,
        undefined=undefined,
        confusion_matrix=skm.confusion_matrix(y, predicted, labels=labels).tolist(),
        roc_curve=_roc_curve(y, probabilities, predicted, binary) if "roc_auc" in metrics else _EMPTY_CURVE,
        per_class=[] if binary else _per_class(y, predicted, names, one_vs_rest),
        absent=absent,
        multiclass=not binary,
    )


_EMPTY_CURVE: dict[str, list[float]] = {"fpr": [], "tpr": [], "thresholds": []}


def compute_regression_metrics(y: np.ndarray, prediction: np.ndarray) -> Scores:
    """Score predicted values [N] (or [N, 1]) against true values ``y`` [N] (see the module docstring)."""
    prediction = np.asarray(prediction, dtype=np.float64).reshape(-1)
    y = np.asarray(y, dtype=np.float64)
    error = prediction - y
    mse = float(np.mean(error**2))
    values = {"mse": mse, "rmse": math.sqrt(mse), "mae": float(np.mean(np.abs(error)))}
    undefined: dict[str, str] = {}
    spread = float(np.sum((y - y.mean()) ** 2)) if len(y) else 0.0
    if spread > 0:
        values["r2"] = 1.0 - float(np.sum(error**2)) / spread
    else:
        held = f"every label is {y[0]:g}" if len(y) else "no rows"
        undefined["r2"] = f"{held} (no variance around the mean); R² needs labels that vary"
    metrics = {}
    for name, value in values.items():
        if math.isfinite(value):
            metrics[name] = value
        else:
            undefined[name] = f"it is not a finite number on these rows ({value})"
    return Scores(metrics=metrics, undefined=undefined, confusion_matrix=[], roc_curve=_EMPTY_CURVE, regression=True)


def _roc_curve(y: np.ndarray, probabilities: np.ndarray, predicted: np.ndarray, binary: bool) -> dict[str, list]:
    """Binary: the positive class's ROC curve; multiclass: "the predicted class is right" against its probability.
    Empty when it is undefined on these rows (one kind of outcome only)."""
    from sklearn import metrics as skm

    if binary:
        hit, score = (y == 1).astype(int), probabilities[:, 1]
    else:
        hit, score = (y == predicted).astype(int), probabilities.max(1)
    if hit.min() == hit.max():
        return _EMPTY_CURVE
    fpr, tpr, thresholds = skm.roc_curve(hit, score)
    keep = np.unique(np.linspace(0, len(fpr) - 1, min(len(fpr), MAX_ROC_POINTS)).round().astype(int))
    return {
        "fpr": fpr[keep].tolist(),
        "tpr": tpr[keep].tolist(),
        "thresholds": np.minimum(thresholds[keep], 1.0).tolist(),  # the first threshold is +inf
    }


def _per_class(y: np.ndarray, predicted: np.ndarray, names: list[str], auc: dict[int, float]) -> list[ClassScores]:
    from sklearn import metrics as skm

    labels = list(range(len(names)))
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        y, predicted, labels=labels, average=None, zero_division=np.nan
    )
    counts = np.bincount(predicted, minlength=len(names))

    def value(v: float) -> float | None:
        return float(v) if math.isfinite(float(v)) else None

    return [
        ClassScores(names[c], int(support[c]), int(counts[c]), value(precision[c]),
                    value(recall[c]) if support[c] else None, value(f1[c]) if support[c] else None, auc.get(c))
        for c in labels
    ]  # fmt: skip


GATE_ADVICE = "choose split.by: entity_hash or split.stratify: true, more data, or another gate metric"


def gate_failure(
    metric: str, scores: Scores | dict[str, Any], split: str, gate: str, task: str | None = None
) -> str | None:
    """Why ``gate`` cannot judge ``metric`` (not a metric of a ``task`` model, undefined on the split, or not
    computed), or None when it has a value. Gates fail closed on it: never pass on an undefined value."""
    metrics = scores.metrics if isinstance(scores, Scores) else scores.get("metrics", {})
    undefined = scores.undefined if isinstance(scores, Scores) else scores.get("undefined", {})
    if task is not None and metric not in TASK_METRICS[task]:
        return (
            f"{metric} is not a metric of a {task} model (its metrics: {', '.join(TASK_METRICS[task])}); {gate} "
            f"cannot pass on it: gate on one of those"
        )
    if metric in metrics and math.isfinite(metrics[metric]):
        return None
    if metric in undefined:
        reason = undefined[metric]
    elif metric in metrics:
        reason = f"its value is {metrics[metric]}, not a number a gate can compare"
    else:
        reason = "it was not computed for this model"
    return f"{metric} is undefined on the {split} split: {reason}; {gate} cannot pass on it ({GATE_ADVICE})"
