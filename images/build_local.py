"""Build every step image on this machine, from its unmodified Dockerfile, named as ``compile`` names them.

    python images/build_local.py [--registry localhost/kfp-mlops] [--tag VERSION] [STEP ...]

- The engine: Docker where ``docker info`` answers (the real ``python:3.11.11-slim-bookworm`` base is pulled), else
  rootful podman with ``images/podman/`` settings (``kfp_mlops/containers.py``).
- Podman has no registry to pull from here, so the base is made from Debian's packages: ``debootstrap`` (minbase,
  bookworm, the mirror apt already uses), Debian's Python 3.11.2 with venv, pip and its headers, imported and tagged
  ``docker.io/library/python:3.11.11-slim-bookworm`` so the Dockerfiles build unmodified (``--pull=never``).
- Idempotent and cached: each image carries the hash of what its build reads (``kfp-mlops.inputs`` label); an image
  whose inputs did not change is not rebuilt. A build stage (train's DeepSpeed stage, 6.1 GB with its CUDA torch)
  is kept under its own tag, ``<registry>/kfp-mlops-<step>-<stage>:cache``, so a code change rebuilds only the code
  layers; the stages it replaces and every other dangling image are pruned after each build. With
  ``--prune-build-stages`` (CI: one build on a clean machine) the stage is removed too.
- At the end: each image's size against its budget (``SIZE_BUDGET_MB``); over budget fails.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kfp_mlops.components.shared.images import STEPS, ImageConfig  # noqa: E402
from kfp_mlops.containers import LOCAL_REGISTRY, Engine, detect  # noqa: E402

BASE = "docker.io/library/python:3.11.11-slim-bookworm"
BASE_PACKAGES = ("python3.11", "python3.11-venv", "python3-pip", "python-is-python3", "libpython3.11-dev")
BASE_PACKAGES += ("ca-certificates",)
INPUTS_LABEL = "kfp-mlops.inputs"
# What each build reads besides its own folder (the Dockerfiles' COPY sources; .dockerignore drops the rest).
CODE = ("pyproject.toml", "README.md", "kfp_mlops", "components", "pipelines")
# Size budgets (MB, as the engine reports the image; measured on the podman base, README.md "Images run for real"):
# 10 to 15 % above each image's size, so a new dependency is a decision, not an accident. train: torch's CUDA 13
# build and its nvidia-* wheels (cuDNN, cuBLAS, NCCL, ...) are most of the image (README.md says how much).
SIZE_BUDGET_MB = {  # sizes on 2026-12-02 with the MLflow client (mlflow-skinny, SQLAlchemy, Alembic: +70-100 MB each)
    "ingest": 800,  # 712 MB (612 before the MLflow client)
    "features": 1100,  # 979
    "train": 6500,  # 5885
    "evaluate": 1200,  # 1076
    "quantize": 1200,  # 1049
    "deploy": 1050,  # 907
    "drift": 1500,  # 1333
    "performance": 1100,  # 996 (scikit-learn, scipy, pandas; no onnxruntime)
    "inference": 1250,  # 1150 (Feast, tritonclient with http and grpc, onnxruntime)
}


def debian_mirror() -> str:
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    if sources.exists():
        for line in sources.read_text().splitlines():
            if line.startswith("URIs:") and "security" not in line:
                return line.split()[1]
    return "http://deb.debian.org/debian"


def image_labels(engine: Engine, ref: str) -> dict[str, str] | None:
    """The image's labels, or None when there is no such image."""
    found = engine.run("image", "inspect", ref, check=False)
    if found.returncode != 0:
        return None
    return json.loads(found.stdout)[0].get("Config", {}).get("Labels") or {}


def image_size_mb(engine: Engine, ref: str) -> float:
    return json.loads(engine.run("image", "inspect", ref).stdout)[0]["Size"] / 1e6


def build_base(engine: Engine) -> None:
    """The local stand-in for python:3.11.11-slim-bookworm (podman only), unless it exists."""
    if image_labels(engine, BASE) is not None:
        print(f"base: {BASE} exists")
        return
    for tool in ("debootstrap", "chroot"):
        if not shutil.which(tool):
            sys.exit(f"base: {tool} is missing (make container-deps)")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="kfp-mlops-base-", dir="/var/tmp") as tmp:
        root = Path(tmp) / "rootfs"
        subprocess.run(["debootstrap", "--variant=minbase", "bookworm", str(root), debian_mirror()], check=True)
        shutil.copy("/etc/resolv.conf", root / "etc" / "resolv.conf")
        env = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}
        chroot = ["chroot", str(root)]
        subprocess.run([*chroot, "apt-get", "update", "-qq"], check=True, env=env)
        install = [*chroot, "apt-get", "install", "-y", "-qq", "--no-install-recommends", *BASE_PACKAGES]
        subprocess.run(install, check=True, env=env)
        subprocess.run([*chroot, "apt-get", "clean"], check=True, env=env)
        for path in ("var/lib/apt/lists", "var/cache/apt", "usr/share/doc", "usr/share/man"):
            shutil.rmtree(root / path, ignore_errors=True)
        (root / "var/lib/apt/lists/partial").mkdir(parents=True)
        (root / "usr/lib/python3.11/EXTERNALLY-MANAGED").unlink(missing_ok=True)
        (root / "etc" / "resolv.conf").write_text("")
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        subprocess.run(
            engine.command("import", "--change", 'CMD ["python3"]', "-", BASE),
            stdin=tar.stdout,
            check=True,
            env={**os.environ, **engine.env},
            stdout=subprocess.DEVNULL,
        )
        if tar.wait() != 0:
            sys.exit("base: tar of the root filesystem failed")
    print(f"base: {BASE} from Debian's packages in {time.monotonic() - started:.0f} s")


