"""Quantize: build lower-precision variants of a model package's serving graph, measure each on the validation
split against the fp32 graph, and keep the fastest (or smallest) one within the accuracy budget. Paths and values
only; no KFP, no torch.

Candidates: ``fp32`` (the input graph, the baseline), ``int8_dynamic`` (weights int8, activations quantized at run
time), ``int8_static`` (QDQ, activation ranges calibrated on seeded train rows) and ``fp16`` (the trained core
converted, preprocessing and label nodes left as they are). Only MatMul/Gemm are quantized, so imputation, category
lookup and the decision threshold stay exact. Every figure is taken on raw validation rows through the whole
serving graph, i.e. what Triton will serve.

A regression model is measured on its ``prediction`` output: mse, rmse, mae and r2 with their deltas, and the
largest |prediction − fp32 prediction| in standard deviations of the validation labels (``max |Δy|/σ``, judged
against ``quantize.max_abs_diff``); it has no labels to agree on, so ``label_agreement`` is None (left out of
metrics and metadata).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from kfp_mlops.components.shared import model_package as package
from kfp_mlops.components.shared import serving_graph
from kfp_mlops.components.shared.config import PipelineConfig
from kfp_mlops.components.shared.metrics import (
    HIGHER_IS_BETTER,
    class_indices,
    compute_metrics,
    compute_regression_metrics,
    gate_failure,
    label_values,
    regressed,
)
from kfp_mlops.components.shared.splits import read_split

CANDIDATES = ("fp32", "int8_dynamic", "int8_static", "fp16")
QUANTIZED_OPS = ["MatMul", "Gemm"]  # the network's weights; preprocessing and label nodes stay exact
THROUGHPUT_BATCH = 64
CALIBRATION_BATCH = 64
DROPPED_FILES = (package.WEIGHTS_FILE,)  # fp32 PyTorch weights: not what the quantized package serves


class QuantizationBudgetError(RuntimeError):
    """No candidate meets the accuracy budget (a model-quality gate, not bad input); nothing was written."""


@dataclass(frozen=True)
class Candidate:
    """One candidate's figures on the validation split; ``deltas`` are candidate minus fp32."""

    name: str
    onnx_bytes: int
    metrics: dict[str, float]  # finite values only
    deltas: dict[str, float]  # of the metrics both it and fp32 have
    # largest |probability - fp32 probability| over every row and class; regression: largest |prediction - fp32
    # prediction| over the validation labels' standard deviation (inf when they are constant and it is not 0)
    max_abs_diff: float
    label_agreement: float | None  # share of rows whose label equals fp32's; None for regression (no labels)
    latency_ms: float  # median batch-1 latency, one ORT thread
    rows_per_second: float  # at batch THROUGHPUT_BATCH, one ORT thread
    reasons: list[str] = field(default_factory=list)  # why it cannot be chosen; empty: it can
    undefined: dict[str, str] = field(default_factory=dict)  # metric -> why it has no value on the validation split

    @property
    def eligible(self) -> bool:
        return not self.reasons


