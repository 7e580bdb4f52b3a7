"""Performance once labels arrive: a window of the prediction log joined with the labels, scored with evaluate's
metrics (components/shared/metrics.py, the same code path), per model, and judged for the model that serves.

The join (``join_labels``): a label row (entity, timestamp, label) is the outcome of the prediction of that entity at
that time, the meaning a training row has. It matches the latest prediction of the entity, by each model, whose
timestamp is at most ``tolerance_hours`` before it (0: the same instant). Before the join:

- duplicate predictions (one model, one entity, one timestamp: a batch scored twice, an online and a batch
  prediction) keep the latest ``predicted_at`` and are counted;
- duplicate labels (one entity, one timestamp) keep the last row read and are counted; a null label is a label that
  has not arrived: counted, left out;
- a label of a class the model never saw is counted, left out of the metrics, and makes the verdict ``degraded``
  (the model cannot predict it); for a regression model a label that is not a finite number is an InputError.

Counted, never hidden: predictions still waiting for a label, labels with no prediction (entities never predicted,
or predicted only after the label), and predictions by other models than the one that serves (scored and reported,
not judged). Verdicts: ``ok``; ``degraded`` (a reason per gate that failed: ``min_metrics``, ``max_metrics``,
``max_drop`` against the metrics the model had at evaluation); ``insufficient`` (fewer than ``min_rows`` matched
rows of the serving model, or a metric a gate needs is undefined on them: nothing to judge, no retraining).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from kfp_mlops.components.shared import datafiles, storage
from kfp_mlops.components.shared import prediction_log as log
from kfp_mlops.components.shared.config import EvaluateConfig, PerformanceConfig
from kfp_mlops.components.shared.errors import InputError
from kfp_mlops.components.shared.metrics import (
    Scores,
    compute_metrics,
    compute_regression_metrics,
    gate_failure,
    regressed,
)
from kfp_mlops.components.shared.model_package import ModelConfig

Verdict = Literal["ok", "degraded", "insufficient"]
_ROW = "__label_row"


@dataclass
class Counts:
    """What the join left out or folded, all counted."""

    predictions: int = 0  # in the window, after removing duplicates
    labels: int = 0  # read, after removing duplicates and null labels
    matched: int = 0  # labels matched by a prediction of any model
    duplicate_predictions: int = 0
    duplicate_labels: int = 0
    null_labels: int = 0
    unmatched_labels: int = 0  # no prediction of the entity within the tolerance before the label
    waiting_predictions: int = 0  # no label (yet)
    unknown_class_labels: int = 0  # of the serving model: a class it never saw
    unknown_classes: list[str] = field(default_factory=list)

    def figures(self) -> dict[str, int]:
        return {k: v for k, v in self.__dict__.items() if isinstance(v, int)}


@dataclass
class ModelPerformance:
    """One model's matched rows and their scores."""

    model_uri: str
    model_name: str
    model_version: int
    registry_version: str
    rows: int
    scores: Scores | None  # None: no rows to score
    serving: bool = False

    @property
    def title(self) -> str:
        registry = f", registry version {self.registry_version}" if self.registry_version else ""
        version = f"version {self.model_version}" if self.model_version else "in-process"
        return f"{self.model_name} {version}{registry}"


@dataclass
class PerformanceResult:
    verdict: Verdict
    reasons: list[str]
    counts: Counts
    models: list[ModelPerformance]
    reference_metrics: dict[str, float]  # the serving model's metrics at evaluation

    @property
    def serving(self) -> ModelPerformance | None:
        return next((m for m in self.models if m.serving), None)

    @property
    def degraded(self) -> bool:
        return self.verdict == "degraded"

    def metrics(self) -> dict[str, float]:
        """Flat figures for a Metrics artifact: the serving model's metrics, the counts, the verdict as 0/1."""
        serving = self.serving
        values: dict[str, float] = {f"{k}": float(v) for k, v in self.counts.figures().items()}
        values["degraded"] = float(self.degraded)
        values["serving_rows"] = float(serving.rows if serving else 0)
        if serving is not None and serving.scores is not None:
            values |= serving.scores.metrics
        return values


