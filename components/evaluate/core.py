"""Evaluate: score the model package's serving graph on the test split, compute metrics (classification, or
regression on the ``prediction`` output), compare with thresholds and the serving record's model, and decide the
blessing (TFX Evaluator's guarantee). Paths and values only; no KFP, no torch.

The baseline is the serving record at ``evaluate.baseline`` (``components/shared/records.py``): the pipeline writes
it once a blessed model is deployed (``record_baseline``). The next candidate must not regress against that model,
which is re-scored on the candidate's own test split (its recorded metrics stand in only when the config allows it).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from kfp_mlops.components.shared import storage
from kfp_mlops.components.shared.config import EvaluateConfig, PipelineConfig
from kfp_mlops.components.shared.metrics import (
    HIGHER_IS_BETTER,
    ClassScores,
    Scores,
    class_indices,
    compute_metrics,
    compute_regression_metrics,
    gate_failure,
    label_values,
    regressed,
)
from kfp_mlops.components.shared.model_package import ModelConfig, Predictor, read_model_config
from kfp_mlops.components.shared.records import Deployment, ServingRecord, read_record, write_record
from kfp_mlops.components.shared.registry import RegistryState
from kfp_mlops.components.shared.splits import read_split


@dataclass(frozen=True)
class Baseline:
    """The serving record's model as the candidate is compared with it: its metrics on this run's test split, or the
    recorded ones (when re-scoring failed and ``evaluate.allow_recorded_baseline_metrics`` allows them)."""

    record: ServingRecord
    metrics: dict[str, float]
    scored_on: str  # which test split ``metrics`` come from, for the model card
    undefined: dict[str, str] = field(default_factory=dict)  # metric -> why it has no value on that split

    @property
    def model(self) -> str:
        return self.record.model

    @property
    def recorded_metrics(self) -> dict[str, float]:
        return self.record.metrics


@dataclass
class Evaluation:
    metrics: dict[str, float]  # finite values only
    classes: list[str]
    confusion_matrix: list[list[int]]
    roc_curve: dict[str, list[float]]  # fpr, tpr, thresholds (binary: the positive class); empty when undefined
    rows: int
    decision_threshold: float = 0.5
    blessed: bool = False
    reasons: list[str] = field(default_factory=list)
    baseline: Baseline | None = None
    undefined: dict[str, str] = field(default_factory=dict)  # metric -> why it has no value on the test split
    averaging: str = ""  # how the metrics are defined (binary, or macro/weighted/one-vs-rest for multiclass)
    per_class: list[ClassScores] = field(default_factory=list)  # multiclass
    absent: list[str] = field(default_factory=list)  # classes with no row in the test split
    task: str = "binary"  # binary, multiclass or regression (no classes, confusion matrix or ROC curve)


def predict_probabilities(model_dir: str, table) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities of the package's serving graph on raw rows (what Triton will serve), and the rows'
    true labels as class indices."""
    predictor = Predictor(model_dir)
    probabilities, _ = predictor.predict(table)
    return probabilities, class_indices(table, predictor.config, "test")


def score_package(model_dir: str, table, settings: EvaluateConfig) -> tuple[Scores, ModelConfig, float]:
    """The package's scores on ``table`` (the test split), its config and the decision threshold used (the
    config's, else the model's; unused for regression)."""
    model_config = read_model_config(model_dir)
    threshold = settings.decision_threshold or model_config.decision_threshold
    if model_config.regression:
        _, prediction = Predictor(model_dir).predict(table)
        scores = compute_regression_metrics(label_values(table, model_config, "test"), prediction)
    else:
        probabilities, y = predict_probabilities(model_dir, table)
        scores = compute_metrics(y, probabilities, settings, threshold, model_config.classes)
    return scores, model_config, threshold


def load_baseline(uri: str) -> ServingRecord | None:
    """The serving record at ``uri`` (None on the first run, when nothing is recorded yet)."""
    return read_record(uri)


class BaselineUnavailableError(RuntimeError):
    """The baseline's model could not be re-scored, and the config does not allow its recorded metrics instead."""


