"""Deterministic sample data: customer churn snapshots, the demo and test data of kfp-mlops.

Each customer (entity ``customer_id``) has several monthly snapshots (``event_timestamp``, UTC) with numeric and
categorical features and a label driven by the features, plus a few exact duplicate rows as real exports have.
The label depends on ``task`` (the rows and features do not): ``binary``, ``churned`` (0/1, about 20 % positive,
a logistic model); ``multiclass``, ``outcome`` (``stayed``, ``downgraded`` or ``churned``, a softmax model);
``regression``, ``spend_next_90d`` (currency with cents, so ``schema.task: auto`` reads it as a regression target).
``drift=True`` gives the window right after the reference one, with shifted distributions (pricier plans, more
support calls, more mobile users, higher churn).
"""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from kfp_mlops.components.shared import storage

FILE_NAME = "churn.parquet"
ENTITY = "customer_id"
TIMESTAMP = "event_timestamp"
LABEL = "churned"
TASKS = ("binary", "multiclass", "regression")
LABELS = {"binary": LABEL, "multiclass": "outcome", "regression": "spend_next_90d"}
FILE_NAMES = {"binary": FILE_NAME, "multiclass": "outcome.parquet", "regression": "spend.parquet"}
OUTCOMES = ["stayed", "downgraded", "churned"]
NUMERIC = ["age", "tenure_months", "monthly_charges", "total_spend", "support_calls", "sessions_last_30d"]
CATEGORICAL = ["plan", "region", "device"]
WINDOW_START = datetime(2025, 1, 1, tzinfo=UTC)  # the drifted window (days 180-360) ends in the past too
WINDOW_DAYS = 180
SNAPSHOTS_PER_ENTITY = 4
DUPLICATE_FRACTION = 0.005


def sample_config(source: str, task: str = "binary", **sections: dict) -> dict:
    """The pipeline config document (not yet validated) for the sample data of ``task`` at ``source``; ``sections``
    are added."""
    document = {
        "data": {"source": source},
        "schema": {
            "entity": ENTITY,
            "timestamp": TIMESTAMP,
            "label": LABELS[_known(task)],
            "features": NUMERIC + CATEGORICAL,
            "categorical": CATEGORICAL,
        },
    }
    return document | sections


def _known(task: str) -> str:
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    return task


