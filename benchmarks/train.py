"""Training throughput: the DeepSpeed train step against a plain PyTorch loop (the anchor) on the same model, data
and micro-batch, 1 process, for (a) the built-in MLP and (b) an FT-Transformer of about 10M parameters; the step with
2 processes against 1; memory per parameter under ZeRO 0/1/2/3 with 2 processes (the optimizer state each rank
holds, and rank 0's peak resident memory); then the step's start-up time (task process start to first optimizer
step) in a fresh process with an empty torch extensions cache, beside what compiling DeepSpeed's CPU op would cost
there. Run: ``python benchmarks/train.py`` (``--quick`` for a smaller run).

Samples/s count training samples over the training loop only (start-up, validation and export excluded); the step's
wall time, which includes launching the workers, is printed beside it. Both sides use one thread per process.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from kfp_mlops.components.ingest.core import ingest
from kfp_mlops.components.shared.config import parse_config
from kfp_mlops.components.shared.splits import SplitPaths
from kfp_mlops.components.shared.tabular import Preprocessing
from kfp_mlops.components.train.core import train
from kfp_mlops.components.train.model import build_model, training_loss
from kfp_mlops.sample_data import CATEGORICAL, NUMERIC, sample_config, write_sample_data

FT_10M = {"d_token": 512, "n_blocks": 5, "heads": 8}  # 10.5M parameters on the sample's 9 features


def plain_pytorch_samples_per_second(config, train_path: str) -> float:
    """The anchor: a hand-written loop with torch.optim.AdamW, same model and batch, one process, one thread."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    settings, schema = config.train, config.schema_
    table = pq.read_table(train_path)
    preprocessing = Preprocessing.fit(table, NUMERIC + CATEGORICAL, CATEGORICAL, schema.label)
    numeric = torch.from_numpy(preprocessing.numeric_matrix(table))
    categorical = torch.from_numpy(preprocessing.categorical_matrix(table))
    labels = torch.from_numpy(preprocessing.labels(table))
    model = build_model(settings.model.entry_point, settings.model.options, preprocessing)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.optimizer.lr)
    batch, samples = settings.micro_batch_size, 0
    model.train()
    start = time.perf_counter()
    for epoch in range(settings.epochs):
        order = torch.from_numpy(np.random.default_rng(epoch).permutation(len(labels)))
        for first in range(0, len(order) - batch + 1, batch):
            index = order[first : first + batch]
            loss = training_loss(model(numeric[index], categorical[index]), labels[index], preprocessing.task)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), settings.gradient_clipping)
            optimizer.step()
            samples += batch
    return samples / (time.perf_counter() - start)


def with_train(config, **updates):
    return config.model_copy(update={"train": config.train.model_copy(update=updates)})


def step(config, paths: SplitPaths, workers: int, work: Path, name: str = "") -> tuple[dict, float]:
    config = with_train(config, workers=workers)
    start = time.perf_counter()
    tag = name or f"{workers}"
    result = train(config, paths.train, paths.validation, str(work / f"model-{tag}"), str(work / f"ckpt-{tag}"))
    return result.metrics, time.perf_counter() - start


def zero_memory(config, paths: SplitPaths, work: Path) -> list[tuple[int, dict]]:
    """The step with 2 processes under each ZeRO stage: (stage, the worker's metrics)."""
    return [
        (stage, step(with_train(config, zero_stage=stage), paths, 2, work, f"zero{stage}")[0]) for stage in range(4)
    ]


_STARTUP = """
import json, sys
from kfp_mlops.components.shared.config import parse_config
from kfp_mlops.components.train.core import train
config = parse_config(json.loads(sys.argv[1]))
result = train(config, sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5])
print(json.dumps({"startup_seconds": result.metrics["startup_seconds"]}))
"""
_JIT = """
import time
from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder
started = time.perf_counter()
ShareMemCommBuilder().jit_load(verbose=False)
print(time.perf_counter() - started)
"""


