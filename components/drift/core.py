"""Drift: compare a current window (feature logs or inference inputs behind a URI) with the reference the deployed
model was trained on, column by column, with Evidently 0.7's DataDriftPreset tests and verdicts computed on every
row (``stats``), and write an Evidently HTML report of a bounded sample plus a Markdown summary. Paths and values
only; no KFP.

Bad input raises InputError naming the column or URI before anything is written: a reference that cannot be found,
an empty window, a window whose columns differ from the reference's (missing or unexpected columns, or another kind
of type), a column with no value in either frame, a method that does not apply to a column.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kfp_mlops.components.drift import stats
from kfp_mlops.components.shared import storage
from kfp_mlops.components.shared.config import ColumnDriftConfig, DriftConfig
from kfp_mlops.components.shared.datafiles import format_of, parse_table, resolve_files
from kfp_mlops.components.shared.errors import InputError
from kfp_mlops.components.shared.tabular import category_values


@dataclass(frozen=True)
class DriftResult:
    """Per-column verdicts on the full data, the dataset verdict, and what was read and shown."""

    columns: list[stats.ColumnDrift]
    drifted: bool
    share: float  # share of drifted columns
    drift_share: float  # the setting it is compared with (≥)
    reference_rows: int
    current_rows: int
    reference_files: list[str] = field(default_factory=list)
    current_files: list[str] = field(default_factory=list)
    report_rows: tuple[int, int] = (0, 0)  # rows of the reference and the current window the HTML report shows
    report_columns: list[str] = field(default_factory=list)  # columns the HTML report shows

    @property
    def drifted_columns(self) -> list[str]:
        return [c.column for c in self.columns if c.drifted]

    def metrics(self) -> dict[str, float]:
        """For a KFP Metrics artifact: the dataset verdict and share, then each column's score and verdict."""
        values: dict[str, float] = {
            "dataset_drift": float(self.drifted),
            "share_of_drifted_columns": self.share,
            "drifted_columns": float(len(self.drifted_columns)),
            "columns": float(len(self.columns)),
            "reference_rows": float(self.reference_rows),
            "current_rows": float(self.current_rows),
        }
        for column in self.columns:
            values[f"score.{column.column}"] = column.score
            values[f"drifted.{column.column}"] = float(column.drifted)
        return values


def check_drift(
    reference_uri: str,
    current: str | list[str],
    settings: DriftConfig,
    numeric: list[str],
    categorical: list[str],
    html_path: str,
    summary_path: str,
    current_format: str | None = None,
) -> DriftResult:
    """Read both frames, test every selected feature column on all rows, then write the HTML report (Evidently on
    a sample, tests pinned to the ones chosen here) and the Markdown summary, atomically and only if all succeeded.

    ``current``: a file, directory/prefix or glob (CSV or Parquet, by extension or ``current_format``), or a list of
    Parquet files (e.g. the ingest step's splits of the window)."""
    kinds = _column_kinds(settings, numeric, categorical)
    methods, thresholds = _overrides(settings, kinds)
    features = {**dict.fromkeys(numeric, stats.NUMERIC), **dict.fromkeys(categorical, stats.CATEGORICAL)}
    reference_files, reference = _read_reference(reference_uri, features)
    window = current if isinstance(current, str) else ", ".join(current)
    current_files, current = _read_window(current, current_format, reference.schema, features)
    _check_values(reference, current, kinds, reference_uri, window)

    numeric_checked = [name for name, kind in kinds.items() if kind == stats.NUMERIC]
    categorical_checked = [name for name, kind in kinds.items() if kind == stats.CATEGORICAL]
    verdict = stats.table_drift(
        reference, current, numeric_checked, categorical_checked, methods, thresholds, settings.drift_share
    )
    _check_scores(verdict.columns)
    ordered = {c.column: c for c in verdict.columns}
    result = DriftResult(
        columns=[ordered[name] for name in kinds],
        drifted=verdict.drifted,
        share=verdict.share,
        drift_share=settings.drift_share,
        reference_rows=reference.num_rows,
        current_rows=current.num_rows,
        reference_files=reference_files,
        current_files=current_files,
    )
    with contextlib.ExitStack() as stack:  # both files are renamed into place together, or neither
        html = stack.enter_context(storage.atomic_local_path(html_path))
        summary = stack.enter_context(storage.atomic_local_path(summary_path))
        rows, shown = render_report(reference, current, result, settings, str(html))
        result = dataclasses.replace(result, report_rows=rows, report_columns=shown)
        summary.write_text(render_summary(result, reference_uri, window, settings), encoding="utf-8")
    return result


