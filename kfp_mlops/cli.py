"""The ``kfp-mlops`` command line: make sample data, compile pipelines, run them locally; upload, submit and schedule
them on a Kubeflow cluster; start a local Triton; predict by entity id."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kfp_mlops import cli_common
from kfp_mlops.cli_common import add_image_flags, package_and_arguments

DEFAULT_COMPILE_DIR = "build/pipelines"
DEFAULT_PIPELINE_ROOT = "build/local-runs"


def cmd_compile(args: argparse.Namespace) -> int:
    from kfp_mlops.pipelines import PIPELINES, compile_all, compile_pipeline

    images = cli_common.images(args)
    if args.pipeline:
        paths = [compile_pipeline(args.pipeline, Path(args.output_dir) / f"{args.pipeline}.yaml", images)]
    else:
        paths = compile_all(args.output_dir, images)
    for path in paths:
        print(path)
    return 0 if len(paths) == (1 if args.pipeline else len(PIPELINES)) else 1


def cmd_run(args: argparse.Namespace) -> int:
    from kfp_mlops.local_run import format_summary, run_local

    if not args.local:
        print("run needs --local; on a Kubeflow cluster: kfp-mlops submit PIPELINE --host URL", file=sys.stderr)
        return 2
    if args.containers and not (args.image_registry or args.package):
        from kfp_mlops.containers import LOCAL_REGISTRY

        args.image_registry = LOCAL_REGISTRY  # the images `make images-local` builds
    with package_and_arguments(args, defaults=_local_defaults) as (package, arguments):
        tracking = cli_common.with_local_tracking(arguments, Path(args.pipeline_root))
        if tracking:
            print(f"Tracking: MLflow at {tracking} (browse: {cli_common.mlflow_ui(tracking)})")
        result = run_local(
            package, arguments, Path(args.pipeline_root), verbose=args.verbose, containers=args.containers
        )
    print()
    print(format_summary(result))
    return 0 if result.succeeded else 1


def _local_defaults(package: Path) -> dict[str, str]:
    """Locally, ``gpus_per_node`` is the GPUs this machine has, so the checks match it."""
    from kfp_mlops.local_run import local_gpus, parameter_types

    return {"gpus_per_node": str(local_gpus())} if "gpus_per_node" in parameter_types(package) else {}


def cmd_lineage(args: argparse.Namespace) -> int:
    from mlflow import MlflowClient

    from kfp_mlops.lineage import as_json, lineage, render

    uri = cli_common.tracking_uri(args.tracking_uri, Path(DEFAULT_PIPELINE_ROOT))
    if not uri:
        hint = f"or run a pipeline with `kfp-mlops run --local` first (it keeps {DEFAULT_PIPELINE_ROOT}/mlflow.db)"
        print(
            f"kfp-mlops lineage: no tracking server: pass --tracking-uri, set MLFLOW_TRACKING_URI, {hint}",
            file=sys.stderr,
        )
        return 2
    cli_common.bound_mlflow_requests()
    try:
        chain = lineage(MlflowClient(tracking_uri=uri, registry_uri=uri), args.model)
    except LookupError as exc:
        print(f"kfp-mlops lineage: {exc}", file=sys.stderr)
        return 1
    print(as_json(chain) if args.format == "json" else render(chain))
    return 0


def cmd_sample_data(args: argparse.Namespace) -> int:
    from kfp_mlops.sample_data import write_sample_data

    print(write_sample_data(args.output, rows=args.rows, seed=args.seed, drift=args.drift, task=args.task))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from kfp_mlops import __version__

    parser = argparse.ArgumentParser(prog="kfp-mlops", description=__doc__)
    parser.add_argument("--version", action="version", version=f"kfp-mlops {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    compile_ = commands.add_parser("compile", help="compile every pipeline (or one) to YAML")
    compile_.add_argument("pipeline", nargs="?", help="compile only this pipeline")
    compile_.add_argument("--output-dir", default=DEFAULT_COMPILE_DIR, help=f"default: {DEFAULT_COMPILE_DIR}")
    add_image_flags(compile_)
    compile_.set_defaults(func=cmd_compile)

    run = commands.add_parser("run", help="run a pipeline locally from its compiled YAML")
    run.add_argument("pipeline", help="pipeline name, e.g. training")
    run.add_argument("--local", action="store_true", help="run here with kfp.local (SubprocessRunner)")
    run.add_argument(
        "--containers",
        action="store_true",
        help="each step in its own image (make images-local; Docker, else podman) instead of this Python",
    )
    run.add_argument("--config", help="pipeline config YAML file; relative data paths resolve against its folder")
    run.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="pipeline parameter")
    run.add_argument("--pipeline-root", default=DEFAULT_PIPELINE_ROOT, help=f"default: {DEFAULT_PIPELINE_ROOT}")
    run.add_argument("--package", help="compiled pipeline YAML to run instead of compiling now")
    run.add_argument("--verbose", action="store_true", help="stream every step's full output (always in logs/)")
    add_image_flags(run)
    run.set_defaults(func=cmd_run)

    sample = commands.add_parser("sample-data", help="write the deterministic sample dataset (Parquet)")
    sample.add_argument("--output", required=True, help="directory or prefix: a path, s3:// or gs://")
    sample.add_argument("--rows", type=int, default=20_000)
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--drift", action="store_true", help="the later window, with shifted distributions")
    sample.add_argument("--task", choices=["binary", "multiclass", "regression"], default="binary",
                        help="the label: churned (0/1, churn.parquet), outcome (3 classes, outcome.parquet) or "
                        "spend_next_90d (a number, spend.parquet)")  # fmt: skip
    sample.set_defaults(func=cmd_sample_data)

    lineage = commands.add_parser("lineage", help="a registered model version's chain: data → training → "
                                  "evaluation → quantization → Triton → monitoring (MLflow)")  # fmt: skip
    lineage.add_argument("model", help="MODEL (its champion), MODEL@alias or MODEL/version, e.g. churn@previous")
    default_uri = f"sqlite:///{DEFAULT_PIPELINE_ROOT}/mlflow.db"
    lineage.add_argument("--tracking-uri", default="", help=f"default: MLFLOW_TRACKING_URI, else {default_uri}")
    lineage.add_argument("--format", choices=["text", "json"], default="text")
    lineage.set_defaults(func=cmd_lineage)

    from kfp_mlops.cluster_cli import add_commands as add_cluster_commands
    from kfp_mlops.local_cli import add_commands as add_local_commands
    from kfp_mlops.serving_cli import add_commands as add_serving_commands

    add_cluster_commands(commands)
    add_local_commands(commands)
    add_serving_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Exit 0 on success; 2 for bad input (the message names it); a failing service's own code (1, or 2 when the
    command line must change)."""
    from kfp_mlops.components.shared.errors import InputError, ServiceError

    args = build_parser().parse_args(argv)
    command = " ".join(filter(None, (args.command, getattr(args, "local_command", None))))
    try:
        return args.func(args)
    except ServiceError as exc:
        print(f"kfp-mlops {command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except (InputError, ValueError, KeyError, FileNotFoundError) as exc:
        print(f"kfp-mlops {command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
