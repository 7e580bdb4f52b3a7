"""Drift step: every per-column test choice, score and verdict equals Evidently 0.7's DataDriftPreset (run here
through its own 0.7 API on the same data), overrides included; bad input fails naming column or URI and writes
nothing; the window can sit on S3."""

from __future__ import annotations

import io
import typing
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from kfp_mlops.components.drift import stats
from kfp_mlops.components.drift.core import check_drift
from kfp_mlops.components.shared import storage
from kfp_mlops.components.shared.config import DriftConfig
from kfp_mlops.components.shared.config import DriftMethod as Method
from kfp_mlops.components.shared.errors import InputError

NUMERIC = ["age", "income", "visits", "score", "few", "binary_num", "tenure"]
CATEGORICAL = ["plan", "flag", "region", "city"]
DISPLAY_NAMES = {test.display_name: test.name for test in stats.STAT_TESTS.values()}


def frame(rows: int, shifted: bool, seed: int) -> pa.Table:
    """A feature table like the train split: entity, label, and numeric and categorical features with
    nulls, integers with few values, binary and many-category columns. ``shifted`` drifts age, few and plan."""
    rng = np.random.default_rng(seed)
    shift = 1 if shifted else 0
    age = rng.normal(40 + 4 * shift, 10, rows)
    plan = rng.choice(["basic", "pro", "team"], rows, p=[0.3, 0.3, 0.4] if shifted else [0.5, 0.3, 0.2])
    missing = rng.random(rows) < 0.06
    return pa.table(
        {
            "customer_id": np.arange(rows),
            "age": np.where(missing, np.nan, age),  # NaN: dropped
            "income": pa.array(rng.lognormal(10, 1, rows), mask=rng.random(rows) < 0.03),  # nulls: dropped
            "visits": rng.poisson(12, rows),  # integers, many values
            # ±inf: dropped (NaN too: Evidently's dataset-share path keeps ±inf in a column without NaN)
            "score": np.choose(
                rng.choice(4, rows, p=[0.996, 0.001, 0.001, 0.002]), [rng.normal(0, 1, rows), np.inf, -np.inf, np.nan]
            ),
            "few": rng.integers(0, 3 + shift, rows),  # ≤ 5 distinct values: tested like a category
            "binary_num": rng.integers(0, 2, rows),
            "tenure": np.round(rng.exponential(24, rows), 1),
            "plan": pa.array(plan, mask=missing),
            "flag": rng.choice(["yes", "no"], rows),  # binary: Z-test when small
            "region": rng.choice([f"r{i}" for i in range(12)], rows),
            "city": rng.choice([f"city{i}" for i in range(300)], rows),  # many categories, some absent in a frame
            "churned": rng.integers(0, 2, rows),
        }
    )


