"""The performance check on a model trained for real: its predictions of the test split written to a real prediction
log, joined with labels that arrive later, scored with evaluate's metrics and judged (components/performance/)."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from sklearn import metrics as skm

from kfp_mlops.components.performance import core, executor
from kfp_mlops.components.shared import outcomes, prediction_log
from kfp_mlops.components.shared.config import EvaluateConfig, PerformanceConfig
from kfp_mlops.components.shared.errors import InputError
from kfp_mlops.components.shared.metrics import compute_metrics
from kfp_mlops.components.shared.model_package import Predictor, read_model_config
from kfp_mlops.components.shared.records import ServingRecord, write_record

ENTITY, TIME, LABEL = "customer_id", "event_timestamp", "churned"


@pytest.fixture(scope="module")
def model_dir(trained_model) -> str:
    return str(trained_model[1] / "model")


@pytest.fixture(scope="module")
def test_rows(ingested) -> pa.Table:
    return pq.read_table(ingested[1].test)


def predictions_of(model_dir: str, rows: pa.Table, model_uri: str = "", version: int = 3, run_id: str = "r1"):
    """The model's predictions of ``rows`` as prediction log rows (entity, timestamp, features, log columns)."""
    predictor = Predictor(model_dir)
    probabilities, labels = predictor.predict(rows)
    table = rows.select([ENTITY, TIME, *predictor.config.features])
    columns = prediction_log.log_columns(
        rows.num_rows, probabilities=probabilities.tolist(), predicted=[str(v) for v in labels], prediction=None,
        model_name="churn", model_version=version, registry_version="7", model_uri=model_uri or model_dir,
        run_id=run_id,
    )  # fmt: skip
    for name, values in columns.items():
        table = table.append_column(name, values)
    return table


def labels_of(rows: pa.Table, after: timedelta = timedelta(0)) -> pa.Table:
    times = pc.add(rows.column(TIME), pa.scalar(after, pa.duration("us"))) if after else rows.column(TIME)
    return pa.table({ENTITY: rows.column(ENTITY), TIME: times, LABEL: rows.column(LABEL)})


def flipped(labels: pa.Table) -> pa.Table:
    values = pc.subtract(pa.scalar(1, labels.column(LABEL).type), labels.column(LABEL))
    return labels.set_column(2, LABEL, values)


def check(model_dir, predictions, labels, settings=None, serving=None, reference=None):
    config = read_model_config(model_dir)
    settings = settings or PerformanceConfig(min_rows=50, max_drop={})
    return core.check_performance(predictions, labels, "labels.parquet", config, settings, EvaluateConfig(),
                                  serving or model_dir, reference or {})  # fmt: skip


def test_metrics_are_evaluates_on_the_same_rows_and_match_sklearn(model_dir, test_rows):
    predictions = predictions_of(model_dir, test_rows)
    result = check(model_dir, predictions, labels_of(test_rows))
    config = read_model_config(model_dir)
    probabilities = np.stack(predictions.column(prediction_log.PROBABILITIES).to_numpy(zero_copy_only=False))
    y = np.array([config.classes.index(v) for v in test_rows.column(LABEL).to_pylist()])
    expected = compute_metrics(y, probabilities.astype(np.float64), EvaluateConfig(), config.decision_threshold,
                               config.classes)  # fmt: skip
    serving = result.serving
    assert serving is not None and serving.rows == test_rows.num_rows
    assert serving.scores.metrics == pytest.approx(expected.metrics, abs=1e-12)
    assert serving.scores.metrics["roc_auc"] == pytest.approx(skm.roc_auc_score(y, probabilities[:, 1]), abs=1e-9)
    assert result.counts.matched == test_rows.num_rows and result.counts.waiting_predictions == 0
    assert result.verdict == "ok", result.reasons


def test_flipped_labels_degrade_against_the_metrics_at_evaluation(model_dir, test_rows):
    predictions = predictions_of(model_dir, test_rows)
    good = check(model_dir, predictions, labels_of(test_rows)).serving.scores.metrics
    settings = PerformanceConfig(min_rows=50, max_drop={"roc_auc": 0.05}, min_metrics={"accuracy": 0.5})
    result = check(model_dir, predictions, flipped(labels_of(test_rows)), settings, reference=good)
    assert result.verdict == "degraded"
    assert any(r.startswith("roc_auc ") and "performance.max_drop 0.05" in r for r in result.reasons), result.reasons
    assert result.metrics()["degraded"] == 1.0
    same = check(model_dir, predictions, labels_of(test_rows), settings, reference=good)
    assert same.verdict == "ok", same.reasons


def test_labels_arriving_later_match_within_the_tolerance_only(model_dir, test_rows):
    predictions = predictions_of(model_dir, test_rows)
    late = labels_of(test_rows, after=timedelta(hours=30))
    narrow = check(model_dir, predictions, late, PerformanceConfig(min_rows=50, tolerance_hours=24, max_drop={}))
    # only labels of entities with another prediction 6-30 h before the label's time match (the same entity's earlier
    # event); the rest find none within 24 h
    assert 0 < narrow.counts.matched < test_rows.num_rows / 10
    result = check(model_dir, predictions, late, PerformanceConfig(min_rows=50, tolerance_hours=48, max_drop={}))
    assert result.counts.matched == test_rows.num_rows and result.verdict == "ok"


