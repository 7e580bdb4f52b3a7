"""Ingest core on real files: splits, statistics, determinism, and every kind of bad input."""

from __future__ import annotations

import datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from support import weather
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

from kfp_mlops.components.ingest.core import entity_buckets, ingest, render_summary
from kfp_mlops.components.shared import storage
from kfp_mlops.components.shared.config import parse_config
from kfp_mlops.components.shared.errors import InputError
from kfp_mlops.sample_data import CATEGORICAL, NUMERIC, make_sample_table


@pytest.fixture(scope="module")
def table() -> pa.Table:
    return make_sample_table(rows=2_000, seed=1)


def test_time_split_sends_the_latest_rows_to_test_and_records_statistics(tmp_path, table):
    source = write_parquet(tmp_path / "data" / "part-0.parquet", table)
    result = ingest(make_config(source), outputs(tmp_path))
    parts = {name: pq.read_table(path) for name, path in outputs(tmp_path).items()}
    assert result.rows_read == 2_000
    assert result.duplicates_dropped == 10  # the sample data carries 0.5 % exact duplicates
    assert sum(result.rows.values()) == 1_990
    assert {name: part.num_rows for name, part in parts.items()} == result.rows
    assert result.rows["test"] == int(1_990 * 0.15)
    assert pc.max(parts["train"]["event_timestamp"]).as_py() <= pc.min(parts["validation"]["event_timestamp"]).as_py()
    assert pc.max(parts["validation"]["event_timestamp"]).as_py() <= pc.min(parts["test"]["event_timestamp"]).as_py()
    train_stats = result.statistics["train"]
    assert train_stats["monthly_charges"]["mean"] == pytest.approx(pc.mean(parts["train"]["monthly_charges"]).as_py())
    assert {t["value"] for t in train_stats["churned"]["top"]} == {0, 1}
    assert train_stats["plan"]["distinct"] == 3
    assert result.content_hash.startswith("sha256:")


def test_entity_hash_split_keeps_each_entity_in_one_split_and_is_deterministic(tmp_path, table):
    source = write_parquet(tmp_path / "data.parquet", table)
    config = make_config(source, split={"by": "entity_hash", "seed": 7})
    first = ingest(config, outputs(tmp_path / "a"))
    second = ingest(config, outputs(tmp_path / "b"))
    assert first.rows == second.rows
    entities = {}
    for name, path in outputs(tmp_path / "a").items():
        assert Path(path).read_bytes() == Path(getattr(outputs(tmp_path / "b"), name)).read_bytes()
        entities[name] = set(pq.read_table(path)["customer_id"].to_pylist())
    assert not entities["train"] & entities["test"]
    assert not entities["train"] & entities["validation"]
    assert not entities["validation"] & entities["test"]


def test_entity_buckets_depend_on_seed_but_not_on_row_order():
    entities = pa.chunked_array([pa.array([5, 9, 5, 2])])
    buckets = entity_buckets(entities, seed=0)
    assert buckets[0] == buckets[2]
    assert entity_buckets(pa.chunked_array([pa.array([2, 5])]), seed=0).tolist() == [buckets[3], buckets[0]]
    assert entity_buckets(entities, seed=1).tolist() != buckets.tolist()


def test_rerun_on_the_same_input_overwrites_with_identical_outputs(tmp_path, table):
    source = write_parquet(tmp_path / "data.parquet", table)
    config = make_config(source)
    first = ingest(config, outputs(tmp_path))
    before = {name: Path(p).read_bytes() for name, p in outputs(tmp_path).items()}
    second = ingest(config, outputs(tmp_path))
    assert first.content_hash == second.content_hash
    assert before == {name: Path(p).read_bytes() for name, p in outputs(tmp_path).items()}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["test", "train", "validation"]


def test_csv_directory_with_offset_timestamps_is_read_and_normalised_to_utc(tmp_path, table):
    frame = table.slice(0, 1_000).set_column(
        1, "event_timestamp", pc.strftime(table["event_timestamp"].slice(0, 1_000), "%Y-%m-%dT%H:%M:%S+02:00")
    )
    (tmp_path / "csv").mkdir()
    for i in range(2):
        pacsv.write_csv(frame.slice(i * 500, 500), tmp_path / "csv" / f"part-{i}.csv")
    (tmp_path / "csv" / "_SUCCESS").write_text("")
    result = ingest(make_config(tmp_path / "csv"), outputs(tmp_path))
    assert len(result.files) == 2
    train = pq.read_table(outputs(tmp_path).train)
    assert train.schema.field("event_timestamp").type == pa.timestamp("us", tz="UTC")
    assert train.schema.field("plan").type == pa.string()