def rescore_baseline(
    record: ServingRecord, table, settings: EvaluateConfig, fetch: Callable[[str, str], Any] = storage.copy_tree
) -> Baseline:
    """Score the baseline's model on this run's test split, so candidate and baseline are compared on the same rows
    (TFX's way). If its model cannot be read or scored here, the step fails (a credential problem must not quietly
    change the gate), unless ``evaluate.allow_recorded_baseline_metrics`` lets the recorded metrics stand.
    ``fetch(model_uri, folder)`` copies the package into a local folder (the registry's download for a champion)."""
    import tempfile

    model_uri = record.model
    try:
        with tempfile.TemporaryDirectory(prefix="kfp-mlops-baseline-") as local:
            if not fetch(model_uri, local):
                raise FileNotFoundError(f"{model_uri} holds no files")
            scores, _, _ = score_package(local, table, settings)
    except Exception as exc:
        problem = f"{type(exc).__name__}: {exc}"
        if not settings.allow_recorded_baseline_metrics:
            raise BaselineUnavailableError(
                f"the baseline model {model_uri or '(none recorded)'} of {settings.baseline} could not be re-scored "
                f"on this run's test split ({problem}); fix access to it, or set "
                "evaluate.allow_recorded_baseline_metrics: true to compare with its recorded metrics"
            ) from exc
        return Baseline(record, record.metrics, f"its own test split (recorded; re-scoring failed: {problem})")
    return Baseline(record, scores.metrics, "this run's test split", scores.undefined)


def bless(
    metrics: dict[str, float],
    settings: EvaluateConfig,
    baseline: Baseline | None,
    undefined: dict[str, str] | None = None,
    task: str = "binary",
) -> list[str]:
    """Reasons not to bless a ``task`` model: unmet absolute thresholds, regressions beyond the allowed delta (for
    a lower-is-better metric such as mse: an increase), and any gate whose metric is undefined on the test split
    (``undefined``: metric -> reason) or not a metric of the task — a gate fails closed, it never passes on a value
    that is not a number."""
    scored = {"metrics": metrics, "undefined": undefined or {}}
    reasons = []
    min_metrics, max_regression = settings.gates(task)
    gates = [("min_metrics", min_metrics), ("max_metrics", settings.max_metrics)]
    for gate, thresholds in gates:
        for name, limit in thresholds.items():
            failure = gate_failure(name, scored, "test", f"evaluate.{gate}", task)
            if failure:
                reasons.append(failure)
            elif gate == "min_metrics" and not metrics[name] >= limit:
                reasons.append(f"{name} {metrics[name]:.4f} is below the threshold {limit}")
            elif gate == "max_metrics" and not metrics[name] <= limit:
                reasons.append(f"{name} {metrics[name]:.4f} is above the threshold {limit}")
    if baseline is not None:
        for name, delta in max_regression.items():
            failure = gate_failure(name, scored, "test", "evaluate.max_regression", task)
            reference = baseline.metrics.get(name)
            if failure is None and name in baseline.undefined:
                baseline_scores = {"metrics": baseline.metrics, "undefined": baseline.undefined}
                failure = gate_failure(name, baseline_scores, "test", "evaluate.max_regression (the baseline's value)")
            if failure:
                reasons.append(failure)
            elif reference is not None and regressed(name, metrics[name], reference, delta):
                way = "regresses" if name in HIGHER_IS_BETTER else "increases"
                reasons.append(
                    f"{name} {metrics[name]:.4f} {way} more than {delta} from the baseline's {reference:.4f}"
                )
    return reasons


def evaluate(
    config: PipelineConfig,
    model_dir: str,
    test_path: str,
    record: ServingRecord | None | Literal["from_config"] = "from_config",
    fetch: Callable[[str, str], Any] = storage.copy_tree,
) -> Evaluation:
    """Score the model on the test split and decide the blessing, against ``record``'s model (by default the
    serving record at ``evaluate.baseline``; the executor passes the registry's champion when it is newer), whose
    package ``fetch`` copies into a local folder."""
    table = read_split(test_path, "test")
    scores, model_config, threshold = score_package(model_dir, table, config.evaluate)
    if record == "from_config":
        record = load_baseline(config.evaluate.baseline)
    baseline = None if record is None else rescore_baseline(record, table, config.evaluate, fetch)
    reasons = bless(scores.metrics, config.evaluate, baseline, scores.undefined, model_config.task)
    return Evaluation(
        metrics=scores.metrics,
        classes=[str(c) for c in model_config.classes],
        confusion_matrix=scores.confusion_matrix,
        roc_curve=scores.roc_curve,
        rows=table.num_rows,
        decision_threshold=threshold,
        blessed=not reasons,
        reasons=reasons,
        baseline=baseline,
        undefined=scores.undefined,
        averaging=scores.averaging(),
        per_class=scores.per_class,
        absent=scores.absent,
        task=model_config.task,
    )


