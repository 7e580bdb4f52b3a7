"""The serving record: which model serves and what it was blessed with. One JSON document at
``evaluate.baseline``, written after a blessed model is deployed (or, with no deployment configured, recorded).

Evaluate re-scores the record's model as the baseline of the next candidate; drift compares new data with the
record's ``reference_data`` (the train split that model learned from); deploy writes ``deployment``.
"""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict, ValidationError

from kfp_mlops.components.shared import storage
from kfp_mlops.components.shared.errors import InputError


class Deployment(BaseModel):
    """Where a model version serves."""

    model_config = ConfigDict(extra="forbid")

    endpoint: str  # Triton's gRPC host:port
    model_name: str
    version: int
    repository: str  # the model repository URI
    verified: dict[str, float] = {}  # verification figures: max_abs_diff, p50_ms, p99_ms, rows


class ServingRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str  # URI of the model package (the one that serves when deployed)
    metrics: dict[str, float]  # evaluate's metrics of the blessed model
    content_hash: str = ""  # of the raw data it was trained on
    run_id: str = ""
    recorded_at: str = ""
    reference_data: str = ""  # URI of its train split (Parquet): drift's reference
    deployment: Deployment | None = None


def read_record(uri: str) -> ServingRecord | None:
    """The record at ``uri``, None when there is none yet (the first run); a malformed one is an InputError."""
    if not uri:
        return None
    try:
        text = storage.read_bytes(uri)
    except FileNotFoundError:
        return None
    try:
        return ServingRecord.model_validate_json(text)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '<top level>'}: {e['msg']}" for e in exc.errors())
        raise InputError(f"serving record {uri} is malformed: {problems}") from None


def write_record(uri: str, record: ServingRecord) -> None:
    """Write the record atomically, stamped with the time."""
    stamped = record.model_copy(update={"recorded_at": datetime.now(UTC).isoformat()})
    storage.write_bytes(uri, stamped.model_dump_json(indent=2).encode())