@dataclass(frozen=True)
class QuantizeResult:
    """Every candidate (fp32 first), the chosen one and how it was chosen."""

    candidates: list[Candidate]
    chosen: str
    choose: str
    validation_rows: int
    calibration_rows: int
    budget: dict[str, Any]
    task: str = "binary"

    def candidate(self, name: str) -> Candidate:
        return next(c for c in self.candidates if c.name == name)

    @property
    def baseline(self) -> Candidate:
        return self.candidate("fp32")

    @property
    def selected(self) -> Candidate:
        return self.candidate(self.chosen)

    @property
    def rejected(self) -> dict[str, list[str]]:
        """Why each candidate other than the chosen one could not be chosen (eligible but slower/larger ones are
        not listed)."""
        return {c.name: c.reasons for c in self.candidates if c.reasons}

    def metrics(self) -> dict[str, float]:
        """Flat figures for a KFP Metrics artifact: the chosen candidate's, then a few per candidate."""
        chosen, base = self.selected, self.baseline
        values: dict[str, float] = {
            "onnx_bytes": chosen.onnx_bytes,
            "size_ratio": base.onnx_bytes / chosen.onnx_bytes,
            "latency_ms_batch1": chosen.latency_ms,
            "speedup_batch1": base.latency_ms / chosen.latency_ms,
            f"rows_per_second_batch{THROUGHPUT_BATCH}": chosen.rows_per_second,
            "max_abs_diff": chosen.max_abs_diff,
            "candidates_within_budget": sum(c.eligible for c in self.candidates),
        }
        if chosen.label_agreement is not None:
            values["label_agreement"] = chosen.label_agreement
        values |= chosen.metrics
        values |= {f"delta_{name}": value for name, value in chosen.deltas.items()}
        for c in self.candidates:
            values |= {f"{c.name}_onnx_bytes": c.onnx_bytes, f"{c.name}_latency_ms": c.latency_ms,
                       f"{c.name}_max_abs_diff": c.max_abs_diff}  # fmt: skip
        # finite numbers only: a cluster's launcher reads executor output as strict JSON (no NaN/Infinity)
        return {name: float(value) for name, value in values.items() if math.isfinite(value)}

    def table(self) -> str:
        """The comparison as Markdown (the KFP UI's ``comparison`` artifact)."""
        return comparison_table(self.candidates, self.budget, self.choose, self.chosen, self.validation_rows,
                                self.task)  # fmt: skip

    def summary(self) -> str:
        """The step's one outcome line."""
        chosen, base = self.selected, self.baseline
        headline, diff = ("r2", "max |Δy|/σ") if self.task == "regression" else ("accuracy", "max |Δp|")
        change = f"{headline} {chosen.deltas[headline]:+.4f}" if headline in chosen.deltas else f"{headline} undefined"
        line = (
            f"[quantize] {chosen.name}: {base.onnx_bytes / chosen.onnx_bytes:.1f}x smaller, "
            f"{base.latency_ms / chosen.latency_ms:.1f}x faster at batch 1, {change}, {diff} {chosen.max_abs_diff:.2g}"
        )
        rejected = [f"{name} ({'; '.join(reasons)})" for name, reasons in self.rejected.items() if name != "fp32"]
        return line + (f"; rejected: {', '.join(rejected)}" if rejected else "")


def candidate_names(config: PipelineConfig) -> list[str]:
    """fp32 first (always measured: it is the baseline), then the listed candidates, and fp16 when the target is
    a GPU."""
    settings = config.quantize
    names = ["fp32", *(n for n in settings.candidates if n != "fp32")]
    if settings.target == "gpu" and "fp16" not in names:
        names.append("fp16")
    return names


def quantize(
    config: PipelineConfig, model_dir: str, train_path: str, validation_path: str, output_dir: str
) -> QuantizeResult:
    """Build, measure and choose; write the chosen package to ``output_dir`` (atomically, same layout as the
    input, ``precision`` set to the candidate's name). Raises QuantizationBudgetError, writing nothing, when no
    listed candidate is within ``quantize.max_metric_drop`` and ``quantize.max_abs_diff``."""
    settings = config.quantize
    model_config = package.read_model_config(model_dir)
    validation = read_split(validation_path, "validation")
    with tempfile.TemporaryDirectory(prefix="kfp-mlops-quantize-") as work:
        calibration = calibration_rows(read_split(train_path, "train"), settings.calibration_rows, settings.seed)
        graphs = build_candidates(
            Path(model_dir) / package.ONNX_FILE,
            candidate_names(config),
            package.raw_inputs(calibration, model_config.numeric, model_config.categorical),
            Path(work),
        )
        candidates = measure(graphs, validation, model_config, config)
        candidates = [judge(c, config, model_config.task) for c in candidates]
        allowed = [name for name in graphs if name != "fp32" or "fp32" in settings.candidates]
        budget = {"max_metric_drop": dict(settings.metric_drops(model_config.task)),
                  "max_abs_diff": settings.max_abs_diff, "candidates": allowed}  # fmt: skip
        if model_config.regression:
            budget["label_std"] = label_std(validation, model_config)
        eligible = [c for c in candidates if c.eligible]
        if not eligible:
            table = comparison_table(candidates, budget, settings.choose, None, validation.num_rows, model_config.task)
            raise QuantizationBudgetError(
                "no quantization candidate is within the accuracy budget on the validation split; nothing was "
                f"written.\n\n{table}\nWiden quantize.max_metric_drop or quantize.max_abs_diff, or list fp32 in "
                "quantize.candidates to let the unquantized model through."
            )
        chosen = pick(eligible, settings.choose)
        write_package(model_dir, graphs[chosen.name], chosen.name, output_dir)
    return QuantizeResult(candidates, chosen.name, settings.choose, validation.num_rows, calibration.num_rows, budget,
                          model_config.task)  # fmt: skip


