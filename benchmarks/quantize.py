"""Quantization candidates against the fp32 serving graph (the anchor), measured by the quantize step itself on the
validation split: ONNX size, batch-1 latency (median), batch-64 throughput and accuracy, each as a ratio or delta
against fp32, then the candidate the step would choose.

Run: ``python benchmarks/quantize.py`` (trains the default MLP on sample data), ``--hidden 512,512`` (a wider MLP,
where int8's gain shows), or ``--model DIR`` for an existing package (with ``--train``/``--validation`` splits, else
sample data ingested with the package's own pipeline config). CPU, one onnxruntime thread per session.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import yaml

from kfp_mlops.components.ingest.core import ingest
from kfp_mlops.components.quantize import core
from kfp_mlops.components.shared import model_package as package
from kfp_mlops.components.shared.config import PipelineConfig, parse_config
from kfp_mlops.components.shared.splits import SplitPaths
from kfp_mlops.components.train.core import train
from kfp_mlops.sample_data import sample_config, write_sample_data


def sample_splits(work: Path, rows: int, document: dict) -> tuple[PipelineConfig, SplitPaths]:
    """Sample data ingested with ``document`` (a pipeline config whose data.source is replaced)."""
    write_sample_data(str(work / "data"), rows=rows, seed=0)
    config = parse_config({**document, "data": {"source": str(work / "data")}})
    paths = SplitPaths(*(str(work / name) for name in ("train", "validation", "test")))
    ingest(config, paths)
    return config, paths


def trained(work: Path, rows: int, hidden: list[int], epochs: int) -> tuple[PipelineConfig, SplitPaths, Path]:
    settings = {"model": {"options": {"hidden_layers": hidden}}, "epochs": epochs, "workers": 1, "zero_stage": 0,
                "micro_batch_size": 256, "checkpoint_every_steps": 10**6}  # fmt: skip
    config, paths = sample_splits(work, rows, sample_config("unused", train=settings))
    start = time.perf_counter()
    train(config, paths.train, paths.validation, str(work / "model"), str(work / "ckpt"))
    print(f"trained hidden {hidden} on {rows:,} sample rows, {epochs} epochs, in {time.perf_counter() - start:.1f}s")
    return config, paths, work / "model"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="an existing model package (default: train one)")
    parser.add_argument("--train", help="train split of --model (calibration rows)")
    parser.add_argument("--validation", help="validation split of --model (figures)")
    parser.add_argument("--rows", type=int, default=20_000, help="sample rows when training or ingesting")
    parser.add_argument("--hidden", default="64,32", help="hidden layers of the trained MLP, e.g. 512,512")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=500, help="timed runs per candidate and batch size")
    parser.add_argument("--candidates", default="int8_dynamic,int8_static,fp16", help="fp32 is always measured")
    parser.add_argument("--choose", choices=["fastest", "smallest"], default="fastest")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-quantize-") as tmp:
        work = Path(tmp)
        if args.model is None:
            config, paths, model_dir = trained(work, args.rows, [int(w) for w in args.hidden.split(",")], args.epochs)
        else:
            model_dir = args.model
            document = yaml.safe_load((model_dir / package.PIPELINE_CONFIG_FILE).read_text())
            if args.train and args.validation:
                config, paths = parse_config(document), SplitPaths(args.train, args.validation, "")
            else:
                config, paths = sample_splits(work, args.rows, document)
        settings = config.quantize.model_copy(
            update={"candidates": args.candidates.split(","), "choose": args.choose, "latency_repeats": args.repeats}
        )
        config = config.model_copy(update={"quantize": settings})
        architecture = package.read_model_config(model_dir).architecture
        start = time.perf_counter()
        try:
            result = core.quantize(config, str(model_dir), paths.train, paths.validation, str(work / "quantized"))
        except core.QuantizationBudgetError as failure:
            print(failure)
            raise SystemExit(1) from None
        seconds = time.perf_counter() - start
    base = result.baseline
    print(f"model {architecture}; {result.validation_rows:,} validation rows; {result.calibration_rows} calibration "
          f"rows; CPU, 1 ORT thread, median of {args.repeats} runs; step took {seconds:.1f}s")  # fmt: skip
    print(f"fp32 anchor: {base.onnx_bytes / 1024:,.1f} KiB, batch 1 {base.latency_ms * 1e3:,.1f} µs, "
          f"batch {core.THROUGHPUT_BATCH} {base.rows_per_second:,.0f} rows/s, accuracy {base.metrics['accuracy']:.4f}, "
          f"roc_auc {base.metrics['roc_auc']:.4f}")  # fmt: skip
    print(f"{'candidate':<13} {'KiB':>8} {'smaller':>8} {'b1 µs':>8} {'faster':>7} {'b64 rows/s':>12} {'x fp32':>7} "
          f"{'Δaccuracy':>10} {'Δroc_auc':>9} {'max|Δp|':>8}  status")  # fmt: skip
    for c in result.candidates:
        status = "CHOSEN" if c.name == result.chosen else "within budget" if c.eligible else "; ".join(c.reasons)
        print(
            f"{c.name:<13} {c.onnx_bytes / 1024:>8,.1f} {base.onnx_bytes / c.onnx_bytes:>7.2f}x "
            f"{c.latency_ms * 1e3:>8,.1f} {base.latency_ms / c.latency_ms:>6.2f}x {c.rows_per_second:>12,.0f} "
            f"{c.rows_per_second / base.rows_per_second:>6.2f}x {c.deltas['accuracy']:>+10.4f} "
            f"{c.deltas['roc_auc']:>+9.4f} {c.max_abs_diff:>8.2g}  {status}"
        )
    print(f"chosen ({args.choose} within the budget {result.budget['max_metric_drop']}, max |Δp| "
          f"{result.budget['max_abs_diff']}): {result.summary()}")  # fmt: skip


if __name__ == "__main__":
    main()
