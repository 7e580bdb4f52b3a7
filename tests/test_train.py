"""Training with real DeepSpeed (2 CPU processes, gloo): config checks, bad input, ONNX export, checkpoints,
resume after a kill, early stopping."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import TRAIN_SETTINGS
from support.configs import pipeline_config
from support.waiting import wait_for

from kfp_mlops.components.shared import storage
from kfp_mlops.components.shared.config import TrainConfig
from kfp_mlops.components.shared.errors import ConfigError, InputError
from kfp_mlops.components.shared.model_package import Predictor
from kfp_mlops.components.shared.tabular import Preprocessing
from kfp_mlops.components.train.checkpoints import FAILURE_MARKER
from kfp_mlops.components.train.core import DeterministicTrainingError, prepare, train
from kfp_mlops.components.train.deepspeed_config import build_deepspeed_config
from kfp_mlops.components.train.devices import MIN_STEPS_PER_EPOCH, effective_batching


def test_deepspeed_config_carries_batch_optimizer_schedule_clipping_zero_and_precision():
    settings = TrainConfig(micro_batch_size=32, gradient_accumulation_steps=4, zero_stage=2, gradient_clipping=0.5,
                           optimizer={"type": "AdamW", "lr": 0.01, "weight_decay": 0.1},
                           scheduler={"type": "WarmupCosineLR", "warmup_steps": 5})  # fmt: skip
    config = build_deepspeed_config(settings, world_size=2, device="cpu", total_steps=100)
    assert config["train_batch_size"] == 32 * 4 * 2
    assert config["zero_optimization"] == {"stage": 2}
    assert config["gradient_clipping"] == 0.5
    assert config["optimizer"] == {"type": "AdamW", "params": {"lr": 0.01, "weight_decay": 0.1, "torch_adam": True}}
    assert config["scheduler"]["params"]["total_num_steps"] == 100
    assert not config["bf16"]["enabled"] and not config["fp16"]["enabled"]
    on_gpu = build_deepspeed_config(settings, world_size=8, device="cuda", total_steps=100)
    assert on_gpu["bf16"]["enabled"]
    assert on_gpu["optimizer"]["params"] | {"torch_adam": True, "fused": True} == on_gpu["optimizer"]["params"]
    older_gpu = build_deepspeed_config(settings, world_size=1, device="cuda", total_steps=10, bf16_supported=False)
    assert older_gpu["fp16"]["enabled"]


@pytest.mark.parametrize(
    ("settings", "device", "message"),
    [
        ({"precision": "fp16"}, "cpu", "train.precision: fp16 needs a GPU"),
        ({"precision": "bf16"}, "cpu", "train.precision: bf16 needs a GPU"),
    ],
)
def test_invalid_deepspeed_settings_are_rejected(settings, device, message):
    with pytest.raises(ConfigError, match=message):
        build_deepspeed_config(TrainConfig(**settings), world_size=1, device=device, total_steps=10)


def test_zero_stage_4_is_rejected_by_the_config(ingested):
    with pytest.raises(ConfigError, match=r"train\.zero_stage: Input should be less than or equal to 3"):
        pipeline_config("x", train={"zero_stage": 4})


def _write(table: pa.Table, path: Path) -> str:
    pq.write_table(table, path)
    return str(path)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda t: t.set_column(t.column_names.index("churned"), "churned", pa.array([0] * t.num_rows)),
         r"train split: column 'churned' holds a single class \[0\]"),
        (lambda t: t.set_column(t.column_names.index("age"), "age",
                                pa.array([float("inf")] + t["age"].to_pylist()[1:])),
         r"train split: column 'age' row 1: value inf is not finite"),
        (lambda t: t.slice(0, 0), r"train split .*train.parquet: no rows"),
    ],
    ids=["single class", "inf feature", "empty split"],
)  # fmt: skip
def test_bad_training_input_fails_in_prepare_before_any_worker_starts(ingested, tmp_path, mutate, message):
    config, paths = ingested
    bad = _write(mutate(pq.read_table(paths.train)), tmp_path / "train.parquet")
    start = time.monotonic()
    with pytest.raises(InputError, match=message):
        prepare(config, bad, paths.validation, str(tmp_path / "prepared"), gpus_per_node=1)
    assert time.monotonic() - start < 5
    assert not (tmp_path / "prepared").exists()


def test_half_precision_on_a_cpu_pod_fails_in_prepare(ingested, tmp_path):
    config, paths = ingested
    config = pipeline_config(config.data.source, train={"precision": "bf16"})
    with pytest.raises(ConfigError, match="train.precision: bf16 needs a GPU"):
        prepare(config, paths.train, paths.validation, str(tmp_path / "prepared"), gpus_per_node=0)
    assert not (tmp_path / "prepared").exists()


def test_trained_model_directory_holds_onnx_weights_preprocessing_and_config(trained_model, ingested):
    result, directory = trained_model
    model_dir = directory / "model"
    assert sorted(p.name for p in model_dir.iterdir()) == [
        "model.onnx", "model_config.json", "pipeline_config.yaml", "preprocessing.json", "weights.pt",
    ]  # fmt: skip
    inputs = {i.name: i.type for i in onnxruntime.InferenceSession(str(model_dir / "model.onnx")).get_inputs()}
    assert inputs == {"numeric": "tensor(float)", "categorical": "tensor(string)"}
    metrics = result.metrics
    assert metrics["world_size"] == 2 and metrics["zero_stage"] == 2 and metrics["precision"] == "fp32"
    assert metrics["samples_per_second"] > 0 and metrics["epochs"] == 4
    history = metrics["history"]
    assert history[-1]["val_loss"] < history[0]["val_loss"]
    assert result.onnx_max_abs_diff < 1e-4
    # the served graph takes raw rows (missing values and unseen categories included) at any batch size and agrees
    # with PyTorch on the same rows preprocessed for training: one transformation for training and serving
    config, paths = ingested
    preprocessing = Preprocessing.load(model_dir)
    test = pq.read_table(paths.test).slice(0, 37)
    ages, plans = test["age"].to_pylist(), test["plan"].to_pylist()
    ages[0], plans[1], plans[2] = None, None, "enterprise"  # missing numeric, missing and unseen categories
    test = test.set_column(test.column_names.index("age"), "age", pa.array(ages, pa.float64()))
    test = test.set_column(test.column_names.index("plan"), "plan", pa.array(plans, pa.string()))
    probabilities, labels = Predictor(model_dir).predict(test)
    numeric, categorical = preprocessing.numeric_matrix(test), preprocessing.categorical_matrix(test)
    assert numeric[0, preprocessing.numeric.index("age")] == pytest.approx(
        float(np.median(pq.read_table(paths.train)["age"].to_numpy()))
    )
    assert categorical[1, 0] == 0 and categorical[2, 0] == 0  # the reserved category
    from kfp_mlops.components.train.model import ServingHead, build_model

    network = build_model("mlp", {}, preprocessing)
    network.load_state_dict(torch.load(model_dir / "weights.pt"))
    with torch.no_grad():
        torch_out = ServingHead(network, preprocessing).eval()(torch.from_numpy(numeric), torch.from_numpy(categorical))
    assert probabilities.shape == (37, 2)
    np.testing.assert_allclose(probabilities, torch_out.numpy(), atol=1e-5)
    threshold = json.loads((model_dir / "model_config.json").read_text())["decision_threshold"]
    assert labels.tolist() == [int(p >= threshold) for p in probabilities[:, 1]]
    # standardisation statistics come from the training split only
    train_ages = pq.read_table(paths.train)["age"].to_numpy()
    assert preprocessing.means[preprocessing.numeric.index("age")] == pytest.approx(train_ages.mean())
    model_config = json.loads((model_dir / "model_config.json").read_text())
    assert model_config["deepspeed"]["zero_optimization"]["stage"] == 2
    log = (directory / "train.log").read_text()
    assert "[train] epoch 4/4" in log
    assert "[train] checkpoint step10 " in log and "[train] checkpoint step20 " in log  # every 10 optimizer steps


def test_checkpoints_are_written_every_k_steps_and_pruned(trained_model):
    _, directory = trained_model
    checkpoints = directory / "ckpt"
    assert (checkpoints / "latest").read_text().strip() == "epoch4"
    tags = sorted(p.name for p in checkpoints.iterdir() if p.is_dir())
    assert len(tags) == 2 and "epoch4" in tags
    assert (checkpoints / "best.pt").exists()


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_training_killed_mid_epoch_resumes_from_its_latest_checkpoint(request, ingested, tmp_path, backend):
    """The pod dies mid-epoch (launcher and workers SIGKILLed) and its retry resumes from the checkpoint: on the
    pod's disk (local), or on S3 (SeaweedFS) with the dead pod's disk gone, so the retry can only have S3's copy."""
    config, paths = ingested
    # ~200 optimizer steps an epoch, a checkpoint every 25: the kill lands on a step checkpoint, mid-epoch
    settings = {"epochs": 2, "micro_batch_size": 8, "workers": 2, "zero_stage": 1, "checkpoint_every_steps": 25}
    script = tmp_path / "run_training.py"
    script.write_text(
        "import sys\nsys.path.insert(0, sys.argv[1])\n"
        "from support.configs import pipeline_config\nfrom kfp_mlops.components.train.core import train\n"
        f"config = pipeline_config({str(config.data.source)!r}, train={settings!r})\n"
        f"train(config, {paths.train!r}, {paths.validation!r}, sys.argv[2], sys.argv[3])\n"
    )
    if backend == "s3":
        checkpoints = request.getfixturevalue("s3").uri(f"{tmp_path.name}/ckpt")  # the environment points at it
    else:
        checkpoints = str(tmp_path / "ckpt")
    latest = storage.parse(checkpoints).child("latest").uri
    pod_disk = tmp_path / "pod-tmp"  # the first pod's local disk: its temporary directories (the S3 mirror's too)
    pod_disk.mkdir()
    tests_dir = str(Path(__file__).parent)
    command = [sys.executable, str(script), tests_dir, str(tmp_path / "m1"), checkpoints]
    environment = {**os.environ, "TMPDIR": str(pod_disk)}
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=environment)
    # polled often: the kill must land before the first epoch ends
    wait_for(lambda: storage.exists(latest) or process.poll() is not None, "the first checkpoint", timeout=180)
    assert process.poll() is None, "training ended before its first checkpoint"
    launcher = psutil.Process(process.pid)
    tree = [launcher, *launcher.children(recursive=True)]
    for member in tree:  # the pod dies: launcher and workers at once (torchrun starts workers in new sessions)
        member.send_signal(signal.SIGKILL)
    process.wait()
    psutil.wait_procs(tree, timeout=10)
    killed_at = storage.read_bytes(latest).decode().strip()
    assert killed_at.startswith("step"), f"the kill should land mid-epoch, but the latest checkpoint is {killed_at}"
    assert not (tmp_path / "m1").exists(), "a killed run must leave no model output"
    if backend == "s3":
        assert any(f"/ckpt/{killed_at}/" in uri for uri in storage.list_uris(checkpoints))  # its shards are up
        shutil.rmtree(pod_disk)  # a retry runs on another node

    log = tmp_path / "retry.log"
    result = train(pipeline_config(config.data.source, train=settings), paths.train, paths.validation,
                   str(tmp_path / "m2"), checkpoints, str(log))  # fmt: skip
    step = int(killed_at.removeprefix("step"))
    assert step % 25 == 0 and result.metrics["resumed_from_step"] == step
    text = log.read_text()
    assert f"resumed from checkpoint step {step}" in text
    steps_per_epoch = result.batching.steps_per_epoch
    assert step < steps_per_epoch  # resumed inside the first epoch
    assert result.metrics["global_steps"] == 2 * steps_per_epoch  # continued, not restarted: no extra steps
    # continued from there, not from scratch: the retry's first checkpoint is the next one after the kill's
    saved = [int(n) for n in re.findall(r"checkpoint step(\d+) ", text)]
    assert saved and step < saved[0] <= step + 25 and min(saved) > step, saved
    assert storage.read_bytes(latest).decode().strip() == "epoch2"
    assert (tmp_path / "m2" / "model.onnx").exists()