def calibration_rows(train: pa.Table, rows: int, seed: int) -> pa.Table:
    """``rows`` train rows drawn without replacement (seeded), in their original order; all when fewer."""
    if train.num_rows <= rows:
        return train
    picked = np.sort(np.random.default_rng(seed).choice(train.num_rows, size=rows, replace=False))
    return train.take(pa.array(picked))


def build_candidates(source: Path, names: list[str], calibration: dict[str, np.ndarray], work: Path) -> dict[str, Path]:
    """Each named candidate's serving graph as a file (fp32 is ``source`` itself)."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    unknown = sorted(set(names) - set(CANDIDATES))
    if unknown:
        raise ValueError(f"unknown quantization candidate(s) {unknown}; known: {', '.join(CANDIDATES)}")
    # the serving graph holds ai.onnx.ml ops and string tensors whose types the quantizer cannot infer
    extra = {"DefaultTensorType": onnx.TensorProto.FLOAT}
    graphs: dict[str, Path] = {}
    for name in names:
        if name == "fp32":
            graphs[name] = source
            continue
        target = work / f"{name}.onnx"
        with _quiet_quantizer():
            if name == "int8_dynamic":
                quantize_dynamic(source, target, op_types_to_quantize=QUANTIZED_OPS, weight_type=QuantType.QInt8,
                                 extra_options=extra)  # fmt: skip
            elif name == "int8_static":
                quantize_static(
                    source,
                    target,
                    calibration_reader(calibration, CALIBRATION_BATCH),
                    quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=QUANTIZED_OPS,
                    activation_type=QuantType.QInt8,  # S8S8, ORT's default: as accurate and fast as U8S8 here
                    weight_type=QuantType.QInt8,
                    extra_options=extra,
                )
            else:
                onnx.save(to_fp16(onnx.load(str(source))), str(target))
        graphs[name] = target
    return graphs


def to_fp16(model: Any) -> Any:
    """The serving graph with only its trained core in fp16 (inputs and outputs stay fp32)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    core = convert_float_to_float16(serving_graph.core_of(model), keep_io_types=True)
    return serving_graph.with_core(model, core)