def test_features_default_to_every_other_column(tmp_path, table):
    source = write_parquet(tmp_path / "data.parquet", table)
    config = make_config(source, schema={"features": None, "categorical": CATEGORICAL})
    result = ingest(config, outputs(tmp_path))
    assert result.features == NUMERIC + CATEGORICAL


def test_extra_columns_are_dropped_when_allowed(tmp_path, table):
    source = write_parquet(tmp_path / "d.parquet", table.append_column("notes", pa.array(["x"] * table.num_rows)))
    ingest(make_config(source, schema={"allow_extra_columns": True}), outputs(tmp_path))
    assert "notes" not in pq.read_table(outputs(tmp_path).train).column_names


@pytest.mark.servers
def test_reads_a_prefix_from_s3(s3, table, tmp_path):
    storage.write_bytes(s3.uri("ingest/raw/part-0.parquet"), parquet_bytes(table))
    result = ingest(make_config(s3.uri("ingest/raw/")), outputs(tmp_path))
    assert result.files == [s3.uri("ingest/raw/part-0.parquet")]
    assert result.rows_read == table.num_rows


# --- bad input: a clear message naming file/column/row/value, and no output at all -------------------------------


def _timestamps_as_text(table: pa.Table, fmt: str = "%Y-%m-%dT%H:%M:%SZ") -> pa.Table:
    return with_column(table, "event_timestamp", pc.strftime(table["event_timestamp"], fmt).combine_chunks())