def test_unmatched_waiting_duplicate_and_unknown_class_rows_are_counted(model_dir, test_rows):
    half = test_rows.num_rows // 2
    predictions = predictions_of(model_dir, test_rows)
    twice = pa.concat_tables([predictions, predictions.slice(0, 10)])  # the first 10 scored twice
    ids = pa.array([10**9, 10**9 + 1], test_rows.column(ENTITY).type)  # never predicted
    stranger = pa.table(
        {ENTITY: ids, TIME: test_rows.column(TIME).slice(0, 2), LABEL: test_rows.column(LABEL).slice(0, 2)}
    )
    labels = pa.concat_tables([labels_of(test_rows.slice(0, half)), stranger])
    labels = pa.concat_tables([labels, labels.slice(0, 3)])  # 3 labels sent twice
    result = check(model_dir, twice, labels)
    counts = result.counts
    assert counts.duplicate_predictions == 10 and counts.predictions == test_rows.num_rows
    assert counts.duplicate_labels == 3 and counts.labels == half + 2
    assert counts.unmatched_labels == 2 and counts.matched == half
    assert counts.waiting_predictions == test_rows.num_rows - half
    unknown = labels_of(test_rows).set_column(
        2, LABEL, pa.array([7] * test_rows.num_rows, test_rows.column(LABEL).type)
    )
    mixed = pa.concat_tables([labels_of(test_rows.slice(0, half)), unknown.slice(half)])
    result = check(model_dir, predictions, mixed)
    assert result.verdict == "degraded" and result.counts.unknown_class_labels == test_rows.num_rows - half
    assert any("class(es) the model never saw: '7'" in r for r in result.reasons), result.reasons
    assert result.serving.rows == half  # the unknown ones are left out of the metrics, not scored as wrong


def test_an_empty_window_or_another_models_log_is_insufficient_never_a_metric(model_dir, test_rows):
    config = read_model_config(model_dir)
    empty = prediction_log.empty_log(ENTITY, TIME, test_rows.column(ENTITY).type)
    result = check(model_dir, empty, labels_of(test_rows))
    assert result.verdict == "insufficient" and result.serving is None and result.counts.unmatched_labels > 0
    assert "degraded" in result.metrics() and "roc_auc" not in result.metrics()
    other = predictions_of(model_dir, test_rows, model_uri="s3://models/older", version=2)
    result = check(model_dir, other, labels_of(test_rows))
    assert result.verdict == "insufficient" and result.serving is None
    (older,) = result.models
    assert older.model_version == 2 and older.rows == test_rows.num_rows and "roc_auc" in older.scores.metrics
    assert "churn version 2, registry version 7" in core.summary(result, "all")
    assert config.entity == ENTITY


def test_bad_labels_are_input_errors_naming_file_and_column(model_dir, test_rows):
    predictions = predictions_of(model_dir, test_rows.slice(0, 20))
    with pytest.raises(InputError, match=r"labels labels.parquet: missing column\(s\) churned"):
        check(model_dir, predictions, labels_of(test_rows).drop_columns([LABEL]))
    text_times = labels_of(test_rows).set_column(1, TIME, pa.array(["yesterday"] * test_rows.num_rows))
    with pytest.raises(InputError, match="column 'event_timestamp' holds text that is not a timestamp"):
        check(model_dir, predictions, text_times)
    words = labels_of(test_rows).set_column(0, ENTITY, pa.array(["x"] * test_rows.num_rows))
    with pytest.raises(InputError, match="column 'customer_id' .* cannot be read as the prediction log's int64 ids"):
        check(model_dir, predictions, words)


def test_the_executor_judges_the_serving_model_and_keeps_drifts_decision(tmp_path, model_dir, test_rows, ingested):
    reference = check(model_dir, predictions_of(model_dir, test_rows), labels_of(test_rows)).serving.scores.metrics
    record = tmp_path / "record.json"
    write_record(str(record), ServingRecord(model=model_dir, metrics=reference))
    log = tmp_path / "log"
    prediction_log.write_batch(str(log), predictions_of(model_dir, test_rows), TIME, "r1", 0)
    labels = tmp_path / "labels.parquet"
    pq.write_table(flipped(labels_of(test_rows)), labels)
    config, _ = ingested
    config = config.model_copy(update={"evaluate": config.evaluate.model_copy(update={"baseline": str(record)})})
    text = config.to_yaml() + f"\nperformance: {{log: {log}, min_rows: 50}}\n"

    def artifacts(run: Path):
        run.mkdir(parents=True)
        made = {}
        for name in ("metrics", "classification_metrics", "summary", "verdict"):
            made[name] = SimpleNamespace(path=str(run / name), uri=str(run / name), metadata={},
                                         log_metric=lambda *a: None, log_confusion_matrix=lambda *a: None,
                                         log_roc_curve=lambda *a: None)  # fmt: skip
        return made

    out = artifacts(tmp_path / "training-2026-01-01-00-00-00-000000" / "performance-check")
    action = executor.run(text, str(labels), "none", "7", **out)
    assert action == "nested"
    verdict = json.loads(Path(out["verdict"].path).read_text())
    assert verdict["verdict"] == "degraded" and verdict["counts"]["matched"] == test_rows.num_rows
    recorded = outcomes.read_all(str(tmp_path / "training-2026-01-01-00-00-00-000000"))
    assert recorded.performance.verdict == "degraded" and recorded.performance.action == "nested"
    assert "**degraded**" in Path(out["summary"].path).read_text()
    skipped = artifacts(tmp_path / "training-2026-01-02-00-00-00-000000" / "performance-check")
    assert executor.run(config.to_yaml(), "", "kfp_api", "8", **skipped) == "kfp_api"
    assert json.loads(Path(skipped["verdict"].path).read_text())["verdict"] == "skipped"