def calibration_reader(feeds: dict[str, np.ndarray], batch: int) -> Any:
    """A ``CalibrationDataReader`` over ``feeds`` in batches of ``batch`` rows."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            rows = len(next(iter(feeds.values())))
            self._batches = iter([{k: v[i : i + batch] for k, v in feeds.items()} for i in range(0, rows, batch)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._batches, None)

    return Reader()


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """Drop the quantizer's advice to run its shape pre-processing (it cannot type the ai.onnx.ml nodes anyway)."""

    def advice(record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()

    root = logging.getLogger()
    root.addFilter(advice)
    try:
        yield
    finally:
        root.removeFilter(advice)


def session(path: Path, threads: int = 1) -> Any:
    """An onnxruntime CPU session on ``path`` with ``threads`` intra- and inter-op threads."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = threads
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def measure(
    graphs: dict[str, Path], validation: pa.Table, model_config: package.ModelConfig, config: PipelineConfig
) -> list[Candidate]:
    """Accuracy against fp32 on every validation row, then latency and throughput timed in interleaved rounds
    (each round runs every candidate, in rotating order), so machine noise hits all candidates alike."""
    feeds = package.raw_inputs(validation, model_config.numeric, model_config.categorical)
    sessions = {name: session(path) for name, path in graphs.items()}
    outputs = {name: s.run(model_config.outputs, feeds) for name, s in sessions.items()}
    if model_config.regression:
        y = label_values(validation, model_config, "validation")
        scored = {name: compute_regression_metrics(y, out[0]) for name, out in outputs.items()}
        scale = label_std(validation, model_config)
    else:
        y = class_indices(validation, model_config, "validation")
        threshold = model_config.decision_threshold
        scored = {name: compute_metrics(y, out[0], config.evaluate, threshold, model_config.classes)
                  for name, out in outputs.items()}  # fmt: skip
        scale = 1.0
    reference = outputs["fp32"]
    base = scored["fp32"].metrics
    latency = timings(sessions, batches(feeds, 1, config.quantize.latency_repeats), model_config.outputs)
    batch_time = timings(sessions, batches(feeds, THROUGHPUT_BATCH, config.quantize.latency_repeats),
                         model_config.outputs)  # fmt: skip
    candidates = []
    for name, out in outputs.items():
        diff = float(np.abs(out[0] - reference[0]).max())
        candidates.append(
            Candidate(
                name=name,
                onnx_bytes=graphs[name].stat().st_size,
                metrics=scored[name].metrics,
                deltas={m: v - base[m] for m, v in scored[name].metrics.items() if m in base},
                undefined=scored[name].undefined,
                max_abs_diff=diff / scale if scale > 0 else 0.0 if diff == 0 else math.inf,
                label_agreement=None if model_config.regression else float(np.mean(out[1] == reference[1])),
                latency_ms=latency[name] * 1e3,
                rows_per_second=THROUGHPUT_BATCH / batch_time[name],
            )
        )
    return candidates


def label_std(validation: pa.Table, model_config: package.ModelConfig) -> float:
    """The standard deviation of a regression model's validation labels: the unit of its ``max_abs_diff``."""
    return float(np.std(label_values(validation, model_config, "validation")))


def batches(feeds: dict[str, np.ndarray], size: int, count: int) -> list[dict[str, np.ndarray]]:
    """``count`` batches of ``size`` consecutive rows, wrapping around the rows."""
    rows = len(next(iter(feeds.values())))
    return [{k: np.take(v, np.arange(i * size, (i + 1) * size) % rows, axis=0) for k, v in feeds.items()}
            for i in range(count)]  # fmt: skip


def timings(
    sessions: dict[str, Any], feeds: list[dict[str, np.ndarray]], outputs: list[str], warmup: int = 10
) -> dict[str, float]:
    """Median seconds per run of each session over ``feeds`` (fetching ``outputs``), after ``warmup`` untimed runs
    each."""
    names = list(sessions)
    for name in names:
        for batch in feeds[:warmup]:
            sessions[name].run(outputs, batch)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_, batch in enumerate(feeds):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            sessions[name].run(outputs, batch)
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


def judge(candidate: Candidate, config: PipelineConfig, task: str = "binary") -> Candidate:
    """The candidate with the reasons it cannot be chosen: a metric worse than fp32 beyond the budget (a drop, or
    for a lower-is-better metric a rise), a probability (regression: prediction) difference beyond
    ``max_abs_diff``, or (fp32) not being listed."""
    settings = config.quantize
    reasons = []
    if candidate.name == "fp32" and "fp32" not in settings.candidates:
        reasons.append("the baseline: list fp32 in quantize.candidates to allow it")
    for metric, allowed in settings.metric_drops(task).items():
        if candidate.name == "fp32":
            continue  # the baseline itself: no drop
        if metric not in candidate.deltas:  # undefined for the candidate or for fp32: the budget fails closed
            scores = {"metrics": candidate.metrics, "undefined": candidate.undefined}
            reasons.append(gate_failure(metric, scores, "validation", "quantize.max_metric_drop", task)
                           or f"{metric} is undefined for fp32 on the validation split: quantize.max_metric_drop "
                              "cannot pass on it")  # fmt: skip
            continue
        delta = candidate.deltas[metric]
        if regressed(metric, delta, 0.0, allowed):  # NaN fails too
            way = f"drops {-delta:.4f}" if metric in HIGHER_IS_BETTER else f"rises {delta:.4f}"
            reasons.append(f"{metric} {way} > {allowed}")
    if not candidate.max_abs_diff <= settings.max_abs_diff:
        diff = candidate.max_abs_diff
        if task == "regression":
            reasons.append(f"predictions differ from fp32 by up to {diff:.4f} σ of the validation labels > "
                           f"{settings.max_abs_diff}")  # fmt: skip
        else:
            reasons.append(f"probabilities differ from fp32 by up to {diff:.4f} > {settings.max_abs_diff}")
    return dataclasses.replace(candidate, reasons=reasons)


LATENCY_TIE = 0.05  # batch-1 latencies within 5 % of the fastest count as a tie (timing noise): the smaller wins


def pick(eligible: list[Candidate], choose: str) -> Candidate:
    """The fastest at batch 1 (within LATENCY_TIE of it: the smallest), or the smallest (ties: faster)."""
    if choose == "smallest":
        return min(eligible, key=lambda c: (c.onnx_bytes, c.latency_ms))
    fastest = min(c.latency_ms for c in eligible)
    tied = [c for c in eligible if c.latency_ms <= fastest * (1 + LATENCY_TIE)]
    return min(tied, key=lambda c: (c.onnx_bytes, c.latency_ms))


def write_package(model_dir: str, graph: Path, precision: str, output_dir: str) -> None:
    """The input package with ``graph`` as its model.onnx and ``precision`` in its config, moved into place whole
    (a retry replaces an earlier attempt's output). ``weights.pt`` is dropped."""
    source, target = Path(model_dir), Path(output_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        skip = {package.ONNX_FILE, package.MODEL_CONFIG_FILE, *DROPPED_FILES}
        for entry in source.iterdir():
            if entry.name in skip:
                continue
            if entry.is_dir():
                shutil.copytree(entry, staging / entry.name)
            else:
                shutil.copy2(entry, staging / entry.name)
        shutil.copyfile(graph, staging / package.ONNX_FILE)
        model_config = package.read_model_config(source).model_copy(update={"precision": precision})
        package.write_model_config(staging, model_config)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def comparison_table(
    candidates: list[Candidate],
    budget: dict[str, Any],
    choose: str,
    chosen: str | None,
    rows: int,
    task: str = "binary",
) -> str:
    """Markdown: per candidate size, batch-1 latency, batch-64 throughput (ratios against fp32), probability
    difference (regression: prediction difference over the label σ), label agreement (classifiers), every metric
    with its delta, and its status."""
    base = next(c for c in candidates if c.name == "fp32")
    metric_names = list(base.metrics)
    regression = task == "regression"
    diff = "max |Δy|/σ" if regression else "max |Δp|"
    header = ["candidate", "status", "size", "latency b1", f"rows/s b{THROUGHPUT_BATCH}", diff.replace("|", "\\|"),
              *([] if regression else ["labels = fp32"]), *metric_names]  # fmt: skip
    unit = f" (σ = {budget['label_std']:.4g}, the validation labels' standard deviation)" if regression else ""
    lines = [
        f"# Quantization: {rows:,} validation rows, CPU, one ORT thread; choose {choose} within the budget",
        "",
        f"Budget: metric drop ≤ {budget['max_metric_drop'] or 'none'}, {diff} ≤ {budget['max_abs_diff']}{unit}; "
        f"candidates {', '.join(budget['candidates'])}",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * 2 + "---:|" * (len(header) - 2),
    ]
    for c in candidates:
        status = "**chosen**" if c.name == chosen else "within budget" if c.eligible else "; ".join(c.reasons)
        cells = [
            c.name,
            status,
            f"{c.onnx_bytes / 1024:,.1f} KiB ({base.onnx_bytes / c.onnx_bytes:.2f}x smaller)",
            f"{c.latency_ms:.3f} ms ({base.latency_ms / c.latency_ms:.2f}x faster)",
            f"{c.rows_per_second:,.0f} ({c.rows_per_second / base.rows_per_second:.2f}x)",
            f"{c.max_abs_diff:.2g}",
            *([] if c.label_agreement is None else [f"{c.label_agreement:.2%}"]),
            *(f"{c.metrics[m]:.4f} ({c.deltas[m]:+.4f})" if m in c.deltas else "undefined" for m in metric_names),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lower = [m for m in metric_names if m not in HIGHER_IS_BETTER]
    if lower:
        lines += ["", f"Deltas are candidate − fp32; lower is better for {', '.join(lower)} (a budget on one of them "
                  "bounds its rise)."]  # fmt: skip
    lines += [f"{name} is undefined on the validation split: {reason}" for name, reason in base.undefined.items()]
    return "\n".join(lines).rstrip() + "\n"
