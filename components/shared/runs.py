"""Where a pipeline run keeps state outside KFP's artifacts: per-run, per-task locations under the pipeline root,
stable across retries of a task and never shared by two runs."""

from __future__ import annotations

from kfp_mlops.components.shared import storage


def checkpoint_dir(run_id: str, pipeline_root: str, configured: str = "") -> str:
    """Training checkpoints: ``<configured or <pipeline root>/checkpoints>/<run id>/train`` (a retried task
    resumes from them; a run never resumes another run's model)."""
    base = configured or storage.parse(pipeline_root).child("checkpoints").uri
    return storage.parse(base).child(f"{run_id}/train").uri


def outcome_dir(run_id: str, pipeline_root: str) -> str:
    """Where the steps of a run record their outcome (drift verdict, blessing, deployment) for an exit handler,
    which can read them even when some steps did not run."""
    return storage.parse(pipeline_root).child(f"outcomes/{run_id}").uri
