"""Evaluation of a really trained model (ONNX Runtime): metrics, calibration, blessing against thresholds and
a recorded baseline, model card."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from support.configs import pipeline_config

from kfp_mlops.components.evaluate import core
from kfp_mlops.components.shared import metrics
from kfp_mlops.components.shared.config import EvaluateConfig
from kfp_mlops.components.shared.model_package import read_model_config
from kfp_mlops.components.shared.records import ServingRecord


def with_evaluate(config, **values):
    return config.model_copy(update={"evaluate": EvaluateConfig(**values)})


def test_expected_calibration_error_of_perfect_and_overconfident_predictions():
    confidence = np.array([0.9, 0.9, 0.9, 0.9, 0.1, 0.1])
    correct = np.array([1, 1, 1, 1, 0, 0], dtype=float)
    assert metrics.expected_calibration_error(confidence, correct, bins=10) == pytest.approx(0.1)
    assert metrics.expected_calibration_error(np.full(4, 1.0), np.array([1, 0, 1, 0.0]), bins=5) == pytest.approx(0.5)


def test_trained_model_is_scored_on_the_test_split_and_blessed_on_first_run(trained_model, ingested):
    result, directory = trained_model
    config, paths = ingested
    evaluation = core.evaluate(
        with_evaluate(config, min_metrics={"roc_auc": 0.6}), str(directory / "model"), paths.test
    )
    assert evaluation.blessed and evaluation.reasons == [] and evaluation.baseline is None
    assert 0.6 < evaluation.metrics["roc_auc"] <= 1.0
    assert set(evaluation.metrics) == {
        "accuracy", "precision", "recall", "f1", "roc_auc", "log_loss", "expected_calibration_error",
    }  # fmt: skip
    assert sum(map(sum, evaluation.confusion_matrix)) == evaluation.rows
    assert evaluation.classes == ["0", "1"]
    roc = evaluation.roc_curve
    assert roc["fpr"][0] == 0.0 and roc["tpr"][-1] == 1.0 and max(roc["thresholds"]) <= 1.0
    assert len(roc["fpr"]) <= metrics.MAX_ROC_POINTS
    import pyarrow.parquet as pq

    test = pq.read_table(paths.test)
    probabilities, _ = core.predict_probabilities(str(directory / "model"), test)
    assert evaluation.metrics["roc_auc"] == pytest.approx(
        roc_auc_score(test["churned"].to_numpy(), probabilities[:, 1])
    )


def test_model_worse_than_the_recorded_baseline_is_not_blessed(trained_model, ingested, tmp_path):
    _, directory = trained_model
    config, paths = ingested
    first = core.evaluate(config, str(directory / "model"), paths.test)
    baseline = tmp_path / "baseline.json"
    better = {**first.metrics, "roc_auc": first.metrics["roc_auc"] + 0.05}
    core.record_baseline(str(baseline), str(tmp_path / "retired-model"), better, "sha256:x", "run-1")
    fallback = {"baseline": str(baseline), "allow_recorded_baseline_metrics": True}
    strict = with_evaluate(config, max_regression={"roc_auc": 0.01}, **fallback)
    evaluation = core.evaluate(strict, str(directory / "model"), paths.test)
    assert not evaluation.blessed
    assert any("roc_auc" in r and "regresses more than 0.01 from the baseline" in r for r in evaluation.reasons)
    assert evaluation.baseline.scored_on.startswith("its own test split (recorded; re-scoring failed")
    tolerant = with_evaluate(config, max_regression={"roc_auc": 0.1}, **fallback)
    assert core.evaluate(tolerant, str(directory / "model"), paths.test).blessed


def test_a_baseline_model_that_cannot_be_read_fails_the_step_unless_the_fallback_is_allowed(
    trained_model, ingested, tmp_path
):
    """A credential or storage problem must not quietly swap the re-scored baseline for its recorded numbers."""
    _, directory = trained_model
    config, paths = ingested
    baseline = tmp_path / "baseline.json"
    core.record_baseline(str(baseline), str(tmp_path / "unreadable-model"), {"roc_auc": 0.5}, "sha256:x", "run-1")
    with pytest.raises(
        core.BaselineUnavailableError, match=r"could not be re-scored .*allow_recorded_baseline_metrics"
    ):
        core.evaluate(with_evaluate(config, baseline=str(baseline)), str(directory / "model"), paths.test)


def test_absolute_thresholds_gate_the_blessing(trained_model, ingested):
    _, directory = trained_model
    config, paths = ingested
    evaluation = core.evaluate(
        with_evaluate(config, min_metrics={"roc_auc": 0.999}, max_metrics={"log_loss": 0.0001}),
        str(directory / "model"),
        paths.test,
    )
    assert not evaluation.blessed
    assert any(r.startswith("roc_auc") and "below the threshold 0.999" in r for r in evaluation.reasons)
    assert any(r.startswith("log_loss") and "above the threshold 0.0001" in r for r in evaluation.reasons)


@pytest.mark.servers
def test_baseline_record_round_trips_through_s3(s3):
    uri = s3.uri("registry/churn/baseline.json")
    assert core.load_baseline(uri) is None  # first run: nothing recorded
    core.record_baseline(uri, "s3://m/1", {"roc_auc": 0.8}, "sha256:abc", "run-7")
    record = core.load_baseline(uri)
    assert record.metrics == {"roc_auc": 0.8} and record.run_id == "run-7"


def test_malformed_baseline_is_reported(tmp_path):
    path = tmp_path / "b.json"
    path.write_text(json.dumps({"model": "x"}))
    with pytest.raises(ValueError, match=r"serving record .*b.json is malformed: metrics: Field required"):
        core.load_baseline(str(path))


def test_model_card_names_data_features_parameters_metrics_and_decision(trained_model, ingested):
    _, directory = trained_model
    config, paths = ingested
    evaluation = core.evaluate(config, str(directory / "model"), paths.test)
    model_config = read_model_config(directory / "model")
    card = core.model_card(evaluation, config, model_config, "sha256:feed")
    assert "**BLESSED**" in card and "sha256:feed" in card and "monthly_charges" in card
    assert "| roc_auc |" in card and "≥ 0.6" in card and '"zero_stage": 2' in card
    assert "Missing values: imputed inside the model" in card and "micro_batch_size 64" in card


def test_decision_threshold_comes_from_the_model_unless_the_config_sets_one(trained_model, ingested):
    _, directory = trained_model
    config, paths = ingested
    tuned = json.loads((directory / "model" / "model_config.json").read_text())["decision_threshold"]
    assert 0.0 < tuned < 0.5  # imbalanced labels: the F1-optimal cut sits below 0.5
    evaluation = core.evaluate(config, str(directory / "model"), paths.test)
    assert evaluation.decision_threshold == pytest.approx(tuned)
    assert evaluation.metrics["recall"] > 0 and evaluation.metrics["f1"] > 0
    fixed = core.evaluate(with_evaluate(config, decision_threshold=0.99), str(directory / "model"), paths.test)
    assert fixed.decision_threshold == 0.99 and fixed.metrics["recall"] < evaluation.metrics["recall"]


def test_baseline_model_is_rescored_on_this_test_split_not_taken_from_its_record(trained_model, ingested, tmp_path):
    _, directory = trained_model
    config, paths = ingested
    baseline = tmp_path / "baseline.json"
    # the record claims a far better model than the one it points at: re-scoring exposes that
    core.record_baseline(str(baseline), str(directory / "model"), {"roc_auc": 0.99}, "sha256:x", "run-1")
    settings = {"baseline": str(baseline), "max_regression": {"roc_auc": 0.01}}
    evaluation = core.evaluate(with_evaluate(config, **settings), str(directory / "model"), paths.test)
    assert evaluation.baseline.scored_on == "this run's test split"
    assert evaluation.baseline.recorded_metrics == {"roc_auc": 0.99}
    assert evaluation.baseline.metrics["roc_auc"] == pytest.approx(evaluation.metrics["roc_auc"])
    assert evaluation.blessed  # the same model against itself: no regression


def test_a_really_worse_model_is_not_blessed_against_the_rescored_baseline_model(trained_model, ingested, tmp_path):
    from kfp_mlops.components.train.core import train

    _, directory = trained_model
    config, paths = ingested
    weak_settings = {"epochs": 1, "model": {"options": {"hidden_layers": [2]}}, "optimizer": {"lr": 1e-5}, "workers": 2}
    weak_config = pipeline_config(config.data.source, train=weak_settings)
    train(weak_config, paths.train, paths.validation, str(tmp_path / "weak"), str(tmp_path / "ckpt"))
    baseline = tmp_path / "baseline.json"
    core.record_baseline(str(baseline), str(directory / "model"), {"roc_auc": 0.0}, "sha256:x", "run-1")
    settings = {"baseline": str(baseline), "min_metrics": {}, "max_regression": {"roc_auc": 0.01}}
    evaluation = core.evaluate(with_evaluate(config, **settings), str(tmp_path / "weak"), paths.test)
    assert evaluation.baseline.scored_on == "this run's test split"
    assert evaluation.metrics["roc_auc"] < evaluation.baseline.metrics["roc_auc"] - 0.01
    assert not evaluation.blessed and "regresses more than 0.01" in evaluation.reasons[0]


# --- multiclass metrics, undefined metrics, gates that fail closed ---------------------------------------------------


def _five_class_scores(y: np.ndarray, seed: int = 0) -> np.ndarray:
    """Probabilities over 5 classes that favour the true class (a fair, imperfect model)."""
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.ones(5), len(y))
    p[np.arange(len(y)), y] += rng.uniform(0, 0.8, len(y))
    return p / p.sum(1, keepdims=True)


def test_multiclass_metrics_are_macro_weighted_and_one_vs_rest_over_the_classes_present():
    from sklearn import metrics as skm
    from support import weather

    rng = np.random.default_rng(3)
    settings = EvaluateConfig()
    y_all = rng.integers(0, 5, 400)  # every class present: one-vs-rest macro is scikit-learn's own
    p_all = _five_class_scores(y_all)
    scores = metrics.compute_metrics(y_all, p_all, settings, classes=weather.CLASSES)
    assert scores.metrics["roc_auc"] == pytest.approx(skm.roc_auc_score(y_all, p_all, multi_class="ovr"))
    assert scores.absent == [] and scores.undefined == {} and scores.multiclass
    y = np.where(y_all == 3, 4, y_all)  # 'snow' (index 3) absent from the scored rows
    p = _five_class_scores(y)
    scores = metrics.compute_metrics(y, p, settings, classes=weather.CLASSES)
    predicted, present = p.argmax(1), [0, 1, 2, 4]
    assert scores.absent == ["snow"] and scores.undefined == {}
    assert scores.metrics["accuracy"] == pytest.approx(skm.accuracy_score(y, predicted))
    for average, suffix in (("macro", ""), ("weighted", "_weighted")):
        for name, score in (("precision", skm.precision_score), ("recall", skm.recall_score), ("f1", skm.f1_score)):
            expected = score(y, predicted, labels=present, average=average, zero_division=0)
            assert scores.metrics[name + suffix] == pytest.approx(expected), name + suffix
    ovr = np.mean([skm.roc_auc_score(y == c, p[:, c]) for c in present])
    assert scores.metrics["roc_auc"] == pytest.approx(ovr)
    assert scores.metrics["log_loss"] == pytest.approx(skm.log_loss(y, p, labels=list(range(5))))
    by_class = {c.name: c for c in scores.per_class}
    assert by_class["snow"].support == 0 and by_class["snow"].recall is None and by_class["snow"].roc_auc is None
    assert by_class["sun"].support == int((y == 4).sum()) and by_class["sun"].roc_auc == pytest.approx(
        skm.roc_auc_score(y == 4, p[:, 4])
    )
    assert "macro averages over the 4 classes with rows" in scores.averaging() and "'snow'" in scores.averaging()
    binary = metrics.compute_metrics(y_all % 2, np.stack([p_all[:, 0], 1 - p_all[:, 0]], 1), settings)
    assert set(binary.metrics) == {"accuracy", "precision", "recall", "f1", "roc_auc", "log_loss",
                                   "expected_calibration_error"}  # binary: unchanged  # fmt: skip


def test_a_gate_on_an_undefined_metric_fails_closed_naming_the_metric_and_the_reason(trained_model, ingested, tmp_path):
    """A test split holding one class: ROC AUC is undefined. min_metrics and max_regression refuse it (never pass on
    NaN), the model card says so, and no NaN reaches the metrics, the blessing or the console."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    from google.protobuf import json_format, struct_pb2

    from kfp_mlops.components.evaluate import executor

    _, directory = trained_model
    config, paths = ingested
    test = pq.read_table(paths.test)
    one_class = tmp_path / "one_class.parquet"
    pq.write_table(test.filter(pc.equal(test["churned"], 0)), one_class)
    baseline = tmp_path / "baseline.json"
    core.record_baseline(str(baseline), str(directory / "model"), {"roc_auc": 0.8}, "sha256:x", "run-1")
    config = with_evaluate(config, min_metrics={"roc_auc": 0.6, "accuracy": 0.5}, baseline=str(baseline))
    evaluation = core.evaluate(config, str(directory / "model"), str(one_class))
    assert not evaluation.blessed and "roc_auc" not in evaluation.metrics
    assert evaluation.undefined == {"roc_auc": "only class '0' has rows (class '1' has none); ROC AUC needs two"}
    assert evaluation.reasons == [
        "roc_auc is undefined on the test split: only class '0' has rows (class '1' has none); ROC AUC needs two; "
        f"evaluate.min_metrics cannot pass on it ({metrics.GATE_ADVICE})",
        "roc_auc is undefined on the test split: only class '0' has rows (class '1' has none); ROC AUC needs two; "
        f"evaluate.max_regression cannot pass on it ({metrics.GATE_ADVICE})",
    ]
    card = core.model_card(evaluation, config, read_model_config(directory / "model"), "")
    assert "| roc_auc | undefined | ≥ 0.6 |" in card and "**NOT BLESSED**: roc_auc is undefined" in card
    assert "nan" not in card.lower()

    model, test_data, outputs = executor_artifacts(tmp_path, directory / "model", one_class)
    blessed = executor.run(config.to_yaml(), model, test_data, **outputs)
    assert blessed is False
    assert outputs["blessing"].metadata["undefined_metrics"] == evaluation.undefined
    assert "roc_auc" not in outputs["metrics"].metadata and "accuracy" in outputs["metrics"].metadata
    for artifact in outputs.values():  # what the local runner and a cluster's launcher do with the metadata
        json.dumps(artifact.metadata, allow_nan=False)
        json_format.MessageToJson(json_format.ParseDict(artifact.metadata, struct_pb2.Struct()))


