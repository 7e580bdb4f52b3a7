"""Where a pipeline run keeps state outside KFP's artifacts (training checkpoints, each step's outcome): one run
directory, found from what the KFP backend really gives a task, stable across retries and never shared by two runs.

The backend never substitutes ``{{$.pipeline_root}}`` (kubeflow/pipelines ``backend/src/v2/driver/resolve.go``,
``resolveInputParameter``: only the job name/resource name/uuid, task name/uuid and workspace placeholders), so no
step takes the pipeline root as a parameter. Every task does get output artifact URIs and the run id:

- the backend (``driver/driver.go`` ``provisionOutputs``, ``metadata/client.go`` ``GetPipeline``): an output is
  ``<pipeline root>/<pipeline name>/<run id>/<task name>/<uuid salt>/<artifact name>`` and the run id is what
  ``{{$.pipeline_job_uuid}}`` resolves to; the run directory is the URI up to the run id;
- kfp.local (``kfp/local/executor_input_utils.py`` ``construct_local_task_root``): an output is
  ``<pipeline root>/<pipeline name>-<timestamp>/<task name>/<artifact name>`` and the job id is a random number
  found nowhere in the path; the run directory is the ``<pipeline name>-<timestamp>`` folder.
"""

from __future__ import annotations

import re

from kfp_mlops.components.shared import storage
from kfp_mlops.components.shared.errors import InputError

STATE_FOLDER = "kfp-mlops-state"  # inside the run directory, beside the tasks' own folders
_LOCAL_RUN_FOLDER = re.compile(r".+-\d{4}-\d{2}-\d{2}-\d{2}-\d{2}-\d{2}-\d{6}$")  # kfp.local's resource name


def reject_placeholder(name: str, value: str, error: type[InputError] = InputError) -> str:
    """``value`` unless it still holds a ``{{…}}`` placeholder that nothing resolved (e.g. ``{{$.pipeline_root}}``
    in a cluster): then ``error`` naming ``name``, instead of a relative path inside the pod."""
    if "{{" in value:
        raise error(
            f"{name} is {value!r}: an unresolved placeholder, not a storage location (the KFP backend substitutes "
            "only its run and task placeholders); give a real URI"
        )
    return value


def run_directory(artifact_uri: str, run_id: str) -> str:
    """The run directory that holds ``artifact_uri`` (an output of this task): see the module docstring."""
    reject_placeholder("run_id", run_id)
    location = storage.parse(reject_placeholder("the output artifact URI", artifact_uri))
    parts = location.key.rstrip("/").split("/")
    if run_id and run_id in parts[:-1]:
        cut = len(parts) - 1 - parts[::-1].index(run_id)
        return _with_key(location, "/".join(parts[: cut + 1]))
    if len(parts) >= 3 and _LOCAL_RUN_FOLDER.match(parts[-3]):
        return _with_key(location, "/".join(parts[:-2]))
    raise InputError(
        f"output artifact {artifact_uri}: cannot find the run's directory in it (neither the run id {run_id!r} nor "
        "kfp.local's <pipeline>-<timestamp> folder); this step must run in a KFP pipeline"
    )


def pipeline_name(run_dir: str, run_id: str = "") -> str:
    """The name of the pipeline whose run directory is ``run_dir`` (see the module docstring): the folder above the
    run id in a cluster, the ``<pipeline name>-<timestamp>`` folder's name without its timestamp here."""
    parts = storage.parse(run_dir).key.rstrip("/").split("/")
    if _LOCAL_RUN_FOLDER.match(parts[-1]):
        return parts[-1][: -len("-0000-00-00-00-00-00-000000")]
    return parts[-2] if len(parts) >= 2 and (not run_id or parts[-1] == run_id) else ""


def checkpoint_dir(run_dir: str, configured: str = "", run_id: str = "") -> str:
    """Training checkpoints: ``<run dir>/kfp-mlops-state/checkpoints/train``, or ``<configured>/<run id>/train``
    when ``train.checkpoint_dir`` is set (a retried task resumes from them; a run never resumes another's model)."""
    if configured:
        return storage.parse(configured).child(f"{run_id}/train").uri
    return storage.parse(run_dir).child(f"{STATE_FOLDER}/checkpoints/train").uri


def outcome_dir(run_dir: str) -> str:
    """Where the steps of a run record their outcome (drift verdict, blessing, deployment) for an exit handler,
    which can read them even when some steps did not run."""
    return storage.parse(run_dir).child(f"{STATE_FOLDER}/outcomes").uri


def _with_key(location: storage.Location, key: str) -> str:
    return storage.Location(location.scheme, location.bucket, key).uri
