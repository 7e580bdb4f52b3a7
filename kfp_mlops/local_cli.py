"""``kfp-mlops local venv|up|down|status``: a real Triton Inference Server on this machine (kfp_mlops.triton_local).

``up`` starts it in the background on a model repository (a directory or ``s3://bucket/prefix`` with the AWS_*
variables of this shell) and returns once it is ready; ``down`` stops it; ``status`` shows its ports, repository and
models (exit 1 when it is not running); ``venv`` creates or refreshes the Triton virtualenv ``up`` needs.
"""

from __future__ import annotations

import argparse


def cmd_venv(args: argparse.Namespace) -> int:
    from kfp_mlops.triton_local import ensure_venv

    print(ensure_venv(args.venv).venv)
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from kfp_mlops import triton_local

    triton_local.up(
        args.model_repository,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        state_dir=args.state_dir,
        model_control_mode=args.model_control_mode,
        load=args.load_model,
        venv=args.venv,
    )
    print(triton_local.status(args.state_dir).describe())
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    from kfp_mlops.triton_local import down

    print("Triton: stopped" if down(args.state_dir) else "Triton: not running")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from kfp_mlops.triton_local import status

    result = status(args.state_dir)
    print(result.describe())
    return 0 if result.running else 1


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register ``local venv|up|down|status`` on the ``kfp-mlops`` command line."""
    from kfp_mlops.triton_local import DEFAULT_MODEL_REPOSITORY, DEFAULT_STATE_DIR, VENV_ENV

    local = subparsers.add_parser("local", help="a real local Triton Inference Server: venv, up, down, status")
    commands = local.add_subparsers(dest="local_command", required=True)

    def with_state_dir(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        parser.add_argument(
            "--state-dir", default=DEFAULT_STATE_DIR, help=f"pid, settings, log (default: {DEFAULT_STATE_DIR})"
        )
        return parser

    venv_help = f"the Triton virtualenv (default: ${VENV_ENV} or <repo>/.venv-triton)"
    venv = commands.add_parser("venv", help="create or refresh the Triton virtualenv (numpy<2, onnxruntime, Triton)")
    venv.add_argument("--venv", help=venv_help)
    venv.set_defaults(func=cmd_venv)

    up = with_state_dir(commands.add_parser("up", help="start Triton in the background and wait until it is ready"))
    up.add_argument(
        "--model-repository",
        default=DEFAULT_MODEL_REPOSITORY,
        metavar="DIR|s3://BUCKET/PREFIX",
        help=f"default: {DEFAULT_MODEL_REPOSITORY}; s3:// uses AWS_ENDPOINT_URL and the AWS_* credentials",
    )
    up.add_argument("--http-port", type=int, default=8000, help="default: 8000")
    up.add_argument("--grpc-port", type=int, default=8001, help="default: 8001")
    up.add_argument("--metrics-port", type=int, default=8002, help="default: 8002")
    up.add_argument(
        "--model-control-mode",
        choices=("explicit", "poll"),
        default="explicit",
        help="explicit: models load on request (default); poll: every model, reloaded on change",
    )
    up.add_argument("--load-model", action="append", default=[], metavar="NAME", help="load at start (explicit mode)")
    up.add_argument("--venv", help=venv_help)
    up.set_defaults(func=cmd_up)

    down = with_state_dir(commands.add_parser("down", help="stop the Triton started by `up`"))
    down.set_defaults(func=cmd_down)

    status = with_state_dir(commands.add_parser("status", help="running or not, ports, repository, models"))
    status.set_defaults(func=cmd_status)
