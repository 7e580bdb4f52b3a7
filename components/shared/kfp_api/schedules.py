"""Schedules (KFP recurring runs) and the cron grammar the KFP backend parses them with (robfig/cron). A schedule is
found by name and compared before it is replaced: the same spec again is a no-op."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kfp_mlops.components.shared.kfp_api.client import PAGE_SIZE, KfpApiError, name_filter, normalised, on_server, pages
from kfp_mlops.components.shared.kfp_api.pipelines import (
    DEFAULT_EXPERIMENT,
    UNCHANGED,
    UploadResult,
    ensure_experiment,
    upload_pipeline,
)

MAX_CONCURRENCY_RANGE = range(1, 11)  # the API server accepts 1 to 10
_CRON_FIELDS = (  # name, lowest, highest, names accepted (robfig/cron, which the KFP backend parses with)
    ("second", 0, 59, ()),
    ("minute", 0, 59, ()),
    ("hour", 0, 23, ()),
    ("day of month", 1, 31, ()),
    ("month", 1, 12, ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")),
    ("day of week", 0, 6, ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")),
)
_CRON_DESCRIPTORS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
_CRON_EVERY = re.compile(r"@every (\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+")
_CRON_PART = re.compile(r"(?P<range>\*|\?|[0-9A-Za-z]+(-[0-9A-Za-z]+)?)(/(?P<step>\d+))?")


@dataclass(frozen=True)
class Schedule:
    """A recurring run: ``cron`` has KFP's 6 fields (seconds first); ``start``/``end`` are timezone-aware."""

    name: str
    cron: str
    arguments: dict[str, Any] = field(default_factory=dict)
    max_concurrency: int = 1
    catchup: bool = True
    start: datetime | None = None
    end: datetime | None = None
    service_account: str = ""  # empty: the server's default

    def __post_init__(self) -> None:
        if not self.name.strip():
            raise ValueError("schedule name is empty")
        validate_cron(self.cron)
        if self.max_concurrency not in MAX_CONCURRENCY_RANGE:
            raise ValueError(f"max concurrency {self.max_concurrency}: the KFP server accepts 1 to 10")
        for label, moment in (("start", self.start), ("end", self.end)):
            if moment is not None and moment.tzinfo is None:
                raise ValueError(f"{label} {moment.isoformat()}: needs a timezone, e.g. 2026-01-01T00:00:00Z")
        if self.start and self.end and self.end <= self.start:
            raise ValueError(f"end {self.end.isoformat()} is not after start {self.start.isoformat()}")


@dataclass(frozen=True)
class ScheduleResult:
    name: str
    recurring_run_ids: list[str]
    action: str  # created, replaced, unchanged, paused, resumed, deleted
    changes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        ids = ", ".join(self.recurring_run_ids) or "-"
        text = f"schedule {self.name!r} ({ids}): {self.action}"
        if self.action == UNCHANGED:
            text += ", the same spec is already scheduled: nothing to do"
        return text + "".join(f"\n  {change}" for change in self.changes)


# --- cron grammar -------------------------------------------------------------------------------------------------


def validate_cron(expression: str) -> str:
    """Check a KFP cron expression: 6 fields, seconds first (robfig/cron), or a descriptor such as ``@daily``.
    A 5-field expression is refused: the server would read its first field as seconds."""
    text = " ".join(expression.split())
    if text.startswith("@"):
        if text in _CRON_DESCRIPTORS or _CRON_EVERY.fullmatch(text):
            return text
        raise ValueError(
            f"cron {expression!r}: unknown descriptor; use one of {', '.join(_CRON_DESCRIPTORS)}, "
            "'@every <duration>' or 6 fields"
        )
    fields = text.split(" ")
    if len(fields) == 5:
        raise ValueError(
            f"cron {expression!r}: KFP cron expressions have 6 fields, seconds first: did you mean '0 {text}'?"
        )
    if len(fields) != 6:
        raise ValueError(
            f"cron {expression!r}: KFP cron expressions have 6 fields (second minute hour "
            f"day-of-month month day-of-week), got {len(fields)}"
        )
    for value, (name, low, high, names) in zip(fields, _CRON_FIELDS, strict=True):
        for part in value.split(","):
            match = _CRON_PART.fullmatch(part)
            if not match:
                raise ValueError(f"cron {expression!r}: {name} field {value!r} is not valid")
            if match["step"] is not None and int(match["step"]) < 1:
                raise ValueError(f"cron {expression!r}: {name} step must be at least 1")
            if match["range"] in ("*", "?"):
                continue
            bounds = [_cron_number(bound, name, low, high, names, expression) for bound in match["range"].split("-")]
            if len(bounds) == 2 and bounds[0] > bounds[1]:
                raise ValueError(f"cron {expression!r}: {name} range {match['range']!r} runs backwards")
    return text


def _cron_number(text: str, name: str, low: int, high: int, names: Sequence[str], expression: str) -> int:
    if text.upper() in names:
        return names.index(text.upper()) + low
    if not text.isdigit() or not low <= int(text) <= high:
        raise ValueError(f"cron {expression!r}: {name} {text!r} is out of range {low}-{high}")
    return int(text)


# --- schedules (recurring runs) -----------------------------------------------------------------------------------


