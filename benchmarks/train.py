"""Training throughput: the DeepSpeed train step against a plain PyTorch loop (the anchor) on the same model, data
and micro-batch, 1 process; then the step with 2 processes against 1; then the step's start-up time (task process
start to first optimizer step) in a fresh process with an empty torch extensions cache, beside what compiling
DeepSpeed's CPU op would cost there (what a pod did before the op was prebuilt). Run: ``python benchmarks/train.py``.

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
import torch.nn.functional as F

from kfp_mlops.components.ingest.core import ingest
from kfp_mlops.components.shared.config import parse_config
from kfp_mlops.components.shared.splits import SplitPaths
from kfp_mlops.components.shared.tabular import Preprocessing
from kfp_mlops.components.train.core import train
from kfp_mlops.components.train.model import TabularClassifier
from kfp_mlops.sample_data import CATEGORICAL, NUMERIC, sample_config, write_sample_data


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
    model = TabularClassifier(preprocessing, settings.hidden_layers, settings.dropout, settings.embedding_dim)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.optimizer.lr)
    batch, samples = settings.micro_batch_size, 0
    model.train()
    start = time.perf_counter()
    for epoch in range(settings.epochs):
        order = torch.from_numpy(np.random.default_rng(epoch).permutation(len(labels)))
        for first in range(0, len(order) - batch + 1, batch):
            index = order[first : first + batch]
            loss = F.cross_entropy(model(numeric[index], categorical[index]), labels[index])
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), settings.gradient_clipping)
            optimizer.step()
            samples += batch
    return samples / (time.perf_counter() - start)


def step(config, paths: SplitPaths, workers: int, work: Path) -> tuple[float, float]:
    config = config.model_copy(update={"train": config.train.model_copy(update={"workers": workers})})
    start = time.perf_counter()
    model_dir, checkpoints = str(work / f"model-{workers}"), str(work / f"ckpt-{workers}")
    result = train(config, paths.train, paths.validation, model_dir, checkpoints)
    return result.metrics["samples_per_second"], time.perf_counter() - start


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
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--micro-batch", type=int, default=256)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        work = Path(tmp)
        write_sample_data(str(work / "data"), rows=args.rows)
        train_settings = {"epochs": args.epochs, "micro_batch_size": args.micro_batch, "zero_stage": 0,
                          "checkpoint_every_steps": 10**6, "early_stopping": {"patience": 100}}  # fmt: skip
        config = parse_config(sample_config(str(work / "data"), train=train_settings))
        paths = SplitPaths(*(str(work / name) for name in ("train", "validation", "test")))
        ingest(config, paths)
        anchor = plain_pytorch_samples_per_second(config, paths.train)
        one, one_wall = step(config, paths, 1, work)
        two, two_wall = step(config, paths, 2, work)
        startup, jit = startup_with_an_empty_cache(config, paths, work)
    print(f"{args.rows:,} rows, {args.epochs} epochs, micro-batch {args.micro_batch}, fp32 on CPU, 1 thread/process")
    print(f"plain PyTorch loop, 1 process {anchor:>9,.0f} samples/s")
    print(
        f"DeepSpeed step, 1 process     {one:>9,.0f} samples/s  step/anchor {one / anchor:.2f}x  wall {one_wall:.1f}s"
    )
    print(f"DeepSpeed step, 2 processes   {two:>9,.0f} samples/s  2 vs 1 {two / one:.2f}x  wall {two_wall:.1f}s")
    print(f"start-up, empty extensions cache: {startup:.1f} s to the first optimizer step (nothing compiled); "
          f"compiling DeepSpeed's CPU op there instead would add {jit:.1f} s")  # fmt: skip


if __name__ == "__main__":
    main()
