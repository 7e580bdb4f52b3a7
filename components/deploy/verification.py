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
    max_abs_diff: float  # largest |Triton - package| probability, or prediction / label std (Reference.scale)
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
    answers differ beyond ``verify.atol`` or the latency exceeds the budget. A classifier's probabilities differ by
    at most atol and its labels match (except rows within atol of the decision boundary); a regression model's
    prediction differs by at most atol × the training label's standard deviation (``Reference.scale``: with the
    default 1e-4, a ten-thousandth of the target's spread, float32 rounding of the same graph stays far below
    it while any real change of the model exceeds it)."""
    check: VerifyConfig = settings.verify
    what = (
        f"|prediction difference| / label std {reference.scale:.4g}"
        if reference.regression
        else "|probability difference|"
    )
    where = f"{name} version {version} on {replica.endpoint}"
    worst, mismatched = 0.0, []
    try:
        for start in range(0, reference.rows, settings.max_batch_size):
            stop = min(start + settings.max_batch_size, reference.rows)
            batch = {key: value[start:stop] for key, value in reference.inputs.items()}
            answers = replica.infer(name, version, batch, reference.outputs)
            got, want = answers[0], reference.values[start:stop]
            if got is None or got.shape != want.shape:
                shape = None if got is None else got.shape
                raise DeployError(
                    Stage.VERIFICATION, f"{where}: {reference.outputs[0]} of shape {shape}, expected {want.shape}"
                )
            difference = np.abs(got.astype(np.float64) - want) / reference.scale
            if not np.isfinite(difference).all():  # max() would drop a NaN: a model answering NaN must not pass
                rows = (start + np.flatnonzero(~np.isfinite(difference).all(axis=1)))[:5].tolist()
                raise DeployError(
                    Stage.VERIFICATION,
                    f"{where}: {reference.outputs[0]} that are not finite numbers (NaN or infinity) from Triton or "
                    f"from the package itself, rows {rows}",
                )
            worst = max(worst, float(difference.max()))
            if reference.regression:
                continue
            for offset, (got_label, want_label) in enumerate(
                zip(layout.decode_labels(answers[1]), reference.labels[start:stop], strict=True)
            ):
                if got_label != want_label and not reference.excused(start + offset, check.atol):
                    mismatched.append(start + offset)
        if not worst <= check.atol or mismatched:  # NaN fails too
            labels = (
                f"; {len(mismatched)} of {reference.rows} labels differ (rows {mismatched[:5]})" if mismatched else ""
            )
            raise DeployError(
                Stage.VERIFICATION,
                f"{where} answers differently from the package: max {what} {worst:.3g} over {reference.rows} rows "
                f"(allowed {check.atol:g}){labels}",
            )
        single = [
            {key: value[row : row + 1] for key, value in reference.inputs.items()}
            for row in range(min(reference.rows, check.requests))
        ]
        for index in range(WARMUP_REQUESTS):
            replica.infer(name, version, single[index % len(single)], reference.outputs)
        times = []
        for index in range(check.requests):
            started = time.perf_counter()
            replica.infer(name, version, single[index % len(single)], reference.outputs)
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
