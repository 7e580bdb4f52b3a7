"""What the ingest tests share: the sample config on a source, the output split paths, and a Parquet writer."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from kfp_mlops.components.shared.config import PipelineConfig, parse_config
from kfp_mlops.components.shared.splits import SplitPaths
from kfp_mlops.sample_data import sample_config


def make_config(source, **overrides) -> PipelineConfig:
    """The sample config on ``source`` with a time split, its sections updated by ``overrides``."""
    document = sample_config(str(source), split={"by": "time", "validation": 0.15, "test": 0.15, "seed": 0})
    for section, values in overrides.items():
        document[section] = {**document[section], **values}
    return parse_config(document)


def outputs(directory: Path) -> SplitPaths:
    return SplitPaths(*(str(directory / "out" / name) for name in ("train", "validation", "test")))


def write_parquet(path: Path, table: pa.Table) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path
