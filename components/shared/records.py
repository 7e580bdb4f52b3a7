"""The serving record: which model serves and what it was blessed with. One JSON document at
``evaluate.baseline``, written after a blessed model is deployed (or, with no deployment configured, recorded).

Evaluate re-scores the record's model as the baseline of the next candidate; drift compares new data with the
record's ``reference_data`` (the train split that model learned from); deploy writes ``deployment``.

Runs write it concurrently (a manual training run, a scheduled retrain): each write is a compare-and-swap on the
version read, and a record of a deployment never replaces one of a later version of the same model in the same
repository (versions only grow: the later one is what serves).
"""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict, ValidationError

from kfp_mlops.components.shared import storage
from kfp_mlops.components.shared.errors import InputError
from kfp_mlops.components.shared.registry import RegistryState


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
    # the model registry's version this record mirrors (components/shared/registry.py); aliases_moved false: the
    # registry was unreachable when it was deployed, and the next deploy reconciles
    registry: RegistryState | None = None


def read_record(uri: str) -> ServingRecord | None:
    """The record at ``uri``, None when there is none yet (the first run); a malformed one is an InputError."""
    if not uri:
        return None
    try:
        text = storage.read_bytes(uri)
    except FileNotFoundError:
        return None
    return _parse(uri, text)


def _parse(uri: str, text: bytes) -> ServingRecord:
    try:
        return ServingRecord.model_validate_json(text)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '<top level>'}: {e['msg']}" for e in exc.errors())
        raise InputError(f"serving record {uri} is malformed: {problems}") from None


WRITE_ATTEMPTS = 20


def write_record(uri: str, record: ServingRecord) -> ServingRecord:
    """Write the record, stamped with the time, unless the record there names a later version of the same
    deployment (see the module docstring); returns the record that stands. Compare-and-swap, retried on conflict."""
    for _attempt in range(WRITE_ATTEMPTS):
        current = storage.read_versioned(uri)
        standing = _parse(uri, current.data) if current else None
        if standing is not None and supersedes(standing, record):
            return standing
        stamped = record.model_copy(update={"recorded_at": datetime.now(UTC).isoformat()})
        try:
            storage.write_if(uri, stamped.model_dump_json(indent=2).encode(), current.version if current else None)
            return stamped
        except storage.ConflictError:
            time.sleep(random.uniform(0.01, 0.2))  # another run wrote it meanwhile: read it again
    raise storage.ConflictError(f"serving record {uri}: {WRITE_ATTEMPTS} concurrent writes in a row won over ours")


def supersedes(standing: ServingRecord, record: ServingRecord) -> bool:
    """``standing`` records a later version of the deployment ``record`` is of (same model name and repository)."""
    old, new = standing.deployment, record.deployment
    return (
        old is not None
        and new is not None
        and (old.model_name, old.repository) == (new.model_name, new.repository)
        and old.version > new.version
    )
