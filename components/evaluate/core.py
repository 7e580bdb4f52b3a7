"""Evaluate: score the model package's serving graph on the test split, compute metrics, compare with thresholds
and the serving record's model, and decide the blessing (TFX Evaluator's guarantee). Paths and values only; no KFP,
no torch.

The baseline is the serving record at ``evaluate.baseline`` (``components/shared/records.py``): the pipeline writes
it once a blessed model is deployed (``record_baseline``). The next candidate must not regress against that model,
which is re-scored on the candidate's own test split (its recorded metrics stand in only when the config allows it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kfp_mlops.components.shared import storage
from kfp_mlops.components.shared.config import EvaluateConfig, PipelineConfig
from kfp_mlops.components.shared.metrics import class_indices, compute_metrics
from kfp_mlops.components.shared.model_package import ModelConfig, Predictor, read_model_config
from kfp_mlops.components.shared.records import Deployment, ServingRecord, read_record, write_record
from kfp_mlops.components.shared.splits import read_split


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
    return probabilities, class_indices(table, predictor.config, "test")


def load_baseline(uri: str) -> dict[str, Any] | None:
    """The serving record at ``uri`` as a dict (None on the first run, when nothing is recorded yet)."""
    record = read_record(uri)
    return None if record is None else record.model_dump()


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


def record_baseline(
    uri: str,
    model_uri: str,
    metrics: dict[str, float],
    data_hash: str,
    run_id: str,
    reference_data: str = "",
    deployment: Deployment | None = None,
) -> ServingRecord:
    """Record a blessed (and, when configured, deployed) model as the one the next candidate is compared with and
    the next drift check's reference comes from (atomic write)."""
    record = ServingRecord(model=model_uri, metrics=metrics, content_hash=data_hash, run_id=run_id,
                           reference_data=reference_data, deployment=deployment)  # fmt: skip
    write_record(uri, record)
    return record
