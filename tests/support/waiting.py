"""Bounded waits on conditions, for tests that run threads or servers beside them: instead of a fixed sleep, poll
until the condition holds (fail naming it after a timeout), or check that it holds for a whole window."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_for(condition: Callable[[], object], what: str, timeout: float = 30.0, interval: float = 0.02) -> float:
    """Poll ``condition`` until it returns a true value; returns the seconds waited. Fails naming ``what`` after
    ``timeout`` seconds."""
    started = time.monotonic()
    while not condition():
        waited = time.monotonic() - started
        assert waited < timeout, f"timed out after {timeout:g}s waiting for {what}"
        time.sleep(interval)
    return time.monotonic() - started


def holds_for(condition: Callable[[], object], what: str, seconds: float, interval: float = 0.1) -> int:
    """Check ``condition`` every ``interval`` for ``seconds`` (an absence is observed over a window: no condition
    ends it sooner); fails naming ``what`` the first time it is false. Returns how many checks passed."""
    deadline, checks = time.monotonic() + seconds, 0
    while True:
        assert condition(), f"{what} stopped holding after {checks} checks"
        checks += 1
        if time.monotonic() >= deadline:
            return checks
        time.sleep(interval)
