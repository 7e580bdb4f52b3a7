"""Classification metrics, one definition for every step that scores a model (evaluate blesses with them,
quantize compares candidates with them): accuracy, precision, recall, F1, ROC AUC, log loss, calibration error,
confusion matrix and ROC curve. Needs scikit-learn (the evaluate and quantize images have it)."""

from __future__ import annotations

from typing import Any

import numpy as np

from kfp_mlops.components.shared.config import EvaluateConfig
from kfp_mlops.components.shared.errors import InputError
from kfp_mlops.components.shared.model_package import ModelConfig

MAX_ROC_POINTS = 200


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
    y: np.ndarray, probabilities: np.ndarray, settings: EvaluateConfig, threshold: float = 0.5
) -> dict[str, Any]:
    """Accuracy, precision/recall/F1, ROC AUC, log loss and calibration error, plus confusion matrix and ROC curve.
    Binary: the positive class is the second class, predicted at ``threshold``; multiclass: macro averages and
    one-vs-rest AUC."""
    from sklearn import metrics as skm

    n_classes = probabilities.shape[1]
    labels = list(range(n_classes))
    binary = n_classes == 2
    predicted = (probabilities[:, 1] >= threshold).astype(int) if binary else probabilities.argmax(1)
    average = "binary" if binary else "macro"
    present = np.unique(y)
    values = {
        "accuracy": skm.accuracy_score(y, predicted),
        "precision": skm.precision_score(y, predicted, average=average, zero_division=0),
        "recall": skm.recall_score(y, predicted, average=average, zero_division=0),
        "f1": skm.f1_score(y, predicted, average=average, zero_division=0),
        "log_loss": skm.log_loss(y, np.clip(probabilities, 1e-7, 1.0), labels=labels),
    }
    if len(present) < 2:
        raise InputError(f"the rows hold a single class ({present.tolist()}): ROC AUC is undefined")
    if binary:
        values["roc_auc"] = skm.roc_auc_score(y, probabilities[:, 1])
        fpr, tpr, thresholds = skm.roc_curve(y, probabilities[:, 1])
        confidence, correct = probabilities[:, 1], (y == 1).astype(float)
    else:
        values["roc_auc"] = skm.roc_auc_score(y, probabilities, multi_class="ovr", average="macro", labels=labels)
        fpr, tpr, thresholds = skm.roc_curve((y == probabilities.argmax(1)).astype(int), probabilities.max(1))
        confidence, correct = probabilities.max(1), (predicted == y).astype(float)
    values["expected_calibration_error"] = expected_calibration_error(confidence, correct, settings.calibration_bins)
    keep = np.unique(np.linspace(0, len(fpr) - 1, min(len(fpr), MAX_ROC_POINTS)).round().astype(int))
    return {
        "metrics": {name: float(value) for name, value in values.items()},
        "confusion_matrix": skm.confusion_matrix(y, predicted, labels=labels).tolist(),
        "roc_curve": {
            "fpr": fpr[keep].tolist(),
            "tpr": tpr[keep].tolist(),
            "thresholds": np.minimum(thresholds[keep], 1.0).tolist(),  # the first threshold is +inf
        },
    }
