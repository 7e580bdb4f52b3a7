"""Checks that only a built step image can answer, run on this machine's container engine (``kfp_mlops.containers``).

Each image runs ``kfp_mlops/image_probe.py`` (its text, through ``python -c``) as the image's own user, with a
read-only root filesystem, a ``/tmp`` in memory and no network, and the report is judged here: non-root; every module
of the step and every library it requires imports (the seconds it took are reported, not judged: they depend on the
page cache and the machine's load; ``benchmarks/images.py`` measures them); every distribution of the step's extra
installed; ``pip check`` clean; no compiler; no pip inside the step's own environment. Every problem names the
step, the image and, for an import, the missing module.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kfp_mlops.containers import Engine

PROBE = Path(__file__).with_name("image_probe.py")
RUN_USER_UID = 10001
_MARK = "KFP_MLOPS_PROBE "
# `pip check` lines that only the local stand-in base gives (Debian's Python 3.11.2, images/build_local.py): a
# requirement whose marker holds below 3.11.3 and not on the real base's 3.11.11, so the lock file (resolved for
# 3.11.11) rightly leaves it out. redis: `async-timeout; python_full_version < "3.11.3"`.
LOCAL_BASE_ONLY = (re.compile(r"^redis \S+ requires async-timeout, which is not installed\.$"),)


@dataclass
class ImageReport:
    step: str
    image: str
    report: dict[str, Any] = field(default_factory=dict)
    error: str = ""  # the container itself failed

    def problems(self) -> list[str]:
        where = f"step {self.step}, image {self.image}"
        if self.error:
            return [f"{where}: {self.error}"]
        report, found = self.report, []
        if report.get("missing_module"):
            found.append(
                f"{where}: module {report['missing_module']!r} is missing (importing {report.get('importing')})"
            )
        if report.get("import_error"):
            found.append(f"{where}: {report.get('importing')} cannot be imported: {report['import_error']}")
        if report.get("missing_distributions"):
            found.append(f"{where}: not installed: {', '.join(report['missing_distributions'])}")
        if report.get("uid") != RUN_USER_UID:
            found.append(f"{where}: runs as uid {report.get('uid')}, expected {RUN_USER_UID} (non-root)")
        if broken := self.pip_check_problems():
            found.append(f"{where}: pip check: {'; '.join(broken)}")
        if report.get("compilers"):
            found.append(f"{where}: compilers at run time: {', '.join(report['compilers'])}")
        if report.get("pip_in_step_environment"):
            found.append(f"{where}: pip inside the step's environment ({report.get('prefix')})")
        return found

    def pip_check_problems(self) -> list[str]:
        """``pip check``'s complaints, less those of ``LOCAL_BASE_ONLY`` on a Python below 3.11.3."""
        pip_check = self.report.get("pip_check", {})
        if pip_check.get("returncode") == 0:
            return []
        lines = [line for line in str(pip_check.get("output", "")).splitlines() if line.strip()] or ["pip failed"]
        version = tuple(int(part) for part in re.findall(r"\d+", self.report.get("python", "0"))[:3])
        if version < (3, 11, 3):
            lines = [line for line in lines if not any(p.match(line) for p in LOCAL_BASE_ONLY)]
        return lines


def probe(engine: Engine, step: str, image: str, timeout: float = 300) -> ImageReport:
    """Run the probe in ``image`` (read-only root, no network, the image's user) and parse its report."""
    if engine.run("image", "inspect", image, check=False).returncode != 0:
        return ImageReport(step, image, error="the image is not built here (make images-local)")
    result = engine.run(
        "run",
        "--rm",
        "--read-only",
        "--tmpfs",
        "/tmp:rw,mode=1777",
        "--network",
        "none",
        image,
        "python",
        "-c",
        PROBE.read_text(),
        step,
        check=False,
        timeout=timeout,
    )
    line = next((x for x in result.stdout.splitlines() if x.startswith(_MARK)), None)
    if line is None:
        output = (result.stdout + result.stderr).strip()[-2000:]
        return ImageReport(step, image, error=f"the probe exited with {result.returncode}: {output}")
    return ImageReport(step, image, json.loads(line[len(_MARK) :]))


def size_mb(engine: Engine, image: str) -> float:
    return json.loads(engine.run("image", "inspect", image).stdout)[0]["Size"] / 1e6
