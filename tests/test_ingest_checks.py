"""Ingest's checks that span files or need a setting (components/ingest/checks.py): one column typed differently in
two files, label classes against schema.max_classes, contradictory labels (schema.conflicting_labels) and
schema.max_future_days. Single-file bad inputs are in tests/test_ingest.py's BAD_INPUTS table."""

from __future__ import annotations

import datetime
import re
from pathlib import Path

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


@pytest.fixture(scope="module")
def table() -> pa.Table:
    return make_sample_table(rows=2_000, seed=1)


def _no_output(directory: Path) -> bool:
    return not (directory / "out").exists() or list((directory / "out").iterdir()) == []


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_a_column_typed_differently_in_two_files_names_both_files_and_types(tmp_path, table, fmt):
    (tmp_path / "raw").mkdir()
    first, second = table.slice(0, 1_000), table.slice(1_000)
    second = with_column(second, "churned", pa.array(["yes" if v else "no" for v in second["churned"].to_pylist()]))
    for i, part in enumerate((first, second)):
        path = tmp_path / "raw" / f"part-{i}.{fmt}"
        path.write_bytes(parquet_bytes(part) if fmt == "parquet" else csv_bytes(part))
    with pytest.raises(
        InputError, match=rf"column 'churned' is int64 in \S*part-0\.{fmt} but string in \S*part-1\.{fmt}"
    ):
        ingest(make_config(tmp_path / "raw"), outputs(tmp_path))
    assert _no_output(tmp_path)


def test_numbers_typed_int_in_one_file_and_float_in_another_are_one_column(tmp_path, table):
    write_parquet(tmp_path / "raw" / "part-0.parquet", table.slice(0, 1_000))
    floats = table.slice(1_000)
    write_parquet(
        tmp_path / "raw" / "part-1.parquet",
        with_column(floats, "support_calls", floats["support_calls"].cast(pa.float64()).combine_chunks()),
    )
    result = ingest(make_config(tmp_path / "raw"), outputs(tmp_path))
    assert result.rows_read == 2_000


def test_a_float_label_of_whole_numbers_is_a_class_label_and_max_classes_is_configurable(tmp_path, table):
    source = write_parquet(tmp_path / "d.parquet", table.cast(float_label(table.schema)))
    assert ingest(make_config(source), outputs(tmp_path / "a")).rows_read == 2_000
    four = with_column(table, "churned", pc.bit_wise_and(table["customer_id"], 3).combine_chunks())  # 0..3
    source = write_parquet(tmp_path / "four.parquet", four)
    with pytest.raises(InputError, match=r"more than schema.max_classes \(3\) distinct values, such as"):
        ingest(make_config(source, schema={"max_classes": 3}), outputs(tmp_path / "b"))
    assert _no_output(tmp_path / "b")
    assert ingest(make_config(source, schema={"max_classes": 4}), outputs(tmp_path / "c")).rows_read == 2_000


def _contradicting(table: pa.Table, rows: list[int]) -> pa.Table:
    """Copies of ``rows`` with the other label and other features: the same entity and timestamp."""
    copies = table.take(rows)
    copies = with_column(copies, "churned", pa.array([1 - v for v in copies["churned"].to_pylist()]))
    return with_column(copies, "support_calls", pa.array([v + 1 for v in copies["support_calls"].to_pylist()]))


def test_contradictory_labels_across_files_name_both_files_and_keep_latest_keeps_the_last_file_order_row(
    tmp_path, table
):
    write_parquet(tmp_path / "raw" / "part-0.parquet", table)
    later = _contradicting(table, [3, 8, 8])  # row 8 twice: one group of three rows
    write_parquet(tmp_path / "raw" / "part-1.parquet", later)
    first = min((3, 8), key=lambda row: table["customer_id"][row].as_py())  # the first conflict in entity order
    entity, when = table["customer_id"][first].as_py(), table["event_timestamp"][first].as_py().isoformat()
    with pytest.raises(InputError) as error:
        ingest(make_config(tmp_path / "raw"), outputs(tmp_path / "e"))
    assert f"entity {entity!r} at {when} has two labels: " in str(error.value)
    where = rf"\(\S*part-0\.parquet row {first + 1}\) and [01] \(\S*part-1\.parquet row {1 if first == 3 else 2}\)"
    assert re.search(where, str(error.value)), str(error.value)
    assert _no_output(tmp_path / "e")
    config = make_config(tmp_path / "raw", schema={"conflicting_labels": "keep_latest"})
    result = ingest(config, outputs(tmp_path / "k"))
    assert result.conflicting_labels_dropped == 3  # row 3 of part-0, row 8 of part-0 and the first copy of it
    assert result.rows_read == 2_003 and sum(result.rows.values()) == 2_003 - 3 - result.duplicates_dropped
    assert "conflicting labels dropped: 3" in render_summary(result, config)
    kept = pa.concat_tables([pq.read_table(path) for _, path in outputs(tmp_path / "k").items()])
    for row in (3, 8):
        same = pc.and_(pc.equal(kept["customer_id"], table["customer_id"][row]),
                       pc.equal(kept["event_timestamp"], table["event_timestamp"][row]))  # fmt: skip
        assert kept.filter(same)["churned"].to_pylist() == [1 - table["churned"][row].as_py()]


def test_max_future_days_sets_how_far_ahead_a_timestamp_may_be(tmp_path, table):
    soon = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=3)
    source = write_parquet(tmp_path / "d.parquet", with_value(table, "event_timestamp", 0, soon))
    with pytest.raises(InputError, match=r"row 1: timestamp .* is more than 1 day\(s\) after now"):
        ingest(make_config(source), outputs(tmp_path / "a"))
    assert ingest(make_config(source, schema={"max_future_days": 5}), outputs(tmp_path / "b")).rows_read == 2_000


def test_contradictory_regression_labels_are_refused_or_the_latest_kept(tmp_path):
    spend = make_sample_table(rows=2_000, seed=1, task="regression").slice(0, 1_990)  # no exact duplicates
    later = with_column(spend.take([3]), "spend_next_90d", pa.array([spend["spend_next_90d"][3].as_py() + 0.5]))
    write_parquet(tmp_path / "raw" / "part-0.parquet", spend)
    write_parquet(tmp_path / "raw" / "part-1.parquet", later)
    config = make_config(tmp_path / "raw", schema={"label": "spend_next_90d"})
    with pytest.raises(InputError, match=r"has two labels: .* in column 'spend_next_90d'"):
        ingest(config, outputs(tmp_path / "e"))
    assert _no_output(tmp_path / "e")
    config = make_config(tmp_path / "raw", schema={"label": "spend_next_90d", "conflicting_labels": "keep_latest"})
    result = ingest(config, outputs(tmp_path / "k"))
    assert result.task == "regression" and result.conflicting_labels_dropped == 1
    kept = pa.concat_tables([pq.read_table(path) for _, path in outputs(tmp_path / "k").items()])
    values = kept["spend_next_90d"].to_pylist()
    assert later["spend_next_90d"][0].as_py() in values and spend["spend_next_90d"][3].as_py() not in values