def evidently_drift(reference: pa.Table, current: pa.Table, numeric: list[str], categorical: list[str], **preset):
    """Evidently 0.7's DataDriftPreset through its own API: {column: (method, score, threshold, drifted)}, share,
    dataset verdict."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    columns = numeric + categorical
    definition = DataDefinition(numerical_columns=numeric, categorical_columns=categorical)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        snapshot = Report([DataDriftPreset(**preset)], include_tests=True).run(
            Dataset.from_pandas(current.select(columns).to_pandas(), data_definition=definition),
            Dataset.from_pandas(reference.select(columns).to_pandas(), data_definition=definition),
        )
    document = snapshot.dict()
    prefix = "Value Drift for column "
    verdicts = {t["name"][len(prefix) :]: t["status"] == "FAIL" for t in document["tests"] if prefix in t["name"]}
    (dataset,) = [t["status"] == "FAIL" for t in document["tests"] if t["id"] == "lt"]
    columns_out, share = {}, None
    for metric in document["metrics"]:
        config = metric["config"]
        if config["type"].endswith("ValueDrift"):
            method = DISPLAY_NAMES.get(config["method"], config["method"])
            columns_out[config["column"]] = (method, metric["value"], config["threshold"], verdicts[config["column"]])
        else:
            share = metric["value"]["share"]
    return columns_out, share, dataset


def assert_same_as_evidently(ours: stats.DatasetDrift, theirs) -> None:
    columns, share, dataset = theirs
    assert {c.column for c in ours.columns} == set(columns)
    for column in ours.columns:
        method, score, threshold, drifted = columns[column.column]
        assert (column.column, column.method, column.drifted) == (column.column, method, drifted)
        assert column.threshold == threshold
        assert column.score == pytest.approx(score, rel=1e-9, abs=1e-12), column
    assert ours.share == share
    assert ours.drifted == dataset


@pytest.mark.parametrize(
    ("reference_rows", "current_rows", "expected_methods"),
    [
        (800, 900, {"ks", "chisquare", "z"}),  # small reference: p-value tests
        # 1,040 rows but 990 non-null in age and plan: those keep the small-reference tests (age: K-S with the
        # asymptotic p-value, the window holding > 10,000 values), the other columns get distances
        (1040, 12_000, {"ks", "chisquare", "wasserstein", "jensenshannon"}),
        (6000, 15_000, {"wasserstein", "jensenshannon"}),  # large reference: distances
    ],
)
def test_default_choice_scores_and_verdicts_equal_evidentlys(reference_rows, current_rows, expected_methods):
    reference, current = frame(reference_rows, False, seed=reference_rows), frame(current_rows, True, seed=7)
    ours = stats.table_drift(reference, current, NUMERIC, CATEGORICAL)
    assert {c.method for c in ours.columns} == expected_methods
    assert 0 < ours.drifted_count < len(ours.columns)  # drifted and undrifted columns alike
    assert_same_as_evidently(ours, evidently_drift(reference, current, NUMERIC, CATEGORICAL))


@pytest.mark.parametrize(
    ("numeric_method", "categorical_method"),
    [
        ("ks", "chisquare"),
        ("wasserstein", "z"),
        ("jensenshannon", "jensenshannon"),
        ("psi", "psi"),
        ("kl_div", "kl_div"),
    ],
)
def test_method_and_threshold_overrides_equal_evidentlys(numeric_method, categorical_method):
    reference, current = frame(3000, False, seed=3), frame(2500, True, seed=4)
    methods = {**dict.fromkeys(NUMERIC, numeric_method), **dict.fromkeys(CATEGORICAL, categorical_method)}
    thresholds = {"age": 0.2, "few": 0.3, "plan": 0.01, "city": 0.5}
    ours = stats.table_drift(reference, current, NUMERIC, CATEGORICAL, methods, thresholds, drift_share=0.25)
    assert {c.method for c in ours.columns} == {numeric_method, categorical_method}
    assert ours.columns[0].threshold == 0.2
    theirs = evidently_drift(
        reference, current, NUMERIC, CATEGORICAL, per_column_method=methods, per_column_threshold=thresholds,
        drift_share=0.25,
    )  # fmt: skip
    assert_same_as_evidently(ours, theirs)


def test_edge_cases_equal_evidentlys():
    """Constant columns, zero reference spread, categories on one side only, and numpy's integer histogram rule
    (integer data without nulls gets bins ≥ 1 wide: here 20 bins where floats get 22)."""
    rng = np.random.default_rng(11)
    rows = 270_000  # log2(2 × rows) + 1 > 20: Sturges' width < 1 for integers 0..20
    reference = pa.table(
        {
            "same": np.full(rows, 3.0),
            "flat": np.full(rows, 1.0),
            "ints": rng.integers(0, 21, rows),
            "floats": rng.integers(0, 21, rows).astype(float),
            "one": ["a"] * rows,
            "new": rng.choice(["a", "b"], rows),
        }
    )
    current = pa.table(
        {
            "same": np.full(rows, 3.0),
            "flat": np.r_[np.full(rows - 10, 1.0), np.arange(10.0)],
            "ints": np.minimum(rng.integers(0, 23, rows), 20),
            "floats": np.minimum(rng.integers(0, 23, rows), 20).astype(float),
            "one": ["a"] * rows,
            "new": rng.choice(["a", "b", "c"], rows),
        }
    )
    numeric, categorical = ["same", "flat", "ints", "floats"], ["one", "new"]
    methods = {"flat": "wasserstein", "ints": "jensenshannon", "floats": "jensenshannon", "new": "chisquare"}
    ours = stats.table_drift(reference, current, numeric, categorical, methods)
    by_name = {c.column: c for c in ours.columns}
    assert by_name["same"].score == 0.0 and by_name["flat"].drifted and by_name["new"].score == 0.0
    assert by_name["ints"].score != pytest.approx(by_name["floats"].score)  # the rule changes the bins
    assert_same_as_evidently(ours, evidently_drift(reference, current, numeric, categorical, per_column_method=methods))
    small = stats.table_drift(reference.slice(0, 500), current.slice(0, 400), numeric, categorical)
    assert [c.method for c in small.columns] == ["z", "z", "ks", "ks", "z", "chisquare"]
    assert {c.column: c.score for c in small.columns}["same"] == 1.0  # one identical value: p = 1
    assert_same_as_evidently(small, evidently_drift(reference.slice(0, 500), current.slice(0, 400), numeric,
                                                    categorical))  # fmt: skip


SMALL_TESTS = {"x": "ks", "few": "chisquare", "plan": "chisquare", "flag": "z"}  # p-values: ≤ 1,000 reference values
DISTANCES = {"x": "wasserstein", "few": "jensenshannon", "plan": "jensenshannon", "flag": "jensenshannon"}


def boundary_frame(rows: int, seed: int, shift: float = 0.0) -> pa.Table:
    """No missing value: every column holds exactly ``rows`` values. ``shift`` moves x and the categories' mix."""
    rng = np.random.default_rng(seed)
    return pa.table(
        {
            "x": rng.normal(shift, 1, rows),
            "few": rng.integers(0, 3, rows),  # 3 distinct numbers: tested like a category
            "plan": rng.choice(["basic", "pro", "team"], rows, p=[0.5 - shift / 2, 0.3, 0.2 + shift / 2]),
            "flag": rng.choice(["yes", "no"], rows),
        }
    )