@pytest.mark.parametrize("backend", ["local", "s3"])
@pytest.mark.parametrize("tag", ["../../etc", "global_step25", "step25/../../../tmp"])
def test_a_latest_pointer_naming_no_checkpoint_tag_is_refused_and_not_retried(
    request, ingested, tmp_path, backend, tag
):
    config, paths = ingested
    checkpoint_dir = str(tmp_path / "ckpt") if backend == "local" else request.getfixturevalue("s3").uri(tmp_path.name)
    storage.write_bytes(storage.parse(checkpoint_dir).child("latest").uri, f"{tag}\n".encode())
    message = f"checkpoint directory {checkpoint_dir}: latest names {tag!r}, not a checkpoint tag"
    for attempt in ("first", "retry"):
        with pytest.raises(DeterministicTrainingError, match=re.escape(message)) as raised:
            train(config, paths.train, paths.validation, str(tmp_path / "m"), checkpoint_dir)
        assert ("not retried" in str(raised.value)) == (attempt == "retry")
    assert not (tmp_path / "m").exists()


class _RunsCodeWhenUnpickled:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('code ran')",)


def test_a_checkpoint_file_that_would_run_code_is_refused_on_resume_and_never_unpickled(
    trained_model, ingested, tmp_path
):
    probe = tmp_path / "probe.pt"
    torch.save({"module": _RunsCodeWhenUnpickled(tmp_path / "probe-ran")}, probe)
    torch.load(probe, weights_only=False)
    assert (tmp_path / "probe-ran").exists(), "the payload must run code when unpickled the old way"

    checkpoints = tmp_path / "ckpt"
    shutil.copytree(trained_model[1] / "ckpt", checkpoints)
    tag = (checkpoints / "latest").read_text().strip()
    states = checkpoints / tag / "mp_rank_00_model_states.pt"
    marker = tmp_path / "pwned"
    torch.save({"module": _RunsCodeWhenUnpickled(marker)}, states)
    config, paths = ingested
    config = config.model_copy(update={"train": config.train.model_copy(update=TRAIN_SETTINGS)})
    message = f"checkpoint file {states} holds more than tensors .* refusing to load it"
    for attempt in ("first", "retry"):
        with pytest.raises(DeterministicTrainingError, match=message) as raised:
            train(config, paths.train, paths.validation, str(tmp_path / "m"), str(checkpoints))
        assert ("not retried" in str(raised.value)) == (attempt == "retry")
    assert not marker.exists(), "the checkpoint file was unpickled with weights_only=False"
    assert not (tmp_path / "m").exists()