def model_card(evaluation: Evaluation, config: PipelineConfig, model_config: ModelConfig, data_hash: str) -> str:
    """A Markdown model card: data, features, parameters, metrics against thresholds and baseline, decision."""
    decision = "**BLESSED**" if evaluation.blessed else "**NOT BLESSED**: " + "; ".join(evaluation.reasons)
    settings = config.evaluate
    min_metrics, max_regression = settings.gates(evaluation.task)
    batching = model_config.batching
    adjusted = "; adjusted to the data: " + "; ".join(batching["adjustments"]) if batching.get("adjustments") else ""
    missing = {
        "impute": "imputed inside the model (training median for numeric, the reserved category for categorical)",
        "error": "rejected at ingest",
    }[model_config.missing_values]
    if evaluation.task == "regression":
        predicts = f"task: regression (predicts {model_config.label!r}, in its units)"
    else:
        predicts = f"classes: {', '.join(evaluation.classes)}; decision threshold: {evaluation.decision_threshold:.4f}"
    lines = [
        "# Model card",
        "",
        f"- Decision: {decision}",
        f"- Data content hash: `{data_hash or 'unknown'}`",
        f"- Test rows: {evaluation.rows:,}; {predicts}",
        *([f"- Metrics: {evaluation.averaging}"] if evaluation.averaging else []),
        f"- Features: {', '.join(model_config.features)}",
        f"- Categorical: {', '.join(model_config.categorical) or 'none'}",
        f"- Missing values: {missing}",
        f"- Architecture: {json.dumps(model_config.architecture)}",
        f"- Training: {json.dumps(model_config.train)}",
        f"- Batching: micro_batch_size {batching.get('micro_batch_size')}, gradient_accumulation_steps "
        f"{batching.get('gradient_accumulation_steps')}, workers {batching.get('workers')}{adjusted}",
        "",
        "| metric | value | threshold | baseline | allowed change |",
        "|---|---:|---:|---:|---:|",
    ]
    baseline_metrics = evaluation.baseline.metrics if evaluation.baseline else {}
    gated = [*min_metrics, *settings.max_metrics, *max_regression]
    for name in dict.fromkeys([*evaluation.metrics, *evaluation.undefined, *gated]):
        threshold = " ".join(
            [*([f"≥ {min_metrics[name]}"] if name in min_metrics else []),
             *([f"≤ {settings.max_metrics[name]}"] if name in settings.max_metrics else [])]
        )  # fmt: skip
        change = ""
        if name in max_regression:
            change = f"{'−' if name in HIGHER_IS_BETTER else '+'}{max_regression[name]}"
        reference = baseline_metrics.get(name)
        value = (
            f"{evaluation.metrics[name]:.4f}"
            if name in evaluation.metrics
            else "undefined"
            if name in evaluation.undefined
            else "not computed"
        )
        reference_cell = "" if reference is None else f"{reference:.4f}"
        lines.append(f"| {name} | {value} | {threshold} | {reference_cell} | {change} |")
    if evaluation.undefined:
        lines += ["", *(f"- {name} is undefined: {reason}" for name, reason in evaluation.undefined.items())]
    if evaluation.per_class:
        lines += ["", "| class | rows | predicted | precision | recall | f1 | roc_auc (one-vs-rest) |",
                  "|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
        for c in evaluation.per_class:
            cells = (_cell(v) for v in (c.precision, c.recall, c.f1, c.roc_auc))
            lines.append(f"| {c.name} | {c.support} | {c.predicted} | " + " | ".join(cells) + " |")
        lines.append("\n– : undefined (a class with no test rows, or precision of a class never predicted, which the "
                     "macro precision counts as 0).")  # fmt: skip
        if evaluation.absent:
            lines.append(f"No test rows (left out of the averages): {', '.join(evaluation.absent)}.")
    if evaluation.baseline:
        recorded = f" (model {evaluation.baseline.model}, scored on {evaluation.baseline.scored_on})"
    else:
        recorded = " (none recorded yet: thresholds only)"
    lines += ["", f"Baseline: {settings.baseline or 'none configured'}{recorded}"]
    return "\n".join(lines) + "\n"


def _cell(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def record_baseline(
    uri: str,
    model_uri: str,
    metrics: dict[str, float],
    data_hash: str,
    run_id: str,
    reference_data: str = "",
    deployment: Deployment | None = None,
    registry: RegistryState | None = None,
) -> ServingRecord:
    """Record a blessed (and, when configured, deployed) model as the one the next candidate is compared with and
    the next drift check's reference comes from (compare-and-swap); returns the record that stands: another run's
    when it names a later version of the same deployment (``records.write_record``)."""
    record = ServingRecord(model=model_uri, metrics=metrics, content_hash=data_hash, run_id=run_id,
                           reference_data=reference_data, deployment=deployment, registry=registry)  # fmt: skip
    return write_record(uri, record)