@pytest.mark.parametrize(("reference_values", "expected"), [(1000, SMALL_TESTS), (1001, DISTANCES)])
def test_a_reference_of_1000_values_gets_p_value_tests_and_1001_gets_distances_as_in_evidently(
    reference_values, expected
):
    """Evidently switches at ``reference ≤ 1000`` (legacy ``_get_default_stattest``): both sides of the boundary,
    with a current window larger than the reference so that only the reference's size can decide."""
    reference, current = boundary_frame(reference_values, seed=5), boundary_frame(1500, seed=6, shift=0.2)
    ours = stats.table_drift(reference, current, ["x", "few"], ["plan", "flag"])
    assert {c.column: c.method for c in ours.columns} == expected
    assert {c.reference_values for c in ours.columns} == {reference_values}
    assert 0 < ours.drifted_count < len(ours.columns)  # verdicts on both sides of each threshold
    assert_same_as_evidently(ours, evidently_drift(reference, current, ["x", "few"], ["plan", "flag"]))


def test_the_boundary_counts_values_left_after_dropping_missing_ones_not_rows():
    """1,001 reference rows, one of them missing in x (NaN) and in plan (null): those two columns hold 1,000 values
    and keep the p-value tests; the others, 1,001 values each, get distances. As Evidently decides it."""
    reference, current = boundary_frame(1001, seed=5), boundary_frame(1500, seed=6, shift=0.2)
    x = reference["x"].to_numpy().copy()
    x[17] = np.nan
    plan = pa.array(reference["plan"].to_pylist()[:500] + [None] + reference["plan"].to_pylist()[501:])
    reference = reference.set_column(0, "x", pa.array(x)).set_column(2, "plan", plan)
    ours = stats.table_drift(reference, current, ["x", "few"], ["plan", "flag"])
    assert {c.column: (c.method, c.reference_values) for c in ours.columns} == {
        "x": ("ks", 1000), "few": ("jensenshannon", 1001), "plan": ("chisquare", 1000), "flag": ("jensenshannon", 1001)
    }  # fmt: skip
    assert_same_as_evidently(ours, evidently_drift(reference, current, ["x", "few"], ["plan", "flag"]))


