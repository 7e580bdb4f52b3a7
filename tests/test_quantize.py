"""Quantize step on a really trained model with real onnxruntime: every candidate built and measured against fp32 on
raw rows, the accuracy gate (choice, failure with the comparison table, nothing written), the chosen package
served by ``Predictor``, the executor's artifacts and the compiled component."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pyarrow.parquet as pq
import pytest
import yaml

from kfp_mlops.components.quantize import core, executor
from kfp_mlops.components.shared import model_package as package
from kfp_mlops.components.shared.config import QuantizeConfig
from kfp_mlops.components.shared.errors import InputError

FAST = {"latency_repeats": 20, "calibration_rows": 256}  # timing figures are not asserted on, only their use


def with_quantize(config, **values):
    return config.model_copy(update={"quantize": QuantizeConfig(**{**FAST, **values})})


@pytest.fixture(scope="module")
def quantized(trained_package, ingested, tmp_path_factory):
    """One run over every candidate (fp16 joins through target gpu), fp32 listed, choosing the fastest."""
    config, paths = ingested
    config = with_quantize(config, candidates=["fp32", "int8_dynamic", "int8_static"], target="gpu")
    output = tmp_path_factory.mktemp("quantized") / "model"
    result = core.quantize(config, str(trained_package), paths.train, paths.validation, str(output))
    return result, output


@pytest.fixture(scope="module")
def graphs(trained_package, ingested, tmp_path_factory) -> dict[str, Path]:
    config, paths = ingested
    model_config = package.read_model_config(trained_package)
    calibration = core.calibration_rows(pq.read_table(paths.train), 256, seed=0)
    return core.build_candidates(
        trained_package / package.ONNX_FILE,
        list(core.CANDIDATES),
        package.raw_inputs(calibration, model_config.numeric, model_config.categorical),
        tmp_path_factory.mktemp("graphs"),
    )


def awkward_rows(validation_path: str, model_config: package.ModelConfig) -> dict[str, list]:
    """64 validation rows with missing numeric values (NaN), missing categories ("") and unseen categories."""
    columns = pq.read_table(validation_path).slice(0, 64).to_pydict()
    for position, name in enumerate(model_config.numeric):
        columns[name] = [None if row % 5 == position % 5 else v for row, v in enumerate(columns[name])]
    for position, name in enumerate(model_config.categorical):
        columns[name] = ["" if row % 4 == position else v for row, v in enumerate(columns[name])]
        columns[name] = ["never-seen" if row % 7 == position else v for row, v in enumerate(columns[name])]
    return columns


def test_every_candidate_is_close_to_fp32_on_raw_rows_with_missing_and_unseen_values(graphs, trained_package, ingested):
    _, paths = ingested
    model_config = package.read_model_config(trained_package)
    feeds = package.raw_inputs(awkward_rows(paths.validation, model_config), model_config.numeric,
                               model_config.categorical)  # fmt: skip
    assert np.isnan(feeds[package.NUMERIC_INPUT]).any() and (feeds[package.CATEGORICAL_INPUT] == "").any()
    outputs = {name: core.session(path).run(None, feeds) for name, path in graphs.items()}
    assert set(outputs) == set(core.CANDIDATES)
    reference, reference_labels = outputs["fp32"]
    for name, (probabilities, labels) in outputs.items():
        assert probabilities.shape == reference.shape and labels.shape == (64, 1), name
        assert np.isfinite(probabilities).all() and np.allclose(probabilities.sum(1), 1.0, atol=1e-3), name
        assert np.abs(probabilities - reference).max() < 0.05, name
        assert set(labels[:, 0].tolist()) <= set(model_config.classes), name
        assert np.mean(labels == reference_labels) >= 0.9, name


def test_only_the_network_is_converted_and_preprocessing_nodes_stay_exact(graphs):
    def serving_nodes(path: Path) -> list[bytes]:
        nodes = onnx.load(str(path)).graph.node
        return sorted(n.SerializeToString() for n in nodes if n.name.startswith("serving/"))

    ops = {name: {n.op_type for n in onnx.load(str(path)).graph.node} for name, path in graphs.items()}
    assert {"MatMulInteger", "DynamicQuantizeLinear"} & ops["int8_dynamic"]
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops["int8_static"]
    assert not {"QuantizeLinear", "MatMulInteger"} & (ops["fp32"] | ops["fp16"])
    fp16_types = {i.data_type for i in onnx.load(str(graphs["fp16"])).graph.initializer if i.name.startswith("model.")}
    assert fp16_types == {onnx.TensorProto.FLOAT16}
    for name in ("int8_dynamic", "int8_static", "fp16"):
        assert serving_nodes(graphs[name]) == serving_nodes(graphs["fp32"]), name


def test_int8_dynamic_is_smaller_than_fp32_and_every_candidate_is_measured(quantized, ingested):
    result, _ = quantized
    _, paths = ingested
    assert [c.name for c in result.candidates] == ["fp32", "int8_dynamic", "int8_static", "fp16"]
    base = result.baseline
    assert result.candidate("int8_dynamic").onnx_bytes < base.onnx_bytes
    assert result.candidate("fp16").onnx_bytes < base.onnx_bytes
    assert base.max_abs_diff == 0.0 and base.label_agreement == 1.0 and set(base.deltas.values()) == {0.0}
    for c in result.candidates:
        assert set(c.metrics) == {"accuracy", "precision", "recall", "f1", "roc_auc", "log_loss",
                                  "expected_calibration_error"}  # fmt: skip
        assert c.deltas["accuracy"] == pytest.approx(c.metrics["accuracy"] - base.metrics["accuracy"])
        assert 0 < c.latency_ms < 50 and c.rows_per_second > 1_000 and 0.9 <= c.label_agreement <= 1.0
    assert result.validation_rows == pq.read_metadata(paths.validation).num_rows


def test_the_chosen_package_is_the_fastest_within_budget_and_serves_with_its_precision(
    quantized, trained_package, ingested
):
    result, output = quantized
    _, paths = ingested
    eligible = [c for c in result.candidates if c.eligible]
    assert result.chosen == core.pick(eligible, "fastest").name
    fastest = min(c.latency_ms for c in eligible)
    assert result.selected.latency_ms <= fastest * (1 + core.LATENCY_TIE)  # the fastest, or within timing noise of it
    assert sorted(p.name for p in output.iterdir()) == sorted(
        p.name for p in trained_package.iterdir() if p.name != package.WEIGHTS_FILE
    )
    for name in ("preprocessing.json", package.PIPELINE_CONFIG_FILE):
        assert (output / name).read_bytes() == (trained_package / name).read_bytes()
    assert (output / package.ONNX_FILE).stat().st_size == result.selected.onnx_bytes
    predictor = package.Predictor(output)
    assert predictor.config.precision == result.chosen
    assert predictor.config.model_copy(update={"precision": "fp32"}) == package.read_model_config(trained_package)
    test = pq.read_table(paths.test)
    probabilities, labels = predictor.predict(test)
    reference, _ = package.Predictor(trained_package).predict(test)
    assert np.abs(probabilities - reference).max() <= result.budget["max_abs_diff"] + 0.02
    assert len(labels) == test.num_rows
    assert list(output.parent.iterdir()) == [output]  # no staging directory left behind


def test_a_budget_no_candidate_meets_fails_with_the_table_and_writes_nothing(trained_package, ingested, tmp_path):
    config, paths = ingested
    strict = with_quantize(config, candidates=["int8_dynamic", "int8_static"], max_abs_diff=1e-9,
                           max_metric_drop={"accuracy": 0.0, "roc_auc": 0.0})  # fmt: skip
    output = tmp_path / "out" / "model"
    with pytest.raises(core.QuantizationBudgetError) as failure:
        core.quantize(strict, str(trained_package), paths.train, paths.validation, str(output))
    message = str(failure.value)
    assert not isinstance(failure.value, InputError)
    rows = ("| int8_dynamic |", "| int8_static |", "| fp32 | the baseline", "probabilities differ from fp32")
    advice = ("quantize.max_metric_drop", "quantize.max_abs_diff", "list fp32 in quantize.candidates")
    assert all(expected in message for expected in rows + advice), message
    assert not output.parent.exists()
    listed = with_quantize(config, candidates=["int8_dynamic", "fp32"], max_abs_diff=1e-9)
    result = core.quantize(listed, str(trained_package), paths.train, paths.validation, str(output))
    assert result.chosen == "fp32" and "int8_dynamic" in result.rejected
    assert package.read_model_config(output).precision == "fp32"
    assert (output / package.ONNX_FILE).read_bytes() == (trained_package / package.ONNX_FILE).read_bytes()
    retry = core.quantize(with_quantize(config, candidates=["int8_dynamic"]), str(trained_package), paths.train,
                          paths.validation, str(output))  # fmt: skip
    assert retry.chosen == "int8_dynamic" and package.read_model_config(output).precision == "int8_dynamic"
    assert (output / package.ONNX_FILE).stat().st_size == retry.selected.onnx_bytes  # replaced whole on a retry
    assert list(output.parent.iterdir()) == [output]


def test_choose_smallest_picks_the_smallest_within_budget(trained_package, ingested, tmp_path):
    config, paths = ingested
    smallest = with_quantize(config, candidates=["int8_dynamic", "int8_static", "fp16"], choose="smallest",
                             max_metric_drop={"accuracy": 0.02}, max_abs_diff=0.1)  # fmt: skip
    result = core.quantize(smallest, str(trained_package), paths.train, paths.validation, str(tmp_path / "model"))
    eligible = [c for c in result.candidates if c.eligible]
    assert len(eligible) >= 2 and "fp32" not in {c.name for c in eligible}
    assert result.chosen == min(eligible, key=lambda c: c.onnx_bytes).name
    assert (tmp_path / "model" / package.ONNX_FILE).stat().st_size == min(c.onnx_bytes for c in eligible)


def test_pick_orders_by_latency_or_size_with_the_other_breaking_ties():
    def candidate(name: str, size: int, latency: float) -> core.Candidate:
        return core.Candidate(name, size, {}, {}, 0.0, 1.0, latency, 1.0)

    small, fast, tie = candidate("small", 100, 2.0), candidate("fast", 300, 1.0), candidate("tie", 100, 1.5)
    assert core.pick([small, fast, tie], "smallest").name == "tie"
    assert core.pick([small, fast, tie], "fastest").name == "fast"
    within_noise = candidate("within-noise", 200, 1.04)  # 4 % slower than the fastest, and smaller: it wins
    assert core.pick([small, fast, tie, within_noise], "fastest").name == "within-noise"


def test_fp16_joins_only_for_a_gpu_target(ingested):
    config, _ = ingested
    assert core.candidate_names(with_quantize(config)) == ["fp32", "int8_dynamic", "int8_static"]
    assert core.candidate_names(with_quantize(config, candidates=["int8_dynamic"])) == ["fp32", "int8_dynamic"]
    assert core.candidate_names(with_quantize(config, target="gpu")) == ["fp32", "int8_dynamic", "int8_static", "fp16"]
    assert core.candidate_names(with_quantize(config, candidates=["fp16", "fp32"])) == ["fp32", "fp16"]


def test_fp16_for_a_gpu_target_runs_on_cpu_and_is_judged_like_the_others(quantized):
    result, _ = quantized
    fp16 = result.candidate("fp16")
    assert result.budget["candidates"] == ["fp32", "int8_dynamic", "int8_static", "fp16"]  # joined through the target
    assert fp16.max_abs_diff < 1e-2 and fp16.label_agreement >= 0.99
    drops = result.budget["max_metric_drop"]
    within = all(-fp16.deltas[name] <= allowed for name, allowed in drops.items())
    assert fp16.eligible == (fp16.max_abs_diff <= result.budget["max_abs_diff"] and within)


def test_metrics_and_table_describe_every_candidate(quantized):
    result, _ = quantized
    metrics = result.metrics()
    assert metrics["onnx_bytes"] == result.selected.onnx_bytes
    assert metrics["size_ratio"] == pytest.approx(result.baseline.onnx_bytes / result.selected.onnx_bytes)
    assert all(f"{c.name}_latency_ms" in metrics for c in result.candidates)
    assert all(np.isfinite(v) for v in metrics.values())
    table = result.table()
    assert table.count("\n| ") == 1 + len(result.candidates)  # header and one row per candidate
    assert f"| {result.chosen} | **chosen** |" in table


def test_executor_records_metadata_metrics_and_comparison(trained_package, ingested, tmp_path, capsys):
    def artifact(path: Path, metadata: dict | None = None) -> SimpleNamespace:
        logged: dict[str, float] = {}
        return SimpleNamespace(path=str(path), uri=f"file://{path}", metadata=dict(metadata or {}), logged=logged,
                               log_metric=logged.__setitem__)  # fmt: skip

    config, paths = ingested
    model = artifact(
        trained_package, {"content_hash": "sha256:abc", "framework": "pytorch+deepspeed", "precision": "fp32"}
    )
    quantized, metrics, comparison = artifact(tmp_path / "q"), artifact(tmp_path / "m"), artifact(tmp_path / "c.md")
    text = with_quantize(config, candidates=["int8_dynamic"]).to_yaml()
    result = executor.run(text, model, artifact(Path(paths.train)), artifact(Path(paths.validation)), quantized,
                          metrics, comparison)  # fmt: skip
    assert quantized.metadata["precision"] == "int8_dynamic" == result.chosen
    assert quantized.metadata["content_hash"] == "sha256:abc"
    assert quantized.metadata["framework"] == "pytorch+deepspeed"
    assert quantized.metadata["onnx_bytes"] == (tmp_path / "q" / package.ONNX_FILE).stat().st_size
    assert set(quantized.metadata["metric_deltas"]) >= {"accuracy", "roc_auc"}
    assert 0 <= quantized.metadata["max_abs_diff"] <= 0.05
    json.dumps(quantized.metadata, allow_nan=False)  # a cluster's launcher reads it as strict JSON
    assert metrics.logged == result.metrics() and "delta_accuracy" in metrics.logged
    assert Path(comparison.path).read_text() == result.table()
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[quantize] ")]
    assert len(lines) == 1 and lines[0].startswith("[quantize] int8_dynamic: ") and "x smaller" in lines[0]


def test_component_compiles_on_the_quantize_image_without_installing_anything(tmp_path):
    from kfp import compiler

    from kfp_mlops.components.quantize.component import build
    from kfp_mlops.components.shared.images import ImageConfig

    compiler.Compiler().compile(build(ImageConfig(registry="r.example/x", tag="t1")), str(tmp_path / "c.yaml"))
    spec = yaml.safe_load((tmp_path / "c.yaml").read_text())
    component = spec["components"]["comp-quantize-model"]
    assert sorted(component["inputDefinitions"]["artifacts"]) == ["model", "train_data", "validation_data"]
    assert sorted(component["outputDefinitions"]["artifacts"]) == ["comparison", "metrics", "quantized_model"]
    assert list(component["inputDefinitions"]["parameters"]) == ["config", "run_id"]  # run_id: its MLflow run
    (container,) = [e["container"] for e in spec["deploymentSpec"]["executors"].values()]
    assert container["image"] == "r.example/x/kfp-mlops-quantize:t1"
    assert "pip install" not in " ".join(container["command"])


@pytest.mark.local_run
def test_the_component_runs_from_its_compiled_yaml_through_kfp_local(trained_package, ingested, tmp_path):
    from kfp import compiler, components, dsl, local
    from kfp.dsl import Dataset, Model

    from kfp_mlops.components.quantize.component import build
    from kfp_mlops.components.shared.images import ImageConfig

    config, paths = ingested
    component = build(ImageConfig(registry="r.example/x", tag="t1"))

    def pipeline(config: str):
        model = dsl.importer(
            artifact_uri=str(trained_package), artifact_class=Model, metadata={"content_hash": "sha256:x"}
        )
        train = dsl.importer(artifact_uri=paths.train, artifact_class=Dataset)
        validation = dsl.importer(artifact_uri=paths.validation, artifact_class=Dataset)
        component(config=config, model=model.output, train_data=train.output, validation_data=validation.output)

    pipeline.__annotations__ = {"config": str}  # KFP reads real types; this module postpones annotations
    compiler.Compiler().compile(dsl.pipeline(pipeline, name="quantize-only"), str(tmp_path / "pipeline.yaml"))
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"))
    components.load_component_from_file(str(tmp_path / "pipeline.yaml"))(config=with_quantize(config).to_yaml())
    (model_config,) = (tmp_path / "root").rglob(f"quantized_model/{package.MODEL_CONFIG_FILE}")
    assert package.read_model_config(model_config.parent).precision in ("fp32", "int8_dynamic", "int8_static")
    (comparison,) = (tmp_path / "root").rglob("comparison")
    assert "| int8_dynamic |" in comparison.read_text()


def test_a_budget_metric_undefined_on_the_validation_split_fails_closed_with_its_reason(
    trained_package, ingested, tmp_path
):
    """A validation split of one class: ROC AUC is undefined, so a candidate cannot show it stays within the roc_auc
    budget. Quantized candidates are refused naming metric and reason; fp32, listed, is the one that can serve."""
    import pyarrow.compute as pc

    config, paths = ingested
    validation = pq.read_table(paths.validation)
    one_class = tmp_path / "validation.parquet"
    pq.write_table(validation.filter(pc.equal(validation["churned"], 0)), one_class)
    budget = {"max_metric_drop": {"roc_auc": 0.005}, "max_abs_diff": 0.5}
    only_int8 = with_quantize(config, candidates=["int8_dynamic"], **budget)
    with pytest.raises(core.QuantizationBudgetError) as failure:
        core.quantize(only_int8, str(trained_package), paths.train, str(one_class), str(tmp_path / "q"))
    reason = ("roc_auc is undefined on the validation split: only class '0' has rows (class '1' has none); ROC AUC "
              "needs two; quantize.max_metric_drop cannot pass on it")  # fmt: skip
    assert reason in str(failure.value) and "nan" not in str(failure.value).lower()
    result = core.quantize(with_quantize(config, candidates=["fp32", "int8_dynamic"], **budget), str(trained_package),
                           paths.train, str(one_class), str(tmp_path / "q"))  # fmt: skip
    assert result.chosen == "fp32" and result.rejected["int8_dynamic"][0].startswith(reason)
    assert all(np.isfinite(v) for v in result.metrics().values()) and "roc_auc" not in result.metrics()


# --- regression: measured on the prediction, max |Δy| in label standard deviations, budgets by direction -----------


@pytest.fixture(scope="module")
def regression(tmp_path_factory):
    """(config, SplitPaths, package) of a regression model trained for real (tests/support/regression.py)."""
    from support.regression import trained_regression

    return trained_regression(tmp_path_factory.getbasetemp() / "regression")


@pytest.fixture(scope="module")
def quantized_regression(regression, tmp_path_factory):
    config, paths, model = regression
    config = with_quantize(config, candidates=["fp32", "int8_dynamic", "int8_static"], target="gpu")
    output = tmp_path_factory.mktemp("quantized_regression") / "model"
    return core.quantize(config, str(model), paths.train, paths.validation, str(output)), output


def test_regression_candidates_are_measured_on_the_prediction_in_label_standard_deviations(
    quantized_regression, regression
):
    from support.regression import LABEL

    result, output = quantized_regression
    config, paths, model = regression
    assert result.task == "regression" and [c.name for c in result.candidates] == list(core.CANDIDATES)
    validation = pq.read_table(paths.validation)
    sigma = float(np.std(validation[LABEL].to_numpy()))
    assert result.budget["label_std"] == pytest.approx(sigma)
    assert result.budget["max_metric_drop"] == {"r2": 0.005}  # the task's default
    reference, _ = package.Predictor(model).predict(validation)
    for c in result.candidates:
        assert set(c.metrics) == {"mse", "rmse", "mae", "r2"} and c.label_agreement is None, c.name
        assert c.deltas["mse"] == pytest.approx(c.metrics["mse"] - result.baseline.metrics["mse"])
    assert result.baseline.max_abs_diff == 0.0 and result.selected.eligible
    predictor = package.Predictor(output)
    assert predictor.config.precision == result.chosen and predictor.config.regression
    prediction, _ = predictor.predict(validation)
    assert prediction.shape == (validation.num_rows, 1) and prediction.dtype == np.float32
    assert result.selected.max_abs_diff == pytest.approx(float(np.abs(prediction - reference).max()) / sigma, abs=1e-6)
    metrics = result.metrics()
    assert "label_agreement" not in metrics and all(np.isfinite(v) for v in metrics.values())
    assert {"r2", "delta_r2", "mse", "delta_mse"} <= set(metrics)
    table = result.table()
    assert "max \\|Δy\\|/σ" in table and "labels = fp32" not in table and f"σ = {sigma:.4g}" in table
    assert "lower is better for mse, rmse, mae" in table
    summary = result.summary()
    assert "r2 " in summary and "max |Δy|/σ" in summary and "accuracy" not in summary and "Δp" not in summary


def test_int8_regression_graphs_quantize_the_network_and_keep_a_float_prediction(regression, tmp_path):
    _, paths, model = regression
    model_config = package.read_model_config(model)
    calibration = core.calibration_rows(pq.read_table(paths.train), 256, seed=0)
    graphs = core.build_candidates(model / package.ONNX_FILE, ["int8_dynamic", "int8_static"],
                                   package.raw_inputs(calibration, model_config.numeric, model_config.categorical),
                                   tmp_path)  # fmt: skip
    ops = {name: {n.op_type for n in onnx.load(str(path)).graph.node} for name, path in graphs.items()}
    assert {"MatMulInteger", "DynamicQuantizeLinear"} & ops["int8_dynamic"]
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops["int8_static"]
    for path in graphs.values():
        (output,) = onnx.load(str(path)).graph.output
        assert output.name == package.PREDICTION_OUTPUT and output.type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def test_a_regression_candidate_beyond_the_relative_max_abs_diff_is_rejected_and_another_chosen(
    quantized_regression, regression, tmp_path
):
    measured, _ = quantized_regression
    config, paths, model = regression
    fp16, int8 = measured.candidate("fp16").max_abs_diff, measured.candidate("int8_dynamic").max_abs_diff
    assert fp16 < int8  # fp16 keeps far more of the fp32 values than int8 does
    budget = {"max_abs_diff": (fp16 + int8) / 2, "max_metric_drop": {"r2": 0.5}}
    config = with_quantize(config, candidates=["int8_dynamic", "fp16"], **budget)
    result = core.quantize(config, str(model), paths.train, paths.validation, str(tmp_path / "model"))
    assert result.chosen == "fp16"
    (reason,) = result.rejected["int8_dynamic"]
    assert reason.startswith("predictions differ from fp32 by up to ") and "σ of the validation labels >" in reason
    assert package.read_model_config(tmp_path / "model").precision == "fp16"


def test_a_regression_budget_bounds_the_rise_of_a_lower_is_better_metric_and_refuses_classification_metrics(
    regression,
):
    config, _, _ = regression

    def candidate(deltas: dict[str, float]) -> core.Candidate:
        return core.Candidate("int8_dynamic", 100, {"mse": 1.0, "r2": 0.8}, deltas, 0.01, None, 1.0, 1.0)

    budget = with_quantize(config, max_metric_drop={"mse": 0.01, "r2": 0.005})
    assert core.judge(candidate({"mse": 0.005, "r2": -0.004}), budget, "regression").reasons == []
    assert core.judge(candidate({"mse": -0.5, "r2": 0.1}), budget, "regression").reasons == []  # better: fine
    assert core.judge(candidate({"mse": 0.02, "r2": -0.01}), budget, "regression").reasons == [
        "mse rises 0.0200 > 0.01", "r2 drops 0.0100 > 0.005"
    ]  # fmt: skip
    classification = with_quantize(config, max_metric_drop={"accuracy": 0.01})
    assert core.judge(candidate({"mse": 0.0, "r2": 0.0}), classification, "regression").reasons == [
        "accuracy is not a metric of a regression model (its metrics: mse, rmse, mae, r2); quantize.max_metric_drop "
        "cannot pass on it: gate on one of those"
    ]
    assert core.judge(candidate({"mse": 0.0, "r2": 0.0}), with_quantize(config), "regression").reasons == []


def test_executor_records_a_regression_model_without_label_agreement(regression, tmp_path, capsys):
    config, paths, model = regression

    def artifact(path: Path) -> SimpleNamespace:
        logged: dict[str, float] = {}
        return SimpleNamespace(path=str(path), uri=f"file://{path}", metadata={}, logged=logged,
                               log_metric=logged.__setitem__)  # fmt: skip

    quantized, metrics, comparison = artifact(tmp_path / "q"), artifact(tmp_path / "m"), artifact(tmp_path / "c.md")
    text = with_quantize(config, candidates=["fp32", "int8_dynamic"]).to_yaml()
    result = executor.run(text, artifact(model), artifact(Path(paths.train)), artifact(Path(paths.validation)),
                          quantized, metrics, comparison)  # fmt: skip
    assert quantized.metadata["task"] == "regression" and "label_agreement" not in quantized.metadata
    assert quantized.metadata["label_std"] == result.budget["label_std"] > 0
    assert set(quantized.metadata["metric_deltas"]) == {"mse", "rmse", "mae", "r2"}
    json.dumps(quantized.metadata, allow_nan=False)
    assert metrics.logged == result.metrics() and "label_agreement" not in metrics.logged
    (line,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[quantize] ")]
    assert ", r2 " in line and "max |Δy|/σ" in line