def scored_baseline(scores: dict[str, float], undefined: dict[str, str] | None = None) -> core.Baseline:
    return core.Baseline(ServingRecord(model="m", metrics={}), scores, "this run's test split", undefined or {})


def test_bless_fails_closed_on_a_missing_or_non_finite_value_and_passes_on_defined_ones():
    settings = EvaluateConfig(min_metrics={"f1": 0.5}, max_metrics={"log_loss": 1.0}, max_regression={"f1": 0.01})
    assert core.bless({"f1": 0.7, "log_loss": 0.4}, settings, scored_baseline({"f1": 0.69})) == []
    reasons = core.bless({"f1": float("nan"), "log_loss": 0.4}, settings, None)
    assert reasons == [f"f1 is undefined on the test split: its value is nan, not a number a gate can compare; "
                       f"evaluate.min_metrics cannot pass on it ({metrics.GATE_ADVICE})"]  # fmt: skip
    reasons = core.bless({"f1": 0.7}, settings, scored_baseline({"f1": 0.6}))
    assert reasons == [f"log_loss is undefined on the test split: it was not computed for this model; "
                       f"evaluate.max_metrics cannot pass on it ({metrics.GATE_ADVICE})"]  # fmt: skip
    baseline = scored_baseline({}, {"f1": "no row was predicted"})
    (reason,) = core.bless({"f1": 0.7, "log_loss": 0.4}, settings, baseline)
    assert reason.startswith("f1 is undefined on the test split: no row was predicted; evaluate.max_regression (the")