def deduplicate_predictions(table: pa.Table, entity: str, timestamp: str) -> tuple[pa.Table, int]:
    """One prediction per (model, entity, timestamp): the latest ``predicted_at``; and how many were dropped."""
    if not table.num_rows:
        return table, 0
    keys = [log.MODEL_URI, entity, timestamp]
    if table.select(keys).group_by(keys).aggregate([]).num_rows == table.num_rows:
        return table, 0  # no duplicate (the usual log): one hash pass instead of a sort
    order = pc.sort_indices(
        table,
        sort_keys=[(log.MODEL_URI, "ascending"), (entity, "ascending"), (timestamp, "ascending"),
                   (log.PREDICTED_AT, "descending")],
    )  # fmt: skip
    table = table.take(order)
    keys = [table.column(c).combine_chunks() for c in (log.MODEL_URI, entity, timestamp)]
    same = None
    for key in keys:
        equal = pc.equal(key[1:], key[:-1])
        same = equal if same is None else pc.and_(same, equal)
    keep = pa.concat_arrays([pa.array([True]), pc.invert(same.fill_null(False))])
    return table.filter(keep), table.num_rows - pc.sum(keep.cast(pa.int64())).as_py()


def prepare_labels(
    labels: pa.Table, config: ModelConfig, entity_type: pa.DataType, where: str
) -> tuple[pd.DataFrame, Counts]:
    """The labels as a frame (entity, timestamp, label, row number), duplicates and null labels removed and counted;
    an InputError naming ``where`` and the column for a missing column or an entity that cannot be read as the log's."""
    entity, timestamp, label = config.entity, config.timestamp, config.label
    missing = [c for c in (entity, timestamp, label) if c not in labels.column_names]
    if missing:
        raise InputError(
            f"labels {where}: missing column(s) {', '.join(missing)} (needs {entity}, {timestamp}, {label})"
        )
    times = labels.column(timestamp)
    if pa.types.is_string(times.type) or pa.types.is_large_string(times.type):
        try:
            times = pc.cast(times, pa.timestamp("us"))
        except pa.ArrowInvalid as exc:
            raise InputError(
                f"labels {where}: column {timestamp!r} holds text that is not a timestamp ({exc})"
            ) from None
    if not pa.types.is_timestamp(times.type):
        raise InputError(f"labels {where}: column {timestamp!r} is {times.type}, not a timestamp")
    if times.null_count:
        row = pc.index(pc.is_null(times), True).as_py()
        raise InputError(f"labels {where}: column {timestamp!r} is empty in row {row + 1}")
    times = pc.assume_timezone(times, "UTC") if times.type.tz is None else times
    try:
        ids = labels.column(entity).cast(entity_type)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise InputError(f"labels {where}: column {entity!r} ({labels.column(entity).type}) cannot be read as the "
                         f"prediction log's {entity_type} ids ({exc})") from None  # fmt: skip
    frame = pd.DataFrame({
        entity: ids.to_pandas(), timestamp: times.cast(log.TIMESTAMP_TYPE).to_pandas(),
        label: labels.column(label).to_pandas(), _ROW: np.arange(labels.num_rows),
    })  # fmt: skip
    if not config.regression:
        frame["__class"], frame["__text"] = label_classes(labels.column(label), config)
    counts = Counts()
    null = frame[label].isna()
    counts.null_labels = int(null.sum())
    frame = frame[~null]
    before = len(frame)
    frame = frame.drop_duplicates([entity, timestamp], keep="last")
    counts.duplicate_labels = before - len(frame)
    counts.labels = len(frame)
    if config.regression:
        values = pd.to_numeric(frame[label], errors="coerce")
        bad = ~np.isfinite(values.to_numpy(dtype=float))
        if bad.any():
            row = int(frame[_ROW].to_numpy()[bad.argmax()])
            value = frame[label].to_numpy()[bad.argmax()]
            raise InputError(f"labels {where}: column {label!r} row {row + 1}: {value!r} is not a finite number")
        frame[label] = values.astype(float)
    return frame.sort_values(timestamp, kind="stable"), counts


