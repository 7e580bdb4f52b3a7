"""Sample data: deterministic, imbalanced, with signal, duplicates, a drifted later window, and a label per task
(binary, multiclass, regression) that ``schema.task: auto`` resolves as intended."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from kfp_mlops.cli import main
from kfp_mlops.components.shared import storage
from kfp_mlops.components.shared.config import parse_config
from kfp_mlops.components.shared.tabular import resolve_task
from kfp_mlops.sample_data import LABEL, LABELS, OUTCOMES, TASKS, make_sample_table, sample_config, write_sample_data


@pytest.mark.parametrize("task", TASKS)
def test_same_seed_same_table_other_seed_other_table(task):
    assert make_sample_table(1_000, seed=3, task=task).equals(make_sample_table(1_000, seed=3, task=task))
    assert not make_sample_table(1_000, seed=3, task=task).equals(make_sample_table(1_000, seed=4, task=task))


@pytest.mark.parametrize("drift", [False, True])
def test_every_task_has_the_same_rows_and_features_and_only_its_own_label(drift):
    tables = {task: make_sample_table(2_000, seed=0, drift=drift, task=task) for task in TASKS}
    for task, table in tables.items():
        assert table.column_names[-1] == LABELS[task]
        assert not (set(LABELS.values()) - {LABELS[task]}) & set(table.column_names)  # no other task's label
        assert table.drop_columns([LABELS[task]]).equals(tables["binary"].drop_columns([LABEL]))


def test_multiclass_outcome_has_three_string_classes_each_common_and_driven_by_the_features():
    table = make_sample_table(20_000, seed=0, task="multiclass")
    outcome = np.array(table["outcome"].to_pylist())
    assert table.schema.field("outcome").type == pa.string()
    shares = {value: float((outcome == value).mean()) for value in OUTCOMES}
    assert set(np.unique(outcome)) == set(OUTCOMES) and min(shares.values()) > 0.1, shares
    calls = table["support_calls"].to_numpy()
    assert (outcome[calls >= 3] == "churned").mean() > 2 * (outcome[calls == 0] == "churned").mean()
    basic = np.array(table["plan"].to_pylist()) == "basic"
    assert (outcome[~basic] == "downgraded").mean() > 2 * (outcome[basic] == "downgraded").mean()


def test_regression_spend_is_currency_with_cents_that_the_features_explain():
    table = make_sample_table(20_000, seed=0, task="regression")
    spend = table["spend_next_90d"].to_numpy()
    assert table.schema.field("spend_next_90d").type == pa.float64()
    assert (spend >= 0).all() and np.array_equal(spend, spend.round(2)) and (spend != np.floor(spend)).mean() > 0.9
    plan = np.array(table["plan"].to_pylist())
    columns = [table[name].to_numpy().astype(float) for name in ("monthly_charges", "tenure_months",
                                                                 "support_calls", "sessions_last_30d")]  # fmt: skip
    design = np.column_stack([np.ones(len(spend)), *columns, plan == "premium", plan == "basic"])
    fitted = design @ np.linalg.lstsq(design, spend, rcond=None)[0]
    r2 = 1 - ((spend - fitted) ** 2).sum() / ((spend - spend.mean()) ** 2).sum()
    assert 0.6 < r2 < 0.9, r2  # a linear fit explains most of it; the noise keeps the rest


@pytest.mark.parametrize(("task", "resolved"), [("binary", "binary"), ("multiclass", "multiclass"),
                                                ("regression", "regression")])  # fmt: skip
def test_schema_task_auto_resolves_each_sample_label_as_intended(task, resolved):
    table = make_sample_table(2_000, seed=0, task=task)
    schema = parse_config(sample_config("unused", task=task)).schema_
    assert schema.task == "auto" and schema.label == LABELS[task]
    assert schema.features == [
        c for c in table.column_names if c not in (schema.entity, schema.timestamp, schema.label)
    ]
    assert resolve_task(schema.task, table[schema.label], schema.label) == resolved


@pytest.mark.parametrize(("task", "file"), [("binary", "churn.parquet"), ("multiclass", "outcome.parquet"),
                                            ("regression", "spend.parquet")])  # fmt: skip
def test_cli_writes_the_table_of_the_task(tmp_path, capsys, task, file):
    assert main(["sample-data", "--output", str(tmp_path), "--rows", "300", "--seed", "2", "--drift",
                 "--task", task]) == 0  # fmt: skip
    path = capsys.readouterr().out.strip()
    assert path == str(tmp_path / file)
    assert pq.read_table(path).equals(make_sample_table(300, seed=2, drift=True, task=task))


def test_rejects_an_unknown_task():
    with pytest.raises(ValueError, match="task must be one of binary, multiclass, regression, got 'ranking'"):
        make_sample_table(10, task="ranking")


def test_label_is_imbalanced_and_carries_signal():
    table = make_sample_table(20_000, seed=0)
    positive_rate = pc.mean(table[LABEL]).as_py()
    assert 0.05 < positive_rate < 0.35
    calls = table["support_calls"].to_numpy()
    churned = table[LABEL].to_numpy()
    assert churned[calls >= 3].mean() > 2 * churned[calls == 0].mean()


def test_has_exact_duplicates_and_utc_timestamps():
    table = make_sample_table(10_000, seed=0)
    assert table.num_rows == 10_000
    assert table.group_by(table.column_names).aggregate([]).num_rows == 10_000 - 50
    assert str(table.schema.field("event_timestamp").type) == "timestamp[us, tz=UTC]"


def test_drift_is_a_later_window_with_shifted_distributions():
    reference = make_sample_table(10_000, seed=0)
    drifted = make_sample_table(10_000, seed=0, drift=True)
    assert pc.min(drifted["event_timestamp"]).as_py() > pc.max(reference["event_timestamp"]).as_py()
    assert pc.mean(drifted["support_calls"]).as_py() > 1.8 * pc.mean(reference["support_calls"]).as_py()
    assert pc.mean(drifted["monthly_charges"]).as_py() > 1.2 * pc.mean(reference["monthly_charges"]).as_py()
    spend = {drift: make_sample_table(10_000, seed=0, drift=drift, task="regression") for drift in (False, True)}
    assert pc.mean(spend[True]["spend_next_90d"]).as_py() > pc.mean(spend[False]["spend_next_90d"]).as_py()


def test_rejects_non_positive_rows():
    with pytest.raises(ValueError, match="rows must be positive"):
        make_sample_table(0)


@pytest.mark.servers
def test_writes_to_gcs(gcs):
    uri = write_sample_data(gcs.uri("sample"), rows=500, seed=1)
    assert uri == gcs.uri("sample/churn.parquet")
    import io

    assert pq.read_table(io.BytesIO(storage.read_bytes(uri))).equals(make_sample_table(500, seed=1))


@pytest.mark.parametrize(("task", "resolved"), [("multiclass", "multiclass"), ("regression", "regression")])
def test_the_example_config_of_a_task_reads_its_sample_data_and_ingest_resolves_the_task(tmp_path, task, resolved):
    """examples/<task>.yaml: its data.source is where `sample-data --task <task> --output build/sample-<task>` writes,
    its schema that of sample_config, and ingest on that data resolves the task it names."""
    from kfp_mlops.cli_common import config_text
    from kfp_mlops.components.ingest.core import ingest
    from kfp_mlops.components.shared.config import load_config
    from kfp_mlops.components.shared.splits import SplitPaths

    root = Path(__file__).resolve().parents[1]
    config = load_config(config_text(root / "examples" / f"{task}.yaml"))
    assert config.data.source == f"{root / 'build' / f'sample-{task}'}/"
    expected = parse_config(sample_config("unused", task=task)).schema_
    assert config.schema_ == expected
    write_sample_data(str(tmp_path / "data"), rows=2_000, seed=0, task=task)
    config = load_config(config.to_yaml(), data_source=str(tmp_path / "data"))
    assert (
        ingest(config, SplitPaths(*(str(tmp_path / "out" / n) for n in ("train", "validation", "test")))).task
        == resolved
    )