def _check_scores(columns: list[stats.ColumnDrift]) -> None:
    """The drift gate fails closed: a column whose score is not a number (chi-square on a column with one category
    in both frames) cannot be judged "not drifted"; the step fails naming the column, the test and what to change."""
    for column in columns:
        if not np.isfinite(column.score):
            raise InputError(
                f"drift: column {column.column!r}: the {column.test} is undefined ({column.score}) on these rows "
                f"({column.reference_values} reference and {column.current_values} current values; one category "
                "or one value in both frames gives the test nothing to compare); the drift check cannot pass on "
                f"it: set drift.per_column.{column.column}.method to jensenshannon or psi, or leave the column out "
                "of drift.columns"
            )


# --- settings against the columns -----------------------------------------------------------------------------------


def _column_kinds(settings: DriftConfig, numeric: list[str], categorical: list[str]) -> dict[str, str]:
    both = sorted(set(numeric) & set(categorical))
    if both:
        raise InputError(f"column(s) {both} are listed as both numeric and categorical")
    features = {**dict.fromkeys(numeric, stats.NUMERIC), **dict.fromkeys(categorical, stats.CATEGORICAL)}
    names = list(features) if settings.columns is None else list(dict.fromkeys(settings.columns))
    unknown = [name for name in names if name not in features]
    if unknown:
        raise InputError(f"drift.columns: {unknown} are not feature columns; the features are {list(features)}")
    if not names:
        raise InputError("drift: no columns to check (drift.columns is empty or there are no feature columns)")
    return {name: features[name] for name in names}


def _overrides(settings: DriftConfig, kinds: dict[str, str]) -> tuple[dict[str, str | None], dict[str, float | None]]:
    """Each column's method and threshold: per_column, else the setting for all columns, else None (Evidently's)."""
    unknown = [name for name in settings.per_column if name not in kinds]
    if unknown:
        raise InputError(f"drift.per_column: {unknown} are not among the checked columns {list(kinds)}")
    methods, thresholds = {}, {}
    for name, kind in kinds.items():
        own = settings.per_column.get(name, ColumnDriftConfig())
        method = own.method or settings.method
        if method is not None and not stats.applicable(method, kind):
            key = f"drift.per_column.{name}.method" if own.method else "drift.method"
            takes = " or ".join(stats.STAT_TESTS[method].kinds)
            raise InputError(f"{key}: {method!r} does not apply to {kind} column {name!r} (it tests {takes} columns)")
        methods[name] = method
        thresholds[name] = own.threshold if own.threshold is not None else settings.threshold
    return methods, thresholds


# --- reading --------------------------------------------------------------------------------------------------------


def _kind(data_type: pa.DataType) -> str:
    """A type's kind, the level at which reference and window must agree (CSV and Parquet widths differ)."""
    if pa.types.is_dictionary(data_type):
        return _kind(data_type.value_type)
    if pa.types.is_integer(data_type) or pa.types.is_floating(data_type) or pa.types.is_decimal(data_type):
        return "numeric"
    if pa.types.is_string(data_type) or pa.types.is_large_string(data_type):
        return "string"
    if pa.types.is_boolean(data_type):
        return "boolean"
    if pa.types.is_timestamp(data_type):
        return "timestamp"
    if pa.types.is_null(data_type):
        return "null"
    return str(data_type)


def _holds(feature_kind: str, data_type: pa.DataType) -> bool:
    """Whether a column of ``data_type`` can hold a feature of ``feature_kind``: numeric features as ingest reads
    them (booleans become 0/1), categorical ones as anything ingest turns into strings (not floats)."""
    kind = _kind(data_type)
    if feature_kind == stats.NUMERIC:
        return kind in ("numeric", "boolean", "null")
    return kind in ("string", "boolean", "null") or pa.types.is_integer(data_type)


def _normalise(table: pa.Table, features: dict[str, str]) -> pa.Table:
    """Features as the tests read them: categorical → string, numeric booleans → int64 (as ingest stores them)."""
    for name, kind in features.items():
        if name not in table.column_names:
            continue
        index, values = table.column_names.index(name), table[name]
        if kind == stats.CATEGORICAL:  # as ingest stores categories: strings, the empty string missing
            table = table.set_column(index, name, category_values(values))
        elif kind == stats.NUMERIC and pa.types.is_boolean(values.type):
            table = table.set_column(index, name, pc.cast(values, pa.int64()))
        elif kind == stats.NUMERIC and (pa.types.is_decimal(values.type) or pa.types.is_null(values.type)):
            table = table.set_column(index, name, pc.cast(values, pa.float64()))
    return table


