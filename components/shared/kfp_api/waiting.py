"""Waiting for a run, always bounded, and cancelling it when the wait is given up.

``wait_for_run`` polls the run until it ends. A transient error of the API (the connection refused, reset or timed
out; HTTP 429 or 5xx: a restarting API server, its proxy, a rate limit) is retried with a growing delay, up to
``RetryPolicy.attempts`` in a row; any successful read resets the count. It gives up on the deadline
(``timeout_seconds``, ``DEFAULT_WAIT_TIMEOUT_SECONDS`` when none is given: there is no endless wait), on errors that
persist or are not transient, and on SIGTERM (``cancellation.on_sigterm``: KFP cancelling the waiting step, its
pod's deadline, a node drain). Giving up, it terminates the run it waited for (``cancel_run``: the KFP API's
``POST /apis/v2beta1/runs/{id}:terminate``, backend/api/v2beta1/run.proto ``TerminateRun``), as GCPC's launchers
cancel their remote job, so no training run goes on unwatched; ``cancel_on_give_up=False`` (the CLI) leaves it.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

from kfp_mlops.components.shared.cancellation import on_sigterm, sigterm_ignored
from kfp_mlops.components.shared.kfp_api.client import KfpApiError, explained, on_server
from kfp_mlops.components.shared.kfp_api.pipelines import TERMINAL_STATES, RunOutcome

DEFAULT_WAIT_TIMEOUT_SECONDS = 24 * 3600.0


@dataclass(frozen=True)
class RetryPolicy:
    """How many transient errors in a row a wait rides out, and how long it waits after each: ``first_delay_seconds``,
    doubled each time up to ``max_delay_seconds``. The defaults ride out about 4 minutes of an unreachable API."""

    attempts: int = 8
    first_delay_seconds: float = 2.0
    max_delay_seconds: float = 60.0

    def __post_init__(self) -> None:
        if self.attempts < 0 or self.first_delay_seconds < 0 or self.max_delay_seconds < self.first_delay_seconds:
            raise ValueError(f"retry policy {self}: expected attempts >= 0 and 0 <= first delay <= max delay")

    def delay(self, failures: int) -> float:
        """Seconds to wait after the ``failures``-th transient error in a row (1-based)."""
        return min(self.max_delay_seconds, self.first_delay_seconds * 2 ** (failures - 1))


class _Terminated(Exception):
    """SIGTERM arrived while waiting."""


class _Timeout(KfpApiError):
    """The wait's deadline passed."""


def is_transient(error: BaseException) -> bool:
    """Whether a call on the KFP API may succeed if repeated: a connection refused, reset or timed out, HTTP 429 or
    5xx. Not: TLS errors, 4xx (credentials, names, input), anything else."""
    import kfp_server_api
    import urllib3

    if isinstance(error, kfp_server_api.ApiException):
        status = error.status or 0  # 0: a TLS error, which repeating does not fix
        return status == 429 or status >= 500
    if isinstance(error, urllib3.exceptions.MaxRetryError) and error.reason is not None:
        error = error.reason
    if isinstance(error, urllib3.exceptions.SSLError):
        return False
    return isinstance(error, urllib3.exceptions.HTTPError | ConnectionError | TimeoutError)


@on_server
def cancel_run(client: Any, run_id: str) -> str:
    """Terminate the run (its state becomes CANCELING, then CANCELED); a run that has already ended is left as it is.
    Returns what happened, in words."""
    import kfp_server_api

    try:
        client.terminate_run(run_id)
    except kfp_server_api.ApiException as error:
        if error.status != 400:  # the server refuses a run that is no longer pending, running or paused
            raise
        return f"run {run_id} had already ended"
    return f"cancelled run {run_id}"


