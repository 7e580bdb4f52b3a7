"""Run a compiled pipeline YAML locally with ``kfp.local.SubprocessRunner(use_venv=False)``.

The YAML is loaded back from disk with ``kfp.components.load_component_from_file``, so what runs is exactly what a
cluster would run, each step in a subprocess of this Python environment instead of its own container.
"""

from __future__ import annotations

import json
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_STARTED = re.compile(r"Executing task '([^']+)'")
_FINISHED = re.compile(r"Task '([^']+)' finished with status (\w+)")
_EXCEPTION = re.compile(r"^\s*((?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*(?:Error|Exception|Exit|Interrupt)):\s?(.*)$")
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


@dataclass
class RunResult:
    pipeline: str
    run_dir: Path | None
    steps: list[StepResult]

    @property
    def succeeded(self) -> bool:
        return bool(self.steps) and all(step.status == "SUCCESS" for step in self.steps)

    @property
    def failed_step(self) -> StepResult | None:
        return next((step for step in self.steps if step.status != "SUCCESS"), None)


class _StepRecorder:
    """Tees kfp.local's console output and records each task's start, end, status and last exception line."""

    def __init__(self, stream) -> None:
        self._stream = stream
        self._pending = ""
        self.steps: dict[str, StepResult] = {}
        self._started: dict[str, float] = {}
        self._current: str | None = None

    def write(self, text: str) -> int:
        self._stream.write(text)
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            self._line(_ANSI.sub("", line))
        return len(text)

    def flush(self) -> None:
        self._stream.flush()

    def isatty(self) -> bool:
        return False

    def _line(self, line: str) -> None:
        if match := _STARTED.search(line):
            self._current = match.group(1)
            self._started[self._current] = time.monotonic()
            self.steps[self._current] = StepResult(self._current)
        elif match := _FINISHED.search(line):
            step = self.steps.setdefault(match.group(1), StepResult(match.group(1)))
            step.status = match.group(2)
            step.seconds = time.monotonic() - self._started.get(step.name, time.monotonic())
            self._current = None
        elif self._current and (match := _EXCEPTION.match(line)):
            self.steps[self._current].error = f"{match.group(1).rsplit('.', 1)[-1]}: {match.group(2)}".strip()


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


def run_local(package: Path, arguments: dict[str, Any], pipeline_root: Path) -> RunResult:
    """Execute the compiled pipeline at ``package`` through kfp.local and summarise each step."""
    from kfp import components, local

    pipeline_root = pipeline_root.resolve()
    pipeline_root.mkdir(parents=True, exist_ok=True)
    before = set(pipeline_root.iterdir())
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root), raise_on_error=True)
    pipeline = components.load_component_from_file(str(package))
    recorder = _StepRecorder(sys.stdout)
    original = sys.stdout
    sys.stdout = recorder
    try:
        pipeline(**arguments)
    except RuntimeError:
        pass  # the recorder holds the failing step and its error
    finally:
        sys.stdout = original
    runs = [p for p in set(pipeline_root.iterdir()) - before if p.name.startswith(f"{pipeline.name}-")]
    new_dirs = sorted(runs, key=lambda p: p.stat().st_mtime)
    run_dir = new_dirs[-1] if new_dirs else None
    steps = list(recorder.steps.values())
    for step in steps:
        task_dir = run_dir / step.name if run_dir else None
        if task_dir and task_dir.is_dir():
            step.outputs = sorted(str(p) for p in task_dir.iterdir() if p.name != "executor_output.json")
    return RunResult(pipeline=pipeline.name, run_dir=run_dir, steps=steps)


def format_summary(result: RunResult) -> str:
    width = max([len(step.name) for step in result.steps] + [4])
    lines = [f"Pipeline {result.pipeline}: {'SUCCEEDED' if result.succeeded else 'FAILED'}"]
    if result.run_dir:
        lines.append(f"Run directory: {result.run_dir}")
    lines.append(f"{'step':<{width}}  {'status':<8} {'seconds':>8}  outputs")
    for step in result.steps:
        outputs = ", ".join(Path(o).name for o in step.outputs) or "-"
        lines.append(f"{step.name:<{width}}  {step.status:<8} {step.seconds:>8.1f}  {outputs}")
        lines.extend(f"{'':<{width}}    {output}" for output in step.outputs)
    if failed := result.failed_step:
        lines.append(f"step '{failed.name}' failed: {failed.error or 'see its log above'}")
    return "\n".join(lines)
