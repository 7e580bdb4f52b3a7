"""Where a deployment stopped: the stage enum and the error every deploy module raises."""

from __future__ import annotations

import enum


class Stage(enum.StrEnum):
    """A deployment's stages, in order (``DeployError.stage``; the deploy outcome's ``failed`` starts with it)."""

    PACKAGE = "package"  # the package cannot be read, served or run on the validation rows
    LEASE = "lease"  # another deployment of the model name holds the lease (or took it over)
    REPLICAS = "replicas"  # a replica does not resolve or answer
    LOAD = "load"  # Triton refuses to load (or unload) the model
    READINESS = "readiness"  # a loaded version is not ready in time
    VERIFICATION = "verification"  # the candidate answers differently from the package
    LATENCY = "latency"  # the candidate misses the latency budget
    COMMIT = "commit"  # writing <name>/<N>/
    PROMOTION = "promotion"  # the served config names N, the replicas load it
    CANCELLED = "cancelled"  # SIGTERM (a cancelled run) or an interrupt


class DeployError(RuntimeError):
    """The deployment failed; ``stage`` says where and ``rolled_back`` whether the repository and the replicas were
    brought back to the previous version (the message adds any step of the rollback that failed)."""

    def __init__(self, stage: Stage, message: str, rolled_back: bool = False):
        super().__init__(message)
        self.stage = Stage(stage)
        self.rolled_back = rolled_back
