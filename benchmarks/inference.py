"""Batch inference: rows/s of the three ways to score a batch, and the step's peak memory as the entities grow.

Setup (not timed): the sample data (``--sample-rows``) ingested and turned into a Feast repository by the features
step; a binary model package on its features (a logistic core on the standardised features, composed into the
serving graph as the train step composes its network; no training needed to time scoring); a local Triton serving
it (python backend, ``max_batch_size`` 256, dynamic batching).

Scoring, on ``--rows`` rows of the sample's features (the same feeds for every contender, runs alternating):

- ``package``: the model package in-process (onnxruntime), ``batch_rows`` rows per call: the anchor.
- ``triton``: Triton over gRPC, requests of 256 rows, 4 in flight (``inference.request_rows``/``concurrency``).
- ``row-by-row``: Triton over gRPC, one row per request, one at a time (what a naive client does; on
  ``--row-rows`` rows only).

Memory: the whole step (``core.run_inference``: entities file streamed, Feast point-in-time join, in-process
scoring, log written) in a child process per size, its peak RSS (``ru_maxrss``) at each of ``--memory-rows``
entity rows (default 100,000 and 2,000,000; ``batch_rows`` 50,000): flat means bounded by the batch.

Run: ``python benchmarks/inference.py [--rows 200000] [--memory-rows 100000 2000000]`` (``make bench-inference``).

Figures (2026-12-02, 2 shared cores, the test suite running beside it; ``--rows 200000 --row-rows 2000 --rounds 3
--memory-rows 100000 2000000``; a logistic model on the churn sample's 9 features):

    scoring 200,000 rows (2,000 one by one), median of 3 rounds:
      package          538,557 rows/s    1.000x the package in-process
      triton           110,236 rows/s    0.205x the package in-process
      row-by-row           507 rows/s    0.001x the package in-process
    whole step (Feast point-in-time, in-process, log), batch_rows 50,000:
         100,000 entity rows:   3,427 rows/s,  29.2 s, peak RSS 599 MB,  2 file(s)
       2,000,000 entity rows:  47,746 rows/s,  41.9 s, peak RSS 599 MB, 40 file(s)

Batched gRPC is 217x row-by-row requests; in-process is 4.9x Triton's python backend (the local stand-in for
``onnxruntime_onnx``; serialisation and the backend's IPC dominate a model this small). Peak memory is flat from 100k
to 2M rows. The entity rows repeat the sample's ~5,000 entities (``np.resize``), so each batch asks Feast for at most
that many distinct keys: the 2M figure is the streaming, scoring and writing cost, not Feast's join of 2M distinct
entities. The 100k run's 29 s is mostly a fixed cost of the first offline query in a fresh process and the load
beside it (a 20k-row run took 23 s, 100k 9.5 s when the machine was quieter).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnx
import pyarrow as pa
import pyarrow.parquet as pq
from onnx import TensorProto, helper, numpy_helper

from kfp_mlops import triton_local
from kfp_mlops.components.features.core import build_feature_sets
from kfp_mlops.components.inference import core
from kfp_mlops.components.inference.scoring import PackageScorer, TritonScorer
from kfp_mlops.components.ingest.core import ingest
from kfp_mlops.components.shared import model_package, serving_graph
from kfp_mlops.components.shared.config import InferenceConfig, parse_config
from kfp_mlops.components.shared.model_package import raw_inputs
from kfp_mlops.components.shared.records import ServingRecord
from kfp_mlops.components.shared.splits import SplitPaths
from kfp_mlops.components.shared.tabular import Preprocessing
from kfp_mlops.sample_data import sample_config, write_sample_data

MODEL = "churn"
REQUEST_ROWS, CONCURRENCY, BATCH_ROWS = 256, 4, 50_000
AS_OF = datetime(2026, 1, 1, tzinfo=UTC)


def logistic_package(target: Path, train: pa.Table, features: list[str], categorical: list[str], label: str,
                     entity: str, timestamp: str) -> Path:  # fmt: skip
    """A binary package: standardised numeric features and category indices → a linear layer → softmax."""
    preprocessing = Preprocessing.fit(train, features, categorical, label, task="binary")
    k, m = len(preprocessing.numeric), len(preprocessing.categorical)
    rng = np.random.default_rng(0)
    tensors = {"means": np.array(preprocessing.means, np.float32).reshape(1, k),
               "stds": np.array(preprocessing.stds, np.float32).reshape(1, k),
               "weight": rng.normal(0, 0.3, (k + m, 2)).astype(np.float32),
               "bias": np.zeros(2, np.float32)}  # fmt: skip
    nodes = [
        helper.make_node("Sub", ["numeric", "means"], ["centred"]),
        helper.make_node("Div", ["centred", "stds"], ["standardised"]),
        helper.make_node("Cast", ["categorical"], ["codes"], to=TensorProto.FLOAT),
        helper.make_node("Concat", ["standardised", "codes"], ["features"], axis=1),
        helper.make_node("Gemm", ["features", "weight", "bias"], ["logits"]),
        helper.make_node("Softmax", ["logits"], [model_package.PROBABILITIES_OUTPUT], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "logistic",
        [helper.make_tensor_value_info("numeric", TensorProto.FLOAT, ["N", k]),
         helper.make_tensor_value_info("categorical", TensorProto.INT64, ["N", m])],
        [helper.make_tensor_value_info(model_package.PROBABILITIES_OUTPUT, TensorProto.FLOAT, ["N", 2])],
        [numpy_helper.from_array(array, name) for name, array in tensors.items()],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    target.mkdir(parents=True)
    onnx.save(serving_graph.compose(model, preprocessing, 0.5), str(target / model_package.ONNX_FILE))
    preprocessing.save(target)
    config = model_package.ModelConfig(features=preprocessing.features, numeric=preprocessing.numeric,
                                       categorical=preprocessing.categorical, label=label,
                                       classes=preprocessing.classes, entity=entity, timestamp=timestamp)  # fmt: skip
    model_package.write_model_config(target, config)
    return target


def prepare(work: Path, sample_rows: int) -> tuple[Path, Path, pa.Table]:
    """(feature repository, model package, the sample's rows)."""
    config = parse_config(sample_config(write_sample_data(str(work / "raw"), rows=sample_rows, seed=0)))
    inputs = SplitPaths(*(str(work / "splits" / name) for name in ("train", "validation", "test")))
    ingest(config, inputs)
    out = SplitPaths(*(str(work / "features" / name) for name in ("train", "validation", "test")))
    build_feature_sets(config, inputs, str(work / "feature_repo"), out)
    schema = config.schema_
    train = pq.read_table(out.train)
    package = logistic_package(work / "model", train, schema.features, schema.categorical, schema.label,
                               schema.entity, schema.timestamp)  # fmt: skip
    return work / "feature_repo", package, train


def feeds_of(train: pa.Table, config: model_package.ModelConfig, rows: int) -> dict[str, np.ndarray]:
    base = raw_inputs(train, config.numeric, config.categorical)
    repeats = -(-rows // train.num_rows)
    return {name: np.concatenate([array] * repeats)[:rows] for name, array in base.items()}


def rate(scorer, feeds: dict[str, np.ndarray], batch: int) -> float:
    rows = len(next(iter(feeds.values())))
    start = time.perf_counter()
    for first in range(0, rows, batch):
        scorer.score({name: array[first : first + batch] for name, array in feeds.items()})
    return rows / (time.perf_counter() - start)


def memory_child(repo: str, package: str, entities: str, log: str) -> None:
    """One whole inference run in this process; prints its figures and peak RSS as JSON."""
    record = ServingRecord(model=package, metrics={})
    settings = InferenceConfig(entities=entities, log=log, batch_rows=BATCH_ROWS)
    result = core.run_inference(settings, record, repo, "bench", AS_OF)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"rows": result.rows, "seconds": result.seconds, "rows_per_second": result.rows_per_second,
                      "peak_rss_mb": peak_mb, "files": len(result.files)}))  # fmt: skip


