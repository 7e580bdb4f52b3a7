"""What the ``kfp-mlops`` commands share: the image flags, the config file made portable, and the one way a command
gets its pipeline (``--package``, or compiled now) and its arguments (``--param`` and ``--config``). Heavy modules
are imported lazily, when a command needs them."""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from kfp_mlops.components.shared.images import ImageConfig

# Settings that hold a local path or a URI: a relative local path is taken relative to the config file's folder.
PATH_SETTINGS = (
    ("data", "source"),
    ("evaluate", "baseline"),
    ("deploy", "model_repository"),
    ("train", "checkpoint_dir"),
    ("inference", "entities"),
    ("inference", "log"),
    ("performance", "labels"),
    ("performance", "log"),
)


def add_image_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image-registry", help="registry of the step images (env KFP_MLOPS_IMAGE_REGISTRY)")
    parser.add_argument("--image-tag", help="tag of the step images (env KFP_MLOPS_IMAGE_TAG; default: version)")
    parser.add_argument(
        "--step-image",
        action="append",
        default=[],
        metavar="STEP=IMAGE",
        help="one step's own image, e.g. train=registry/my-train:1.0 (built FROM the train image with your model)",
    )


def images(args: argparse.Namespace) -> ImageConfig:
    """The step images named by ``--image-registry`` and ``--image-tag``, else the environment."""
    from kfp_mlops.components.shared.images import ImageConfig

    overrides = {}
    for item in getattr(args, "step_image", []):
        step, sep, reference = item.partition("=")
        if not sep or not reference:
            raise ValueError(f"--step-image {item!r}: expected STEP=IMAGE, e.g. train=registry/my-train:1.0")
        overrides[step.strip()] = reference.strip()
    return ImageConfig.from_env(registry=args.image_registry, tag=args.image_tag, overrides=overrides)


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


@contextmanager
def compiled_package(args: argparse.Namespace) -> Iterator[Path]:
    """The compiled YAML: ``--package``, or PIPELINE compiled now into a temporary directory (removed on exit)."""
    from kfp_mlops.pipelines import compile_pipeline

    if args.package:
        package = Path(args.package)
        if not package.is_file():
            raise FileNotFoundError(f"--package {package}: no such file")
        yield package
        return
    with tempfile.TemporaryDirectory(prefix="kfp-mlops-compile-") as tmp:
        yield compile_pipeline(args.pipeline, Path(tmp) / f"{args.pipeline}.yaml", images(args))


@contextmanager
def package_and_arguments(
    args: argparse.Namespace, defaults: Callable[[Path], dict[str, str]] = lambda package: {}
) -> Iterator[tuple[Path, dict[str, Any]]]:
    """The compiled YAML (see ``compiled_package``) and the run's arguments: ``--param`` values and ``--config`` as the
    config text, typed as the YAML declares them; ``defaults(package)`` fills parameters the flags leave out."""
    from kfp_mlops.local_run import coerce_arguments

    with compiled_package(args) as package:
        raw = parse_params(args.param)
        if args.config:
            raw["config"] = config_text(Path(args.config))
        for key, value in defaults(package).items():
            raw.setdefault(key, value)
        yield package, coerce_arguments(package, raw)


LOCAL_TRACKING_DB = "mlflow.db"  # beside the local runs (their pipeline root), with mlartifacts/


def local_tracking_uri(pipeline_root: Path) -> str:
    return f"sqlite:///{(pipeline_root / LOCAL_TRACKING_DB).resolve()}"


def with_local_tracking(arguments: dict, pipeline_root: Path) -> str:
    """The embedded default of a local run: with no ``tracking.uri`` in the config and no MLFLOW_TRACKING_URI, a
    SQLite file beside the runs (``<pipeline root>/mlflow.db``; artifacts in ``mlartifacts/``), set in the config
    text the run gets. Returns the URI the run tracks to ("" for none)."""
    import os

    from kfp_mlops.components.shared.config import parse_config

    text = arguments.get("config")
    if not isinstance(text, str) or "\n" not in text.strip():
        return os.environ.get("MLFLOW_TRACKING_URI", "")
    config = parse_config(yaml.safe_load(text))
    if not config.tracking.enabled:
        return ""
    if config.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI"):
        return config.tracking.uri or os.environ["MLFLOW_TRACKING_URI"]
    pipeline_root.mkdir(parents=True, exist_ok=True)
    uri = local_tracking_uri(pipeline_root)
    tracking = config.tracking.model_copy(update={"uri": uri})
    arguments["config"] = config.model_copy(update={"tracking": tracking}).to_yaml()
    return uri


def tracking_uri(given: str, pipeline_root: Path) -> str:
    """--tracking-uri, else MLFLOW_TRACKING_URI, else the local runs' SQLite file when it exists."""
    import os

    if given or os.environ.get("MLFLOW_TRACKING_URI"):
        return given or os.environ["MLFLOW_TRACKING_URI"]
    return local_tracking_uri(pipeline_root) if (pipeline_root / LOCAL_TRACKING_DB).is_file() else ""


def mlflow_ui(uri: str) -> str:
    """The command that browses ``uri``'s runs in the MLflow UI (the server's own virtualenv: make mlflow-venv)."""
    if uri.startswith(("http://", "https://")):
        return uri
    return f".venv-mlflow/bin/mlflow ui --backend-store-uri {uri} --port 5000"


def bound_mlflow_requests(timeout_seconds: int = 10, retries: int = 2) -> None:
    """MLflow's HTTP requests, bounded (its defaults wait 120 s a request, with 7 retries)."""
    import logging
    import os

    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(timeout_seconds))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(retries))
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
