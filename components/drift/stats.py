"""Per-column drift tests, vectorised, with Evidently 0.7.23's choice of test, scores and verdicts.

Evidently's DataDriftPreset runs each column through ``evidently.legacy.calculations.data_drift.get_one_column_drift``:
drop NaN and ±inf (``replace([-inf, inf], nan).dropna()``), pick the test (``registry._get_default_stattest``) and
run it on pandas Series. Here the same tests run on sorted float64 arrays (numeric) and value counts (categorical):

- choice (no method given), counting values left after that drop: reference ≤ 1000 values: numeric with ≤ 5
  distinct values over both frames → chi-square (3–5) or Z-test (≤ 2), else K-S; categorical → chi-square (> 2
  values) or Z-test. Reference > 1000 values: numeric with ≤ 5 distinct values → Jensen–Shannon, else Wasserstein
  (normed); categorical → Jensen–Shannon.
- verdict: K-S drifts when p ≤ threshold, chi-square and Z when p < threshold (default 0.05); Wasserstein,
  Jensen–Shannon, PSI and KL divergence when the distance ≥ threshold (default 0.1).
- a dataset drifts when the share of drifted columns ≥ ``drift_share``.

Each numeric column costs two sorts and one linear merge (a stable argsort of two sorted runs); a categorical column
costs one Arrow ``value_counts`` per frame. No pandas, no Evidently.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

NUMERIC = "numeric"
CATEGORICAL = "categorical"
SMALL_REFERENCE_ROWS = 1000  # Evidently: reference ≤ 1000 rows → p-value tests, above → distances
FEW_VALUES = 5  # numeric columns with ≤ 5 distinct values are tested like categories
HISTOGRAM_MIN_VALUES = 20  # numeric binning: > 20 distinct reference values → Sturges histogram, else per value
KS_EXACT_MAX_N = 10_000  # scipy's ks_2samp(method="auto"): exact p-value when both sizes ≤ this


@dataclass(frozen=True)
class StatTest:
    """One of Evidently's registered tests: its name, display name, column kinds and default threshold."""

    name: str
    display_name: str
    kinds: tuple[str, ...]
    default_threshold: float
    drifted: Callable[[float, float], bool]

    @property
    def is_p_value(self) -> bool:
        return self.name in ("ks", "chisquare", "z")


def _at_most(score: float, threshold: float) -> bool:
    return bool(score <= threshold)


def _below(score: float, threshold: float) -> bool:
    return bool(score < threshold)


def _at_least(score: float, threshold: float) -> bool:
    return bool(score >= threshold)


STAT_TESTS: dict[str, StatTest] = {
    test.name: test
    for test in (
        StatTest("ks", "K-S p_value", (NUMERIC,), 0.05, _at_most),
        StatTest("chisquare", "chi-square p_value", (CATEGORICAL,), 0.05, _below),
        StatTest("z", "Z-test p_value", (CATEGORICAL,), 0.05, _below),
        StatTest("wasserstein", "Wasserstein distance (normed)", (NUMERIC,), 0.1, _at_least),
        StatTest("jensenshannon", "Jensen-Shannon distance", (CATEGORICAL, NUMERIC), 0.1, _at_least),
        StatTest("psi", "PSI", (CATEGORICAL, NUMERIC), 0.1, _at_least),
        StatTest("kl_div", "Kullback-Leibler divergence", (CATEGORICAL, NUMERIC), 0.1, _at_least),
    )
}
METHODS = tuple(STAT_TESTS)


@dataclass(frozen=True)
class ColumnDrift:
    """One column's verdict. ``score`` is a p-value (ks, chisquare, z) or a distance; ``reference_values`` and
    ``current_values`` count the non-null (and, numeric, finite) values tested."""

    column: str
    kind: str
    method: str
    score: float
    threshold: float
    drifted: bool
    reference_values: int
    current_values: int

    @property
    def test(self) -> str:
        return STAT_TESTS[self.method].display_name


@dataclass(frozen=True)
class DatasetDrift:
    """The columns' verdicts and the dataset's: drifted when ``share`` ≥ ``drift_share``."""

    columns: list[ColumnDrift]
    drift_share: float
    drifted_count: int
    share: float
    drifted: bool


