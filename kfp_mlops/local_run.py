"""Run a compiled pipeline YAML locally with ``kfp.local.SubprocessRunner(use_venv=False)``.

The YAML is loaded back from disk with ``kfp.components.load_component_from_file``, so what runs is exactly what a
cluster would run, each step in a subprocess of this Python environment instead of its own container.

The console stays short: a line when each step starts and ends (status, seconds), a progress line for training
(epoch, losses, samples/s), retries and errors as they happen, and the summary. Everything kfp.local and the steps
print goes to ``<run dir>/logs/<step>.log`` and ``<run dir>/logs/run.log``; ``verbose`` streams it too.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml

from kfp_mlops.components.shared.errors import ServiceError
from kfp_mlops.container_run import docker_runner

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_STARTED = re.compile(r"Executing task '([^']+)'")
_FINISHED = re.compile(r"Task '([^']+)' finished with status (\w+)")
_RETRYING = re.compile(r"Task (\S+) failed \(attempt (\d+)/(\d+)\)\. Retrying in ([\d.]+)s")
_EXCEPTION = re.compile(r"^\s*((?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*(?:Error|Exception|Exit|Interrupt)):\s?(.*)$")
_PROGRESS = re.compile(r"^\[train\] (epoch \d+/\d+.*)$")
# A step's outcome lines ("[evaluate] BLESSED", "[deploy] ...") are shown; the train step's only when they matter.
_OUTCOME = re.compile(
    r"^\[(?!train\])\w+\] .+|^\[train\] (adjusted to the data|resumed from|early stopping|start-up).*"
)
_TAIL_LINES = 12
_COERCE = {
    "NUMBER_INTEGER": int,
    "NUMBER_DOUBLE": float,
    "BOOLEAN": lambda v: {"true": True, "false": False}[v.strip().lower()],
    "STRUCT": json.loads,
    "LIST": json.loads,
    "STRING": str,
}


@dataclass
class StepResult:
    name: str
    status: str = "RUNNING"
    seconds: float = 0.0
    outputs: list[str] = field(default_factory=list)
    error: str = ""
    attempts: int = 1
    log: str = ""


@dataclass
class RunResult:
    pipeline: str
    run_dir: Path | None
    steps: list[StepResult]
    log_dir: Path | None = None

    @property
    def succeeded(self) -> bool:
        return bool(self.steps) and all(step.status == "SUCCESS" for step in self.steps)

    @property
    def failed_step(self) -> StepResult | None:
        return next((step for step in self.steps if step.status != "SUCCESS"), None)


class _Console:
    """Receives every line kfp.local and the steps print: keeps them in log files, shows the short version."""

    def __init__(self, console: IO[str], log_dir: Path, verbose: bool) -> None:
        self._console = console
        self._verbose = verbose
        self._tty = console.isatty()
        self._pending = ""
        self._log_dir = log_dir
        self._run_log = open(log_dir / "run.log", "w", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._step_logs: dict[str, IO[str]] = {}
        self._progress_shown = False
        self.steps: dict[str, StepResult] = {}
        self._started: dict[str, float] = {}
        self._current: str | None = None

    # file-like interface (sys.stdout is replaced by this object while the pipeline runs)
    def write(self, text: str) -> int:
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            self._line(_ANSI.sub("", line))
        return len(text)

    def flush(self) -> None:
        self._console.flush()

    def isatty(self) -> bool:
        return False

    def close(self) -> None:
        if self._pending:
            self._line(_ANSI.sub("", self._pending))
        self._end_progress()
        for handle in [self._run_log, *self._step_logs.values()]:
            handle.close()

    def note(self, text: str) -> None:
        """A line for the log only (e.g. a warning)."""
        self._run_log.write(text.rstrip("\n") + "\n")

    def _show(self, text: str) -> None:
        self._end_progress()
        self._console.write(text + "\n")
        self._console.flush()

    def _show_progress(self, text: str) -> None:
        if self._tty:
            self._console.write("\r\x1b[K" + text)
            self._progress_shown = True
        else:
            self._console.write(text + "\n")
        self._console.flush()

    def _end_progress(self) -> None:
        if self._progress_shown:
            self._console.write("\n")
            self._progress_shown = False

    def _line(self, line: str) -> None:
        self._run_log.write(line + "\n")
        if self._current and self._current in self._step_logs:
            self._step_logs[self._current].write(line + "\n")
        if self._verbose:
            self._show(line)
        if match := _STARTED.search(line):
            self._start(match.group(1))
        elif match := _FINISHED.search(line):
            self._finish(match.group(1), match.group(2))
        elif match := _RETRYING.search(line):
            step = self.steps.get(match.group(1))
            if step:
                step.attempts = int(match.group(2)) + 1
                attempt, attempts, delay = match.group(2), match.group(3), float(match.group(4))
                reason = step.error or "see its log"
                self._show(
                    f"  {step.name}: attempt {attempt} of {attempts} failed ({reason}); retrying in {delay:.0f} s"
                )
        elif self._current and (match := _EXCEPTION.match(line)):
            step = self.steps[self._current]
            step.error = f"{match.group(1).rsplit('.', 1)[-1]}: {match.group(2)}".strip()
        elif self._current and not self._verbose and (match := _PROGRESS.match(line.strip())):
            self._show_progress(f"  {self._current:<18} {match.group(1)}")
        elif self._current and not self._verbose and _OUTCOME.match(line.strip()):
            self._show(f"  {self._current:<18} {line.strip()}")

    def _start(self, name: str) -> None:
        self._current = name
        self._started[name] = time.monotonic()
        if name not in self.steps:
            self.steps[name] = StepResult(name, log=str(self._log_dir / f"{name}.log"))
            self._step_logs[name] = open(self._log_dir / f"{name}.log", "w", encoding="utf-8")  # noqa: SIM115
            if not self._verbose:
                self._show(f"  {name:<18} started")

    def _finish(self, name: str, status: str) -> None:
        step = self.steps.setdefault(name, StepResult(name))
        step.status = status
        step.seconds = time.monotonic() - self._started.get(name, time.monotonic())
        self._current = None
        if name in self._step_logs:
            self._step_logs[name].flush()
        if not self._verbose:
            self._show(f"  {name:<18} {status:<8} {step.seconds:6.1f} s")
        if status != "SUCCESS":
            self._show(f"    {step.error or 'failed'}")


def local_gpus() -> int:
    """NVIDIA GPUs on this machine (``nvidia-smi -L``), 0 without a driver."""
    if not shutil.which("nvidia-smi"):
        return 0
    listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False)
    return sum(line.startswith("GPU ") for line in listing.stdout.splitlines()) if listing.returncode == 0 else 0


def parameter_types(package: Path) -> dict[str, str]:
    """The pipeline's parameters and their KFP types, read from the compiled YAML."""
    document = next(yaml.safe_load_all(package.read_text()))
    params = document.get("root", {}).get("inputDefinitions", {}).get("parameters", {})
    return {name: spec.get("parameterType", "STRING") for name, spec in params.items()}