def startup_with_an_empty_cache(config, paths: SplitPaths, work: Path) -> tuple[float, float]:
    """(the step's start-up in a fresh process with an empty extensions cache, compiling the CPU op there)."""
    cache = work / "empty-torch-extensions"
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(cache)}
    document = json.dumps(config.model_dump(by_alias=True, exclude_none=True))
    command = [
        sys.executable,
        "-c",
        _STARTUP,
        document,
        paths.train,
        paths.validation,
        str(work / "m"),
        str(work / "c"),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    startup = json.loads(done.stdout.strip().splitlines()[-1])["startup_seconds"]
    jit = subprocess.run([sys.executable, "-c", _JIT], env=env | {"TORCH_EXTENSIONS_DIR": str(work / "jit")},
                         capture_output=True, text=True, check=True)  # fmt: skip
    return startup, float(jit.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=100_000, help="rows of the MLP comparison")
    parser.add_argument("--transformer-rows", type=int, default=4_000, help="rows of the FT-Transformer runs")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--micro-batch", type=int, default=256)
    parser.add_argument("--quick", action="store_true", help="20,000 MLP rows, 1,500 transformer rows")
    args = parser.parse_args()
    if args.quick:
        args.rows, args.transformer_rows = 20_000, 1_500
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        work = Path(tmp)
        settings = {"epochs": args.epochs, "micro_batch_size": args.micro_batch, "zero_stage": 0,
                    "checkpoint_every_steps": 10**6, "early_stopping": {"patience": 100}}  # fmt: skip
        mlp, ft = {}, {}
        for rows, label, out in ((args.rows, "mlp", mlp), (args.transformer_rows, "ft", ft)):
            write_sample_data(str(work / f"data-{label}"), rows=rows)
            config = parse_config(sample_config(str(work / f"data-{label}"), train=settings))
            if label == "ft":
                model = {"entry_point": "ft_transformer", "options": FT_10M}
                config = with_train(config, epochs=1, micro_batch_size=64,
                                    model=config.train.model.model_validate(model))  # fmt: skip
            paths = SplitPaths(*(str(work / f"{label}-{name}") for name in ("train", "validation", "test")))
            ingest(config, paths)
            out["anchor"] = plain_pytorch_samples_per_second(config, paths.train)
            out["one"], out["one_wall"] = step(config, paths, 1, work, f"{label}-1")
            if label == "mlp":
                out["two"], out["two_wall"] = step(config, paths, 2, work, "mlp-2")
                startup, jit = startup_with_an_empty_cache(config, paths, work)
            else:
                out["zero"] = zero_memory(config, paths, work)
    print(f"fp32 on CPU, 1 thread/process; MLP: {args.rows:,} rows, {args.epochs} epochs, micro-batch "
          f"{args.micro_batch}; FT-Transformer: {args.transformer_rows:,} rows, 1 epoch, micro-batch 64")  # fmt: skip
    for name, out in (("MLP 64-32", mlp), (f"FT-Transformer {ft['one']['parameters'] / 1e6:.1f}M", ft)):
        one = out["one"]["samples_per_second"]
        print(f"{name:<22} plain PyTorch loop {out['anchor']:>9,.0f} samples/s | DeepSpeed step {one:>9,.0f} "
              f"samples/s | step/anchor {one / out['anchor']:.2f}x | step wall {out['one_wall']:.1f}s")  # fmt: skip
    two = mlp["two"]["samples_per_second"]
    print(
        f"MLP, DeepSpeed step 2 processes {two:>9,.0f} samples/s  2 vs 1 {two / mlp['one']['samples_per_second']:.2f}x"
    )
    print("FT-Transformer, 2 processes: memory per parameter by ZeRO stage (rank 0)")
    print("  stage | optimizer state B/param | vs stage 0 | peak RSS MB")
    base = ft["zero"][0][1]["optimizer_state_bytes"]
    for stage, metrics in ft["zero"]:
        state, parameters = metrics["optimizer_state_bytes"], metrics["parameters"]
        print(f"  {stage:>5} | {state / parameters:>23.2f} | {state / base:>9.2f}x | "
              f"{metrics['peak_rss_bytes'] / 2**20:>11,.0f}")  # fmt: skip
    print(f"start-up, empty extensions cache: {startup:.1f} s to the first optimizer step (nothing compiled); "
          f"compiling DeepSpeed's CPU op there instead would add {jit:.1f} s")  # fmt: skip


if __name__ == "__main__":
    main()