def test_a_small_dataset_trains_with_the_default_settings_and_records_the_adjusted_batching(tmp_path):
    """569 rows, nothing configured but the schema: the default micro-batch of 256 shrinks to fit the data."""
    from kfp_mlops.components.ingest.core import ingest
    from kfp_mlops.components.shared.config import parse_config
    from kfp_mlops.components.shared.splits import SplitPaths
    from kfp_mlops.sample_data import make_sample_table, sample_config

    pq.write_table(make_sample_table(rows=572, seed=5), tmp_path / "small.parquet")
    config = parse_config(sample_config(str(tmp_path / "small.parquet")))
    paths = SplitPaths(*(str(tmp_path / name) for name in ("train", "validation", "test")))
    ingest(config, paths)
    log = tmp_path / "train.log"
    result = train(config, paths.train, paths.validation, str(tmp_path / "model"), str(tmp_path / "ckpt"), str(log))
    batching = result.batching
    assert batching.workers == 2 and batching.micro_batch_size < 256
    assert batching.steps_per_epoch >= MIN_STEPS_PER_EPOCH
    assert result.metrics["global_steps"] >= MIN_STEPS_PER_EPOCH * result.metrics["epochs"]
    assert f"adjusted to the data: micro_batch_size 256 -> {batching.micro_batch_size}" in log.read_text()
    recorded = json.loads((tmp_path / "model" / "model_config.json").read_text())["batching"]
    assert recorded["micro_batch_size"] == batching.micro_batch_size and recorded["adjustments"]
    assert "start-up" in log.read_text() and result.metrics["startup_seconds"] > 0