def _read_tables(files: list[str], fmt: str | None, what: str) -> list[tuple[str, pa.Table]]:
    return [(uri, parse_table(uri, storage.read_bytes(uri), format_of(uri, fmt, what))) for uri in files]


def _concat(tables: list[pa.Table], where: str) -> pa.Table:
    try:
        return pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowException, TypeError) as exc:
        raise InputError(f"{where}: the files' column types do not combine ({exc})") from None


def _read_reference(uri: str, features: dict[str, str]) -> tuple[list[str], pa.Table]:
    files = resolve_files(uri, "parquet", what="reference")
    tables = _read_tables(files, "parquet", "reference format")
    table = _concat([t for _, t in tables], f"reference {uri}")
    missing = [name for name in features if name not in table.column_names]
    if missing:
        raise InputError(f"reference {uri}: missing feature column(s) {missing}; it has {table.column_names}")
    if table.num_rows == 0:
        raise InputError(f"reference {uri}: no rows")
    wrong = [f"{name!r} ({table[name].type})" for name, kind in features.items() if not _holds(kind, table[name].type)]
    if wrong:
        raise InputError(f"reference {uri}: column(s) {', '.join(wrong)} cannot hold their feature kind")
    return files, _normalise(table, features)


def _read_window(
    source: str | list[str], fmt: str | None, reference: pa.Schema, features: dict[str, str]
) -> tuple[list[str], pa.Table]:
    if isinstance(source, str):
        files, where = resolve_files(source, fmt, what="current window"), source
    else:
        files, fmt, where = list(source), "parquet", ", ".join(source)
    tables = []
    for uri, table in _read_tables(files, fmt, "the current window's format"):
        _check_schema(uri, table, reference, features)
        tables.append(_normalise(table, features))
    table = _concat(tables, f"current window {where}")
    if table.num_rows == 0:
        raise InputError(f"current window {where}: no rows ({len(files)} file(s))")
    return files, table


def _check_schema(uri: str, table: pa.Table, reference: pa.Schema, features: dict[str, str]) -> None:
    """The window must hold every feature and no column the reference lacks; shared columns keep their kind. The
    reference's other columns (entity, timestamp, label) may be absent from inference inputs."""
    missing = [name for name in features if name not in table.column_names]
    if missing:
        raise InputError(f"current window {uri}: missing column(s) {missing}; it has {table.column_names}")
    extra = [name for name in table.column_names if name not in reference.names]
    if extra:
        raise InputError(
            f"current window {uri}: column(s) {extra} are not in the reference (its columns: {reference.names})"
        )
    retyped = []
    for name in table.column_names:
        ours, theirs = table[name].type, reference.field(name).type
        if "null" in (_kind(ours), _kind(theirs)):
            continue  # an all-null column: reported as such once the files are combined
        same = _holds(features[name], ours) if name in features else _kind(ours) == _kind(theirs)
        if not same:
            retyped.append(f"{name!r} is {theirs} in the reference but {ours} here")
    if retyped:
        raise InputError(f"current window {uri}: column type(s) differ: {'; '.join(retyped)}")


def _check_values(reference: pa.Table, current: pa.Table, kinds: dict[str, str], ref_uri: str, cur_uri: str) -> None:
    for table, where in ((reference, f"reference {ref_uri}"), (current, f"current window {cur_uri}")):
        empty = [name for name in kinds if stats.finite_count(table[name]) == 0]
        if empty:
            raise InputError(
                f"{where}: column(s) {empty} hold no values (all null"
                f"{', NaN or infinite' if any(kinds[n] == stats.NUMERIC for n in empty) else ''};"
                f" {table.num_rows:,} rows): drift cannot be tested"
            )


# --- outputs --------------------------------------------------------------------------------------------------------


_NOTHING_TO_SHOW = "No checked column has a value in the report's sample; see the summary for the verdicts."


