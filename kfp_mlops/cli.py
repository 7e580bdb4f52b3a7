"""The ``kfp-mlops`` command line: make sample data, compile pipelines, run them locally; upload, submit and schedule
them on a Kubeflow cluster; start a local Triton; predict by entity id."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import yaml

DEFAULT_COMPILE_DIR = "build/pipelines"
DEFAULT_PIPELINE_ROOT = "build/local-runs"


def _images(args: argparse.Namespace):
    from kfp_mlops.components.shared.images import ImageConfig

    return ImageConfig.from_env(registry=args.image_registry, tag=args.image_tag)


def _add_image_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image-registry", help="registry of the step images (env KFP_MLOPS_IMAGE_REGISTRY)")
    parser.add_argument("--image-tag", help="tag of the step images (env KFP_MLOPS_IMAGE_TAG; default: version)")


def cmd_compile(args: argparse.Namespace) -> int:
    from kfp_mlops.pipelines import PIPELINES, compile_all, compile_pipeline

    images = _images(args)
    if args.pipeline:
        paths = [compile_pipeline(args.pipeline, Path(args.output_dir) / f"{args.pipeline}.yaml", images)]
    else:
        paths = compile_all(args.output_dir, images)
    for path in paths:
        print(path)
    return 0 if len(paths) == (1 if args.pipeline else len(PIPELINES)) else 1


# Settings that hold a local path or a URI: a relative local path is taken relative to the config file's folder.
PATH_SETTINGS = (
    ("data", "source"),
    ("evaluate", "baseline"),
    ("deploy", "model_repository"),
    ("train", "checkpoint_dir"),
)


def config_text(path: Path) -> str:
    """Read a config file and make its relative local paths absolute, resolved against the file's folder."""
    from kfp_mlops.components.shared import storage
    from kfp_mlops.components.shared.config import parse_config

    config = parse_config(yaml.safe_load(path.read_text()), str(path))
    document = config.model_dump(by_alias=True, exclude_none=True)
    for section, key in PATH_SETTINGS:
        value = document[section][key]
        if value and not storage.is_remote(value) and not value.startswith("file://") and not Path(value).is_absolute():
            document[section][key] = str((path.parent / value).resolve()) + ("/" if value.endswith("/") else "")
    return parse_config(document, str(path)).to_yaml()


def parse_params(pairs: list[str]) -> dict[str, str]:
    params = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--param {pair!r}: expected key=value")
        params[key] = value
    return params


def cmd_run(args: argparse.Namespace) -> int:
    from kfp_mlops.local_run import coerce_arguments, format_summary, local_gpus, parameter_types, run_local
    from kfp_mlops.pipelines import compile_pipeline

    if not args.local:
        print("run needs --local; on a Kubeflow cluster: kfp-mlops submit PIPELINE --host URL", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="kfp-mlops-compile-") as tmp:
        package = (
            Path(args.package) if args.package else compile_pipeline(args.pipeline, Path(tmp) / "p.yaml", _images(args))
        )
        raw = parse_params(args.param)
        if args.config:
            raw["config"] = config_text(Path(args.config))
        if "gpus_per_node" in parameter_types(package) and "gpus_per_node" not in raw:
            raw["gpus_per_node"] = str(local_gpus())  # locally: the GPUs this machine has, so checks match it
        arguments = coerce_arguments(package, raw)
        result = run_local(package, arguments, Path(args.pipeline_root), verbose=args.verbose)
    print()
    print(format_summary(result))
    return 0 if result.succeeded else 1


def cmd_sample_data(args: argparse.Namespace) -> int:
    from kfp_mlops.sample_data import write_sample_data

    print(write_sample_data(args.output, rows=args.rows, seed=args.seed, drift=args.drift))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from kfp_mlops import __version__

    parser = argparse.ArgumentParser(prog="kfp-mlops", description=__doc__)
    parser.add_argument("--version", action="version", version=f"kfp-mlops {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    compile_ = commands.add_parser("compile", help="compile every pipeline (or one) to YAML")
    compile_.add_argument("pipeline", nargs="?", help="compile only this pipeline")
    compile_.add_argument("--output-dir", default=DEFAULT_COMPILE_DIR, help=f"default: {DEFAULT_COMPILE_DIR}")
    _add_image_flags(compile_)
    compile_.set_defaults(func=cmd_compile)

    run = commands.add_parser("run", help="run a pipeline locally from its compiled YAML")
    run.add_argument("pipeline", help="pipeline name, e.g. training")
    run.add_argument("--local", action="store_true", help="run here with kfp.local (SubprocessRunner)")
    run.add_argument("--config", help="pipeline config YAML file; relative data paths resolve against its folder")
    run.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="pipeline parameter")
    run.add_argument("--pipeline-root", default=DEFAULT_PIPELINE_ROOT, help=f"default: {DEFAULT_PIPELINE_ROOT}")
    run.add_argument("--package", help="compiled pipeline YAML to run instead of compiling now")
    run.add_argument("--verbose", action="store_true", help="stream every step's full output (always in logs/)")
    _add_image_flags(run)
    run.set_defaults(func=cmd_run)

    sample = commands.add_parser("sample-data", help="write the deterministic sample dataset (Parquet)")
    sample.add_argument("--output", required=True, help="directory or prefix: a path, s3:// or gs://")
    sample.add_argument("--rows", type=int, default=20_000)
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--drift", action="store_true", help="the later window, with shifted distributions")
    sample.set_defaults(func=cmd_sample_data)

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
