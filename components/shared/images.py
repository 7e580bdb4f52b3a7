"""Container image references for every step, from one place.

``<registry>/kfp-mlops-<step>:<tag>``. The registry defaults to ``ghcr.io/kfp-mlops`` and the tag to the package
version; ``kfp-mlops compile --image-registry/--image-tag`` or ``KFP_MLOPS_IMAGE_REGISTRY``/``KFP_MLOPS_IMAGE_TAG``
override them at compile time. ``--step-image train=<ref>`` puts one step on an image of the user's own, e.g. one
built ``FROM`` the train image with a custom model installed (examples/custom_model).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

STEPS = ("ingest", "features", "train", "evaluate", "quantize", "deploy", "drift", "performance", "inference")
DEFAULT_REGISTRY = "ghcr.io/kfp-mlops"
REGISTRY_ENV = "KFP_MLOPS_IMAGE_REGISTRY"
TAG_ENV = "KFP_MLOPS_IMAGE_TAG"
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_REFERENCE = re.compile(r"^[a-z0-9][a-z0-9._:/-]*(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}|@sha256:[0-9a-f]{64})$")


@dataclass(frozen=True)
class ImageConfig:
    registry: str = DEFAULT_REGISTRY
    tag: str = ""  # empty: the package version
    overrides: dict[str, str] = field(default_factory=dict)  # step -> a whole image reference

    def __post_init__(self) -> None:
        for step, reference in self.overrides.items():
            if step not in STEPS:
                raise ValueError(f"--step-image {step}=…: unknown step; steps are {', '.join(STEPS)}")
            if not _REFERENCE.match(reference) or reference.endswith(":latest"):
                raise ValueError(
                    f"--step-image {step}={reference!r} is not a pinned image reference (host/name:tag or "
                    "name@sha256:…; 'latest' is not allowed)"
                )
        if not self.registry or self.registry.endswith("/") or "://" in self.registry:
            raise ValueError(f"image registry {self.registry!r} must look like 'host[:port]/namespace'")
        if self.tag and not _TAG.match(self.tag):
            raise ValueError(f"image tag {self.tag!r} is not a valid OCI tag")
        if self.tag == "latest":
            raise ValueError("image tag 'latest' is not allowed: pin a version so runs are reproducible")

    @classmethod
    def from_env(
        cls, registry: str | None = None, tag: str | None = None, overrides: dict[str, str] | None = None
    ) -> ImageConfig:
        """Explicit values win, then the environment, then the defaults."""
        return cls(
            registry=registry or os.environ.get(REGISTRY_ENV) or DEFAULT_REGISTRY,
            tag=tag or os.environ.get(TAG_ENV) or "",
            overrides=dict(overrides or {}),
        )

    def ref(self, step: str) -> str:
        if step not in STEPS:
            raise ValueError(f"unknown step {step!r}; steps are {', '.join(STEPS)}")
        if step in self.overrides:
            return self.overrides[step]
        from kfp_mlops import __version__

        return f"{self.registry}/kfp-mlops-{step}:{self.tag or __version__}"
