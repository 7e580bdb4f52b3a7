"""What each step of a run decided, kept in the run's directory (``runs.outcome_dir``) for the exit handler's
report: it can read them even when some steps never ran (a run that found no drift, a model that was not blessed).

A step writes ``<run dir>/kfp-mlops-state/outcomes/<step>.json`` (one small JSON document of facts); the report
reads whatever is there.
"""

from __future__ import annotations

import json
from typing import Any

from kfp_mlops.components.shared import runs, storage


def record(run_dir: str, step: str, facts: dict[str, Any]) -> None:
    """Write ``step``'s facts for the run (nothing when the step runs outside a pipeline: no run directory)."""
    if run_dir:
        uri = storage.parse(runs.outcome_dir(run_dir)).child(f"{step}.json").uri
        storage.write_bytes(uri, json.dumps(facts, indent=2, default=str).encode())


def read_all(run_dir: str) -> dict[str, dict[str, Any]]:
    """Every step's facts recorded for the run, by step name."""
    found = {}
    for uri in storage.list_uris(runs.outcome_dir(run_dir)):
        name = storage.parse(uri).key.rsplit("/", 1)[-1]
        if name.endswith(".json"):
            found[name.removesuffix(".json")] = json.loads(storage.read_bytes(uri))
    return found
