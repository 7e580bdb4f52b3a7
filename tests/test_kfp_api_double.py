"""``FakeKfpApiServer``, the KFP API test double, answers like the API server: field and type checks of the
grpc-gateway, paging, filters and sorting, run parameter checks, duplicate names."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import pytest
import yaml
from support.kfp_api_server import FakeKfpApiServer
from support.kfp_cli import GOLDEN

from kfp_mlops.components.shared import kfp_api

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("kfp_client_settings")]


# --- the test double answers like the server -----------------------------------------------------------------------


def http(server: FakeKfpApiServer, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        f"{server.url}/apis/v2beta1{path}", data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_double_rejects_unknown_fields_and_wrong_types_like_the_grpc_gateway(kfp_server):
    assert http(kfp_server, "POST", "/experiments", {"display_name": "x", "displayname": "y"}) == (
        400,
        {"code": 3, "message": 'V2beta1Experiment: unknown field "displayname"', "details": []},
    )
    status, body = http(kfp_server, "POST", "/experiments", {"display_name": 7})
    assert (status, body["message"]) == (400, "V2beta1Experiment.display_name: expected str, got int")
    assert http(kfp_server, "POST", "/experiments", {"display_name": "x"})[0] == 200
    assert http(kfp_server, "POST", "/experiments", {"display_name": "x"})[0] == 409


def test_double_rejects_an_upload_whose_spec_has_an_unknown_field(kfp_server, tmp_path):
    documents = list(yaml.safe_load_all(GOLDEN.read_text()))
    documents[0]["root"]["dag"]["tasks"]["ingest"]["retryPolicy"] = {"maxRetryCount": 1, "maxRetries": 1}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump_all(documents))
    client = kfp_api.connect(kfp_api.Connection(host=kfp_server.url))

    with pytest.raises(kfp_api.KfpApiError, match=r"HTTP 400\): invalid v2 pipeline spec: .*maxRetries"):
        kfp_api.upload_pipeline(client, bad)
    assert kfp_server.pipelines == {}  # the empty pipeline made for the version was deleted again


def test_double_pages_filters_and_sorts_experiments_as_kfp_client_asks(kfp_server):
    client = kfp_api.connect(kfp_api.Connection(host=kfp_server.url))
    for name in ("b", "a", "c", "a-2"):
        kfp_api.ensure_experiment(client, name)

    first = client.list_experiments(page_size=3, sort_by="display_name desc")
    second = client.list_experiments(page_size=3, page_token=first.next_page_token, sort_by="ignored: in the token")
    assert [e.display_name for e in first.experiments + second.experiments] == ["c", "b", "a-2", "a"]
    assert (first.total_size, second.next_page_token) == (4, None)
    assert client.get_experiment(experiment_name="a").display_name == "a"  # kfp.Client's EQUALS filter, op 1
    with pytest.raises(Exception, match="Invalid sorting field"):
        client.list_experiments(sort_by="colour")


def test_double_checks_run_parameters_like_the_api_server(kfp_server, golden_package):
    client = kfp_api.connect(kfp_api.Connection(host=kfp_server.url))

    with pytest.raises(kfp_api.KfpApiError, match="input parameter gpus_per_node requires type STRING"):
        kfp_api.submit_run(client, golden_package, {"gpus_per_node": 2})
    with pytest.raises(kfp_api.KfpApiError, match="not required by pipeline: colour"):
        kfp_api.submit_run(client, golden_package, {"colour": "blue"})
    assert kfp_server.runs == {}


def test_double_refuses_a_duplicate_pipeline_name_with_409(kfp_server, golden_package):
    client = kfp_api.connect(kfp_api.Connection(host=kfp_server.url))
    client.upload_pipeline(str(golden_package))

    with pytest.raises(Exception) as info:
        client.upload_pipeline(str(golden_package))
    assert info.value.status == 409
    assert len(kfp_server.pipelines) == 1


def test_double_terminates_like_the_api_server_and_injects_failures(kfp_server, golden_package):
    """TerminateRun (backend/src/apiserver/storage/run_store.go): a pending, running or paused run becomes
    CANCELING; any other is refused with 400 "Row not found"; an unknown id is 404. Injected failures answer the next
    requests to one path only, then the double answers as usual."""
    client = kfp_api.connect(kfp_api.Connection(host=kfp_server.url))
    run_id = kfp_api.submit_run(client, golden_package, {}).run_id
    kfp_server.inject_failures("POST", f"/runs/{run_id}:terminate", [503])
    assert http(kfp_server, "POST", f"/runs/{run_id}:terminate")[0] == 503
    assert http(kfp_server, "GET", f"/runs/{run_id}")[1]["state"] == "PENDING"
    assert http(kfp_server, "POST", f"/runs/{run_id}:terminate") == (200, {})
    assert kfp_server.runs[run_id]["state"] == "CANCELING"
    kfp_server.set_run_state(run_id, "CANCELED")
    status, body = http(kfp_server, "POST", f"/runs/{run_id}:terminate")
    assert (status, body["message"]) == (400, f"Failed to terminate a run {run_id}. Row not found")
    assert http(kfp_server, "POST", "/runs/no-such-run:terminate")[0] == 404