# --- regression: metrics, gates in each metric's direction, model card, artifacts ------------------------------------


@pytest.fixture(scope="module")
def regression(tmp_path_factory):
    """(config, SplitPaths, package) of a regression model trained for real (tests/support/regression.py)."""
    from support.regression import trained_regression

    return trained_regression(tmp_path_factory.getbasetemp() / "regression")


def test_regression_metrics_are_scikit_learn_s_and_r2_is_undefined_on_constant_labels():
    from sklearn import metrics as skm

    y = np.array([3.0, -1.0, 2.0, 7.0, 0.5])
    prediction = np.array([[2.5], [0.0], [2.0], [8.0], [0.0]])  # [N, 1], as the serving graph emits it
    scores = metrics.compute_regression_metrics(y, prediction)
    assert scores.metrics == {
        "mse": pytest.approx((0.25 + 1 + 0 + 1 + 0.25) / 5),
        "rmse": pytest.approx(np.sqrt(0.5)),
        "mae": pytest.approx((0.5 + 1 + 0 + 1 + 0.5) / 5),
        "r2": pytest.approx(skm.r2_score(y, prediction[:, 0])),
    }
    assert scores.metrics["mse"] == pytest.approx(skm.mean_squared_error(y, prediction[:, 0]))
    assert scores.metrics["mae"] == pytest.approx(skm.mean_absolute_error(y, prediction[:, 0]))
    assert scores.undefined == {} and scores.confusion_matrix == [] and scores.roc_curve["fpr"] == []
    assert scores.regression and scores.averaging().startswith("regression")
    constant = metrics.compute_regression_metrics(np.full(4, 42.0), np.array([41.0, 42.0, 43.0, 42.0]))
    assert constant.metrics == {"mse": 0.5, "rmse": pytest.approx(np.sqrt(0.5)), "mae": 0.5}
    assert constant.undefined == {"r2": "every label is 42 (no variance around the mean); R² needs labels that vary"}