@pytest.mark.parametrize(
    ("rows", "micro", "accumulation", "workers", "expected"),
    [
        (100_000, 256, 1, 2, (256, 1, 2, 195)),  # large data: the configured batching
        (399, 256, 1, 2, (24, 1, 2, 8)),  # the 399 training rows: at least 8 steps an epoch
        (3, 256, 4, 2, (1, 1, 2, 1)),  # fewer rows than workers x accumulation: accumulation shrinks first
        (1, 256, 1, 2, (1, 1, 1, 1)),  # one row: one worker
    ],
)
def test_batching_is_fitted_to_the_number_of_training_rows(rows, micro, accumulation, workers, expected):
    settings = TrainConfig(micro_batch_size=micro, gradient_accumulation_steps=accumulation)
    batching = effective_batching(rows, settings, workers)
    assert (batching.micro_batch_size, batching.gradient_accumulation_steps, batching.workers,
            batching.steps_per_epoch) == expected  # fmt: skip
    assert bool(batching.adjustments) == (expected[:3] != (micro, accumulation, workers))


def test_a_diverging_run_is_recorded_and_its_retry_fails_at_once(ingested, tmp_path):
    config, paths = ingested
    settings = {"epochs": 2, "workers": 2, "micro_batch_size": 64, "gradient_clipping": 0.0,
                "optimizer": {"type": "SGD", "lr": 1e30}, "scheduler": {"warmup_steps": 0}}  # fmt: skip
    diverging = pipeline_config(config.data.source, train=settings)
    with pytest.raises(DeterministicTrainingError, match="training diverged"):
        train(diverging, paths.train, paths.validation, str(tmp_path / "m"), str(tmp_path / "ckpt"))
    assert (tmp_path / "ckpt" / FAILURE_MARKER).exists()
    start = time.monotonic()
    with pytest.raises(DeterministicTrainingError, match="not retried: .*training diverged"):
        train(diverging, paths.train, paths.validation, str(tmp_path / "m"), str(tmp_path / "ckpt"))
    assert time.monotonic() - start < 5 and not (tmp_path / "m").exists()


