"""The deploy protocol's typed progress: the stage an unexpected error is reported at, and what a rollback undoes.
No server (tests/test_deploy.py runs the protocol against a real Triton)."""

from __future__ import annotations

import pytest

from kfp_mlops.components.deploy.errors import DeployError, Stage
from kfp_mlops.components.deploy.protocol import Progress


@pytest.mark.parametrize(
    ("stage", "committed", "config_written"),
    [(Stage.VERIFICATION, False, False), (Stage.COMMIT, True, False), (Stage.PROMOTION, True, True)],
)
def test_progress_says_what_the_rollback_undoes(stage, committed, config_written):
    progress = Progress(stage)
    assert (progress.committed, progress.config_written) == (committed, config_written)


def test_an_unexpected_error_is_reported_at_the_stage_reached_and_an_interrupt_as_cancelled():
    progress = Progress(Stage.COMMIT)
    error = progress.error(OSError("disk full"))
    assert error.stage == "commit" and str(error) == "OSError: disk full"
    assert progress.error(KeyboardInterrupt()).stage == Stage.CANCELLED
    raised = DeployError(Stage.LOAD, "refused")
    assert progress.error(raised) is raised


def test_stages_read_as_their_names_in_outcomes():
    assert f"{Stage.LATENCY}: too slow" == "latency: too slow"
    assert DeployError("readiness", "late").stage is Stage.READINESS
