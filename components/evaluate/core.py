"""Evaluate: score the ONNX model on the test split, compute metrics, compare with thresholds and the recorded
baseline, and decide the blessing (TFX Evaluator's guarantee). Paths and values only; no KFP, no torch.

A baseline record is a JSON document ``{"metrics": {...}, "model": URI, "content_hash": ..., ...}`` at
``evaluate.baseline``; the pipeline writes it for a blessed model (``record_baseline``). The next candidate must
not regress against that model, which is re-scored on the candidate's own test split (its recorded metrics are
used only when its model cannot be read).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from kfp_mlops.components.shared import storage
from kfp_mlops.components.shared.config import EvaluateConfig, PipelineConfig
from kfp_mlops.components.shared.errors import InputError
from kfp_mlops.components.shared.model_package import ModelConfig, Predictor, read_model_config
from kfp_mlops.components.shared.splits import read_split

MAX_ROC_POINTS = 200


@dataclass
class Evaluation:
    metrics: dict[str, float]
    classes: list[str]
    confusion_matrix: list[list[int]]
    roc_curve: dict[str, list[float]]  # fpr, tpr, thresholds (binary: the positive class)
    rows: int
    decision_threshold: float = 0.5
    blessed: bool = False
    reasons: list[str] = field(default_factory=list)
    baseline: dict[str, Any] | None = None


def predict_probabilities(model_dir: str, table) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities of the package's serving graph on raw rows (what Triton will serve), and the rows'
    true labels as class indices."""
    predictor = Predictor(model_dir)
    probabilities, _ = predictor.predict(table)
    return probabilities, class_indices(table, predictor.config)