def test_bless_reads_a_lower_is_better_regression_as_an_increase():
    settings = EvaluateConfig(min_metrics={}, max_metrics={"mae": 2.0}, max_regression={"mse": 0.1, "r2": 0.01})
    baseline = scored_baseline({"mse": 1.0, "r2": 0.80})
    assert core.bless({"mse": 1.05, "mae": 0.9, "r2": 0.795}, settings, baseline, task="regression") == []
    assert core.bless({"mse": 0.2, "mae": 0.3, "r2": 0.95}, settings, baseline, task="regression") == []  # better
    reasons = core.bless({"mse": 1.2, "mae": 2.5, "r2": 0.7}, settings, baseline, task="regression")
    assert reasons == [
        "mae 2.5000 is above the threshold 2.0",
        "mse 1.2000 increases more than 0.1 from the baseline's 1.0000",
        "r2 0.7000 regresses more than 0.01 from the baseline's 0.8000",
    ]
    assert EvaluateConfig().gates("regression") == ({"r2": 0.0}, {"r2": 0.01})


def test_a_regression_model_is_scored_on_its_prediction_and_blessed_on_the_default_r2_gate(regression, tmp_path):
    from google.protobuf import json_format, struct_pb2
    from sklearn.metrics import r2_score
    from support.regression import LABEL

    from kfp_mlops.components.evaluate import executor
    from kfp_mlops.components.shared.model_package import Predictor

    config, paths, model = regression
    assert config.evaluate.min_metrics is None  # the task's default: r2 ≥ 0
    evaluation = core.evaluate(config, str(model), paths.test)
    assert evaluation.blessed and evaluation.reasons == [] and evaluation.task == "regression"
    assert set(evaluation.metrics) == {"mse", "rmse", "mae", "r2"} and evaluation.undefined == {}
    assert evaluation.classes == [] and evaluation.confusion_matrix == [] and evaluation.per_class == []
    test = pq_read(paths.test)
    _, prediction = Predictor(model).predict(test)
    assert evaluation.metrics["r2"] == pytest.approx(r2_score(test[LABEL].to_numpy(), prediction), rel=1e-6)
    assert evaluation.metrics["r2"] > 0.5  # the label is a linear function of monthly_charges, plus noise
    card = core.model_card(evaluation, config, read_model_config(model), "sha256:feed")
    assert "**BLESSED**" in card and f"task: regression (predicts {LABEL!r}" in card
    assert "| r2 | " in card and "| ≥ 0.0 |" in card and "| mse | " in card
    assert "classes:" not in card and "decision threshold" not in card and "nan" not in card.lower()

    model_artifact, test_data, outputs = executor_artifacts(tmp_path, model, paths.test)
    assert executor.run(config.to_yaml(), model_artifact, test_data, **outputs) is True
    assert set(outputs["metrics"].metadata) == {"mse", "rmse", "mae", "r2"}
    assert outputs["classification_metrics"].metadata == {"note": "regression model: no confusion matrix or ROC curve"}
    assert outputs["blessing"].metadata["task"] == "regression"
    for artifact in outputs.values():
        json_format.MessageToJson(json_format.ParseDict(artifact.metadata, struct_pb2.Struct()))
        json.dumps(artifact.metadata, allow_nan=False)


