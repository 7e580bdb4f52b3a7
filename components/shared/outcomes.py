"""What each step of a run decided, kept in the run's directory (``runs.outcome_dir``) for the exit handler's
report: it can read them even when some steps never ran (a run that found no drift, a model that was not blessed).

A step writes ``<run dir>/kfp-mlops-state/outcomes/<step>.json`` (one small JSON document of facts, one model per
step below); the report reads whatever is there (``read_all``).
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from kfp_mlops.components.shared import runs, storage
from kfp_mlops.components.shared.records import Deployment


class Outcome(BaseModel):
    """One step's facts; ``STEP`` names its file."""

    model_config = ConfigDict(extra="forbid")
    STEP: ClassVar[str]

    def facts(self) -> dict[str, Any]:
        """The facts as written: only the fields the step set (a failed deployment records two)."""
        return self.model_dump(mode="json", exclude_unset=True)


class EvaluateOutcome(Outcome):
    STEP: ClassVar[str] = "evaluate"

    blessed: bool
    reasons: list[str]  # why not blessed
    metrics: dict[str, float]


class DeployOutcome(Outcome):
    """``deployed`` and, when it failed, ``failed`` (the stage and the error); else what ``deploy`` recorded: the
    status, the model package, where it serves (the ``Deployment`` fields, flat and as ``deployment``) and what
    changed."""

    STEP: ClassVar[str] = "deploy"

    deployed: bool
    failed: str = ""
    status: str = ""
    model: str = ""
    endpoint: str = ""
    model_name: str = ""
    version: int = 0  # 0: not deployed
    repository: str = ""
    verified: dict[str, float] = {}
    previous_version: int = 0
    pruned: list[int] = []
    replicas: list[str] = []
    deployment: Deployment | None = None


class DriftOutcome(Outcome):
    STEP: ClassVar[str] = "drift"

    drifted: bool
    share: float  # of the columns compared
    drifted_columns: list[str]
    reference: str  # URI of the reference data
    serving_model: str
    action: str  # what the run does next: none, nested or kfp_api


class PerformanceOutcome(Outcome):
    """The performance check's verdict on the serving model (components/performance/)."""

    STEP: ClassVar[str] = "performance"

    verdict: str  # ok, degraded, insufficient or skipped (no labels configured)
    reasons: list[str] = []
    metrics: dict[str, float] = {}  # the serving model's, on the labelled window
    reference_metrics: dict[str, float] = {}  # the same model's at evaluation
    counts: dict[str, int] = {}
    model_name: str = ""
    model_version: int = 0
    registry_version: str = ""
    action: str = ""  # what the run does next (drift's reason included): none, nested or kfp_api


class RetrainOutcome(Outcome):
    """A training run submitted through the KFP API, and how it ended."""

    STEP: ClassVar[str] = "retrain"

    run_id: str
    state: str


class Outcomes(BaseModel):
    """Every step's facts recorded for a run; None: the step recorded nothing (it did not run)."""

    model_config = ConfigDict(extra="forbid")

    drift: DriftOutcome | None = None
    performance: PerformanceOutcome | None = None
    retrain: RetrainOutcome | None = None
    evaluate: EvaluateOutcome | None = None
    deploy: DeployOutcome | None = None

    def facts(self) -> dict[str, dict[str, Any]]:
        """The recorded steps' facts by step name, as written."""
        return {name: outcome.facts() for name, outcome in self if outcome is not None}


def record(run_dir: str, outcome: Outcome) -> None:
    """Write the step's facts for the run (nothing when the step runs outside a pipeline: no run directory)."""
    if run_dir:
        uri = storage.parse(runs.outcome_dir(run_dir)).child(f"{outcome.STEP}.json").uri
        storage.write_bytes(uri, json.dumps(outcome.facts(), indent=2).encode())


def read_all(run_dir: str) -> Outcomes:
    """Every step's facts recorded for the run."""
    found = {}
    for uri in storage.list_uris(runs.outcome_dir(run_dir)):
        name = storage.parse(uri).key.rsplit("/", 1)[-1]
        if name.endswith(".json") and name.removesuffix(".json") in Outcomes.model_fields:
            found[name.removesuffix(".json")] = json.loads(storage.read_bytes(uri))
    return Outcomes.model_validate(found)
