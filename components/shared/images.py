"""Container image references for every step, from one place.

``<registry>/kfp-mlops-<step>:<tag>``. The registry defaults to ``ghcr.io/kfp-mlops`` and the tag to the package
version; ``kfp-mlops compile --image-registry/--image-tag`` or ``KFP_MLOPS_IMAGE_REGISTRY``/``KFP_MLOPS_IMAGE_TAG``
override them at compile time.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

STEPS = ("ingest", "features", "train", "evaluate", "quantize", "deploy", "drift")
DEFAULT_REGISTRY = "ghcr.io/kfp-mlops"
REGISTRY_ENV = "KFP_MLOPS_IMAGE_REGISTRY"
TAG_ENV = "KFP_MLOPS_IMAGE_TAG"
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


@dataclass(frozen=True)
class ImageConfig:
    registry: str = DEFAULT_REGISTRY
    tag: str = ""  # empty: the package version

    def __post_init__(self) -> None:
        if not self.registry or self.registry.endswith("/") or "://" in self.registry:
            raise ValueError(f"image registry {self.registry!r} must look like 'host[:port]/namespace'")
        if self.tag and not _TAG.match(self.tag):
            raise ValueError(f"image tag {self.tag!r} is not a valid OCI tag")
        if self.tag == "latest":
            raise ValueError("image tag 'latest' is not allowed: pin a version so runs are reproducible")

    @classmethod
    def from_env(cls, registry: str | None = None, tag: str | None = None) -> ImageConfig:
        """Explicit values win, then the environment, then the defaults."""
        return cls(
            registry=registry or os.environ.get(REGISTRY_ENV) or DEFAULT_REGISTRY,
            tag=tag or os.environ.get(TAG_ENV) or "",
        )

    def ref(self, step: str) -> str:
        if step not in STEPS:
            raise ValueError(f"unknown step {step!r}; steps are {', '.join(STEPS)}")
        from kfp_mlops import __version__

        return f"{self.registry}/kfp-mlops-{step}:{self.tag or __version__}"