BAD_INPUTS = {
    "empty file": ("data.parquet", lambda t: b"", r"data\.parquet: file is empty"),
    "truncated parquet": (
        "data.parquet",
        lambda t: parquet_bytes(t)[:-100],
        r"data\.parquet: not a readable PARQUET file",
    ),
    "garbage csv": ("data.csv", lambda t: b"a,b\n1,2\n3,4,5\n", r"data\.csv: not a readable CSV file"),
    "zero rows": ("data.parquet", lambda t: parquet_bytes(t.slice(0, 0)), r"data\.parquet: no data rows"),
    "missing column": (
        "data.parquet",
        lambda t: parquet_bytes(t.drop_columns(["support_calls"])),
        r"data\.parquet: missing column\(s\) \['support_calls'\]",
    ),
    "extra column": (
        "data.parquet",
        lambda t: parquet_bytes(t.append_column("notes", pa.array(["x"] * t.num_rows))),
        r"data\.parquet: unexpected column\(s\) \['notes'\]",
    ),
    "non-numeric value in a numeric feature": (
        "data.csv",
        lambda t: csv_bytes(with_value(t.cast(_all_text(t.schema)), "monthly_charges", 41, "12,5 EUR")),
        r"data\.csv: column 'monthly_charges' row 42 \(line 43\): value '12,5 EUR' is not numeric",
    ),
    "timestamps without timezone (parquet)": (
        "data.parquet",
        lambda t: parquet_bytes(
            with_column(t, "event_timestamp", t["event_timestamp"].cast(pa.timestamp("us")).combine_chunks())
        ),
        r"data\.parquet: column 'event_timestamp' holds timestamps without a timezone",
    ),
    "timestamp without timezone (csv)": (
        "data.csv",
        lambda t: csv_bytes(with_value(_timestamps_as_text(t), "event_timestamp", 7, "2026-02-01T10:00:00")),
        r"data\.csv: column 'event_timestamp' row 8 \(line 9\): value '2026-02-01T10:00:00' has no timezone",
    ),
    "unparseable timestamp": (
        "data.csv",
        lambda t: csv_bytes(with_value(_timestamps_as_text(t), "event_timestamp", 3, "yesterday")),
        r"data\.csv: column 'event_timestamp' row 4 \(line 5\): value 'yesterday' is not an ISO 8601 timestamp",
    ),
    "null entity id": (
        "data.parquet",
        lambda t: parquet_bytes(with_value(t, "customer_id", 12, None)),
        r"data\.parquet: column 'customer_id' row 13: entity id is null",
    ),
    "null label": (
        "data.parquet",
        lambda t: parquet_bytes(with_value(t, "churned", 99, None)),
        r"data\.parquet: column 'churned' row 100: label is null or NaN",
    ),
    "NaN label": (
        "data.parquet",
        lambda t: parquet_bytes(with_value(t.cast(float_label(t.schema)), "churned", 5, float("nan"))),
        r"data\.parquet: column 'churned' row 6: label is null or NaN",
    ),
    "label with more classes than schema.max_classes": (
        "data.parquet",
        lambda t: parquet_bytes(with_column(t, "churned", [i % 60 for i in range(t.num_rows)])),
        r"label 'churned' looks continuous: more than schema.max_classes \(50\) distinct values, such as "
        r"0 \(\S*data\.parquet, row 1\), 1 \(\S*data\.parquet, row 2\), 50 \(\S*data\.parquet, row 51\); "
        r"schema.task: auto trains a classifier, .* set schema.task: regression to predict the number",
    ),
    "duplicated column name (csv)": (
        "data.csv",
        lambda t: csv_bytes(t.rename_columns([c if c != "region" else "plan" for c in t.column_names])),
        r"data\.csv: column name\(s\) \['plan'\] appear more than once in the header",
    ),
    "duplicated column name (parquet)": (
        "data.parquet",
        lambda t: parquet_bytes(t.rename_columns([c if c != "region" else "plan" for c in t.column_names])),
        r"data\.parquet: column name\(s\) \['plan'\] appear more than once in the header",
    ),
    "list-typed label": (
        "data.parquet",
        lambda t: parquet_bytes(with_column(t, "churned", [[v] for v in t["churned"].to_pylist()])),
        r"data\.parquet: column 'churned' \(the label\) holds nested values \(list<element: int64>\)",
    ),
    "list-typed entity": (
        "data.parquet",
        lambda t: parquet_bytes(with_column(t, "customer_id", [[v] for v in t["customer_id"].to_pylist()])),
        r"data\.parquet: column 'customer_id' \(the entity\) holds nested values \(list<element: int64>\)",
    ),
    "struct-typed feature": (
        "data.parquet",
        lambda t: parquet_bytes(with_column(t, "age", [{"years": v} for v in t["age"].to_pylist()])),
        r"data\.parquet: column 'age' \(the feature\) holds nested values \(struct<years: double>\)",
    ),
    "float entity ids (parquet)": (
        "data.parquet",
        lambda t: parquet_bytes(with_column(t, "customer_id", t["customer_id"].cast(pa.float64()).combine_chunks())),
        r"data\.parquet: column 'customer_id' row 1: entity id \d+\.0 is a float \(double\); entity ids must be "
        r"integers or strings",
    ),
    "float entity ids (csv)": (
        "data.csv",
        lambda t: csv_bytes(with_value(t.cast(_float_entity(t.schema)), "customer_id", 3, 17.5)),
        r"data\.csv: column 'customer_id' row 4 \(line 5\): entity id 17\.5 is a float \(double\)",
    ),
    "timestamp far in the future (parquet)": (
        "data.parquet",
        lambda t: parquet_bytes(with_value(t, "event_timestamp", 5, _FUTURE)),
        r"data\.parquet: column 'event_timestamp' row 6: timestamp 2126-01-01T00:00:00\+00:00 is more than 1 day\(s\) "
        r"after now \(20\d\d-.*\): check the clock or unit that wrote it, or raise schema.max_future_days",
    ),
    "timestamp far in the future (csv)": (
        "data.csv",
        lambda t: csv_bytes(with_value(_timestamps_as_text(t), "event_timestamp", 9, "2126-01-01T00:00:00Z")),
        r"data\.csv: column 'event_timestamp' row 10 \(line 11\): timestamp 2126-01-01T00:00:00\+00:00 is more than",
    ),
    "contradictory labels for one entity and timestamp": (
        "data.parquet",
        lambda t: parquet_bytes(
            pa.concat_tables([t, with_value(t.slice(0, 1), "churned", 0, 1 - t["churned"][0].as_py())])
        ),
        r"entity \d+ at 20\d\d-.* has two labels: [01] \(\S*data\.parquet row 1\) and [01] "
        r"\(\S*data\.parquet row 2001\) in column 'churned'; fix the data, or set "
        r"schema.conflicting_labels: keep_latest",
    ),
    "too few rows for the split": (
        "data.parquet",
        lambda t: parquet_bytes(t.slice(0, 5)),
        r"5 rows after removing duplicates are too few for the split .* at least 8",
    ),
}


