"""The layout rules, as tests: every step is packaged into the images, no step imports another step (contracts live
in components/shared), the KFP import stays in component.py, and every step has its files and image."""

from __future__ import annotations

import ast
import fnmatch
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


# --- the import rules between layers (issue 13) ----------------------------------------------------------------------

PROJECT_DIRS = ("components", "kfp_mlops", "pipelines", "benchmarks")
# Imports a rule allows where it would otherwise fail, each with its reason (paths are shell-style patterns).
CLI_LAYER_EXCEPTIONS = {
    "kfp_mlops.__version__": "the package's version, read from its installed metadata at the package root",
}
FUNCTION_IMPORT_EXCEPTIONS = {
    "components/*/component.py": "KFP component bodies: KFP copies each function's source into the YAML, so what it "
    "uses is imported inside it",
    "kfp_mlops/cli.py": "the command line's lazy imports: `kfp-mlops --help` and each command load only what they use",
    "kfp_mlops/cli_common.py": "the command line's lazy imports (as cli.py)",
    "kfp_mlops/cluster_cli.py": "the command line's lazy imports (as cli.py)",
    "kfp_mlops/local_cli.py": "the command line's lazy imports (as cli.py)",
    "kfp_mlops/serving_cli.py": "the command line's lazy imports (as cli.py)",
    "pipelines/__init__.py": "a pipeline (with kfp and every step's wrapper) is built only when it is compiled",
    "components/train/core.py": "the network module imports torch: only training and export need it, not "
    "prepare-training's checks on a CPU pod",
    "components/shared/images.py": "kfp_mlops.__version__ at call time (see CLI_LAYER_EXCEPTIONS)",
    "components/shared/tracking.py": "kfp_mlops.__version__ at call time (see CLI_LAYER_EXCEPTIONS)",
    "benchmarks/drift.py": "it times the drift step's imports (Evidently's among them) itself",
}


def module_name(path: Path, root: Path = REPO) -> str:
    """The dotted module a source file is installed as (pyproject maps components/ and pipelines/ into kfp_mlops)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[0] in ("components", "pipelines"):
        parts = ["kfp_mlops", *parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_imports(path: Path, root: Path = REPO) -> list[tuple[int, str, str, bool]]:
    """(line, module, imported name or "", inside a function) for each import of the project's own code."""
    tree = ast.parse(path.read_text(), filename=str(path))
    module = module_name(path, root)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    in_function = {
        id(node)
        for function in ast.walk(tree)
        if isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef)
        for node in ast.walk(function)
    }
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            pairs = [(alias.name, "") for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base]).strip(".")
            pairs = [(base, alias.name) for alias in node.names]
        else:
            continue
        found += [(node.lineno, base, name, id(node) in in_function) for base, name in pairs
                  if base.split(".")[0] == "kfp_mlops"]  # fmt: skip
    return found


def project_files(root: Path = REPO) -> list[Path]:
    return sorted(p for d in PROJECT_DIRS for p in (root / d).rglob("*.py"))


def cli_layer_imports(root: Path = REPO) -> list[str]:
    """Imports of kfp_mlops/ (the command line, local servers, serving client) from components/: steps run in images
    that hold components/ and must not depend on the operator's tools."""
    problems = []
    for path in sorted((root / "components").rglob("*.py")):
        for line, base, name, _ in project_imports(path, root):
            target = f"{base}.{name}" if name else base
            if not target.startswith("kfp_mlops.components") and target not in CLI_LAYER_EXCEPTIONS:
                problems.append(f"{path.relative_to(root)}:{line} imports {target}")
    return problems


def private_name_imports(root: Path = REPO) -> list[str]:
    """``from module import _name`` across modules: a private name is one module's business."""
    return [
        f"{path.relative_to(root)}:{line} imports {base}.{name}"
        for path in project_files(root)
        for line, base, name, _ in project_imports(path, root)
        if name.startswith("_") and not name.startswith("__")
    ]


def function_level_imports(root: Path = REPO) -> list[str]:
    """Imports of the project's own modules inside functions, outside FUNCTION_IMPORT_EXCEPTIONS: they hide
    dependencies (and cycles) from a reader and from the layout rules."""
    problems = []
    for path in project_files(root):
        relative = path.relative_to(root).as_posix()
        if any(fnmatch.fnmatchcase(relative, pattern) for pattern in FUNCTION_IMPORT_EXCEPTIONS):
            continue
        problems += [f"{relative}:{line} imports {base}" for line, base, _, inside in project_imports(path, root)
                     if inside]  # fmt: skip
    return problems


def test_components_import_nothing_from_the_command_line_layer():
    assert cli_layer_imports() == []


def test_no_private_name_is_imported_across_modules():
    assert private_name_imports() == []


def test_the_project_imports_its_own_modules_at_the_top_except_where_listed():
    assert function_level_imports() == []
    for pattern in FUNCTION_IMPORT_EXCEPTIONS:  # every exception still names something
        assert list(REPO.glob(pattern)), pattern


def test_the_import_rules_catch_a_violation(tmp_path):
    (tmp_path / "components" / "deploy").mkdir(parents=True)
    (tmp_path / "kfp_mlops").mkdir()
    (tmp_path / "components" / "deploy" / "core.py").write_text(
        "from kfp_mlops import triton_local\nfrom kfp_mlops import __version__\n"
        "from kfp_mlops.components.shared.storage import _s3_client\n\n\n"
        "def deploy():\n    from kfp_mlops.components.shared import runs\n"
    )
    (tmp_path / "kfp_mlops" / "cli.py").write_text("def main():\n    from kfp_mlops import local_run\n")
    assert cli_layer_imports(tmp_path) == ["components/deploy/core.py:1 imports kfp_mlops.triton_local"]
    assert private_name_imports(tmp_path) == [
        "components/deploy/core.py:3 imports kfp_mlops.components.shared.storage._s3_client"
    ]
    assert function_level_imports(tmp_path) == ["components/deploy/core.py:7 imports kfp_mlops.components.shared"]


def test_a_module_over_500_lines_says_why_at_its_top():
    """A module that grows past ~500 lines usually holds two concerns (STYLE.md): split it, or say why not."""
    long = [
        p for p in [*project_files(), *sorted((REPO / "tests").rglob("*.py"))] if len(p.read_text().splitlines()) > 500
    ]
    reason = "Over 500 lines on purpose"
    unexplained = [
        str(p.relative_to(REPO)) for p in long if reason not in (ast.get_docstring(ast.parse(p.read_text())) or "")
    ]
    assert unexplained == []