def executor_artifacts(directory, model_path, test_path) -> tuple:
    """The evaluate executor's KFP artifacts: (model, test split, outputs by name), outputs under ``directory``."""
    from kfp import dsl

    def output(kind, name):
        artifact = kind(name=name, uri=str(directory / name))
        artifact.path = str(directory / name)
        return artifact

    outputs = {name: output(kind, name) for name, kind in (("metrics", dsl.Metrics), ("blessing", dsl.Artifact),
               ("classification_metrics", dsl.ClassificationMetrics), ("model_card", dsl.Markdown))}  # fmt: skip
    model, test_data = output(dsl.Model, "model"), output(dsl.Dataset, "test")
    model.path, test_data.path = str(model_path), str(test_path)
    return model, test_data, outputs


def pq_read(path):
    import pyarrow.parquet as pq

    return pq.read_table(path)


def test_an_mse_regression_gate_blesses_the_better_model_and_refuses_the_worse_one(regression, tmp_path):
    """The baseline's model is re-scored; for mse the allowed change is an increase."""
    from support.packages import edited_package, halve_weights

    config, paths, model = regression
    worse = edited_package(model, tmp_path / "worse", halve_weights)
    settings = {"max_regression": {"mse": 0.0}, "baseline": str(tmp_path / "baseline.json")}
    core.record_baseline(settings["baseline"], str(model), {"mse": 0.0}, "sha256:x", "run-1")
    evaluation = core.evaluate(with_evaluate(config, **settings), str(worse), paths.test)
    assert evaluation.baseline.scored_on == "this run's test split"
    assert evaluation.metrics["mse"] > evaluation.baseline.metrics["mse"]
    assert not evaluation.blessed
    assert evaluation.reasons[-1] == (f"mse {evaluation.metrics['mse']:.4f} increases more than 0.0 from the "
                                      f"baseline's {evaluation.baseline.metrics['mse']:.4f}")  # fmt: skip
    core.record_baseline(settings["baseline"], str(worse), {"mse": 0.0}, "sha256:x", "run-2")
    better = core.evaluate(with_evaluate(config, **settings), str(model), paths.test)
    assert better.metrics["mse"] < better.baseline.metrics["mse"] and better.blessed  # a fall in mse is no regression