def make_sample_table(rows: int = 20_000, seed: int = 0, drift: bool = False, task: str = "binary") -> pa.Table:
    """A table of ``rows`` rows; the same arguments always give the same table, and every ``task`` the same rows and
    features (only the label column differs)."""
    _known(task)
    if rows < 1:
        raise ValueError(f"rows must be positive, got {rows}")
    rng = np.random.default_rng([seed, int(drift)])
    n_unique = rows - int(rows * DUPLICATE_FRACTION)
    n_entities = max(1, n_unique // SNAPSHOTS_PER_ENTITY)
    entity = rng.integers(0, n_entities, n_unique) + 100_000
    start = WINDOW_START + (timedelta(days=WINDOW_DAYS) if drift else timedelta(0))
    seconds = rng.integers(0, WINDOW_DAYS * 86_400, n_unique)
    timestamps = np.datetime64(start.replace(tzinfo=None), "us") + seconds.astype("timedelta64[s]")

    plan_p = [0.35, 0.45, 0.20] if not drift else [0.20, 0.40, 0.40]
    device_p = [0.35, 0.40, 0.25] if not drift else [0.50, 0.35, 0.15]
    plan = rng.choice(["basic", "standard", "premium"], n_unique, p=plan_p)
    region = rng.choice(["north", "south", "east", "west"], n_unique, p=[0.3, 0.25, 0.25, 0.2])
    device = rng.choice(["ios", "android", "web"], n_unique, p=device_p)
    age = np.clip(rng.normal(41 if not drift else 37, 12, n_unique), 18, 90).round()
    tenure = rng.gamma(2.0, 12.0, n_unique).round().astype(np.int64)
    base_charge = np.select([plan == "basic", plan == "standard"], [25.0, 55.0], 95.0)
    monthly = (base_charge * rng.lognormal(0.0, 0.15, n_unique) * (1.15 if drift else 1.0)).round(2)
    total = (monthly * np.maximum(tenure, 1) * rng.uniform(0.9, 1.1, n_unique)).round(2)
    support = rng.poisson(1.0 if not drift else 2.2, n_unique)
    sessions = rng.poisson(np.where(device == "web", 8, 14), n_unique)

    logit = (
        -2.1
        + 0.55 * support
        - 0.045 * tenure
        + 0.012 * (monthly - 50)
        - 0.05 * (sessions - 12)
        + 0.4 * (plan == "basic")
        + 0.3 * (device == "web")
        - 0.01 * (age - 40)
    )
    churned = (rng.random(n_unique) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    other = np.random.default_rng([seed, int(drift), TASKS.index(task)])  # the main stream picks the duplicates
    if task == "multiclass":
        downgrade = (
            -1.3
            + 0.025 * (monthly - 50)
            + 0.3 * support
            - 0.04 * (sessions - 12)
            - 1.2 * (plan == "basic")
            + 0.5 * (plan == "premium")
            - 0.015 * tenure
        )
        label = pa.array(np.array(OUTCOMES)[_softmax_draw(other, [np.zeros(n_unique), downgrade, logit + 0.7])])
    elif task == "regression":
        stays = 1 / (1 + np.exp(-(2.0 + 0.04 * tenure - 0.5 * support + 0.05 * (sessions - 12))))
        expected = 3 * monthly * stays + 1.2 * sessions + 15.0 * (plan == "premium") + 0.15 * np.minimum(tenure, 60)
        noisy = expected * other.lognormal(0.0, 0.2, n_unique) + other.normal(0.0, 20.0, n_unique)
        label = pa.array(np.maximum(noisy, 0.0).round(2), pa.float64())
    else:
        label = pa.array(churned, pa.int64())

    table = pa.table(
        {
            ENTITY: pa.array(entity, pa.int64()),
            TIMESTAMP: pa.array(timestamps, pa.timestamp("us", tz="UTC")),
            "age": pa.array(age, pa.float64()),
            "tenure_months": pa.array(tenure, pa.int64()),
            "monthly_charges": pa.array(monthly, pa.float64()),
            "total_spend": pa.array(total, pa.float64()),
            "support_calls": pa.array(support, pa.int64()),
            "sessions_last_30d": pa.array(sessions, pa.int64()),
            "plan": pa.array(plan, pa.string()),
            "region": pa.array(region, pa.string()),
            "device": pa.array(device, pa.string()),
            LABELS[task]: label,
        }
    )
    duplicates = rng.integers(0, n_unique, rows - n_unique)
    return pa.concat_tables([table, table.take(pa.array(duplicates))]) if len(duplicates) else table


def _softmax_draw(rng: np.random.Generator, logits: list[np.ndarray]) -> np.ndarray:
    """One class index per row, drawn from the softmax of ``logits`` (one array per class)."""
    stacked = np.stack(logits, axis=1)
    weights = np.exp(stacked - stacked.max(axis=1, keepdims=True))
    cumulative = np.cumsum(weights / weights.sum(axis=1, keepdims=True), axis=1)
    return np.minimum((rng.random(len(stacked))[:, None] > cumulative).sum(axis=1), len(logits) - 1)


def write_sample_data(output: str, rows: int = 20_000, seed: int = 0, drift: bool = False, task: str = "binary") -> str:
    """Write the sample table of ``task`` as ``<output>/<FILE_NAMES[task]>`` (``churn.parquet`` for binary; local,
    s3:// or gs://) atomically; returns its URI."""
    buffer = io.BytesIO()
    pq.write_table(make_sample_table(rows, seed, drift, task), buffer)
    uri = storage.parse(output).child(FILE_NAMES[task]).uri
    storage.write_bytes(uri, buffer.getvalue())
    return uri
