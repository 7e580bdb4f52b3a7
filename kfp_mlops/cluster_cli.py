"""The cluster sub-commands of ``kfp-mlops``: upload, submit, schedule, runs, schedules (a KFP API server).

Exit codes: 0 done (also when there was nothing to do), 1 the server failed, could not be reached within
``--request-timeout``, or the run did not succeed, 2 the command line must change (bad input, credentials, names).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from kfp_mlops.cli_common import add_image_flags, compiled_package, package_and_arguments
from kfp_mlops.components.shared import kfp_api

# The fix each connection error names, in this command line's words.
SETTING_NAMES = kfp_api.SettingNames(
    host="--host (env KFP_HOST)",
    namespace="--namespace",
    token="--existing-token (env KFP_EXISTING_TOKEN)",
    kube_context="--kube-context",
    ssl_ca_cert="--ssl-ca-cert",
    timeout="--request-timeout",
)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)  # the server's "not set" for finished_at


def add_commands(subparsers: Any) -> None:
    """Register the cluster commands on the ``add_subparsers()`` object of ``kfp_mlops.cli.build_parser``."""
    upload = subparsers.add_parser("upload", help="upload a pipeline (new version if it exists; no-op if unchanged)")
    _add_pipeline_source(upload)
    upload.add_argument("--version", default="", help="version name (default: <package version>-<YAML hash>)")
    upload.add_argument("--description", default="", help="description of the pipeline and version")
    _add_connection_flags(upload)
    upload.set_defaults(func=cmd_upload)

    submit = subparsers.add_parser("submit", help="run the uploaded version of the compiled YAML (uploaded if absent)")
    _add_pipeline_source(submit)
    _add_run_settings(submit)
    submit.add_argument("--run-name", default="", help="default: <pipeline> <UTC time>")
    submit.add_argument("--wait", action="store_true", help="follow the run: exit 0 if it SUCCEEDED, else 1")
    submit.add_argument(
        "--timeout",
        type=float,
        help="with --wait: stop waiting after this many seconds (exit 1; default 24 h); the run goes on on the server",
    )
    submit.add_argument("--poll-interval", type=float, default=10.0, help="with --wait: seconds between polls")
    _add_connection_flags(submit)
    submit.set_defaults(func=cmd_submit)

    schedule = subparsers.add_parser("schedule", help="create, update, pause, resume or delete a recurring run")
    _add_pipeline_source(schedule)
    schedule.add_argument("--cron", help="6 fields, seconds first, e.g. '0 0 3 * * *' (03:00 daily), or @daily")
    schedule.add_argument("--name", default="", help="schedule name (default: the PIPELINE argument)")
    schedule.add_argument("--max-concurrency", type=int, default=1, help="runs at once, 1-10 (default 1)")
    schedule.add_argument("--no-catchup", action="store_true", help="after a pause, run once, not every missed time")
    schedule.add_argument("--start", type=_timestamp, help="ISO 8601 with timezone, e.g. 2026-01-01T00:00:00Z")
    schedule.add_argument("--end", type=_timestamp, help="ISO 8601 with timezone")
    action = schedule.add_mutually_exclusive_group()
    action.add_argument("--pause", action="store_true", help="pause it (after creating/updating it if --cron)")
    action.add_argument("--resume", action="store_true", help="resume it (after creating/updating it if --cron)")
    action.add_argument("--delete", action="store_true", help="delete it (its past runs stay)")
    _add_run_settings(schedule)
    _add_connection_flags(schedule)
    schedule.set_defaults(func=cmd_schedule)

    runs = subparsers.add_parser("runs", help="list the latest runs")
    runs.add_argument("--experiment", default="", help="only this experiment's runs")
    runs.add_argument("--limit", type=int, default=20, help="at most this many, newest first (default 20)")
    _add_connection_flags(runs)
    runs.set_defaults(func=cmd_runs)

    schedules = subparsers.add_parser("schedules", help="list the recurring runs")
    _add_connection_flags(schedules)
    schedules.set_defaults(func=cmd_schedules)


def cmd_upload(args: argparse.Namespace) -> int:
    with compiled_package(args) as package:
        client = kfp_api.connect(_connection(args))
        result = kfp_api.upload_pipeline(
            client, package, version_name=args.version, description=args.description, namespace=args.namespace
        )
    print(result.describe())
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    connection = _connection(args)
    with package_and_arguments(args) as (package, arguments):
        client = kfp_api.connect(connection)
        submitted = kfp_api.submit_run(
            client, package, arguments, experiment=args.experiment, run_name=args.run_name, namespace=args.namespace,
            service_account=args.service_account,
        )  # fmt: skip
    print(submitted.upload.describe())
    print(f"run {submitted.run_id} ({submitted.run_name}) started in experiment {submitted.experiment}")
    url = kfp_api.run_url(connection.ui_host or connection.host, submitted.run_id)
    if url:
        print(url)
    if not args.wait:
        return 0
    outcome = kfp_api.wait_for_run(
        client,
        submitted.run_id,
        timeout_seconds=args.timeout,
        poll_seconds=args.poll_interval,
        on_state=lambda state: print(f"run {submitted.run_id}: {state or 'pending'}", flush=True),
        cancel_on_give_up=False,  # the command stops waiting; the run is the user's to keep or cancel
    )
    if outcome.succeeded:
        print(f"run {outcome.run_id} SUCCEEDED after {outcome.seconds:.0f} s")
        return 0
    print(
        f"kfp-mlops submit: error: run {outcome.run_id} ended {outcome.state}"
        f"{': ' + outcome.error if outcome.error else ''}",
        file=sys.stderr,
    )
    return 1


def cmd_schedule(args: argparse.Namespace) -> int:
    name = args.name or args.pipeline
    if args.delete and args.cron:
        raise ValueError("--delete takes no --cron: it deletes the schedule named by --name")
    if not (args.cron or args.pause or args.resume or args.delete):
        raise ValueError("--cron is required (or --pause, --resume or --delete for an existing schedule)")
    connection = _connection(args)
    results = []
    if args.cron:
        with package_and_arguments(args) as (package, arguments):
            schedule = kfp_api.Schedule(
                name=name,
                cron=args.cron,
                arguments=arguments,
                max_concurrency=args.max_concurrency,
                catchup=not args.no_catchup,
                start=args.start,
                end=args.end,
                service_account=args.service_account,
            )
            client = kfp_api.connect(connection)
            results.append(
                kfp_api.ensure_schedule(client, package, schedule, experiment=args.experiment, namespace=args.namespace)
            )
    else:
        client = kfp_api.connect(connection)
    if args.delete:
        results.append(kfp_api.delete_schedule(client, name, args.namespace))
    elif args.pause or args.resume:
        results.append(kfp_api.set_schedule_enabled(client, name, args.resume, args.namespace))
    for result in results:
        print(result.describe())
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    client = kfp_api.connect(_connection(args))
    runs = kfp_api.list_runs(client, experiment=args.experiment, limit=args.limit, namespace=args.namespace)
    print(runs_table(runs) if runs else "no runs")
    return 0


def cmd_schedules(args: argparse.Namespace) -> int:
    client = kfp_api.connect(_connection(args))
    schedules = kfp_api.list_schedules(client, namespace=args.namespace)
    print(schedules_table(schedules) if schedules else "no schedules")
    return 0


def _add_connection_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("KFP API server (kfp.Client settings)")
    group.add_argument("--host", help="KFP API URL (env KFP_HOST); none: kube config or the in-cluster service")
    group.add_argument("--namespace", help="your profile namespace on a multi-user deployment (env KFP_NAMESPACE)")
    group.add_argument("--existing-token", help="bearer token (env KFP_EXISTING_TOKEN, which keeps it out of `ps`)")
    group.add_argument("--kube-context", help="kube config context: reach the API through the kube API proxy")
    group.add_argument("--ssl-ca-cert", help="CA bundle for a server certificate signed by a private CA")
    group.add_argument("--ui-host", help="KFP UI URL for run links (env KF_PIPELINES_UI_ENDPOINT; default: --host)")
    group.add_argument(
        "--request-timeout",
        type=float,
        default=kfp_api.DEFAULT_TIMEOUT_SECONDS,
        help=f"seconds before a request is given up (default {kfp_api.DEFAULT_TIMEOUT_SECONDS:g})",
    )


def _connection(args: argparse.Namespace) -> kfp_api.Connection:
    """Flags first, then the environment; the resolved namespace is written back for the commands."""
    args.namespace = args.namespace or os.environ.get("KFP_NAMESPACE", "")
    return kfp_api.Connection(
        host=(args.host or os.environ.get("KFP_HOST", "")).rstrip("/"),
        namespace=args.namespace,
        existing_token=args.existing_token or os.environ.get("KFP_EXISTING_TOKEN", ""),
        kube_context=args.kube_context or "",
        ssl_ca_cert=args.ssl_ca_cert or "",
        ui_host=args.ui_host or os.environ.get("KF_PIPELINES_UI_ENDPOINT", ""),
        timeout=args.request_timeout,
        names=SETTING_NAMES,
    )


def _add_pipeline_source(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pipeline", help="pipeline name, e.g. training")
    parser.add_argument("--package", help="compiled pipeline YAML to use instead of compiling now")
    add_image_flags(parser)


def _add_run_settings(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--experiment", default=kfp_api.DEFAULT_EXPERIMENT, help="default: Default")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="pipeline parameter")
    parser.add_argument("--config", help="pipeline config YAML file, passed as the config parameter's text")
    parser.add_argument(
        "--service-account",
        default=kfp_api.RUNNER_SERVICE_ACCOUNT,
        help=f"the runs' Kubernetes service account (default {kfp_api.RUNNER_SERVICE_ACCOUNT}: manifests/runner, "
        "which may launch TrainJobs; '' for the server's default)",
    )


def _timestamp(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 time, e.g. 2026-01-01T00:00:00Z") from None
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} needs a timezone, e.g. 2026-01-01T00:00:00Z")
    return moment


# --- tables -------------------------------------------------------------------------------------------------------


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns, two spaces apart, under a header row."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]
    lines = [headers, *rows]
    return "\n".join(
        "  ".join(f"{cell!s:<{w}}" for cell, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )


def runs_table(runs: Sequence[Any]) -> str:
    rows = [(r.run_id, r.display_name or "", r.state or "", _when(r.created_at), _when(r.finished_at)) for r in runs]
    return format_table(("RUN ID", "NAME", "STATE", "CREATED", "FINISHED"), rows)


def schedules_table(schedules: Sequence[Any]) -> str:
    rows = []
    for r in schedules:
        trigger = r.trigger or None
        cron = trigger.cron_schedule.cron if trigger and trigger.cron_schedule else ""
        if not cron and trigger and trigger.periodic_schedule:
            cron = f"every {trigger.periodic_schedule.interval_second} s"
        status = "paused" if r.mode == "DISABLE" else "enabled"
        catchup = "no" if r.no_catchup else "yes"
        rows.append(
            (
                r.recurring_run_id,
                r.display_name or "",
                status,
                cron,
                str(r.max_concurrency or 1),
                catchup,
                _when(r.created_at),
            )
        )
    return format_table(("SCHEDULE ID", "NAME", "STATUS", "CRON", "MAX CONCURRENCY", "CATCHUP", "CREATED"), rows)


def _when(moment: datetime | None) -> str:
    if moment is None or moment <= EPOCH:
        return "-"
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
