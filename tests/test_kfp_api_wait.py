"""Waiting for a run (components/shared/kfp_api/waiting.py) against ``FakeKfpApiServer``, the KFP API test double,
with failures injected into its answers: transient errors ridden out within a bounded budget, the run cancelled
(the API's terminate) when the wait gives up on its deadline, on errors that persist or on SIGTERM."""

from __future__ import annotations

import itertools
import math
import os
import signal
import threading
import time
from typing import Any

import kfp_server_api
import pytest
import urllib3
from support.kfp_api_server import DROP, FakeKfpApiServer

from kfp_mlops.components.shared import kfp_api
from kfp_mlops.components.shared.kfp_api import waiting

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("kfp_client_settings")]
FAST = kfp_api.RetryPolicy(attempts=3, first_delay_seconds=0.01, max_delay_seconds=0.02)


@pytest.fixture
def started(kfp_server: FakeKfpApiServer, golden_package) -> tuple[Any, str]:
    """A client of the double and the id of a run it started (PENDING until a test moves it)."""
    client = kfp_api.connect(kfp_api.Connection(host=kfp_server.url))
    return client, kfp_api.submit_run(client, golden_package, {}).run_id


def polls(server: FakeKfpApiServer, run_id: str) -> int:
    return len(server.requests_to("GET", f"/runs/{run_id}"))


def terminations(server: FakeKfpApiServer, run_id: str) -> int:
    return len(server.requests_to("POST", f"/runs/{run_id}:terminate"))


def test_transient_errors_are_ridden_out_and_the_outcome_returned(kfp_server, started):
    client, run_id = started
    kfp_server.run_progress = []
    kfp_server.set_run_state(run_id, "RUNNING")
    # two streaks of three, a read between them: each within the budget of three in a row
    kfp_server.inject_failures("GET", f"/runs/{run_id}", [503, 429, DROP, None, 502, 500, DROP])
    threading.Timer(0.3, kfp_server.set_run_state, (run_id, "SUCCEEDED")).start()

    outcome = kfp_api.wait_for_run(client, run_id, poll_seconds=0.02, retry=FAST, timeout_seconds=30)

    assert outcome.state == "SUCCEEDED"
    assert polls(kfp_server, run_id) > 7
    assert terminations(kfp_server, run_id) == 0


def test_errors_that_persist_give_up_after_the_budget_and_cancel_the_run(kfp_server, started, capsys):
    client, run_id = started
    kfp_server.inject_failures("GET", f"/runs/{run_id}", itertools.repeat(503))

    with pytest.raises(kfp_api.KfpApiError) as info:
        kfp_api.wait_for_run(client, run_id, poll_seconds=0.01, retry=FAST, timeout_seconds=30)

    message = str(info.value)
    assert f"gave up reading run {run_id} after 4 transient errors in a row" in message
    assert "HTTP 503" in message and message.endswith(f"; cancelled run {run_id}")
    assert info.value.exit_code == 1
    assert polls(kfp_server, run_id) == 4 and terminations(kfp_server, run_id) == 1
    assert kfp_server.runs[run_id]["state"] == "CANCELING"
    assert capsys.readouterr().err.count(f"[kfp_api] reading run {run_id} failed") == 3


def test_connections_that_keep_dropping_give_up_too(kfp_server, started):
    client, run_id = started
    kfp_server.inject_failures("GET", f"/runs/{run_id}", itertools.repeat(DROP))

    with pytest.raises(kfp_api.KfpApiError, match=r"after 4 transient errors in a row, the last: cannot reach"):
        kfp_api.wait_for_run(client, run_id, poll_seconds=0.01, retry=FAST, timeout_seconds=30)
    assert kfp_server.runs[run_id]["state"] == "CANCELING"


def test_an_error_that_is_not_transient_is_not_retried_and_the_run_is_cancelled(kfp_server, started):
    client, run_id = started
    kfp_server.inject_failures("GET", f"/runs/{run_id}", [403])

    with pytest.raises(kfp_api.KfpApiError, match=r"denied access .*HTTP 403.*; cancelled run") as info:
        kfp_api.wait_for_run(client, run_id, poll_seconds=0.01, retry=FAST, timeout_seconds=30)
    assert info.value.exit_code == 2
    assert polls(kfp_server, run_id) == 1 and kfp_server.runs[run_id]["state"] == "CANCELING"