def test_infinite_values_are_dropped_like_evidentlys_per_column_test():
    """Evidently's ValueDrift drops ±inf always; its dataset share (legacy path) only in a column that also holds a
    NaN. The verdicts follow ValueDrift, the share is the share of those verdicts."""
    rng = np.random.default_rng(2)
    reference = pa.table({"x": np.r_[rng.normal(0, 1, 900), np.full(30, np.inf)]})
    current = pa.table({"x": np.r_[rng.normal(0.05, 1, 700), np.full(30, -np.inf)]})
    ours = stats.table_drift(reference, current, ["x"], [])
    (column,) = ours.columns
    assert (column.method, column.reference_values, column.current_values) == ("ks", 900, 700)
    method, score, _, drifted = evidently_drift(reference, current, ["x"], [])[0]["x"]
    assert (column.method, column.drifted) == (method, drifted) and column.score == pytest.approx(score, rel=1e-9)


def test_dataset_verdict_counts_a_share_equal_to_drift_share_as_drift():
    columns = [stats.ColumnDrift(f"c{i}", stats.NUMERIC, "ks", 0.01, 0.05, i < 2, 10, 10) for i in range(4)]
    assert stats.dataset_drift(columns, 0.5).drifted  # 2 of 4 ≥ 0.5
    assert not stats.dataset_drift(columns, 0.51).drifted
    assert stats.STAT_TESTS["ks"].drifted(0.05, 0.05) and not stats.STAT_TESTS["chisquare"].drifted(0.05, 0.05)
    assert stats.STAT_TESTS["wasserstein"].drifted(0.1, 0.1)


# --- the step -------------------------------------------------------------------------------------------------------


