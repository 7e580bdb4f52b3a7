"""What a step does when its pod is told to stop: Kubernetes sends SIGTERM when a KFP run is cancelled, the pod is
pre-empted or its node drains, then SIGKILL after the grace period. One place for it, as GCPC keeps one
cancellation context (``container/utils/execution_context.py``): a step that launched remote work (a TrainJob, a
Triton deployment, worker processes) undoes or stops it here before the pod goes.

Python delivers signals to the main thread only, and only the main thread may install a handler: elsewhere these
context managers install nothing and say so once on stderr.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def on_sigterm(handler: Callable[[int], None], what: str = "") -> Iterator[None]:
    """While active, SIGTERM calls ``handler(signum)``, with further SIGTERMs ignored from then on (one cleanup,
    never interrupted by a second signal); whatever it raises propagates where the step is. The previous handler is
    restored on exit."""
    if threading.current_thread() is not threading.main_thread():
        print(f"not on the main thread: SIGTERM will not {what or 'run its cleanup'}", file=sys.stderr)
        yield
        return

    def on_signal(signum: int, _frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        handler(signum)

    previous = signal.signal(signal.SIGTERM, on_signal)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def sigterm_ignored() -> Iterator[None]:
    """While active, SIGTERM is ignored (a cleanup that must finish, e.g. a rollback); the previous handler is
    restored on exit."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