def _all_text(schema: pa.Schema) -> pa.Schema:
    return pa.schema([f.with_type(pa.string()) if f.name == "monthly_charges" else f for f in schema])


def _float_entity(schema: pa.Schema) -> pa.Schema:
    return pa.schema([f.with_type(pa.float64()) if f.name == "customer_id" else f for f in schema])


_FUTURE = datetime.datetime(2126, 1, 1, tzinfo=datetime.UTC)


@pytest.mark.parametrize("case", list(BAD_INPUTS), ids=list(BAD_INPUTS))
def test_bad_input_fails_with_a_clear_message_and_no_output(tmp_path, table, case):
    name, make, message = BAD_INPUTS[case]
    source = tmp_path / "data" / name
    source.parent.mkdir()
    source.write_bytes(make(table))
    with pytest.raises(InputError, match=message):
        ingest(make_config(source), outputs(tmp_path))
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_source_without_data_files_fails_naming_the_source(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"data.source .*empty: no data files found"):
        ingest(make_config(tmp_path / "empty"), outputs(tmp_path))


def test_entity_hash_split_with_too_few_entities_names_the_empty_split(tmp_path, table):
    one_entity = with_column(table, "customer_id", pa.array([7] * table.num_rows))
    source = write_parquet(tmp_path / "d.parquet", one_entity)
    with pytest.raises(InputError, match=r"from 1 entities are too few for an entity_hash split"):
        ingest(make_config(source, split={"by": "entity_hash"}), outputs(tmp_path))
    assert not (tmp_path / "out").exists()


def test_deduplication_treats_nulls_and_nans_as_equal_and_keeps_near_duplicates():
    from kfp_mlops.components.ingest.core import sort_and_deduplicate

    schema = make_config("unused").schema_
    ts = pa.array([0, 0, 0, 0, 5], pa.timestamp("us", tz="UTC"))
    table = pa.table(
        {
            "customer_id": [1, 1, 1, 1, 1],
            "event_timestamp": ts,
            "x": [float("nan"), 2.0, float("nan"), 2.0, 2.0],
            "plan": [None, "a", None, "b", "a"],
            "churned": [0, 0, 0, 0, 0],
        }
    )
    result = sort_and_deduplicate(table, schema)
    assert result.num_rows == 4  # rows 0 and 2 are identical (NaN, null); rows 1, 3, 4 differ
    assert result["event_timestamp"].to_pylist() == sorted(result["event_timestamp"].to_pylist())


# --- real-world gaps: missing categories, a class missing from a split, stratification ------------------------------


def weather_config(source, **split):
    return parse_config({"data": {"source": str(source)}, "schema": weather.schema(),
                         "split": {"by": "time", **split}})  # fmt: skip


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_missing_categories_are_null_in_every_spelling_and_booleans_read_as_categories(tmp_path, fmt):
    """A null, an empty cell and CSV's NA are one missing category; a boolean category is "true"/"false"."""
    source = weather.write(tmp_path / "raw", fmt)
    result = ingest(weather_config(source), outputs(tmp_path))
    parts = {name: pq.read_table(path) for name, path in outputs(tmp_path).items()}
    raw = weather.make_table()
    gaps = raw["wind_dir"].null_count + raw["wind_dir"].to_pylist().count("")
    assert result.missing["wind_dir"] == gaps and result.missing["frost"] == raw["frost"].null_count
    assert result.missing["sensor"] == raw["sensor"].null_count and result.missing["wind"] == raw["wind"].null_count
    train = parts["train"]
    assert set(train["wind_dir"].to_pylist()) == {"N", "E", "S", "W", None}  # never ""
    assert set(train["frost"].to_pylist()) == {"true", "false", None}
    assert parts["test"]["sensor"].null_count == parts["test"].num_rows  # a category entirely null in one split
    if fmt == "csv":  # the same values as from Parquet
        parquet = ingest(weather_config(weather.write(tmp_path / "pq")), outputs(tmp_path / "pq"))
        assert parquet.missing == result.missing
        for split in ("train", "validation", "test"):
            for column in weather.CATEGORICAL:
                assert parquet.statistics[split][column] == result.statistics[split][column]