class EmptyColumnError(ValueError):
    """A column has no non-null (numeric: finite) value in one frame; ``frame`` is "reference" or "current"."""

    def __init__(self, column: str, frame: str):
        super().__init__(f"column {column!r} has no non-null values in the {frame} data")
        self.column = column
        self.frame = frame


def applicable(method: str, kind: str) -> bool:
    """Whether Evidently accepts ``method`` for a column of ``kind`` when it is asked for by name."""
    return kind in STAT_TESTS[method].kinds


def default_method(kind: str, reference_values: int, distinct_values: int) -> str:
    """Evidently's automatic choice (``_get_default_stattest``); ``distinct_values`` counts both frames together
    (only whether it is ≤ 2 or ≤ 5 matters)."""
    few = distinct_values <= FEW_VALUES
    if reference_values <= SMALL_REFERENCE_ROWS:
        if kind == NUMERIC and not few:
            return "ks"
        return "chisquare" if distinct_values > 2 else "z"
    if kind == NUMERIC and not few:
        return "wasserstein"
    return "jensenshannon"


# --- column samples -------------------------------------------------------------------------------------------------


@dataclass
class _Numeric:
    values: np.ndarray  # sorted, finite float64
    integer: bool  # pandas would hold it as int64 (an integer type without nulls): numpy's histogram rule differs

    def __len__(self) -> int:
        return len(self.values)

    def distinct(self) -> tuple[np.ndarray, np.ndarray]:
        """Distinct values (sorted) and their counts."""
        v = self.values
        starts = np.flatnonzero(np.concatenate(([True], v[1:] != v[:-1])))
        return v[starts], np.diff(np.append(starts, len(v)))

    def distinct_count(self) -> int:
        return int(np.count_nonzero(self.values[1:] != self.values[:-1])) + 1


@dataclass
class _Categorical:
    keys: pa.Array  # distinct non-null values
    counts: np.ndarray

    def __len__(self) -> int:
        return int(self.counts.sum())


def _as_array(values: pa.ChunkedArray | pa.Array | np.ndarray) -> pa.ChunkedArray | pa.Array:
    return pa.array(values) if isinstance(values, np.ndarray) else values


def numeric_sample(values: pa.ChunkedArray | pa.Array | np.ndarray, column: str, frame: str) -> _Numeric:
    """Finite values as a sorted float64 array (nulls, NaN and ±inf dropped, as Evidently does)."""
    values = _as_array(values)
    integer = pa.types.is_integer(values.type) and values.null_count == 0
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks() if values.num_chunks != 1 else values.chunk(0)
    floats = pc.cast(values, pa.float64()).to_numpy(zero_copy_only=False)
    finite = floats[np.isfinite(floats)]  # a fresh, writable array
    if len(finite) == 0:
        raise EmptyColumnError(column, frame)
    finite.sort()
    return _Numeric(finite, integer)


def categorical_sample(values: pa.ChunkedArray | pa.Array | np.ndarray, column: str, frame: str) -> _Categorical:
    """Distinct non-null values and their counts (NaN dropped too, as pandas ``dropna`` does)."""
    values = _as_array(values)
    if pa.types.is_dictionary(values.type):
        values = pc.cast(values, values.type.value_type)
    counted = pc.value_counts(values)
    keys, counts = counted.field("values"), counted.field("counts")
    keep = pc.is_valid(keys)
    if pa.types.is_floating(keys.type):
        keep = pc.and_(keep, pc.invert(pc.is_nan(keys)))
    keys, counts = pc.filter(keys, keep), pc.filter(counts, keep)
    if len(keys) == 0:
        raise EmptyColumnError(column, frame)
    return _Categorical(keys, counts.to_numpy().astype(np.int64))


# --- aligned counts -------------------------------------------------------------------------------------------------


def _numeric_counts(reference: _Numeric, current: _Numeric) -> tuple[np.ndarray, np.ndarray]:
    """Counts of each distinct value of both frames, over their sorted union."""
    ref_keys, ref_counts = reference.distinct()
    cur_keys, cur_counts = current.distinct()
    union = np.union1d(ref_keys, cur_keys)
    ref, cur = np.zeros(len(union), np.int64), np.zeros(len(union), np.int64)
    ref[np.searchsorted(union, ref_keys)] = ref_counts
    cur[np.searchsorted(union, cur_keys)] = cur_counts
    return ref, cur


