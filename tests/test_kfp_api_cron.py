"""The cron grammar of KFP schedules (robfig/cron, seconds first), checked before any request."""

from __future__ import annotations

import re

import pytest
from support.kfp_cli import one

from kfp_mlops.components.shared import kfp_api

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("kfp_client_settings")]


def test_the_server_itself_would_take_five_fields_as_seconds_first(kfp_server, golden_package):
    """Why the client refuses 5 fields: robfig/cron v1 (the backend's parser) accepts them, seconds first, so
    '0 3 * * *' would run at second 0 of minute 3 of every hour, not at 03:00."""
    client = kfp_api.connect(kfp_api.Connection(host=kfp_server.url))
    uploaded = kfp_api.upload_pipeline(client, golden_package)
    experiment_id = kfp_api.ensure_experiment(client, "Default")

    client.create_recurring_run(
        experiment_id,
        "five fields",
        cron_expression="0 3 * * *",
        pipeline_id=uploaded.pipeline_id,
        version_id=uploaded.version_id,
    )

    assert one(kfp_server.recurring_runs)["trigger"]["cron_schedule"]["cron"] == "0 3 * * *"


@pytest.mark.parametrize(
    "cron",
    [
        "0 0 3 * * *",
        "*/10 * * * * *",
        "0 0 9 ? * MON-FRI",
        "0 0 0 1 JAN,JUL *",
        "0 0 12 * * 1-5",
        "@daily",
        "@every 1h30m",
    ],
)
def test_valid_kfp_cron_expressions_pass(cron):
    assert kfp_api.validate_cron(cron) == cron


@pytest.mark.parametrize(
    ("cron", "message"),
    [
        ("0 3 * * *", re.escape("did you mean '0 0 3 * * *'?")),
        ("0 0 3 * * * 2026", "have 6 fields .* got 7"),
        ("0 61 * * * *", "minute '61' is out of range 0-59"),
        ("0 0 24 * * *", "hour '24' is out of range 0-23"),
        ("0 0 0 0 * *", "day of month '0' is out of range 1-31"),
        ("0 0 5-1 * * *", "hour range '5-1' runs backwards"),
        ("0 0 0 * * MON-FUNDAY", "day of week 'FUNDAY' is out of range"),
        ("0 0 3 * * */0", "day of week step must be at least 1"),
        ("@sometimes", "unknown descriptor"),
    ],
)
def test_invalid_cron_expressions_are_explained(cron, message):
    with pytest.raises(ValueError, match=message):
        kfp_api.validate_cron(cron)