def join_labels(predictions: pa.Table, labels: pd.DataFrame, config: ModelConfig, tolerance_hours: float
                ) -> dict[str, pd.DataFrame]:  # fmt: skip
    """For each model of the log: the labels its predictions matched (a frame per model URI, one row per label, with
    ``__prediction``: the matched prediction's row in ``predictions``)."""
    entity, timestamp = config.entity, config.timestamp
    frame = pd.DataFrame({
        entity: predictions.column(entity).to_pandas(), "__predicted_for": predictions.column(timestamp).to_pandas(),
        "__model": predictions.column(log.MODEL_URI).to_pandas(), "__prediction": np.arange(predictions.num_rows),
    })  # fmt: skip
    matched = {}
    for model_uri, group in frame.groupby("__model", sort=True):
        group = group.drop(columns="__model").sort_values("__predicted_for", kind="stable")
        joined = pd.merge_asof(
            labels, group, left_on=timestamp, right_on="__predicted_for", by=entity, direction="backward",
            tolerance=pd.Timedelta(hours=tolerance_hours), allow_exact_matches=True,
        )  # fmt: skip
        found = joined[joined["__prediction"].notna()]
        matched[str(model_uri)] = found.assign(__prediction=found["__prediction"].astype(np.int64))
    return matched


def label_classes(values: pa.ChunkedArray | pa.Array, config: ModelConfig) -> tuple[np.ndarray, np.ndarray]:
    """Each label's class index (-1: a class the model never saw) and its text, compared as text (the log's
    ``predicted`` column and the model's classes alike; a float label of a whole number reads as that integer, as
    CSV with a null reads an integer column)."""
    if pa.types.is_floating(values.type):
        whole = pc.all(pc.equal(pc.floor(values), values)).as_py()
        values = values.cast(pa.int64()) if whole else values
    text = pc.cast(values, pa.string())
    index = pc.index_in(text, value_set=pa.array([str(c) for c in config.classes], pa.string()))
    return index.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64), text.to_numpy(zero_copy_only=False)


def outputs(predictions: pa.Table, config: ModelConfig) -> np.ndarray:
    """The log's outputs as one array: probabilities [N, classes] (float64), or a regression's values [N]."""
    if config.regression:
        return predictions.column(log.PREDICTION).to_numpy().astype(np.float64)
    column = predictions.column(log.PROBABILITIES).combine_chunks()
    flat = pc.list_flatten(column).to_numpy(zero_copy_only=False).astype(np.float64)
    width = len(config.classes)
    if column.null_count or flat.size != width * len(column):
        raise InputError(f"prediction log: {log.PROBABILITIES} does not hold {width} probabilities on every row (the "
                         f"model has {width} classes): the log was written by another kind of model")  # fmt: skip
    return flat.reshape(len(column), width)


def score(rows: pd.DataFrame, values: np.ndarray, config: ModelConfig, evaluate: EvaluateConfig
          ) -> tuple[Scores | None, int, list[str]]:  # fmt: skip
    """Scores of one model's matched rows with evaluate's metrics (``values``: ``outputs`` of the log); the rows of
    unknown classes left out (their count, and the classes)."""
    if rows.empty:
        return None, 0, []
    chosen = values[rows["__prediction"].to_numpy()]
    if config.regression:
        return compute_regression_metrics(rows[config.label].to_numpy(dtype=float), chosen), 0, []
    y = rows["__class"].to_numpy()
    unknown = y < 0
    unknown_classes = sorted(set(rows["__text"].to_numpy()[unknown].tolist()))
    if unknown.all():
        return None, int(unknown.sum()), unknown_classes
    known = ~unknown
    scores = compute_metrics(y[known], chosen[known], evaluate, config.decision_threshold, config.classes)
    return scores, int(unknown.sum()), unknown_classes