def write_csv(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pacsv.write_csv(table, sink)
    return sink.getvalue()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    directory = tmp_path_factory.mktemp("drift")
    reference, current = frame(4000, False, seed=21), frame(3000, True, seed=22)
    pq.write_table(reference, directory / "reference.parquet")
    (directory / "window").mkdir()
    window = current.drop_columns(["churned"])  # inference inputs: no label
    pq.write_table(window.slice(0, 1500), directory / "window" / "part-0.parquet")
    pq.write_table(window.slice(1500), directory / "window" / "part-1.parquet")
    return {"dir": directory, "reference": reference, "current": current, "window": window}


def settings(source, **values) -> tuple[str, DriftConfig]:
    """(the current window's source, the drift settings): the two arguments check_drift takes after the reference."""
    return str(source), DriftConfig(**values)


def test_check_drift_writes_report_and_summary_with_full_data_verdicts(data, tmp_path):
    out = tmp_path / "out"
    chosen = settings(data["dir"] / "window", report_sample_rows=1000, per_column={"plan": {"method": "psi"}})
    result = check_drift(str(data["dir"] / "reference.parquet"), *chosen, NUMERIC, CATEGORICAL,
                         str(out / "report.html"), str(out / "summary.md"))  # fmt: skip
    expected = stats.table_drift(data["reference"], data["current"], NUMERIC, CATEGORICAL, {"plan": "psi"})
    assert [(c.column, c.method, c.score, c.drifted) for c in result.columns] == [
        (c.column, c.method, c.score, c.drifted) for c in expected.columns
    ]
    assert (result.drifted, result.share, result.reference_rows, result.current_rows) == (
        expected.drifted, expected.share, 4000, 3000)  # fmt: skip
    assert len(result.current_files) == 2 and result.report_rows == (1000, 1000)
    metrics = result.metrics()
    assert metrics["share_of_drifted_columns"] == result.share and metrics["score.age"] == result.columns[0].score
    summary = (out / "summary.md").read_text()
    assert "| plan | categorical | PSI |" in summary and "| age | numeric | Wasserstein distance (normed) |" in summary
    # a categorical null is missing (left out of the test, as Evidently does) and counted as such
    gaps = [data[frame]["plan"].null_count for frame in ("reference", "current")]
    assert gaps[0] > 0 and f"| {gaps[0]:,} ({gaps[0] / 4000:.1%}) / {gaps[1]:,} ({gaps[1] / 3000:.1%}) |" in summary
    assert "1,000 reference and 1,000 current rows" in summary and "3,000 rows" in summary
    html = (out / "report.html").read_text()  # Evidently's widgets: the dataset test and one test per column
    assert "Share of Drifted Columns" in html and all(f"Value Drift for column {n}" in html for n in NUMERIC)
    assert sorted(p.name for p in out.iterdir()) == ["report.html", "summary.md"]


def test_a_column_absent_from_the_report_sample_is_left_out_of_the_html_only(tmp_path):
    rows = 3000
    rare = np.full(rows, np.nan)
    rare[[5, 17, 2999]] = [1.0, 2.0, 3.0]  # the seeded 1,000-row samples miss these rows
    reference = pa.table({"x": np.random.default_rng(0).normal(size=rows), "rare": rare})
    pq.write_table(reference, tmp_path / "reference.parquet")
    pq.write_table(reference, tmp_path / "current.parquet")
    result = check_drift(str(tmp_path / "reference.parquet"), *settings(tmp_path / "current.parquet",
                         report_sample_rows=1000), ["x", "rare"], [], str(tmp_path / "r.html"),
                         str(tmp_path / "s.md"))  # fmt: skip
    assert [c.column for c in result.columns] == ["x", "rare"] and result.report_columns == ["x"]
    assert result.columns[1].method == "chisquare" and not result.drifted  # 3 values, tested on the full data
    assert "Not in the HTML report (no value in the sample): ['rare']" in (tmp_path / "s.md").read_text()


def test_settings_reject_unknown_keys_and_methods():
    assert typing.get_args(Method) == stats.METHODS  # the settings name every test stats implements
    with pytest.raises(ValidationError, match="extra"):
        DriftConfig(treshold=0.1)
    with pytest.raises(ValidationError, match="method"):
        DriftConfig(per_column={"age": {"method": "anderson"}})
    with pytest.raises(ValidationError):
        settings("x")[1].drift_share = 0.2  # frozen


def _bad_window(directory: Path, name: str, table: pa.Table) -> Path:
    path = directory / name
    path.write_bytes(write_csv(table))
    return path


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("no reference", r"reference .*nowhere: no data files found"),
        ("empty window", r"current window .*empty.csv: no rows"),
        ("missing column", r"part.csv: missing column\(s\) \['tenure'\]"),
        ("extra column", r"part.csv: column\(s\) \['discount'\] are not in the reference"),
        ("retyped column", r"'visits' is int64 in the reference but string here"),
        ("all-null in window", r"current window .*: column\(s\) \['region'\] hold no values"),
        ("all-null in reference", r"reference .*: column\(s\) \['score'\] hold no values \(all null, NaN or infinite"),
        ("method for another kind", r"drift.per_column.plan.method: 'ks' does not apply to categorical column 'plan'"),
        ("unknown column", r"drift.columns: \['height'\] are not feature columns"),
    ],
)
def test_bad_input_names_the_fault_and_writes_nothing(data, tmp_path, case, message):
    reference = str(data["dir"] / "reference.parquet")
    window = data["window"].slice(0, 200)
    options: dict = {}
    if case == "no reference":
        reference, source = str(tmp_path / "nowhere"), data["dir"] / "window"
    elif case == "empty window":
        source = _bad_window(tmp_path, "empty.csv", window.slice(0, 0))
    elif case == "missing column":
        source = _bad_window(tmp_path, "part.csv", window.drop_columns(["tenure"]))
    elif case == "extra column":
        source = _bad_window(tmp_path, "part.csv", window.append_column("discount", pa.array(np.ones(200))))
    elif case == "retyped column":
        visits = pa.array(["many"] * 200)
        source = _bad_window(tmp_path, "part.csv", window.set_column(3, "visits", visits))
    elif case == "all-null in window":
        index = window.column_names.index("region")
        source = _bad_window(tmp_path, "part.csv", window.set_column(index, "region", pa.nulls(200, pa.string())))
    elif case == "all-null in reference":
        table = data["reference"]
        table = table.set_column(4, "score", pa.array(np.full(len(table), np.nan)))
        pq.write_table(table, tmp_path / "reference.parquet")
        reference, source = str(tmp_path / "reference.parquet"), data["dir"] / "window"
    elif case == "method for another kind":
        source, options = data["dir"] / "window", {"per_column": {"plan": {"method": "ks"}}}
    else:
        source, options = data["dir"] / "window", {"columns": ["age", "height"]}
    out = tmp_path / "out"
    with pytest.raises(InputError, match=message):
        check_drift(reference, *settings(source, **options), NUMERIC, CATEGORICAL, str(out / "report.html"),
                    str(out / "summary.md"))  # fmt: skip
    assert not out.exists() or not list(out.iterdir())