def test_early_stopping_ends_training_when_validation_stops_improving_under_zero_3(ingested, tmp_path):
    config, paths = ingested
    config = pipeline_config(config.data.source, train={
        "epochs": 10, "workers": 2, "micro_batch_size": 128, "zero_stage": 3,
        "early_stopping": {"patience": 1, "min_delta": 10.0},
    })  # fmt: skip
    result = train(config, paths.train, paths.validation, str(tmp_path / "m"), str(tmp_path / "c"))
    assert result.metrics["epochs"] == 2 and result.metrics["stopped_early"] is True


def test_f1_optimal_threshold_separates_where_f1_peaks():
    from kfp_mlops.components.train.core import f1_optimal_threshold

    probabilities = np.array([0.9, 0.8, 0.7, 0.3, 0.2, 0.1])
    positives = np.array([True, True, False, True, False, False])
    # top-2: F1 = 4/5 = 0.8; top-4: F1 = 6/7 ≈ 0.857 (best); top-3: 4/6
    assert f1_optimal_threshold(probabilities, positives) == pytest.approx(0.3)


# --- missing categories: null, "" and NaN take the reserved index, in training and in the serving graph -------------


@pytest.fixture(scope="module")
def weather_splits(tmp_path_factory):
    """The weather data (5 classes, categorical gaps) ingested from CSV and from Parquet."""
    from support import weather

    from kfp_mlops.components.ingest.core import ingest
    from kfp_mlops.components.shared.config import parse_config
    from kfp_mlops.components.shared.splits import SplitPaths

    splits = {}
    for fmt in ("csv", "parquet"):
        directory = tmp_path_factory.mktemp(f"weather-{fmt}")
        config = parse_config(
            {"data": {"source": str(weather.write(directory / "raw", fmt))}, "schema": weather.schema()}
        )
        paths = SplitPaths(*(str(directory / name) for name in ("train", "validation", "test")))
        ingest(config, paths)
        splits[fmt] = (config, {name: pq.read_table(path) for name, path in paths.items()}, paths)
    return splits


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_prepare_fits_vocabularies_without_missing_values_and_maps_them_to_the_reserved_index(
    weather_splits, tmp_path, fmt
):
    from support import weather

    config, tables, paths = weather_splits[fmt]
    prepared = prepare(config, paths.train, paths.validation, str(tmp_path / "prepared"))
    p = prepared.preprocessing
    assert p.vocabularies == {"wind_dir": ["E", "N", "S", "W"], "frost": ["false", "true"], "sensor": ["v1", "v2"]}
    assert p.classes == sorted(weather.CLASSES) and p.cardinalities() == [5, 3, 3]
    matrix = p.categorical_matrix(tables["train"])
    missing = np.array([v is None for v in tables["train"]["wind_dir"].to_pylist()])
    assert missing.any() and (matrix[missing, 0] == 0).all() and (matrix[~missing, 0] > 0).all()
    test = p.categorical_matrix(tables["test"])  # sensor is null in every test row
    assert (test[:, 2] == 0).all()
    # nulls in the train split only: the rows scored later have every category, each its own index
    complete_test = tables["test"].filter(pa.compute.is_valid(tables["test"]["wind_dir"]))
    assert (p.categorical_matrix(complete_test)[:, 0] > 0).all()
    # nulls in the test split only: fitted on complete training rows, the test's gaps still take index 0
    complete = tables["train"].filter(pa.compute.is_valid(tables["train"]["wind_dir"]))
    fitted = Preprocessing.fit(complete, p.features, p.categorical, p.label)
    assert fitted.vocabularies["wind_dir"] == ["E", "N", "S", "W"]
    assert (fitted.categorical_matrix(tables["test"])[:, 0] == 0).sum() == tables["test"]["wind_dir"].null_count
    # a category with no value at all in the train split: an empty vocabulary, every row the reserved index
    blank = tables["train"].set_column(
        tables["train"].column_names.index("sensor"), "sensor", pa.nulls(tables["train"].num_rows, pa.string())
    )
    empty = Preprocessing.fit(blank, p.features, p.categorical, p.label)
    assert empty.vocabularies["sensor"] == [] and empty.cardinalities()[2] == 1
    assert (empty.categorical_matrix(tables["validation"])[:, 2] == 0).all()


