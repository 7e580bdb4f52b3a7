"""Deterministic sample data: customer churn snapshots, the demo and test data of kfp-mlops.

Each customer (entity ``customer_id``) has several monthly snapshots (``event_timestamp``, UTC) with numeric and
categorical features and a label ``churned`` (about 20 % positive) driven by the features through a logistic model,
plus a few exact duplicate rows as real exports have. ``drift=True`` gives the window right after the reference
one, with shifted distributions (pricier plans, more support calls, more mobile users, higher churn).
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
NUMERIC = ["age", "tenure_months", "monthly_charges", "total_spend", "support_calls", "sessions_last_30d"]
CATEGORICAL = ["plan", "region", "device"]
WINDOW_START = datetime(2025, 1, 1, tzinfo=UTC)  # the drifted window (days 180-360) ends in the past too
WINDOW_DAYS = 180
SNAPSHOTS_PER_ENTITY = 4
DUPLICATE_FRACTION = 0.005


def sample_config(source: str, **sections: dict) -> dict:
    """The pipeline config document (not yet validated) for the sample data at ``source``; ``sections`` are added."""
    document = {
        "data": {"source": source},
        "schema": {
            "entity": ENTITY,
            "timestamp": TIMESTAMP,
            "label": LABEL,
            "features": NUMERIC + CATEGORICAL,
            "categorical": CATEGORICAL,
        },
    }
    return document | sections


def make_sample_table(rows: int = 20_000, seed: int = 0, drift: bool = False) -> pa.Table:
    """A table of ``rows`` rows; the same arguments always give the same table."""
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
            LABEL: pa.array(churned, pa.int64()),
        }
    )
    duplicates = rng.integers(0, n_unique, rows - n_unique)
    return pa.concat_tables([table, table.take(pa.array(duplicates))]) if len(duplicates) else table


def write_sample_data(output: str, rows: int = 20_000, seed: int = 0, drift: bool = False) -> str:
    """Write the sample table as ``<output>/churn.parquet`` (local, s3:// or gs://) atomically; returns its URI."""
    buffer = io.BytesIO()
    pq.write_table(make_sample_table(rows, seed, drift), buffer)
    uri = storage.parse(output).child(FILE_NAME).uri
    storage.write_bytes(uri, buffer.getvalue())
    return uri
