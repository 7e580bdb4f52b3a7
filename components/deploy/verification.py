"""Verification of a loaded candidate: its answers on the reference rows against the package's own, and its
batch-1 latency against the budget."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from tritonclient.utils import InferenceServerException

from kfp_mlops.components.deploy.errors import DeployError, Stage
from kfp_mlops.components.deploy.package import Reference
from kfp_mlops.components.deploy.replica import Replica, first_line
from kfp_mlops.components.shared import layout
from kfp_mlops.components.shared.config import DeployConfig, VerifyConfig

WARMUP_REQUESTS = 5


@dataclass(frozen=True)
class Verification:
    """What the candidate showed in Triton (the worst replica's figures)."""

    rows: int
    max_abs_diff: float  # largest |Triton - package| probability
    p50_ms: float
    p99_ms: float
    requests: int

    def figures(self) -> dict[str, float]:
        return {
            "rows": float(self.rows),
            "max_abs_diff": self.max_abs_diff,
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
        }


def verify(replica: Replica, name: str, version: int, reference: Reference, settings: DeployConfig) -> Verification:
    """Send the reference rows (batches of max_batch_size) and time batch-1 requests; raise DeployError when the
    answers differ beyond ``verify.atol`` or the latency exceeds the budget."""
    check: VerifyConfig = settings.verify
    worst, mismatched = 0.0, []
    try:
        for start in range(0, reference.rows, settings.max_batch_size):
            stop = min(start + settings.max_batch_size, reference.rows)
            batch = {key: value[start:stop] for key, value in reference.inputs.items()}
            probabilities, labels = replica.infer(name, version, batch)
            if probabilities is None or probabilities.shape != reference.probabilities[start:stop].shape:
                shape = None if probabilities is None else probabilities.shape
                raise DeployError(
                    Stage.VERIFICATION,
                    f"{name} version {version} on {replica.endpoint}: probabilities "
                    f"of shape {shape}, expected "
                    f"{reference.probabilities[start:stop].shape}",
                )
            difference = np.abs(probabilities - reference.probabilities[start:stop])
            if not np.isfinite(difference).all():  # max() would drop a NaN: a model answering NaN must not pass
                rows = (start + np.flatnonzero(~np.isfinite(difference).all(axis=1)))[:5].tolist()
                raise DeployError(
                    Stage.VERIFICATION,
                    f"{name} version {version} on {replica.endpoint}: probabilities that are not finite numbers (NaN "
                    f"or infinity) from Triton or from the package itself, rows {rows}",
                )
            worst = max(worst, float(difference.max()))
            for offset, (got, want) in enumerate(
                zip(layout.decode_labels(labels), reference.labels[start:stop], strict=True)
            ):
                if got != want and not reference.excused(start + offset, check.atol):
                    mismatched.append(start + offset)
        if not worst <= check.atol or mismatched:  # NaN fails too
            labels = (
                f"; {len(mismatched)} of {reference.rows} labels differ (rows {mismatched[:5]})" if mismatched else ""
            )
            raise DeployError(
                Stage.VERIFICATION,
                f"{name} version {version} on {replica.endpoint} answers differently from the package: max "
                f"|probability difference| {worst:.3g} over {reference.rows} rows (allowed {check.atol:g}){labels}",
            )
        single = [
            {key: value[row : row + 1] for key, value in reference.inputs.items()}
            for row in range(min(reference.rows, check.requests))
        ]
        for index in range(WARMUP_REQUESTS):
            replica.infer(name, version, single[index % len(single)])
        times = []
        for index in range(check.requests):
            started = time.perf_counter()
            replica.infer(name, version, single[index % len(single)])
            times.append((time.perf_counter() - started) * 1000)
    except InferenceServerException as exc:
        raise DeployError(
            Stage.VERIFICATION,
            f"{name} version {version} on {replica.endpoint} failed a request: {first_line(exc.message())}",
        ) from None
    p50, p99 = (float(value) for value in np.percentile(times, [50, 99]))
    if p50 > check.max_p50_ms or p99 > check.max_p99_ms:
        raise DeployError(
            Stage.LATENCY,
            f"{name} version {version} on {replica.endpoint} misses the latency budget: "
            f"p50 {p50:.2f} ms (max {check.max_p50_ms:g}), p99 {p99:.2f} ms "
            f"(max {check.max_p99_ms:g}) over {check.requests} batch-1 requests",
        )
    return Verification(reference.rows, worst, p50, p99, check.requests)