def coerce_arguments(package: Path, raw: dict[str, str]) -> dict[str, Any]:
    """Turn ``--param key=value`` strings into the types the pipeline declares; unknown keys are errors."""
    types = parameter_types(package)
    arguments = {}
    for key, value in raw.items():
        if key not in types:
            raise ValueError(f"unknown pipeline parameter {key!r}; parameters are {', '.join(sorted(types))}")
        try:
            arguments[key] = _COERCE[types[key]](value)
        except (KeyError, ValueError) as exc:
            raise ValueError(f"parameter {key}={value!r} is not a valid {types[key]} ({exc})") from None
    return arguments


@contextlib.contextmanager
def _captured(console: _Console) -> Iterator[None]:
    """stdout (kfp.local's logger writes there too) and Python warnings go to ``console`` while the run lasts."""

    def to_log(message, category, filename, lineno, file=None, line=None):
        console.note(warnings.formatwarning(message, category, filename, lineno, line))

    original = sys.stdout
    with warnings.catch_warnings():
        warnings.showwarning = to_log
        sys.stdout = console
        try:
            yield
        finally:
            sys.stdout = original


def run_local(
    package: Path,
    arguments: dict[str, Any],
    pipeline_root: Path,
    console: IO[str] | None = None,
    verbose: bool = False,
    containers: bool = False,
) -> RunResult:
    """Execute the compiled pipeline at ``package`` through kfp.local and summarise each step: each task in a
    subprocess of this Python, or, with ``containers``, in its own image (``kfp_mlops.container_run``)."""
    from kfp import components, local

    console = console or sys.stdout
    pipeline_root = pipeline_root.resolve()
    pipeline_root.mkdir(parents=True, exist_ok=True)
    before = set(pipeline_root.iterdir())
    staging_logs = Path(tempfile.mkdtemp(prefix=".logs-", dir=pipeline_root))
    pipeline = components.load_component_from_file(str(package))
    where = "each step in its own image" if containers else "full logs in the run directory's logs/"
    console.write(f"Running {pipeline.name} from {package} ({where})\n")
    recorder = _Console(console, staging_logs, verbose)
    try:
        with contextlib.ExitStack() as stack:
            if containers:
                runner = stack.enter_context(docker_runner(pipeline_root, arguments))
            else:
                runner = local.SubprocessRunner(use_venv=False)
            local.init(runner=runner, pipeline_root=str(pipeline_root), raise_on_error=True)
            with _captured(recorder):
                pipeline(**arguments)
    except ServiceError:
        raise  # no container engine: nothing ran
    except RuntimeError:
        pass  # the recorder holds the failing step and its error
    finally:
        recorder.close()
    runs = [p for p in set(pipeline_root.iterdir()) - before if p.name.startswith(f"{pipeline.name}-")]
    run_dir = max(runs, key=lambda p: p.stat().st_mtime) if runs else None
    log_dir = staging_logs
    if run_dir is not None:
        log_dir = run_dir / "logs"
        shutil.move(str(staging_logs), log_dir)
    steps = list(recorder.steps.values())
    for step in steps:
        step.log = str(log_dir / f"{step.name}.log")
        task_dir = run_dir / step.name if run_dir else None
        if task_dir and task_dir.is_dir():
            step.outputs = sorted(str(p) for p in task_dir.iterdir() if p.name != "executor_output.json")
    return RunResult(pipeline=pipeline.name, run_dir=run_dir, steps=steps, log_dir=log_dir)


def format_summary(result: RunResult) -> str:
    width = max([len(step.name) for step in result.steps] + [4])
    lines = [f"Pipeline {result.pipeline}: {'SUCCEEDED' if result.succeeded else 'FAILED'}"]
    if result.run_dir:
        lines.append(f"Run directory: {result.run_dir}")
    lines.append(f"{'step':<{width}}  {'status':<8} {'seconds':>8}  outputs")
    for step in result.steps:
        outputs = ", ".join(Path(o).name for o in step.outputs) or "-"
        lines.append(f"{step.name:<{width}}  {step.status:<8} {step.seconds:>8.1f}  {outputs}")
    if failed := result.failed_step:
        lines.append(f"step '{failed.name}' failed: {failed.error or 'see its log'}")
        lines.append(f"log: {failed.log}")
        tail = Path(failed.log).read_text(errors="replace").splitlines()[-_TAIL_LINES:] if failed.log else []
        lines += [f"  | {line}" for line in tail]
    return "\n".join(lines)