def judge(
    scores: Scores | None, rows: int, settings: PerformanceConfig, reference: Mapping[str, float], task: str
) -> tuple[Verdict, list[str]]:
    """The serving model's verdict and its reasons (module docstring)."""
    if scores is None or rows < settings.min_rows:
        return "insufficient", [f"{rows} labelled prediction(s) of the serving model, fewer than performance.min_rows "
                                f"({settings.min_rows})"]  # fmt: skip
    reasons, undefined = [], []
    gates = [(m, "min_metrics", v) for m, v in settings.min_metrics.items()]
    gates += [(m, "max_metrics", v) for m, v in settings.max_metrics.items()]
    gates += [(m, "max_drop", v) for m, v in settings.max_drop.items()]
    for metric, gate, limit in gates:
        failure = gate_failure(metric, scores, "labelled window", f"performance.{gate}", task)
        if failure is not None:
            undefined.append(failure)
            continue
        value = scores.metrics[metric]
        if gate == "min_metrics" and value < limit:
            reasons.append(f"{metric} {value:.4f} < performance.min_metrics {limit}")
        elif gate == "max_metrics" and value > limit:
            reasons.append(f"{metric} {value:.4f} > performance.max_metrics {limit}")
        elif gate == "max_drop":
            if metric not in reference:
                undefined.append(f"{metric}: the serving record has no evaluation value to compare with")
            elif regressed(metric, value, reference[metric], limit):
                reasons.append(f"{metric} {value:.4f} vs {reference[metric]:.4f} at evaluation: worse by more than "
                               f"performance.max_drop {limit}")  # fmt: skip
    if reasons:
        return "degraded", reasons
    if undefined:
        return "insufficient", undefined
    return "ok", []


def check_performance(
    predictions: pa.Table,
    labels: pa.Table,
    labels_where: str,
    config: ModelConfig,
    settings: PerformanceConfig,
    evaluate: EvaluateConfig,
    serving_model: str,
    reference_metrics: Mapping[str, float],
) -> PerformanceResult:
    """Join a window of the prediction log with the labels and judge the model at ``serving_model`` (its package URI)
    against ``settings`` and its ``reference_metrics`` at evaluation (module docstring)."""
    entity, timestamp = config.entity, config.timestamp
    predictions, duplicates = deduplicate_predictions(predictions, entity, timestamp)
    frame, counts = prepare_labels(labels, config, predictions.schema.field(entity).type, labels_where)
    counts.predictions, counts.duplicate_predictions = predictions.num_rows, duplicates
    matched = join_labels(predictions, frame, config, settings.tolerance_hours) if predictions.num_rows else {}
    values = outputs(predictions, config) if matched else np.empty(0)
    label_rows, used, models = [], 0, []
    for model_uri, rows in matched.items():
        label_rows.append(rows[_ROW].to_numpy())
        used += rows["__prediction"].nunique()
        scores, unknown, unknown_classes = score(rows, values, config, evaluate)
        serving = model_uri == serving_model
        if serving:
            counts.unknown_class_labels, counts.unknown_classes = unknown, unknown_classes
        first = predictions.slice(int(rows["__prediction"].iloc[0]), 1).to_pylist()[0] if len(rows) else {}
        models.append(ModelPerformance(
            model_uri=model_uri, model_name=str(first.get(log.MODEL_NAME, "")),
            model_version=int(first.get(log.MODEL_VERSION) or 0),
            registry_version=str(first.get(log.REGISTRY_VERSION) or ""),
            rows=len(rows) - unknown, scores=scores, serving=serving,
        ))  # fmt: skip
    counts.matched = len(np.unique(np.concatenate(label_rows))) if label_rows else 0
    counts.unmatched_labels = counts.labels - counts.matched
    counts.waiting_predictions = counts.predictions - used
    serving = next((m for m in models if m.serving), None)
    verdict, reasons = judge(serving.scores if serving else None, serving.rows if serving else 0, settings,
                             reference_metrics, config.task)  # fmt: skip
    if counts.unknown_class_labels:
        classes = ", ".join(map(repr, counts.unknown_classes))
        reasons = [*([] if verdict == "insufficient" else reasons),
                   f"{counts.unknown_class_labels} label(s) of class(es) the model never saw: {classes}"]  # fmt: skip
        verdict = "degraded"
    return PerformanceResult(verdict, reasons, counts, models, dict(reference_metrics))


