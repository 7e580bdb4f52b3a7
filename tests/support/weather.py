"""A small multiclass dataset with the gaps real data has: daily weather at a few stations, five classes.

Like the public daily-weather data it stands for (one label of five classes, a handful of numeric features, a class
that only occurs in winter), made here so it is deterministic and needs no download. 6 stations × 200 days from
2025-01-01; ``weather`` is one of sun, rain, drizzle, fog, snow, driven by the features (plus 4 % noise). Snow
falls only in the first ~two months, so a time split leaves it out of validation and test. The gaps:

- ``wind_dir`` (categorical): null in ~6 % of rows, the empty string in a few more; null on every station's last day
  (what ``predict`` then reads from the online store);
- ``frost`` (a boolean read as a category): null in ~5 % of rows;
- ``sensor`` (categorical): null from day 140 on, so entirely null in validation and test under the time split;
- ``humidity`` and ``wind`` (numeric): null in ~3 % of rows.
"""

from __future__ import annotations

import io
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

ENTITY, TIMESTAMP, LABEL = "station_id", "event_timestamp", "weather"
NUMERIC = ["temp_max", "temp_min", "precipitation", "wind", "humidity"]
CATEGORICAL = ["wind_dir", "frost", "sensor"]
CLASSES = ["drizzle", "fog", "rain", "snow", "sun"]
STATIONS, DAYS = 6, 200


def make_table(seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    n = STATIONS * DAYS
    day = np.tile(np.arange(DAYS), STATIONS)
    station = np.repeat(np.arange(STATIONS), DAYS) + 1
    season = -np.cos(2 * np.pi * (day + 10) / 365)  # -1 in early January, rising through the spring
    temp_max = 14 + 14 * season + rng.normal(0, 3, n) + station * 0.3
    temp_min = temp_max - rng.uniform(4, 10, n)
    wet = rng.random(n) < 0.45
    precipitation = np.where(wet, rng.gamma(1.2, 3.0, n), 0.0).round(1)
    wind = rng.gamma(2.0, 1.6, n).round(1)
    humidity = np.clip(60 + 8 * precipitation + rng.normal(0, 8, n) - 6 * wind, 20, 100).round()
    weather = np.select(
        [
            (precipitation > 0.5) & (temp_max < 3),
            precipitation > 4,
            precipitation > 0.5,
            (wind < 2.5) & (humidity > 62),
        ],
        ["snow", "rain", "drizzle", "fog"],
        "sun",
    )
    noise = (rng.random(n) < 0.04) & (weather != "snow")
    weather = np.where(noise, rng.choice(["sun", "rain", "drizzle", "fog"], n), weather)
    directions = rng.choice(["N", "E", "S", "W"], n, p=[0.2, 0.2, 0.25, 0.35]).astype(object)
    directions[rng.random(n) < 0.02] = ""  # an empty cell: missing too
    last_day = day == DAYS - 1
    wind_dir = pa.array(directions, pa.string(), mask=(rng.random(n) < 0.06) | last_day)
    frost = pa.array(temp_min < 0, mask=rng.random(n) < 0.05)
    sensor = pa.array(np.where(station % 2 == 0, "v2", "v1"), pa.string(), mask=day >= 140)
    start = np.datetime64(datetime(2025, 1, 1, 6, tzinfo=UTC).replace(tzinfo=None), "us")
    return pa.table(
        {
            ENTITY: pa.array(station, pa.int64()),
            TIMESTAMP: pa.array(start + day.astype("timedelta64[D]"), pa.timestamp("us", tz="UTC")),
            "temp_max": temp_max.round(1),
            "temp_min": temp_min.round(1),
            "precipitation": precipitation,
            "wind": pa.array(wind, mask=rng.random(n) < 0.03),
            "humidity": pa.array(humidity, mask=rng.random(n) < 0.03),
            "wind_dir": wind_dir,
            "frost": frost,
            "sensor": sensor,
            LABEL: pa.array(weather, pa.string()),
        }
    )


def write(directory: Path, fmt: str = "parquet", seed: int = 0) -> Path:
    """The table as ``directory/weather.<fmt>`` (CSV: empty cells for nulls, as exports write them)."""
    directory.mkdir(parents=True, exist_ok=True)
    table = make_table(seed)
    path = directory / f"weather.{fmt}"
    if fmt == "parquet":
        pq.write_table(table, path)
    else:
        sink = io.BytesIO()
        pacsv.write_csv(table, sink)
        path.write_bytes(sink.getvalue())
    return path


def schema(**values) -> dict:
    """The config's schema section for this data."""
    return {"entity": ENTITY, "timestamp": TIMESTAMP, "label": LABEL, "features": NUMERIC + CATEGORICAL,
            "categorical": CATEGORICAL, **values}  # fmt: skip