def test_a_class_missing_from_validation_and_test_is_warned_at_ingest_and_stratify_keeps_every_class(tmp_path):
    source = weather.write(tmp_path / "raw")
    plain = ingest(weather_config(source), outputs(tmp_path / "plain"))
    (warning,) = plain.warnings
    assert warning.startswith("split: class 'snow' of 'weather' has no rows in the validation and test split (48")
    assert "set split.stratify: true to keep every class in every split" in warning
    assert "**Warning**: split: class 'snow'" in render_summary(plain, weather_config(source))
    for by in ("time", "entity_hash"):
        config = weather_config(source, by=by, stratify=True, validation=0.15, test=0.15)
        result = ingest(config, outputs(tmp_path / by))
        parts = {name: pq.read_table(path) for name, path in outputs(tmp_path / by).items()}
        assert result.warnings == []
        assert all(set(part["weather"].to_pylist()) == set(weather.CLASSES) for part in parts.values()), by
        assert sum(result.rows.values()) == weather.STATIONS * weather.DAYS
    # time: each class's latest rows are its test rows
    parts = {name: pq.read_table(path) for name, path in outputs(tmp_path / "time").items()}
    for label in weather.CLASSES:

        def times(name, label=label):
            return parts[name].filter(pc.equal(parts[name]["weather"], label))["event_timestamp"]

        assert pc.max(times("train")).as_py() <= pc.min(times("validation")).as_py()
        assert pc.max(times("validation")).as_py() <= pc.min(times("test")).as_py()
    # entity_hash: an entity stays in one split
    parts = {name: pq.read_table(path) for name, path in outputs(tmp_path / "entity_hash").items()}
    stations = [set(part["station_id"].to_pylist()) for part in parts.values()]
    assert not (stations[0] & stations[1] or stations[0] & stations[2] or stations[1] & stations[2])


def test_stratum_counts_keep_a_training_row_and_skip_classes_too_small_to_split():
    from kfp_mlops.components.ingest.core import stratum_counts

    config = make_config("unused", split={"validation": 0.15, "test": 0.15}).split
    assert stratum_counts(2, config) == (0, 0)
    assert stratum_counts(3, config) == (1, 1)
    assert stratum_counts(100, config) == (15, 15)
    big = make_config("unused", split={"validation": 0.45, "test": 0.45}).split
    assert stratum_counts(4, big) == (1, 2)


def test_a_class_with_rows_only_outside_train_is_warned_at_ingest_and_refused_by_training(tmp_path):
    """Ingest warns (the monitoring pipeline's drift check needs no label); prepare-training, on CPU before any GPU,
    refuses the data naming the class; split.stratify puts rows of it into train."""
    from kfp_mlops.components.train.core import prepare

    table = weather.make_table()
    late = pc.greater_equal(table["event_timestamp"], pa.scalar(table["event_timestamp"][-18].as_py()))  # 18 days
    relabelled = with_column(table, "weather", pc.if_else(late, "hail", table["weather"]))
    source = write_parquet(tmp_path / "d.parquet", relabelled)
    result = ingest(weather_config(source), outputs(tmp_path))
    assert result.warnings[0] == (
        "split: class 'hail' of 'weather' has no rows in the train split (108 in test): training will refuse the data "
        "(the model cannot learn a class it never saw); set split.stratify: true to keep every class in every split, "
        "or remove those rows"
    )
    paths = outputs(tmp_path)
    with pytest.raises(InputError, match=r"validation split: label 'hail' in column 'weather' does not occur"):
        prepare(weather_config(source), paths.train, paths.test, str(tmp_path / "prepared"))
    stratified = ingest(weather_config(source, stratify=True), outputs(tmp_path / "s"))
    assert not any("'hail'" in warning for warning in stratified.warnings)