def _aligned(reference: _Categorical, current: _Categorical) -> tuple[_Categorical, _Categorical]:
    """Both frames' counts over the union of their categories (zero where a frame lacks one)."""
    cur_keys = current.keys if current.keys.type == reference.keys.type else current.keys.cast(reference.keys.type)
    union = pc.unique(pa.concat_arrays([reference.keys, cur_keys]))
    ref, cur = np.zeros(len(union), np.int64), np.zeros(len(union), np.int64)
    ref[pc.index_in(reference.keys, value_set=union).to_numpy()] = reference.counts
    cur[pc.index_in(cur_keys, value_set=union).to_numpy()] = current.counts
    return _Categorical(union, ref), _Categorical(union, cur)


def _sturges_edges(reference: _Numeric, current: _Numeric) -> np.ndarray:
    """``np.histogram_bin_edges(concat(reference, current), bins="sturges")`` from the sorted arrays."""
    first = min(reference.values[0], current.values[0])
    last = max(reference.values[-1], current.values[-1])
    width = (last - first) / (np.log2(len(reference) + len(current)) + 1.0)
    if first == last:
        first, last = first - 0.5, last + 0.5
    if width:
        if reference.integer and current.integer and width < 1:
            width = 1
        bins = int(np.ceil((last - first) / width))
    else:
        bins = 1
    return np.linspace(first, last, bins + 1, endpoint=True, dtype=np.float64)


def _histogram(sample: _Numeric, edges: np.ndarray) -> np.ndarray:
    """``np.histogram(values, edges)[0]`` for sorted values (numpy counts the same way: searchsorted on sorted data)."""
    cumulative = np.concatenate(
        (np.searchsorted(sample.values, edges[:-1], "left"), np.searchsorted(sample.values, edges[-1:], "right"))
    )
    return np.diff(cumulative)


def _binned(reference: _Numeric | _Categorical, current: _Numeric | _Categorical) -> tuple[np.ndarray, np.ndarray]:
    """Evidently's ``get_binned_data`` without the zero filling: per-bin shares of each frame."""
    if isinstance(reference, _Numeric):
        if reference.distinct_count() > HISTOGRAM_MIN_VALUES:
            edges = _sturges_edges(reference, current)
            ref, cur = _histogram(reference, edges), _histogram(current, edges)
        else:
            ref, cur = _numeric_counts(reference, current)
    else:
        ref, cur = reference.counts, current.counts  # aligned by column_drift
    return ref / len(reference), cur / len(current)


def _fill_zeroes(percents: np.ndarray) -> np.ndarray:
    """Evidently's ``feel_zeroes``: empty bins get min(non-zero)/1e6, or 1e-4 if that minimum exceeds 1e-4."""
    smallest = percents[percents != 0].min()
    filled = percents.copy()
    filled[filled == 0] = smallest / 10**6 if smallest <= 0.0001 else 0.0001
    return filled


# --- tests ----------------------------------------------------------------------------------------------------------


def _merge(reference: _Numeric, current: _Numeric) -> tuple[np.ndarray, np.ndarray]:
    """Both frames' values merged in order, and how many reference values are at or before each position."""
    both = np.concatenate((reference.values, current.values))
    order = np.argsort(both, kind="stable")  # two sorted runs: a linear merge
    merged = both[order]
    del both
    from_reference = np.cumsum(order < len(reference))
    return merged, from_reference


def _ks_statistic(merged: np.ndarray, from_reference: np.ndarray, n1: int, n2: int) -> float:
    """Two-sided K-S D, as scipy computes it (ECDF differences at every observed value)."""
    ends = np.append(merged[1:] != merged[:-1], True)  # last position of each run of equal values
    ref_cdf = from_reference[ends] / n1
    cur_cdf = (np.flatnonzero(ends) + 1 - from_reference[ends]) / n2
    differences = ref_cdf - cur_cdf
    max_s = differences.max()
    min_s = np.clip(-differences.min(), 0, 1)
    return float(min_s if min_s > max_s else max_s)