@on_server
def ensure_schedule(
    client: Any, package: Path, schedule: Schedule, *, experiment: str = DEFAULT_EXPERIMENT, namespace: str = ""
) -> ScheduleResult:
    """Make exactly one recurring run named ``schedule.name`` run this YAML on this spec. The same spec again is a
    no-op; a different one is created first, then the old one is deleted (the API has no update). A replacement
    keeps the old one's paused/enabled mode."""
    uploaded = upload_pipeline(client, package, namespace=namespace)
    experiment_id = ensure_experiment(client, experiment, namespace)
    desired = _desired_schedule(schedule, uploaded, experiment_id)
    existing = find_schedules(client, schedule.name, namespace)
    keep = next((r for r in existing if not _schedule_changes(r, desired)), None)
    if keep is not None:
        _delete_all(client, [r for r in existing if r is not keep])
        return ScheduleResult(schedule.name, [keep.recurring_run_id], UNCHANGED)
    enabled = all(r.mode != "DISABLE" for r in existing)
    created = client.create_recurring_run(
        experiment_id=experiment_id,
        job_name=schedule.name,
        start_time=_rfc3339(schedule.start),
        end_time=_rfc3339(schedule.end),
        cron_expression=desired["cron"],
        max_concurrency=schedule.max_concurrency,
        no_catchup=not schedule.catchup,
        params=dict(schedule.arguments),
        pipeline_id=uploaded.pipeline_id,
        version_id=uploaded.version_id,
        enabled=enabled,
        service_account=schedule.service_account or None,
    )
    _delete_all(client, existing)
    if not existing:
        return ScheduleResult(schedule.name, [created.recurring_run_id], "created")
    changes = _schedule_changes(existing[0], desired)
    old = ", ".join(r.recurring_run_id for r in existing)
    return ScheduleResult(schedule.name, [created.recurring_run_id], f"replaced {old}", changes)


@on_server
def find_schedules(client: Any, name: str, namespace: str = "") -> list[Any]:
    """The recurring runs named ``name`` (normally one)."""
    runs = pages(
        lambda token: client.list_recurring_runs(
            page_token=token, page_size=PAGE_SIZE, filter=name_filter(name), namespace=namespace or None
        ),
        "recurring_runs",
    )
    return [r for r in runs if r.display_name == name]


@on_server
def set_schedule_enabled(client: Any, name: str, enabled: bool, namespace: str = "") -> ScheduleResult:
    """Resume (``enabled``) or pause the recurring runs named ``name``."""
    schedules = _existing_schedules(client, name, namespace)
    for recurring_run in schedules:
        if enabled:
            client.enable_recurring_run(recurring_run.recurring_run_id)
        else:
            client.disable_recurring_run(recurring_run.recurring_run_id)
    return ScheduleResult(name, [r.recurring_run_id for r in schedules], "resumed" if enabled else "paused")


@on_server
def delete_schedule(client: Any, name: str, namespace: str = "") -> ScheduleResult:
    """Delete the recurring runs named ``name``; their past runs stay."""
    schedules = _existing_schedules(client, name, namespace)
    _delete_all(client, schedules)
    return ScheduleResult(name, [r.recurring_run_id for r in schedules], "deleted")


@on_server
def list_schedules(client: Any, *, namespace: str = "") -> list[Any]:
    """Every recurring run, oldest first."""
    return list(
        pages(
            lambda token: client.list_recurring_runs(
                page_token=token, page_size=PAGE_SIZE, sort_by="created_at", namespace=namespace or None
            ),
            "recurring_runs",
        )
    )


def _existing_schedules(client: Any, name: str, namespace: str) -> list[Any]:
    schedules = find_schedules(client, name, namespace)
    if not schedules:
        raise KfpApiError(f"no schedule named {name!r}", 2)
    return schedules


def _delete_all(client: Any, recurring_runs: list[Any]) -> None:
    for recurring_run in recurring_runs:
        client.delete_recurring_run(recurring_run.recurring_run_id)


def _desired_schedule(schedule: Schedule, uploaded: UploadResult, experiment_id: str) -> dict[str, Any]:
    return {
        "cron": validate_cron(schedule.cron),
        "start": _whole_seconds(schedule.start),
        "end": _whole_seconds(schedule.end),
        "max concurrency": schedule.max_concurrency,
        "catchup": schedule.catchup,
        "pipeline version": uploaded.version_id,
        "parameters": dict(schedule.arguments),
        "experiment": experiment_id,
        "service account": schedule.service_account,
    }


def _schedule_changes(recurring_run: Any, desired: dict[str, Any]) -> list[str]:
    """What differs between a recurring run on the server and the desired spec, one line per field."""
    trigger = recurring_run.trigger.cron_schedule if recurring_run.trigger else None
    reference = recurring_run.pipeline_version_reference
    current = {
        "cron": trigger.cron if trigger else None,
        "start": _whole_seconds(trigger.start_time) if trigger else None,
        "end": _whole_seconds(trigger.end_time) if trigger else None,
        "max concurrency": int(recurring_run.max_concurrency or 1),
        "catchup": not recurring_run.no_catchup,
        "pipeline version": reference.pipeline_version_id if reference else None,
        "parameters": (recurring_run.runtime_config.parameters if recurring_run.runtime_config else None) or {},
        "experiment": recurring_run.experiment_id,
        "service account": recurring_run.service_account or "",
    }
    return [
        f"{key}: {_shown(current[key])} -> {_shown(value)}"
        for key, value in desired.items()
        if normalised(current[key]) != normalised(value)
    ]


def _shown(value: Any) -> str:
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return json.dumps(value, sort_keys=True) if isinstance(value, dict) else repr(value)


def _whole_seconds(moment: datetime | None) -> datetime | None:
    """The server keeps whole seconds: compare (and send) those, or a fraction would replace the schedule forever."""
    return moment.astimezone(UTC).replace(microsecond=0) if moment else None


def _rfc3339(moment: datetime | None) -> str | None:
    return _whole_seconds(moment).strftime("%Y-%m-%dT%H:%M:%SZ") if moment else None
