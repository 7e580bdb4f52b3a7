"""SIGTERM handling shared by every step (components/shared/cancellation.py), with real signals sent to this
process (pytest runs tests on the main thread)."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from kfp_mlops.components.shared.cancellation import on_sigterm, sigterm_ignored


class Cancelled(Exception):
    pass


def test_sigterm_runs_the_cleanup_once_raises_where_the_step_is_and_restores_the_handler():
    calls = []

    def cleanup(signum: int) -> None:
        calls.append(signum)
        os.kill(os.getpid(), signal.SIGTERM)  # a second signal during the cleanup is ignored
        raise Cancelled

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Cancelled), on_sigterm(cleanup, "clean up"):
        os.kill(os.getpid(), signal.SIGTERM)
    assert calls == [signal.SIGTERM]
    assert signal.getsignal(signal.SIGTERM) == before


def test_ignored_sigterm_lets_a_rollback_finish():
    before = signal.getsignal(signal.SIGTERM)
    with sigterm_ignored():
        os.kill(os.getpid(), signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) == before


def test_off_the_main_thread_nothing_is_installed_and_it_says_so(capsys):
    seen = {}

    def worker() -> None:
        with on_sigterm(lambda _: None, "delete the job"):
            seen["handler"] = signal.getsignal(signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen["handler"] == before
    assert "not on the main thread: SIGTERM will not delete the job" in capsys.readouterr().err