def class_indices(table, config: ModelConfig) -> np.ndarray:
    """The label column as indices into the model's classes; a label the model never saw is an InputError."""
    index = {value: i for i, value in enumerate(config.classes)}
    values = table[config.label].to_pylist()
    try:
        return np.array([index[v] for v in values], dtype=np.int64)
    except KeyError as missing:
        raise InputError(
            f"test split: label {missing.args[0]!r} in column {config.label!r} does not occur in the training split"
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
        raise InputError(f"test split holds a single class ({present.tolist()}): ROC AUC is undefined")
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


def load_baseline(uri: str) -> dict[str, Any] | None:
    if not uri:
        return None
    try:
        record = json.loads(storage.read_bytes(uri))
    except FileNotFoundError:
        return None
    if not isinstance(record, dict) or not isinstance(record.get("metrics"), dict):
        raise InputError(f"baseline record {uri} has no 'metrics' mapping")
    return record


class BaselineUnavailableError(RuntimeError):
    """The baseline's model could not be re-scored, and the config does not allow its recorded metrics instead."""


def rescore_baseline(record: dict[str, Any], table, settings: EvaluateConfig) -> dict[str, Any]:
    """Score the baseline's model on this run's test split, so candidate and baseline are compared on the same rows
    (TFX's way). If its model cannot be read or scored here, the step fails (a credential problem must not quietly
    change the gate), unless ``evaluate.allow_recorded_baseline_metrics`` lets the recorded metrics stand."""
    import tempfile

    model_uri = record.get("model", "")
    try:
        with tempfile.TemporaryDirectory(prefix="kfp-mlops-baseline-") as local:
            if not storage.copy_tree(model_uri, local):
                raise FileNotFoundError(f"{model_uri} holds no files")
            probabilities, y = predict_probabilities(local, table)
            threshold = settings.decision_threshold or read_model_config(local).decision_threshold
            metrics = compute_metrics(y, probabilities, settings, threshold)["metrics"]
    except Exception as exc:
        problem = f"{type(exc).__name__}: {exc}"
        if not settings.allow_recorded_baseline_metrics:
            raise BaselineUnavailableError(
                f"the baseline model {model_uri or '(none recorded)'} of {settings.baseline} could not be re-scored "
                f"on this run's test split ({problem}); fix access to it, or set "
                "evaluate.allow_recorded_baseline_metrics: true to compare with its recorded metrics"
            ) from exc
        return record | {"scored_on": f"its own test split (recorded; re-scoring failed: {problem})"}
    return record | {"metrics": metrics, "recorded_metrics": record["metrics"], "scored_on": "this run's test split"}


def bless(metrics: dict[str, float], settings: EvaluateConfig, baseline: dict[str, Any] | None) -> list[str]:
    """Reasons not to bless: unmet absolute thresholds, and regressions beyond the allowed delta."""
    reasons = []
    for name, minimum in settings.min_metrics.items():
        if metrics[name] < minimum:
            reasons.append(f"{name} {metrics[name]:.4f} is below the threshold {minimum}")
    for name, maximum in settings.max_metrics.items():
        if metrics[name] > maximum:
            reasons.append(f"{name} {metrics[name]:.4f} is above the threshold {maximum}")
    if baseline is not None:
        for name, delta in settings.max_regression.items():
            reference = baseline["metrics"].get(name)
            if reference is not None and metrics[name] < reference - delta:
                reasons.append(
                    f"{name} {metrics[name]:.4f} regresses more than {delta} from the baseline's {reference:.4f}"
                )
    return reasons


def evaluate(config: PipelineConfig, model_dir: str, test_path: str) -> Evaluation:
    """Score the model on the test split and decide the blessing."""
    table = read_split(test_path, "test")
    model_config = read_model_config(model_dir)
    probabilities, y = predict_probabilities(model_dir, table)
    threshold = config.evaluate.decision_threshold or model_config.decision_threshold
    scored = compute_metrics(y, probabilities, config.evaluate, threshold)
    baseline = load_baseline(config.evaluate.baseline)
    if baseline is not None:
        baseline = rescore_baseline(baseline, table, config.evaluate)
    reasons = bless(scored["metrics"], config.evaluate, baseline)
    return Evaluation(
        metrics=scored["metrics"],
        classes=[str(c) for c in model_config.classes],
        confusion_matrix=scored["confusion_matrix"],
        roc_curve=scored["roc_curve"],
        rows=table.num_rows,
        decision_threshold=threshold,
        blessed=not reasons,
        reasons=reasons,
        baseline=baseline,
    )


def model_card(evaluation: Evaluation, config: PipelineConfig, model_config: ModelConfig, data_hash: str) -> str:
    """A Markdown model card: data, features, parameters, metrics against thresholds and baseline, decision."""
    decision = "**BLESSED**" if evaluation.blessed else "**NOT BLESSED**: " + "; ".join(evaluation.reasons)
    settings = config.evaluate
    batching = model_config.batching
    adjusted = "; adjusted to the data: " + "; ".join(batching["adjustments"]) if batching.get("adjustments") else ""
    missing = {
        "impute": "imputed inside the model (training median for numeric, the reserved category for categorical)",
        "error": "rejected at ingest",
    }[model_config.missing_values]
    lines = [
        "# Model card",
        "",
        f"- Decision: {decision}",
        f"- Data content hash: `{data_hash or 'unknown'}`",
        f"- Test rows: {evaluation.rows:,}; classes: {', '.join(evaluation.classes)}; "
        f"decision threshold: {evaluation.decision_threshold:.4f}",
        f"- Features: {', '.join(model_config.features)}",
        f"- Categorical: {', '.join(model_config.categorical) or 'none'}",
        f"- Missing values: {missing}",
        f"- Architecture: {json.dumps(model_config.architecture)}",
        f"- Training: {json.dumps(model_config.train)}",
        f"- Batching: micro_batch_size {batching.get('micro_batch_size')}, gradient_accumulation_steps "
        f"{batching.get('gradient_accumulation_steps')}, workers {batching.get('workers')}{adjusted}",
        "",
        "| metric | value | threshold | baseline |",
        "|---|---:|---:|---:|",
    ]
    baseline_metrics = (evaluation.baseline or {}).get("metrics", {})
    for name, value in evaluation.metrics.items():
        threshold = (
            f"≥ {settings.min_metrics[name]}"
            if name in settings.min_metrics
            else f"≤ {settings.max_metrics[name]}"
            if name in settings.max_metrics
            else ""
        )
        reference = baseline_metrics.get(name)
        lines.append(f"| {name} | {value:.4f} | {threshold} | {'' if reference is None else f'{reference:.4f}'} |")
    if evaluation.baseline:
        recorded = f" (model {evaluation.baseline.get('model', '?')}, scored on {evaluation.baseline['scored_on']})"
    else:
        recorded = " (none recorded yet: thresholds only)"
    lines += ["", f"Baseline: {settings.baseline or 'none configured'}{recorded}"]
    return "\n".join(lines) + "\n"


def record_baseline(uri: str, model_uri: str, metrics: dict[str, float], data_hash: str, run_id: str) -> None:
    """Record a blessed model as the baseline the next candidate is compared with (atomic write)."""
    record = {
        "model": model_uri,
        "metrics": metrics,
        "content_hash": data_hash,
        "run_id": run_id,
        "recorded_at": datetime.now(UTC).isoformat(),
    }
    storage.write_bytes(uri, json.dumps(record, indent=2).encode())
