"""The pipelines of kfp-mlops and how to compile them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from kfp_mlops.components.shared.images import ImageConfig


def _training(images: ImageConfig):
    from kfp_mlops.pipelines.training import build

    return build(images)


def _monitoring(images: ImageConfig):
    from kfp_mlops.pipelines.monitoring import build

    return build(images)


def _inference(images: ImageConfig):
    from kfp_mlops.pipelines.inference import build

    return build(images)


PIPELINES: dict[str, Callable[[ImageConfig], Callable]] = {
    "training": _training,
    "monitoring": _monitoring,
    "inference": _inference,
}


def compile_pipeline(name: str, output: str | Path, images: ImageConfig | None = None) -> Path:
    """Compile one pipeline to ``output`` (YAML), atomically."""
    from kfp import compiler

    from kfp_mlops.components.shared.storage import atomic_local_path

    if name not in PIPELINES:
        raise KeyError(f"unknown pipeline {name!r}; pipelines are {', '.join(PIPELINES)}")
    with atomic_local_path(output) as temporary:
        compiler.Compiler().compile(
            PIPELINES[name](images or ImageConfig.from_env()), str(temporary.with_suffix(".yaml"))
        )
        temporary.with_suffix(".yaml").rename(temporary)
    return Path(output)


def compile_all(output_dir: str | Path, images: ImageConfig | None = None) -> list[Path]:
    """Compile every pipeline to ``output_dir/<name>.yaml``."""
    return [compile_pipeline(name, Path(output_dir) / f"{name}.yaml", images) for name in PIPELINES]