def test_the_deadline_gives_up_and_cancels_the_run(kfp_server, started):
    client, run_id = started
    kfp_server.set_run_state(run_id, "RUNNING")
    began = time.monotonic()

    with pytest.raises(kfp_api.KfpApiError, match=r"still RUNNING after \d+ s \(timeout 0.3 s\); cancelled run"):
        kfp_api.wait_for_run(client, run_id, poll_seconds=0.05, timeout_seconds=0.3)
    assert time.monotonic() - began < 5
    assert kfp_server.runs[run_id]["state"] == "CANCELING"


def test_a_wait_is_always_bounded(kfp_server, started, monkeypatch):
    client, run_id = started
    for unbounded in (0, -1, math.inf, math.nan):
        with pytest.raises(ValueError, match="a wait is always bounded"):
            kfp_api.wait_for_run(client, run_id, timeout_seconds=unbounded)
    monkeypatch.setattr(waiting, "DEFAULT_WAIT_TIMEOUT_SECONDS", 0.2)  # no timeout given: the default bound

    with pytest.raises(kfp_api.KfpApiError, match=r"still PENDING after .*\(timeout 0.2 s\); cancelled run"):
        kfp_api.wait_for_run(client, run_id, poll_seconds=0.05)
    assert kfp_server.runs[run_id]["state"] == "CANCELING"


def test_without_cancelling_the_run_goes_on_after_the_deadline(kfp_server, started):
    client, run_id = started
    kfp_server.set_run_state(run_id, "RUNNING")

    with pytest.raises(kfp_api.KfpApiError, match=r"\(timeout 0.1 s\); it goes on on the server$"):
        kfp_api.wait_for_run(client, run_id, poll_seconds=0.05, timeout_seconds=0.1, cancel_on_give_up=False)
    assert kfp_server.runs[run_id]["state"] == "RUNNING" and terminations(kfp_server, run_id) == 0


def test_a_failed_cancel_is_reported_with_what_to_do(kfp_server, started):
    client, run_id = started
    kfp_server.inject_failures("GET", f"/runs/{run_id}", itertools.repeat(503))
    kfp_server.inject_failures("POST", f"/runs/{run_id}:terminate", [503])

    with pytest.raises(kfp_api.KfpApiError, match=rf"could not cancel run {run_id} \(.*HTTP 503.*\): terminate it in"):
        kfp_api.wait_for_run(client, run_id, poll_seconds=0.01, retry=FAST, timeout_seconds=30)
    assert kfp_server.runs[run_id]["state"] == "PENDING"


def test_cancelling_a_run_that_ended_leaves_it(kfp_server, started):
    client, run_id = started
    assert kfp_api.cancel_run(client, run_id) == f"cancelled run {run_id}"
    kfp_server.set_run_state(run_id, "CANCELED")
    assert kfp_api.cancel_run(client, run_id) == f"run {run_id} had already ended"  # the server answers 400
    assert kfp_server.runs[run_id]["state"] == "CANCELED"


def test_sigterm_while_waiting_cancels_the_run_and_restores_the_handler(kfp_server, started):
    client, run_id = started
    kfp_server.set_run_state(run_id, "RUNNING")
    received = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))  # the test's own guard
    try:
        threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM)).start()
        with pytest.raises(
            kfp_api.KfpApiError, match=rf"stopped by SIGTERM.* while waiting for run {run_id}; cancelled"
        ):
            kfp_api.wait_for_run(client, run_id, poll_seconds=0.02, timeout_seconds=30)
        assert kfp_server.runs[run_id]["state"] == "CANCELING" and terminations(kfp_server, run_id) == 1
        assert received == []  # the wait's handler took it
        os.kill(os.getpid(), signal.SIGTERM)  # afterwards the guard is back
        deadline = time.monotonic() + 5
        while not received and time.monotonic() < deadline:
            time.sleep(0.01)
        assert received == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (kfp_server_api.ApiException(status=503), True),
        (kfp_server_api.ApiException(status=500), True),
        (kfp_server_api.ApiException(status=429), True),
        (kfp_server_api.ApiException(status=404), False),
        (kfp_server_api.ApiException(status=401), False),
        (kfp_server_api.ApiException(status=0, reason="CERTIFICATE_VERIFY_FAILED"), False),
        (urllib3.exceptions.MaxRetryError(None, "/", urllib3.exceptions.NewConnectionError(None, "refused")), True),
        (urllib3.exceptions.MaxRetryError(None, "/", urllib3.exceptions.SSLError("bad certificate")), False),
        (urllib3.exceptions.ReadTimeoutError(None, "/", "read timed out"), True),
        (ValueError("a bug"), False),
    ],
    ids=["503", "500", "429", "404", "401", "tls-status-0", "refused", "tls", "read-timeout", "other"],
)
def test_which_errors_are_transient(error, transient):
    assert kfp_api.is_transient(error) is transient
