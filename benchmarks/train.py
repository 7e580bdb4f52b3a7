"""Training throughput: the DeepSpeed train step against a plain PyTorch loop (the anchor) on the same model, data
and micro-batch, 1 process; then the step with 2 processes against 1. Run: ``python benchmarks/train.py``.

Samples/s count training samples over the training loop only (start-up, validation and export excluded); the step's
wall time, which includes launching the workers, is printed beside it. Both sides use one thread per process.
"""

from __future__ import annotations

import argparse
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
    print(f"{args.rows:,} rows, {args.epochs} epochs, micro-batch {args.micro_batch}, fp32 on CPU, 1 thread/process")
    print(f"plain PyTorch loop, 1 process {anchor:>9,.0f} samples/s")
    print(
        f"DeepSpeed step, 1 process     {one:>9,.0f} samples/s  step/anchor {one / anchor:.2f}x  wall {one_wall:.1f}s"
    )
    print(f"DeepSpeed step, 2 processes   {two:>9,.0f} samples/s  2 vs 1 {two / one:.2f}x  wall {two_wall:.1f}s")


if __name__ == "__main__":
    main()
