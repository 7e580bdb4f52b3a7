"""The run directory every step keeps its state in, found from an output artifact's URI and the run id as the KFP
backend gives them (backend/src/v2/driver/driver.go provisionOutputs, metadata/client.go GetPipeline) and as
kfp.local does (kfp/local/executor_input_utils.py construct_local_task_root)."""

from __future__ import annotations

import pytest

from kfp_mlops.components.shared import outcomes, runs
from kfp_mlops.components.shared.errors import InputError

RUN_ID = "5f0c7b58-2c7e-4f6e-9d3a-0b6f3b6a1c11"


def backend_uri(root: str, task: str, salt: str, name: str, pipeline: str = "kfp-mlops-training") -> str:
    return f"{root}/{pipeline}/{RUN_ID}/{task}/{salt}/{name}"


@pytest.mark.parametrize(
    ("root", "expected"),
    [
        ("minio://mlpipeline/v2/artifacts", f"s3://mlpipeline/v2/artifacts/kfp-mlops-training/{RUN_ID}"),
        ("s3://mlpipeline/private-artifacts/team-ml/v2/artifacts",
         f"s3://mlpipeline/private-artifacts/team-ml/v2/artifacts/kfp-mlops-training/{RUN_ID}"),
        ("gs://bucket/pipelines", f"gs://bucket/pipelines/kfp-mlops-training/{RUN_ID}"),
    ],
)  # fmt: skip
def test_in_a_cluster_the_run_directory_is_the_artifact_uri_up_to_the_run_id(root, expected):
    assert runs.run_directory(backend_uri(root, "ingest", "a1b2", "train"), RUN_ID) == expected


def test_a_retried_task_and_another_task_of_the_run_find_the_same_state():
    """Each attempt gets a fresh salt in its output URIs; checkpoints and outcomes must not move with it."""
    root = "minio://mlpipeline/v2/artifacts"
    first = runs.run_directory(backend_uri(root, "train-model", "salt-1", "model"), RUN_ID)
    retry = runs.run_directory(backend_uri(root, "train-model", "salt-2", "model"), RUN_ID)
    report = runs.run_directory(backend_uri(root, "report-outcome", "salt-3", "outcome"), RUN_ID)
    assert runs.checkpoint_dir(first) == runs.checkpoint_dir(retry)
    assert (
        runs.checkpoint_dir(first)
        == f"s3://mlpipeline/v2/artifacts/kfp-mlops-training/{RUN_ID}/kfp-mlops-state/checkpoints/train"
    )
    assert runs.outcome_dir(first) == runs.outcome_dir(report)
    other_run = backend_uri(root, "train-model", "salt-1", "model").replace(RUN_ID, "another-run")
    assert runs.run_directory(other_run, "another-run") != first


def test_a_configured_checkpoint_dir_is_per_run():
    assert runs.checkpoint_dir("ignored", "gs://ckpt/team", RUN_ID) == f"gs://ckpt/team/{RUN_ID}/train"


def test_locally_the_run_directory_is_the_one_kfp_local_made(tmp_path):
    run_dir = tmp_path / "kfp-mlops-monitoring-2026-12-02-05-31-19-123456"
    uri = str(run_dir / "drift-check" / "report")
    assert runs.run_directory(uri, "84410213") == str(run_dir)  # kfp.local's job id is in no path


def test_outcomes_written_by_one_task_are_read_by_another(tmp_path):
    root = str(tmp_path)
    written = runs.run_directory(backend_uri(root, "drift-check", "s1", "report", "kfp-mlops-monitoring"), RUN_ID)
    drift = outcomes.DriftOutcome(drifted=True, share=0.5, drifted_columns=["age"], reference="s3://r",
                                  serving_model="s3://m", action="nested")  # fmt: skip
    outcomes.record(written, drift)
    read = runs.run_directory(backend_uri(root, "report-outcome", "s2", "outcome", "kfp-mlops-monitoring"), RUN_ID)
    assert outcomes.read_all(read) == outcomes.Outcomes(drift=drift)
    assert outcomes.read_all(read).facts() == {"drift": drift.model_dump()}
    nothing = outcomes.read_all(runs.run_directory(str(tmp_path / "x-2026-12-02-05-31-19-123456/t/o"), "1"))
    assert nothing == outcomes.Outcomes() and nothing.facts() == {}


@pytest.mark.parametrize(
    ("uri", "run_id", "message"),
    [
        (
            "{{$.pipeline_root}}/x/y",
            RUN_ID,
            "the output artifact URI is '{{\\$.pipeline_root}}/x/y': an unresolved placeholder",
        ),
        (backend_uri("s3://b/r", "t", "s", "n"), "{{$.pipeline_job_uuid}}", "run_id is '{{\\$.pipeline_job_uuid}}'"),
        ("s3://b/somewhere/else/model", RUN_ID, "cannot find the run's directory in it"),
    ],
)
def test_a_uri_outside_any_run_fails_naming_what_is_wrong(uri, run_id, message):
    with pytest.raises(InputError, match=message):
        runs.run_directory(uri, run_id)
