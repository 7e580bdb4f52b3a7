"""Run inside a step image (``python -c`` with this file's text, so it needs nothing from the image but Python): a
JSON report of what only a built image can answer. ``kfp_mlops.image_checks`` runs it and judges the report.

The report: the user id; every module of the step's own package imported, then every top-level module of every
distribution the step requires (what the step imports lazily is imported too), and the seconds it all took (or the
module that is missing and the one that needed it); the distributions the step's extra requires that are not installed;
``pip check`` on the step's environment; compilers and package managers on PATH, and whether the step's
environment has pip of its own.
"""

import importlib
import json
import os
import pkgutil
import re
import shutil
import subprocess
import sys
import time
import traceback
from importlib import metadata

COMPILERS = ("gcc", "cc", "g++", "c++", "clang", "nvcc", "make")
PACKAGE_MANAGERS = ("pip", "pip3", "apt-get", "dpkg", "conda", "uv")


def _normal(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def probe(step):
    report = {"step": step, "uid": os.getuid(), "python": sys.version.split()[0]}
    started = time.perf_counter()
    current = f"kfp_mlops.components.{step}"
    try:
        package = importlib.import_module(current)
        modules = sorted(m.name for m in pkgutil.iter_modules(package.__path__, package.__name__ + "."))
        report["modules"] = modules
        for current in modules:
            importlib.import_module(current)
    except ModuleNotFoundError as exc:
        report["missing_module"] = exc.name or str(exc)
        report["importing"] = current
        report["traceback"] = traceback.format_exc()[-2000:]
    except Exception as exc:  # an import that fails for another reason (a wrong build of a native library, ...)
        report["import_error"] = f"{type(exc).__name__}: {exc}"
        report["importing"] = current
        report["traceback"] = traceback.format_exc()[-2000:]
    missing, required = [], []
    for requirement in metadata.requires("kfp-mlops") or []:
        marker = re.search(r"extra\s*==\s*[\"'](\w+)[\"']", requirement)
        if marker and marker.group(1) != step:
            continue
        name = re.match(r"[A-Za-z0-9._-]+", requirement).group(0)
        try:
            metadata.distribution(name)
            required.append(name)
        except metadata.PackageNotFoundError:
            missing.append(name)
    report["missing_distributions"] = missing
    # The step's modules import some libraries lazily (torch, Evidently, ...): import every top-level module of
    # every distribution the step requires too, as a task would at run time.
    if "missing_module" not in report and "import_error" not in report:
        provides = {}
        for module, names in metadata.packages_distributions().items():
            for name in names:
                provides.setdefault(_normal(name), []).append(module)
        modules = {m for name in required for m in provides.get(_normal(name), [])}
        libraries = sorted(m for m in modules if m.isidentifier() and not m.startswith("_"))
        report["libraries"] = libraries
        try:
            for current in libraries:
                importlib.import_module(current)
        except ModuleNotFoundError as exc:
            report["missing_module"] = exc.name or str(exc)
            report["importing"] = current
            report["traceback"] = traceback.format_exc()[-2000:]
        except Exception as exc:
            report["import_error"] = f"{type(exc).__name__}: {exc}"
            report["importing"] = current
            report["traceback"] = traceback.format_exc()[-2000:]
    report["import_seconds"] = round(time.perf_counter() - started, 2)
    pip = shutil.which("pip") or shutil.which("pip3")
    if pip:
        check = subprocess.run([pip, "--python", sys.executable, "check"], capture_output=True, text=True)
        report["pip_check"] = {"returncode": check.returncode, "output": (check.stdout + check.stderr).strip()}
    else:
        report["pip_check"] = {"returncode": None, "output": "no pip in the image"}
    report["compilers"] = [tool for tool in COMPILERS if shutil.which(tool)]
    report["package_managers"] = [tool for tool in PACKAGE_MANAGERS if shutil.which(tool)]
    report["pip_in_step_environment"] = os.path.exists(os.path.join(sys.prefix, "bin", "pip"))
    report["prefix"] = sys.prefix
    return report


if __name__ == "__main__":
    print("KFP_MLOPS_PROBE " + json.dumps(probe(sys.argv[1])))