def memory_run(work: Path, repo: Path, package: Path, ids: np.ndarray, rows: int) -> dict:
    entities = work / f"entities-{rows}.parquet"
    pq.write_table(pa.table({"customer_id": np.resize(ids, rows)}), entities, row_group_size=BATCH_ROWS)
    output = subprocess.run(
        [sys.executable, __file__, "--child", str(repo), str(package), str(entities), str(work / f"log-{rows}")],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--row-rows", type=int, default=2_000, help="rows sent one by one")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sample-rows", type=int, default=20_000)
    parser.add_argument("--memory-rows", type=int, nargs="*", default=[100_000, 2_000_000])
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        memory_child(*args.child)
        return
    with tempfile.TemporaryDirectory(prefix="bench-inference-") as directory:
        work = Path(directory)
        repo, package, train = prepare(work, args.sample_rows)
        config = model_package.read_model_config(package)
        feeds = feeds_of(train, config, args.rows)
        models = work / "triton"
        triton_local.add_onnx_model(models, MODEL, package / model_package.ONNX_FILE, 1, max_batch_size=REQUEST_ROWS,
                                    dynamic_batching={"max_queue_delay_microseconds": 0})  # fmt: skip
        triton_local.ensure_venv()
        with triton_local.serve(models, load=[MODEL]) as server:
            in_process = PackageScorer(str(package), MODEL)
            batched = TritonScorer(server.grpc_url, MODEL, 1, config, REQUEST_ROWS, CONCURRENCY, 60)
            single = TritonScorer(server.grpc_url, MODEL, 1, config, 1, 1, 60)
            figures: dict[str, list[float]] = {"package": [], "triton": [], "row-by-row": []}
            few = {name: array[: args.row_rows] for name, array in feeds.items()}
            for _ in range(args.rounds):
                figures["package"].append(rate(in_process, feeds, BATCH_ROWS))
                figures["triton"].append(rate(batched, feeds, BATCH_ROWS))
                figures["row-by-row"].append(rate(single, few, BATCH_ROWS))
            for scorer in (in_process, batched, single):
                scorer.close()
        anchor = float(np.median(figures["package"]))
        print(f"scoring {args.rows:,} rows ({args.row_rows:,} one by one), median of {args.rounds} rounds:")
        for name, values in figures.items():
            median = float(np.median(values))
            print(f"  {name:11s} {median:12,.0f} rows/s   {median / anchor:6.3f}x the package in-process")
        ids = np.unique(pq.read_table(repo / "data" / "features.parquet", columns=["customer_id"])["customer_id"])
        print(f"whole step (Feast point-in-time, in-process, log), batch_rows {BATCH_ROWS:,}:")
        for rows in args.memory_rows:
            result = memory_run(work, repo, package, ids, rows)
            print(f"  {rows:>10,} entity rows: {result['rows_per_second']:10,.0f} rows/s, {result['seconds']:7.1f} s, "
                  f"peak RSS {result['peak_rss_mb']:7.0f} MB, {result['files']} file(s)")  # fmt: skip


if __name__ == "__main__":
    main()
