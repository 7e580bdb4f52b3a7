"""The KFP API client's own behaviour (components/shared/kfp_api/client.py): bounded requests, pagination, and
errors that name the fix, through the command line and through the API, against ``FakeKfpApiServer``."""

from __future__ import annotations

import socket
import time

import pytest
from support.kfp_api_server import FakeKfpApiServer
from support.kfp_cli import TOKEN, kfp_mlops

from kfp_mlops.components.shared import kfp_api

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("kfp_client_settings")]


def test_waiting_for_an_unknown_run_is_a_not_found_error(kfp_server):
    client = kfp_api.connect(kfp_api.Connection(host=kfp_server.url))

    with pytest.raises(kfp_api.KfpApiError, match=r"not found at .* \(HTTP 404\): Run no-such-run not found") as info:
        kfp_api.wait_for_run(client, "no-such-run")
    assert info.value.exit_code == 2


def test_lists_follow_next_page_tokens_to_the_end(kfp_server, golden_package, monkeypatch):
    client = kfp_api.connect(kfp_api.Connection(host=kfp_server.url))
    for index in range(5):
        kfp_api.ensure_schedule(client, golden_package, kfp_api.Schedule(name=f"s{index}", cron="@hourly"))
    monkeypatch.setattr(kfp_api.schedules, "PAGE_SIZE", 2)

    schedules = kfp_api.list_schedules(client)

    assert [s.display_name for s in schedules] == ["s0", "s1", "s2", "s3", "s4"]
    pages = [r for r in kfp_server.requests_to("GET", "/recurringruns") if r.query.get("sort_by") == ["created_at"]]
    assert [r.query["page_size"] for r in pages] == [["2"]] * 3
    assert [bool(r.query.get("page_token")) for r in pages] == [False, True, True]


# --- connection and credentials -----------------------------------------------------------------------------------


def test_a_missing_or_wrong_token_is_401_naming_existing_token(golden_package, capsys, monkeypatch):
    with FakeKfpApiServer(token=TOKEN) as server:
        assert kfp_mlops("upload", "training", "--host", server.url, "--package", str(golden_package)) == 2
        missing = capsys.readouterr().err
        code = kfp_mlops(
            "upload",
            "training",
            "--host",
            server.url,
            "--package",
            str(golden_package),
            "--existing-token",
            "wrong-token",
        )
        wrong = capsys.readouterr()
        monkeypatch.setenv("KFP_EXISTING_TOKEN", TOKEN)
        assert kfp_mlops("upload", "training", "--host", server.url, "--package", str(golden_package)) == 0
        accepted = capsys.readouterr()

    assert code == 2
    for message in (missing, wrong.err):
        assert message.startswith("kfp-mlops upload: error: ")
        assert "(HTTP 401" in message and "--existing-token (env KFP_EXISTING_TOKEN)" in message
    assert server.requests[-1].authorization == f"Bearer {TOKEN}"
    assert len(server.pipelines) == 1
    for text in (missing, wrong.out, wrong.err, accepted.out, accepted.err):
        assert TOKEN not in text and "wrong-token" not in text


def test_a_token_without_permission_is_403_naming_the_namespace(golden_package, capsys):
    with FakeKfpApiServer(token=TOKEN, read_only_token="viewer-token") as server:
        code = kfp_mlops(
            "upload",
            "training",
            "--host",
            server.url,
            "--package",
            str(golden_package),
            "--existing-token",
            "viewer-token",
            "--namespace",
            "team-ml",
        )

    assert code == 2
    err = capsys.readouterr().err
    assert "denied access in namespace team-ml (HTTP 403" in err
    assert "viewer-token" not in err


def test_an_unreachable_server_is_a_clear_error(golden_package, capsys):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed once the block ends: nothing listens there

    code = kfp_mlops("runs", "--host", f"http://127.0.0.1:{port}")

    assert code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"kfp-mlops runs: error: cannot reach http://127.0.0.1:{port}: ")
    assert "Connection refused" in err and "--host" in err and "object at 0x" not in err


@pytest.mark.timeout(20)
def test_a_server_that_does_not_answer_is_given_up_after_the_request_timeout(kfp_server, capsys):
    kfp_server.stall()
    started = time.monotonic()

    code = kfp_mlops("runs", "--host", kfp_server.url, "--request-timeout", "0.5")

    elapsed = time.monotonic() - started
    assert code == 1
    assert elapsed < 3  # one attempt: no urllib3 retries, no kfp.Client health-check retries
    assert f"no answer from {kfp_server.url} within 0.5 s" in capsys.readouterr().err
    assert [r.path for r in kfp_server.requests] == ["/apis/v2beta1/healthz"]


@pytest.mark.timeout(20)
def test_every_request_is_bounded_not_only_the_first(kfp_server, golden_package):
    client = kfp_api.connect(kfp_api.Connection(host=kfp_server.url, timeout=0.5))
    kfp_server.stall()
    started = time.monotonic()

    with pytest.raises(kfp_api.KfpApiError, match="no answer from .* within 0.5 s") as info:
        kfp_api.upload_pipeline(client, golden_package)
    assert info.value.exit_code == 1
    assert time.monotonic() - started < 3


def test_a_multi_user_server_needs_a_namespace(golden_package, capsys):
    with FakeKfpApiServer(multi_user=True) as server:
        assert kfp_mlops("runs", "--host", server.url) == 2
        assert "is a multi-user deployment: pass --namespace" in capsys.readouterr().err
        assert kfp_mlops("runs", "--host", server.url, "--namespace", "team-ml") == 0
        (listing,) = server.requests_to("GET", "/runs")

    assert listing.query["namespace"] == ["team-ml"]


@pytest.mark.parametrize("host", ["kfp.example.com", "ftp://kfp.example.com"])
def test_a_host_without_http_scheme_is_refused(capsys, host):
    assert kfp_mlops("runs", "--host", host) == 2
    assert "expected a URL starting with http:// or https://" in capsys.readouterr().err


def test_the_host_comes_from_kfp_host_when_not_given(kfp_server, monkeypatch, capsys):
    monkeypatch.setenv("KFP_HOST", kfp_server.url)

    assert kfp_mlops("schedules") == 0
    assert capsys.readouterr().out.strip() == "no schedules"