def summary(result: PerformanceResult, window: str) -> str:
    """The Markdown summary: verdict, reasons, counts, each model's metrics."""
    lines = ["# Performance", "", f"- Window: {window}", f"- Verdict: **{result.verdict}**"]
    lines += [f"  - {reason}" for reason in result.reasons]
    counts = result.counts
    lines += [
        f"- Predictions: {counts.predictions} ({counts.duplicate_predictions} duplicate(s) dropped, "
        f"{counts.waiting_predictions} waiting for a label)",
        f"- Labels: {counts.labels} ({counts.duplicate_labels} duplicate(s) dropped, {counts.null_labels} null, "
        f"{counts.unmatched_labels} with no prediction within the tolerance, {counts.unknown_class_labels} of a class "
        "the model never saw)",
        "",
        "| model | rows | " + " | ".join(_metric_names(result)) + " |",
        "|---|---|" + "---|" * len(_metric_names(result)),
    ]
    for model in result.models:
        values = model.scores.metrics if model.scores else {}
        cells = " | ".join(f"{values[m]:.4f}" if m in values else "—" for m in _metric_names(result))
        title = model.title + (" (serving)" if model.serving else "")
        lines.append(f"| {title} | {model.rows} | {cells} |")
    if result.reference_metrics:
        cells = " | ".join(
            f"{result.reference_metrics[m]:.4f}" if m in result.reference_metrics else "—"
            for m in _metric_names(result)
        )
        lines.append(f"| at evaluation (serving model) | — | {cells} |")
    return "\n".join(lines) + "\n"


def _metric_names(result: PerformanceResult) -> list[str]:
    names: list[str] = []
    for model in result.models:
        for name in model.scores.metrics if model.scores else {}:
            if name not in names:
                names.append(name)
    return names


def read_labels(uri: str) -> tuple[pa.Table, list[str]]:
    """Every label file ``uri`` names (file, prefix or glob; Parquet or CSV by extension), as one table."""
    files = datafiles.resolve_files(uri, what="performance.labels")
    tables = []
    for file in files:
        tables.append(datafiles.parse_table(file, storage.read_bytes(file), datafiles.format_of(file)))
    try:
        return pa.concat_tables(tables, promote_options="permissive"), files
    except pa.ArrowInvalid as exc:
        raise InputError(f"labels {uri}: the files' columns do not agree ({exc})") from None


def window(labels: pa.Table, timestamp: str, settings: PerformanceConfig) -> tuple[datetime | None, datetime | None]:
    """The predictions to read: those up to the newest label, and with ``window_days``, from that many days (and the
    tolerance) before it; (None, None) for an empty labels table (every prediction)."""
    if not labels.num_rows or timestamp not in labels.column_names:
        return None, None
    newest = pc.max(labels.column(timestamp)).as_py()
    if not isinstance(newest, datetime):
        return None, None
    newest = newest if newest.tzinfo else newest.replace(tzinfo=UTC)
    if settings.window_days is None:
        return None, newest
    return newest - timedelta(days=settings.window_days, hours=settings.tolerance_hours), newest