def test_r2_on_constant_test_labels_and_a_classification_gate_fail_closed_on_a_regression_model(regression, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from support.regression import LABEL

    config, paths, model = regression
    test = pq_read(paths.test)
    constant = tmp_path / "constant.parquet"
    column = test.column_names.index(LABEL)
    pq.write_table(test.set_column(column, LABEL, pa.array([100.0] * test.num_rows)), constant)
    evaluation = core.evaluate(config, str(model), str(constant))
    assert not evaluation.blessed and set(evaluation.metrics) == {"mse", "rmse", "mae"}
    assert evaluation.reasons == [
        "r2 is undefined on the test split: every label is 100 (no variance around the mean); R² needs labels that "
        f"vary; evaluate.min_metrics cannot pass on it ({metrics.GATE_ADVICE})"
    ]
    card = core.model_card(evaluation, config, read_model_config(model), "")
    assert "| r2 | undefined | ≥ 0.0 |" in card and "nan" not in card.lower()
    classification_gate = with_evaluate(config, min_metrics={"roc_auc": 0.6, "r2": 0.0})
    evaluation = core.evaluate(classification_gate, str(model), paths.test)
    assert evaluation.reasons == [
        "roc_auc is not a metric of a regression model (its metrics: mse, rmse, mae, r2); evaluate.min_metrics "
        "cannot pass on it: gate on one of those"
    ]
    card = core.model_card(evaluation, classification_gate, read_model_config(model), "")
    assert "| roc_auc | not computed | ≥ 0.6 |" in card


def test_a_missing_regression_label_in_the_test_split_is_an_input_error_naming_the_row(regression, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from support.regression import LABEL

    from kfp_mlops.components.shared.errors import InputError

    config, paths, model = regression
    test = pq_read(paths.test)
    values = test[LABEL].to_pylist()
    values[2] = None
    broken = tmp_path / "broken.parquet"
    pq.write_table(test.set_column(test.column_names.index(LABEL), LABEL, pa.array(values, pa.float64())), broken)
    with pytest.raises(InputError, match=rf"test split: column '{LABEL}' row 3: regression label None is not a finite"):
        core.evaluate(config, str(model), str(broken))