def ks_p_value(reference: _Numeric, current: _Numeric) -> float:
    """``scipy.stats.ks_2samp(reference, current)[1]`` (method "auto": exact up to 10,000 values, else asymptotic)."""
    from scipy import stats

    n1, n2 = len(reference), len(current)
    if max(n1, n2) <= KS_EXACT_MAX_N:
        return float(stats.ks_2samp(reference.values, current.values)[1])
    merged, from_reference = _merge(reference, current)
    d = _ks_statistic(merged, from_reference, n1, n2)
    m, n = sorted([float(n1), float(n2)], reverse=True)
    return float(np.clip(stats.kstwo.sf(d, np.round(m * n / (m + n))), 0, 1))


def wasserstein_normed(reference: _Numeric, current: _Numeric) -> float:
    """``scipy.stats.wasserstein_distance`` / max(std(reference), 0.001), from the merged order: the integral of
    |F_ref - F_cur| over the steps between consecutive merged values (the same terms scipy sums)."""
    n1, n2 = len(reference), len(current)
    merged, from_reference = _merge(reference, current)
    gaps = np.diff(merged)
    del merged
    reference_cdf = from_reference[:-1] / n1
    current_cdf = np.arange(1, len(from_reference), dtype=np.float64)
    current_cdf -= from_reference[:-1]
    del from_reference
    current_cdf /= n2
    reference_cdf -= current_cdf
    del current_cdf
    distance = float(np.dot(np.abs(reference_cdf, out=reference_cdf), gaps))
    return distance / max(float(np.std(reference.values)), 0.001)


def chisquare_p_value(reference_counts: np.ndarray, current_counts: np.ndarray) -> float:
    """Evidently: expected = reference counts scaled to the current size; a category absent from the reference
    makes the statistic infinite (p = 0)."""
    from scipy import stats

    expected = reference_counts * (current_counts.sum() / reference_counts.sum())
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(stats.chisquare(current_counts, expected)[1])


def z_p_value(reference_counts: np.ndarray, current_counts: np.ndarray, first: int) -> float:
    """Two-proportion Z-test on the share of values other than the smallest key (index ``first``), two-sided,
    as ``2 * (1 - Φ(|z|))``; 1 when both frames hold the same single value."""
    from scipy.stats import norm

    if np.count_nonzero(reference_counts) == 1 and np.count_nonzero(current_counts) == 1:
        if np.argmax(reference_counts) == np.argmax(current_counts):
            return 1.0
    n1, n2 = int(reference_counts.sum()), int(current_counts.sum())
    p1 = float(n1 - int(reference_counts[first])) / n1
    p2 = float(n2 - int(current_counts[first])) / n2
    pooled = float(p1 * n1 + p2 * n2) / (n1 + n2)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (p1 - p2) / np.sqrt(pooled * (1 - pooled) * (1.0 / n1 + 1.0 / n2))
    return float(2 * (1 - norm.cdf(np.abs(z))))


def jensenshannon(reference_percents: np.ndarray, current_percents: np.ndarray) -> float:
    from scipy.spatial import distance

    return float(distance.jensenshannon(reference_percents, current_percents))


def psi(reference_percents: np.ndarray, current_percents: np.ndarray) -> float:
    ref, cur = _fill_zeroes(reference_percents), _fill_zeroes(current_percents)
    return float(np.sum((ref - cur) * np.log(ref / cur)))


def kl_div(reference_percents: np.ndarray, current_percents: np.ndarray) -> float:
    from scipy import stats

    return float(stats.entropy(_fill_zeroes(reference_percents), _fill_zeroes(current_percents)))


# --- one column, one dataset ----------------------------------------------------------------------------------------


def _distinct_values(reference: _Numeric | _Categorical, current: _Numeric | _Categorical) -> int:
    """Distinct values over both frames, capped at FEW_VALUES + 1 for numeric columns (all the choice needs)."""
    if isinstance(reference, _Categorical):
        return len(reference.keys)  # aligned: the union
    counts = reference.distinct_count(), current.distinct_count()
    if max(counts) > FEW_VALUES:
        return FEW_VALUES + 1
    return len(np.union1d(reference.distinct()[0], current.distinct()[0]))


