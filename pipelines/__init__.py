"""The pipelines of kfp-mlops and how to compile them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from kfp_mlops.components.shared.images import ImageConfig


def _training(images: ImageConfig):
    from kfp_mlops.pipelines.training import build

    return build(images)


PIPELINES: dict[str, Callable[[ImageConfig], Callable]] = {"training": _training}


def compile_pipeline(name: str, output: str | Path, images: ImageConfig | None = None) -> Path:
    """Compile one pipeline to ``output`` (YAML), atomically."""
    from kfp import compiler

    from kfp_mlops.components.shared.artifacts import write_text_atomically

    if name not in PIPELINES:
        raise KeyError(f"unknown pipeline {name!r}; pipelines are {', '.join(PIPELINES)}")
    output = Path(output)
    tmp = output.with_name(f".{output.name}.tmp.yaml")
    output.parent.mkdir(parents=True, exist_ok=True)
    try:
        compiler.Compiler().compile(PIPELINES[name](images or ImageConfig.from_env()), str(tmp))
        write_text_atomically(output, tmp.read_text())
    finally:
        tmp.unlink(missing_ok=True)
    return output


def compile_all(output_dir: str | Path, images: ImageConfig | None = None) -> list[Path]:
    """Compile every pipeline to ``output_dir/<name>.yaml``."""
    return [compile_pipeline(name, Path(output_dir) / f"{name}.yaml", images) for name in PIPELINES]