def inputs_hash(step: str) -> str:
    """SHA-256 over every file the step's build reads (its Dockerfile and lock file, the package's code)."""
    digest = hashlib.sha256()
    paths = sorted((REPO / "images" / step).iterdir())
    for name in CODE:
        path = REPO / name
        paths += sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for path in paths:
        if "__pycache__" in path.parts or path.suffix == ".pyc" or not path.is_file():
            continue
        digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:32]


def build_stages(step: str) -> list[str]:
    """The named build stages of the step's Dockerfile (``FROM ... AS name``), the final stage excepted."""
    text = (REPO / "images" / step / "Dockerfile").read_text()
    return re.findall(r"^FROM\s+\S+\s+AS\s+([\w.-]+)\s*$", text, flags=re.MULTILINE | re.IGNORECASE)


def stage_ref(registry: str, step: str, stage: str) -> str:
    return f"{registry}/kfp-mlops-{step}-{stage}:cache"


def _build(engine: Engine, step: str, ref: str, *options: str) -> None:
    extra = ["--pull=never", "--network=host"] if engine.name == "podman" else []
    command = engine.command("build", *extra, "-f", f"images/{step}/Dockerfile", *options, "-t", ref, ".")
    result = subprocess.run(command, cwd=REPO, env={**os.environ, **engine.env})
    if result.returncode != 0:
        sys.exit(f"{step}: the build of {ref} from images/{step}/Dockerfile failed (exit {result.returncode})")


def build_step(engine: Engine, step: str, ref: str, registry: str, prune_stages: bool) -> float | None:
    """Build the step's image unless its inputs are unchanged; the seconds it took, or None when skipped."""
    inputs = inputs_hash(step)
    if (image_labels(engine, ref) or {}).get(INPUTS_LABEL) == inputs:
        return None
    started = time.monotonic()
    version = ref.rsplit(":", 1)[1]
    print(f"{step}: building {ref}", flush=True)
    stages = build_stages(step)
    for stage in stages:  # tagged, so the prune below keeps it and the next build reuses its layers
        _build(engine, step, stage_ref(registry, step, stage), "--target", stage)
    _build(engine, step, ref, "--build-arg", f"VERSION={version}", "--label", f"{INPUTS_LABEL}={inputs}")
    if prune_stages:
        for stage in stages:
            engine.run("rmi", stage_ref(registry, step, stage), check=False)
    engine.run("image", "prune", "-f", check=False)
    return time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("steps", nargs="*", default=list(STEPS), help="default: every step")
    parser.add_argument("--registry", default=LOCAL_REGISTRY, help=f"default: {LOCAL_REGISTRY}")
    parser.add_argument("--tag", default="", help="default: the package version")
    parser.add_argument("--prune-build-stages", action="store_true", help="remove build stages too (train: 6.1 GB)")
    args = parser.parse_args(argv)
    images = ImageConfig(registry=args.registry, tag=args.tag)
    engine = detect()
    print(f"engine: {engine.name}")
    if engine.name == "podman":
        build_base(engine)
    rows, over = [], []
    for step in args.steps:
        ref = images.ref(step)
        seconds = build_step(engine, step, ref, args.registry, args.prune_build_stages)
        size = image_size_mb(engine, ref)
        budget = SIZE_BUDGET_MB[step]
        rows.append((step, ref, "cached" if seconds is None else f"{seconds:.0f} s", size, budget))
        if size > budget:
            over.append(f"{step}: {size:.0f} MB is over its budget of {budget} MB (images/build_local.py)")
    print(f"\n{'step':<9} {'build':>7} {'size MB':>8} {'budget':>7}  image")
    for step, ref, built, size, budget in rows:
        print(f"{step:<9} {built:>7} {size:>8.0f} {budget:>7}  {ref}")
    for line in over:
        print(line, file=sys.stderr)
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