def _score(method: str, reference: _Numeric | _Categorical, current: _Numeric | _Categorical) -> float:
    if method == "ks":
        return ks_p_value(reference, current)
    if method == "wasserstein":
        return wasserstein_normed(reference, current)
    if method in ("chisquare", "z"):
        if isinstance(reference, _Numeric):
            ref, cur = _numeric_counts(reference, current)
            first = 0  # the union is sorted
        else:
            ref, cur = reference.counts, current.counts
            first = pc.index(reference.keys, pc.min(reference.keys)).as_py()
        return chisquare_p_value(ref, cur) if method == "chisquare" else z_p_value(ref, cur, first)
    reference_percents, current_percents = _binned(reference, current)
    return {"jensenshannon": jensenshannon, "psi": psi, "kl_div": kl_div}[method](reference_percents, current_percents)


def column_drift(
    column: str,
    kind: str,
    reference: pa.ChunkedArray | pa.Array | np.ndarray,
    current: pa.ChunkedArray | pa.Array | np.ndarray,
    method: str | None = None,
    threshold: float | None = None,
) -> ColumnDrift:
    """Test one column as Evidently's DataDriftPreset would: ``method`` None picks Evidently's default test,
    ``threshold`` None the test's default. Raises ValueError for a method that does not apply to ``kind`` and
    EmptyColumnError for a column with no usable value in a frame."""
    if kind not in (NUMERIC, CATEGORICAL):
        raise ValueError(f"column {column!r}: kind must be {NUMERIC!r} or {CATEGORICAL!r}, not {kind!r}")
    if method is not None:
        if method not in STAT_TESTS:
            raise ValueError(f"column {column!r}: unknown drift method {method!r}; use one of {list(METHODS)}")
        if not applicable(method, kind):
            raise ValueError(
                f"column {column!r}: method {method!r} does not apply to {kind} columns "
                f"(it takes {' or '.join(STAT_TESTS[method].kinds)} columns)"
            )
    sample = numeric_sample if kind == NUMERIC else categorical_sample
    ref, cur = sample(reference, column, "reference"), sample(current, column, "current")
    if kind == CATEGORICAL:
        ref, cur = _aligned(ref, cur)
    if method is None:
        method = default_method(kind, len(ref), _distinct_values(ref, cur))
    test = STAT_TESTS[method]
    threshold = test.default_threshold if threshold is None else threshold
    score = _score(method, ref, cur)
    return ColumnDrift(column, kind, method, score, threshold, test.drifted(score, threshold), len(ref), len(cur))


def dataset_drift(columns: list[ColumnDrift], drift_share: float = 0.5) -> DatasetDrift:
    """Evidently's dataset verdict: drifted when the share of drifted columns is ≥ ``drift_share``."""
    if not columns:
        raise ValueError("no columns to test for drift")
    count = sum(c.drifted for c in columns)
    share = count / len(columns)
    return DatasetDrift(columns, drift_share, count, share, bool(share >= drift_share))


def table_drift(
    reference: pa.Table,
    current: pa.Table,
    numeric: Sequence[str],
    categorical: Sequence[str],
    methods: dict[str, str | None] | None = None,
    thresholds: dict[str, float | None] | None = None,
    drift_share: float = 0.5,
) -> DatasetDrift:
    """Test every numeric and categorical column, one at a time (memory: one column of each frame at once)."""
    methods, thresholds = methods or {}, thresholds or {}
    kinds = {**{name: NUMERIC for name in numeric}, **{name: CATEGORICAL for name in categorical}}
    results = [
        column_drift(name, kind, reference[name], current[name], methods.get(name), thresholds.get(name))
        for name, kind in kinds.items()
    ]
    return dataset_drift(results, drift_share)


def finite_count(values: pa.ChunkedArray | pa.Array) -> int:
    """Non-null values; for floating columns, finite ones (what Evidently keeps)."""
    if pa.types.is_floating(values.type):
        return int(pc.sum(pc.is_finite(values)).as_py() or 0)
    return len(values) - values.null_count


__all__ = [
    "CATEGORICAL",
    "METHODS",
    "NUMERIC",
    "STAT_TESTS",
    "ColumnDrift",
    "DatasetDrift",
    "EmptyColumnError",
    "StatTest",
    "applicable",
    "column_drift",
    "dataset_drift",
    "default_method",
    "finite_count",
    "table_drift",
]