@pytest.mark.servers
def test_window_and_reference_on_s3(s3, data, tmp_path):
    storage.upload_file(data["dir"] / "reference.parquet", s3.uri("drift/reference/train.parquet"))
    parts = [write_csv(data["window"].slice(0, 1000)), write_csv(data["window"].slice(1000))]
    storage.write_bytes(s3.uri("drift/window/2026-11-27.csv"), parts[0])
    storage.write_bytes(s3.uri("drift/window/2026-11-28.csv"), parts[1])
    storage.write_bytes(s3.uri("drift/window/_SUCCESS"), b"")
    out = tmp_path / "out"
    result = check_drift(s3.uri("drift/reference/"), *settings(s3.uri("drift/window/"), report_sample_rows=1000),
                         NUMERIC, CATEGORICAL, str(out / "report.html"), str(out / "summary.md"))  # fmt: skip
    # a null category goes through CSV as an empty field and is read back as missing again (as ingest reads it)
    assert b",," in parts[0] or b",\n" in parts[0]
    expected = stats.table_drift(data["reference"], data["window"], NUMERIC, CATEGORICAL)
    assert result.current_files == [s3.uri("drift/window/2026-11-27.csv"), s3.uri("drift/window/2026-11-28.csv")]
    assert result.reference_files == [s3.uri("drift/reference/train.parquet")]
    assert (result.current_rows, result.drifted, result.share) == (3000, expected.drifted, expected.share)
    assert [(c.column, c.method, c.score, c.drifted) for c in result.columns] == [
        (c.column, c.method, c.score, c.drifted) for c in expected.columns
    ]
    assert s3.uri("drift/window/") in (out / "summary.md").read_text() and (out / "report.html").stat().st_size


def test_an_undefined_drift_score_fails_the_check_instead_of_passing_it(tmp_path):
    """Chi-square on a column with one category in both frames has no p-value: the check fails closed, naming the
    column, the test and what to change, rather than calling the column "not drifted"."""
    frame = pa.table({"x": np.arange(200.0), "kind": ["a"] * 200})
    pq.write_table(frame, tmp_path / "reference.parquet")
    pq.write_table(frame, tmp_path / "current.parquet")
    chosen = settings(tmp_path / "current.parquet", per_column={"kind": {"method": "chisquare"}})
    message = (r"drift: column 'kind': the chi-square p_value is undefined \(nan\) on these rows .* set "
               r"drift.per_column.kind.method to jensenshannon or psi")  # fmt: skip
    with pytest.raises(InputError, match=message):
        check_drift(str(tmp_path / "reference.parquet"), *chosen, ["x"], ["kind"], str(tmp_path / "out" / "r.html"),
                    str(tmp_path / "out" / "s.md"))  # fmt: skip
    assert not (tmp_path / "out").exists()