def _linear_core(numeric: int, categorical: int, classes: int, seed: int = 0):
    """A stand-in for the trained network (numeric float, category indices → softmax probabilities), in ONNX."""
    from onnx import TensorProto, helper

    weights = np.random.default_rng(seed).normal(0, 0.5, (numeric + categorical, classes)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["categorical"], ["codes"], to=TensorProto.FLOAT),
            helper.make_node("Concat", ["numeric", "codes"], ["x"], axis=1),
            helper.make_node("MatMul", ["x", "w"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        ],
        "core",
        [helper.make_tensor_value_info("numeric", TensorProto.FLOAT, ["N", numeric]),
         helper.make_tensor_value_info("categorical", TensorProto.INT64, ["N", categorical])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", classes])],
        initializer=[helper.make_tensor("w", TensorProto.FLOAT, weights.shape, weights.ravel())],
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), weights


def test_serving_graph_of_a_multiclass_model_maps_every_missing_spelling_to_the_reserved_category(weather_splits):
    """Raw rows with null, "", NaN (and Python None) categories give what the core gives for index 0; labels are
    the class names and probabilities sum to 1 (the five-class weather model's preprocessing)."""
    import onnx

    from kfp_mlops.components.shared import model_package, serving_graph

    config, tables, paths = weather_splits["parquet"]
    p = Preprocessing.fit(tables["train"], config.schema_.features, config.schema_.categorical, config.schema_.label)
    core, weights = _linear_core(len(p.numeric), len(p.categorical), len(p.classes))
    served = serving_graph.compose(core, p, 0.5)
    session = onnxruntime.InferenceSession(served.SerializeToString(), providers=["CPUExecutionProvider"])
    test = tables["test"]
    rows = {name: test[name].to_pylist()[:4] for name in p.features}
    rows["wind_dir"] = [None, "", float("nan"), "N"]
    rows["frost"] = [True, None, False, "true"]  # Python booleans as the vocabulary spells them
    feeds = model_package.raw_inputs(rows, p.numeric, p.categorical)
    assert feeds["categorical"][:, 0].tolist() == ["", "", "", "N"]
    assert feeds["categorical"][:, 1].tolist() == ["true", "", "false", "true"]
    probabilities, labels = session.run(["probabilities", "label"], feeds)
    raw = {name: feeds["categorical"][:, i].tolist() for i, name in enumerate(p.categorical)}
    codes = p.categorical_matrix(pa.table(raw))  # what training computes from the same strings
    assert codes[:3, 0].tolist() == [0, 0, 0] and codes[:, 1].tolist() == [2, 0, 1, 2]
    logits = np.concatenate([p.numeric_matrix(pa.table({n: rows[n] for n in p.numeric})), codes], axis=1) @ weights
    expected = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(probabilities, expected / expected.sum(1, keepdims=True), atol=1e-5)
    np.testing.assert_allclose(probabilities.sum(1), 1.0, atol=1e-6)
    assert labels[:, 0].tolist() == [p.classes[i] for i in probabilities.argmax(1)]
    assert onnx.checker.check_model(served) is None


def test_one_process_under_zero_0_takes_the_fast_path_and_trains_the_same_weights_as_the_engine_path(
    ingested, tmp_path
):
    config, paths = ingested
    weights = {}
    for stage in (0, 1):  # ZeRO 1 with one process: the engine's collectives and clipping, the same arithmetic
        settings = config.train.model_copy(update={"workers": 1, "zero_stage": stage, "epochs": 2,
                                                   "micro_batch_size": 64, "gradient_clipping": 0.05})  # fmt: skip
        staged = config.model_copy(update={"train": settings})
        result = train(staged, paths.train, paths.validation, str(tmp_path / f"m{stage}"), str(tmp_path / f"c{stage}"))
        assert result.metrics["fast_path"] is (stage == 0)
        weights[stage] = torch.load(tmp_path / f"m{stage}" / "weights.pt")
    for name, tensor in weights[0].items():  # a clip of 0.05 binds on every step: clipping must match too
        torch.testing.assert_close(tensor, weights[1][name], rtol=1e-4, atol=1e-5, msg=name)
