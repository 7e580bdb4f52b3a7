"""The layout rules, as tests: every step is packaged into the images, no step imports another step (contracts live
in components/shared), the KFP import stays in component.py, and every step has its files and image."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

from kfp_mlops.components.shared.images import STEPS

REPO = Path(__file__).resolve().parents[1]
COMPONENTS = REPO / "components"
STEP_DIRS = sorted(p.parent for p in COMPONENTS.glob("*/__init__.py") if p.parent.name != "shared")


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in a Python file, relative imports resolved against its package."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = "kfp_mlops.components." + path.parent.name
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base]).strip(".")
            found += [(node.lineno, f"{base}.{alias.name}" if base else alias.name) for alias in node.names]
    return found


def cross_step_imports(step_dir: Path, root: Path = REPO) -> list[str]:
    """``file:line imports module`` for each import of another step's package from ``step_dir``."""
    problems = []
    for path in sorted(step_dir.rglob("*.py")):
        for line, module in imported_modules(path):
            parts = module.split(".")
            if (
                parts[:2] == ["kfp_mlops", "components"]
                and len(parts) > 2
                and parts[2] not in ("shared", step_dir.name)
            ):
                problems.append(f"{path.relative_to(root)}:{line} imports {module}")
    return problems


def kfp_imports(path: Path, root: Path = REPO) -> list[str]:
    return [f"{path.relative_to(root)}:{line} imports {module}" for line, module in imported_modules(path)
            if module == "kfp" or module.startswith("kfp.")]  # fmt: skip


def test_pyproject_packages_every_component_folder():
    """A step missing from the list works in the editable install and is absent from its image."""
    packages = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    expected = {"kfp_mlops", "kfp_mlops.components", "kfp_mlops.components.shared", "kfp_mlops.pipelines"}
    expected |= {f"kfp_mlops.components.shared.{p.parent.name}" for p in (COMPONENTS / "shared").glob("*/__init__.py")}
    expected |= {f"kfp_mlops.components.{d.name}" for d in STEP_DIRS}
    assert packages == expected


def test_every_step_has_its_wrapper_executor_core_readme_and_image():
    assert sorted(d.name for d in STEP_DIRS) == sorted(STEPS)
    for step_dir in STEP_DIRS:
        for name in ("component.py", "executor.py", "core.py", "README.md"):
            assert (step_dir / name).exists(), f"{step_dir.name} has no {name}"
        assert (REPO / "images" / step_dir.name / "Dockerfile").exists()


@pytest.mark.parametrize("step_dir", STEP_DIRS, ids=[d.name for d in STEP_DIRS])
def test_no_step_imports_another_step(step_dir):
    assert cross_step_imports(step_dir) == []


def test_shared_code_imports_no_step():
    problems = [p for p in cross_step_imports(COMPONENTS / "shared") if ".components.shared" not in p.split()[-1]]
    assert problems == []


@pytest.mark.parametrize("step_dir", STEP_DIRS, ids=[d.name for d in STEP_DIRS])
def test_core_and_executor_import_no_kfp(step_dir):
    """The KFP wrapper is component.py only: core and executor run (and are tested) without KFP."""
    modules = [p for p in step_dir.rglob("*.py") if p.name != "component.py"]
    assert [problem for path in modules for problem in kfp_imports(path)] == []


def test_the_checks_catch_a_violation(tmp_path):
    step = tmp_path / "components" / "quantize"
    step.mkdir(parents=True)
    (step / "core.py").write_text(
        "from kfp import dsl\nfrom kfp_mlops.components.train.core import train\nfrom ..deploy import core\n"
    )
    assert cross_step_imports(step, tmp_path) == [
        "components/quantize/core.py:2 imports kfp_mlops.components.train.core.train",
        "components/quantize/core.py:3 imports kfp_mlops.components.deploy.core",
    ]
    assert kfp_imports(step / "core.py", tmp_path) == ["components/quantize/core.py:1 imports kfp.dsl"]
