"""Sample data: deterministic, imbalanced, with signal, duplicates, and a drifted later window."""

from __future__ import annotations

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from kfp_mlops.components.shared import storage
from kfp_mlops.sample_data import LABEL, make_sample_table, write_sample_data


def test_same_seed_same_table_other_seed_other_table():
    assert make_sample_table(1_000, seed=3).equals(make_sample_table(1_000, seed=3))
    assert not make_sample_table(1_000, seed=3).equals(make_sample_table(1_000, seed=4))


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


def test_rejects_non_positive_rows():
    with pytest.raises(ValueError, match="rows must be positive"):
        make_sample_table(0)


@pytest.mark.servers
def test_writes_to_gcs(gcs):
    uri = write_sample_data(gcs.uri("sample"), rows=500, seed=1)
    assert uri == gcs.uri("sample/churn.parquet")
    import io

    assert pq.read_table(io.BytesIO(storage.read_bytes(uri))).equals(make_sample_table(500, seed=1))