def sample_rows(rows: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """A uniform random sample of row indices (all rows when there are at most ``size``), in row order."""
    if rows <= size:
        return np.arange(rows)
    return np.sort(rng.choice(rows, size=size, replace=False))


def render_report(
    reference: pa.Table, current: pa.Table, result: DriftResult, settings: DriftConfig, html_path: str
) -> tuple[tuple[int, int], list[str]]:
    """Evidently 0.7's own DataDriftPreset report (with tests) on a seeded uniform sample of both frames, each
    column's test pinned to the one chosen on the full data; returns the sample sizes and the columns shown."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    rng = np.random.default_rng(settings.report_seed)
    names = [c.column for c in result.columns]
    frames = []
    for table in (reference, current):
        sample = table.select(names).take(sample_rows(table.num_rows, settings.report_sample_rows, rng))
        for index, column in enumerate(result.columns):
            values = sample[index]
            if column.kind == stats.NUMERIC and pa.types.is_floating(values.type):
                # ±inf as missing: Evidently drops both per column, but its dataset share keeps ±inf in a column
                # without NaN (and its histograms then fail)
                sample = sample.set_column(index, column.column, pc.if_else(pc.is_inf(values), None, values))
        frames.append(sample)
    rows = (frames[0].num_rows, frames[1].num_rows)
    # Evidently refuses a column with no value; one rarely filled may have none in the sample.
    shown = [c for c in result.columns if all(stats.finite_count(f[c.column]) > 0 for f in frames)]
    if not shown:
        Path(html_path).write_text(f"<html><body><p>{_NOTHING_TO_SHOW}</p></body></html>\n", encoding="utf-8")
        return rows, []
    numeric = [c.column for c in shown if c.kind == stats.NUMERIC]
    categorical = [c.column for c in shown if c.kind == stats.CATEGORICAL]
    # Evidently accepts chi-square and Z by name for categorical columns only; for a numeric column with few values
    # (≤ 1000 reference values) its automatic choice on the sample is that same test.
    pinned = {c.column: c.method for c in shown if stats.applicable(c.method, c.kind)}
    preset = DataDriftPreset(
        columns=[c.column for c in shown],
        drift_share=settings.drift_share,
        per_column_method=pinned,
        per_column_threshold={c.column: c.threshold for c in shown},
    )
    definition = DataDefinition(
        numerical_columns=numeric,
        categorical_columns=categorical,
        text_columns=[],
        datetime_columns=[],
        unknown_columns=[],
        list_columns=[],
    )
    reference_sample, current_sample = (
        Dataset.from_pandas(frame.select(numeric + categorical).to_pandas(), data_definition=definition)
        for frame in frames
    )
    snapshot = Report([preset], include_tests=True).run(current_sample, reference_sample)
    snapshot.save_html(html_path)
    return rows, [c.column for c in shown]


def _score(value: float) -> str:
    return f"{value:.4g}" if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e4) else f"{value:.4f}"


def _share(count: int, total: int) -> str:
    return f"{count:,} ({count / max(total, 1):.1%})"


def render_summary(result: DriftResult, reference_uri: str, window: str, settings: DriftConfig) -> str:
    """Markdown for the Kubeflow UI: the verdict, row counts, each column's test and score, what the HTML shows."""
    verdict = "**drift detected**" if result.drifted else "**no dataset drift**"
    drifted = len(result.drifted_columns)
    lines = [
        "# Drift summary",
        "",
        f"- Verdict: {verdict}: {drifted} of {len(result.columns)} columns drifted ({result.share:.1%}); the dataset "
        f"drifts when that share is ≥ {settings.drift_share:.0%}",
        f"- Reference: `{reference_uri}` ({len(result.reference_files)} file(s)), {result.reference_rows:,} rows",
        f"- Current window: `{window}` ({len(result.current_files)} file(s)), {result.current_rows:,} rows",
        "- Tests: chosen and decided as Evidently 0.7 DataDriftPreset does, on every row of both frames",
        "",
        "| column | kind | test | score | threshold | drifted | missing (reference / current) |",
        "|---|---|---|---:|---:|---|---:|",
    ]
    for column in result.columns:
        mark = "**yes**" if column.drifted else "no"
        missing = (
            f"{_share(result.reference_rows - column.reference_values, result.reference_rows)} / "
            f"{_share(result.current_rows - column.current_values, result.current_rows)}"
        )
        lines.append(
            f"| {column.column} | {column.kind} | {column.test} | {_score(column.score)} | {column.threshold:g} "
            f"| {mark} | {missing} |"
        )
    hidden = [c.column for c in result.columns if c.column not in result.report_columns]
    lines += [
        "",
        f"The HTML report is Evidently's DataDriftPreset on a uniform random sample (seed {settings.report_seed}) "
        f"of {result.report_rows[0]:,} reference and {result.report_rows[1]:,} current rows, each column's test "
        "pinned to the one above; its scores are the sample's and may differ. The verdicts above use all rows.",
        "Missing values (null, NaN; a categorical null or empty string) are left out of each column's test, as "
        "Evidently does, and counted under missing.",
    ]
    if hidden:
        lines.append(f"Not in the HTML report (no value in the sample): {hidden}.")
    return "\n".join(lines) + "\n"