@on_server
def wait_for_run(
    client: Any,
    run_id: str,
    *,
    timeout_seconds: float | None = None,
    poll_seconds: float = 10.0,
    on_state: Callable[[str], None] = lambda state: None,
    retry: RetryPolicy = RetryPolicy(),
    cancel_on_give_up: bool = True,
) -> RunOutcome:
    """Poll the run until it ends (SUCCEEDED, FAILED, SKIPPED, CANCELED), calling ``on_state`` at each change.
    ``timeout_seconds``: None is DEFAULT_WAIT_TIMEOUT_SECONDS. Raises KfpApiError when it gives up (the deadline,
    errors that persist or are not transient, SIGTERM), after cancelling the run unless ``cancel_on_give_up`` is
    False (the run then goes on on the server)."""
    timeout = DEFAULT_WAIT_TIMEOUT_SECONDS if timeout_seconds is None else float(timeout_seconds)
    if not (timeout > 0 and math.isfinite(timeout)):
        raise ValueError(f"timeout_seconds {timeout_seconds!r}: a wait is always bounded, expected seconds > 0")
    if not poll_seconds > 0:
        raise ValueError(f"poll_seconds {poll_seconds!r}: expected seconds > 0")
    guard = _sigterm_raises(run_id) if cancel_on_give_up else nullcontext()
    with guard:
        try:
            return _poll(client, run_id, timeout, poll_seconds, on_state, retry)
        except BaseException as error:  # noqa: BLE001 - every way out without an outcome gives the run up
            reason = explained(client, error)
            if not cancel_on_give_up:
                if isinstance(reason, _Timeout):
                    raise KfpApiError(f"{reason}; it goes on on the server", reason.exit_code) from None
                if isinstance(reason, KfpApiError):
                    raise reason from None
                raise
            with sigterm_ignored():  # the cancel must not be cut short by a second signal
                outcome = _cancel_quietly(client, run_id)
            if isinstance(reason, _Terminated):
                raise KfpApiError(f"stopped by {reason} while waiting for run {run_id}; {outcome}") from None
            if isinstance(reason, KfpApiError):
                raise KfpApiError(f"{reason}; {outcome}", reason.exit_code) from None
            print(f"[kfp_api] {outcome}", file=sys.stderr, flush=True)
            raise


def _poll(
    client: Any,
    run_id: str,
    timeout: float,
    poll_seconds: float,
    on_state: Callable[[str], None],
    retry: RetryPolicy,
) -> RunOutcome:
    started = time.monotonic()
    state, failures = "", 0
    while True:
        try:
            run = client.get_run(run_id)
        except Exception as error:
            if not is_transient(error):
                raise
            failures += 1
            if failures > retry.attempts:
                raise KfpApiError(
                    f"gave up reading run {run_id} after {failures} transient errors in a row, the last: "
                    f"{explained(client, error)}"
                ) from None
            delay = retry.delay(failures)
            print(f"[kfp_api] reading run {run_id} failed ({explained(client, error)}); retry {failures} of "
                  f"{retry.attempts} in {delay:g} s", file=sys.stderr, flush=True)  # fmt: skip
            _sleep_until(started, timeout, delay, run_id, state)
            continue
        failures = 0
        if (run.state or "") != state:
            state = run.state or ""
            on_state(state)
        if state in TERMINAL_STATES:
            error = (run.error.message or "") if run.error else ""
            return RunOutcome(run_id, state, error, time.monotonic() - started)
        _sleep_until(started, timeout, poll_seconds, run_id, state)


def _sleep_until(started: float, timeout: float, seconds: float, run_id: str, state: str) -> None:
    """Sleep ``seconds``, or raise the timeout's KfpApiError if the deadline comes first."""
    elapsed = time.monotonic() - started
    if elapsed + seconds > timeout:
        raise _Timeout(f"run {run_id} is still {state or 'pending'} after {elapsed:.0f} s (timeout {timeout:g} s)")
    time.sleep(seconds)


@contextmanager
def _sigterm_raises(run_id: str) -> Iterator[None]:
    def stop(signum: int) -> None:
        raise _Terminated(f"SIGTERM, signal {signum}")

    with on_sigterm(stop, what=f"cancel run {run_id}"):
        yield


def _cancel_quietly(client: Any, run_id: str) -> str:
    try:
        return cancel_run(client, run_id)
    except KfpApiError as error:
        return f"could not cancel run {run_id} ({error}): terminate it in the KFP UI"
