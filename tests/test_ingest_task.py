"""Ingest's task: ``schema.task`` resolved over every row of every file (``tabular.resolve_task``'s rule), the
checks each task needs (a regression label numeric and finite, no stratification), and the task handed to
training in every split's metadata."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from support.ingest_data import (
    csv_bytes,
    float_label,
    make_config,
    outputs,
    parquet_bytes,
    with_column,
    with_value,
    write_parquet,
)

from kfp_mlops.components.ingest.core import ingest, render_summary
from kfp_mlops.components.shared.errors import InputError
from kfp_mlops.sample_data import make_sample_table


@pytest.fixture
def table() -> pa.Table:
    return make_sample_table(rows=2_000, seed=1)


def _regression_config(source, task="auto", **split):
    return make_config(source, schema={"label": "spend_next_90d", "task": task}, split=split)


@pytest.fixture(scope="module")
def spend() -> pa.Table:
    return make_sample_table(rows=2_000, seed=1, task="regression")


def test_a_float_label_with_fractions_is_a_regression_target_under_auto_with_its_moments_in_the_summary(
    tmp_path, spend
):
    source = write_parquet(tmp_path / "d.parquet", spend)
    config = _regression_config(source)
    result = ingest(config, outputs(tmp_path))
    assert result.task == "regression" and result.warnings == []
    assert (
        result.task_reason
        == f"label 'spend_next_90d' is floating-point with fractions (in {source}); schema.task: auto"
    )
    train = pq.read_table(outputs(tmp_path).train)
    label = result.statistics["train"]["spend_next_90d"]
    assert label["mean"] == pytest.approx(pc.mean(train["spend_next_90d"]).as_py()) and "top" not in label
    summary = render_summary(result, config)
    assert f"- Task: regression ({result.task_reason})" in summary
    assert "| split | rows | label mean, std |" in summary and f"| train | {result.rows['train']:,} | " in summary


def test_schema_task_regression_takes_a_numeric_label_of_whole_numbers_too(tmp_path, table):
    source = write_parquet(tmp_path / "d.parquet", table)
    result = ingest(make_config(source, schema={"task": "regression"}), outputs(tmp_path))
    assert (result.task, result.task_reason) == ("regression", "schema.task: regression")
    assert ingest(make_config(source), outputs(tmp_path / "auto")).task == "binary"


def test_one_file_with_fractions_makes_every_file_a_regression_target(tmp_path, spend):
    unique = spend.slice(0, 1_990)  # the last 10 rows copy earlier ones
    whole = with_column(unique, "spend_next_90d", pc.round(unique["spend_next_90d"]).combine_chunks())
    write_parquet(tmp_path / "raw" / "part-0.parquet", whole.slice(1))
    write_parquet(tmp_path / "raw" / "part-1.parquet", unique.slice(0, 1))  # one row, with cents
    assert ingest(_regression_config(tmp_path / "raw"), outputs(tmp_path)).task == "regression"
    write_parquet(tmp_path / "raw" / "part-1.parquet", whole.slice(0, 1))
    with pytest.raises(InputError, match=r"label 'spend_next_90d' looks continuous: more than schema.max_classes"):
        ingest(_regression_config(tmp_path / "raw"), outputs(tmp_path / "whole"))  # whole numbers: classes


def test_three_string_classes_are_multiclass(tmp_path):
    source = write_parquet(tmp_path / "d.parquet", make_sample_table(rows=2_000, seed=1, task="multiclass"))
    result = ingest(make_config(source, schema={"label": "outcome"}), outputs(tmp_path))
    assert (result.task, result.task_reason) == ("multiclass", "label 'outcome' has 3 classes; schema.task: auto")


def test_a_string_label_under_schema_task_regression_names_the_file_column_row_and_value(tmp_path, table):
    texts = ["yes" if v else "no" for v in table["churned"].to_pylist()]
    source = tmp_path / "data" / "d.csv"
    source.parent.mkdir()
    source.write_bytes(csv_bytes(with_column(table, "churned", pa.array(texts))))
    with pytest.raises(InputError) as error:
        ingest(make_config(source, schema={"task": "regression"}), outputs(tmp_path))
    assert re.search(
        rf"d\.csv: column 'churned' row 1 \(line 2\): label '{texts[0]}' is not a number \(the column is string\); "
        "schema.task: regression needs a numeric label",
        str(error.value),
    ), str(error.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("value", "message"),
    [(None, r"row 6: label is null or NaN"), (float("nan"), r"row 6: label is null or NaN"),
     (float("inf"), r"row 6: regression label inf is not a finite number")],
)  # fmt: skip
def test_a_missing_or_infinite_regression_label_in_any_file_names_it_and_nothing_is_written(
    tmp_path, spend, value, message
):
    write_parquet(tmp_path / "raw" / "part-0.parquet", spend.slice(0, 1_000))
    write_parquet(tmp_path / "raw" / "part-1.parquet", with_value(spend.slice(1_000), "spend_next_90d", 5, value))
    for task in ("auto", "regression"):
        with pytest.raises(InputError, match=r"part-1\.parquet: column 'spend_next_90d' " + message):
            ingest(_regression_config(tmp_path / "raw", task), outputs(tmp_path))
        assert not (tmp_path / "out").exists()


def test_split_stratify_with_a_regression_target_is_refused(tmp_path, spend):
    source = write_parquet(tmp_path / "d.parquet", spend)
    for task in ("auto", "regression"):
        message = rf"label 'spend_next_90d' is a regression target \(schema.task: {task}\) and has no classes"
        with pytest.raises(InputError, match=r"split.stratify: true splits within each label class, but " + message):
            ingest(_regression_config(source, task, stratify=True), outputs(tmp_path))
        assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("name", "make", "message"),
    [
        (
            "data.parquet",
            lambda t: parquet_bytes(
                with_column(t.slice(0, 1_990), "churned", [0.444 + i / 1000 for i in range(1_990)])
            ),
            r"label 'churned' looks continuous: 1,990 distinct values in \S*data\.parquet, such as 0\.444 \(row 1\), "
            r"not all whole numbers; schema.task: classification trains a classifier, whose classes are a few label "
            r"values: .* or set schema.task: regression \(or auto\) to predict the number",
        ),
        (
            "data.csv",
            lambda t: csv_bytes(with_value(t.cast(float_label(t.schema)), "churned", 4, 0.5)),
            r"label 'churned' looks continuous: 3 distinct values in \S*data\.csv, such as 0\.5 \(row 5 \(line 6\)\)",
        ),
    ],
    ids=["parquet", "csv"],
)
def test_a_continuous_label_is_refused_under_schema_task_classification_and_a_regression_target_under_auto(
    tmp_path, table, name, make, message
):
    source = tmp_path / "data" / name
    source.parent.mkdir()
    source.write_bytes(make(table))
    with pytest.raises(InputError, match=message):
        ingest(make_config(source, schema={"task": "classification"}), outputs(tmp_path / "c"))
    assert not (tmp_path / "c" / "out").exists()
    assert ingest(make_config(source), outputs(tmp_path / "a")).task == "regression"


def test_executor_records_the_task_in_every_split_for_training_and_prints_it(tmp_path, spend, capsys):
    from kfp_mlops.components.ingest import executor

    def artifact(path: Path) -> SimpleNamespace:
        logged: dict[str, float] = {}
        return SimpleNamespace(path=str(path), uri=str(path), metadata={}, logged=logged, log_metric=logged.__setitem__)

    source = write_parquet(tmp_path / "d.parquet", spend)
    step = tmp_path / "root" / "run-7" / "ingest"
    splits = {name: artifact(step / name) for name in ("train", "validation", "test")}
    metrics, summary = artifact(step / "metrics"), artifact(step / "summary.md")
    pod = {"gpu_type": "", "gpus_per_node": "0", "cpu": "2", "memory": "4Gi", "node_selector": {}, "tolerations": []}
    executor.run(_regression_config(source).to_yaml(), "", "run-7", pod, *splits.values(), metrics, summary)
    assert {artifact.metadata["task"] for artifact in splits.values()} == {"regression"} == {metrics.metadata["task"]}
    assert "mean" in splits["train"].metadata["statistics"]["spend_next_90d"]
    printed = capsys.readouterr().out
    assert "[ingest] task: regression (label 'spend_next_90d' is floating-point with fractions (in " in printed
    assert "- Task: regression" in Path(summary.path).read_text()
