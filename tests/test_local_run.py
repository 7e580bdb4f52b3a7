"""The compiled training YAML, loaded back from disk, runs through kfp.local (SubprocessRunner, no venv)."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from kfp_mlops.cli import main
from kfp_mlops.components.shared.images import ImageConfig
from kfp_mlops.pipelines import compile_pipeline

pytestmark = pytest.mark.local_run
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    """The training pipeline compiled once to a file; every run below loads it back from there."""
    return compile_pipeline("training", tmp_path_factory.mktemp("pkg") / "training.yaml", ImageConfig(tag="test"))


def write_config(directory: Path, source: str, **sections) -> Path:
    """examples/training.yaml on ``source``, training kept short, sections updated."""
    document = yaml.safe_load((REPO / "examples" / "training.yaml").read_text())
    document["data"]["source"] = source
    document["train"] = {"epochs": 4, "micro_batch_size": 64, "optimizer": {"lr": 0.003}}
    for name, values in sections.items():
        document[name] = {**document.get(name, {}), **values}
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def metadata_of(task_dir: Path, output: str) -> dict:
    return executor_output(task_dir)["artifacts"][output]["artifacts"][0]["metadata"]


def run_training(package: Path, root: Path, *args: str) -> int:
    """``kfp-mlops run training --local`` on the compiled ``package``, with a pipeline root and more arguments."""
    return main(["run", "training", "--local", "--package", str(package), "--pipeline-root", str(root), *args])


def run_dir_of(root: Path) -> Path:
    """The one run directory under a pipeline root (which also holds the runs' checkpoints)."""
    (run_dir,) = root.glob("kfp-mlops-training-*")
    return run_dir


def executor_output(task_dir: Path) -> dict:
    return json.loads((task_dir / "executor_output.json").read_text())


def test_training_yaml_runs_every_step_locally_and_records_the_blessed_model(package, sample_dir, tmp_path, capsys):
    baseline = tmp_path / "registry" / "baseline.json"
    config = write_config(tmp_path, str(sample_dir), evaluate={"baseline": str(baseline)})
    root = tmp_path / "root"
    code = run_training(package, root, "--config", str(config))
    out = capsys.readouterr().out
    assert code == 0, out
    assert "Pipeline kfp-mlops-training: SUCCEEDED" in out
    steps = ("ingest", "features", "prepare-training", "train-model", "evaluate-model", "record-baseline")
    for step in steps:
        assert re.search(rf"^{step} +SUCCESS", out, re.MULTILINE), f"{step} did not succeed"
    # a short console: start/end of each step, epochs, outcomes and the summary; the full output is in logs/
    assert len(out.splitlines()) < 45, out
    assert "executor_input" not in out and "DeepSpeed" not in out
    assert re.search(r"^  train-model +epoch 4/4 train_loss=\S+ val_loss=\S+ step=\d+ samples/s=", out, re.MULTILINE)
    assert "[evaluate] BLESSED" in out
    run_dir = run_dir_of(root)
    logs = run_dir / "logs"
    assert {p.name for p in logs.iterdir()} == {"run.log", *(f"{step}.log" for step in steps)}
    assert "executor_input" in (logs / "ingest.log").read_text()
    assert "[train] checkpoint" in (logs / "train-model.log").read_text()
    task = run_dir / "ingest"
    rows = {name: pq.read_table(task / name).num_rows for name in ("train", "validation", "test")}
    assert sum(rows.values()) == 5_000 - 25  # 0.5 % exact duplicates dropped
    artifacts = executor_output(task)["artifacts"]
    train_meta = artifacts["train"]["artifacts"][0]["metadata"]
    assert train_meta["rows"] == rows["train"]
    assert train_meta["statistics"]["monthly_charges"]["mean"] > 0
    assert train_meta["content_hash"].startswith("sha256:")
    metrics = artifacts["metrics"]["artifacts"][0]["metadata"]
    assert metrics["duplicates_dropped"] == 25 and metrics["rows_read"] == 5_000
    assert "| train |" in (task / "summary").read_text()
    # features: point-in-time datasets from Feast, and the repository with its registry and online store
    features_dir = run_dir / "features"
    assert pq.read_table(features_dir / "train_features").num_rows == rows["train"]
    assert (features_dir / "feature_repo" / "feature_store.yaml").exists()
    # train: DeepSpeed with 2 CPU processes, ONNX model, the training log
    train_metrics = metadata_of(run_dir / "train-model", "metrics")
    assert train_metrics["world_size"] == 2 and train_metrics["samples_per_second"] > 0
    assert (run_dir / "train-model" / "model" / "model.onnx").exists()
    assert "[train] epoch 4/4" in (run_dir / "train-model" / "training_log").read_text()
    # evaluate: the UI's ClassificationMetrics, the model card, the blessing; then the baseline record
    confusion = metadata_of(run_dir / "evaluate-model", "classification_metrics")["confusionMatrix"]
    assert sum(sum(r["row"]) for r in confusion["rows"]) == rows["test"]
    assert "**BLESSED**" in (run_dir / "evaluate-model" / "model_card").read_text()
    assert metadata_of(run_dir / "evaluate-model", "blessing")["blessed"] is True
    scores = metadata_of(run_dir / "evaluate-model", "metrics")
    assert 0.65 < scores["roc_auc"] <= 1.0 and 0.5 < scores["accuracy"] <= 1.0 and scores["log_loss"] < 0.69
    assert 0.0 < scores["f1"] <= 1.0 and 0.0 <= scores["expected_calibration_error"] < 0.2
    assert json.loads(baseline.read_text())["model"].endswith("train-model/model")


def test_model_worse_than_the_baseline_is_not_blessed_and_not_recorded(package, sample_dir, tmp_path, capsys):
    baseline = tmp_path / "baseline.json"
    record = {"model": str(tmp_path / "retired-champion"), "metrics": {"roc_auc": 0.99}, "run_id": "earlier"}
    baseline.write_text(json.dumps(record))
    evaluate = {"baseline": str(baseline), "allow_recorded_baseline_metrics": True}  # its model is gone
    config = write_config(tmp_path, str(sample_dir), evaluate=evaluate)
    root = tmp_path / "root"
    code = run_training(package, root, "--config", str(config))
    out = capsys.readouterr().out
    assert code == 0, out
    assert "NOT BLESSED: roc_auc" in out and "regresses more than 0.01 from the baseline's 0.9900" in out
    assert "record-baseline" not in out.split("Pipeline kfp-mlops-training:")[-1]
    assert json.loads(baseline.read_text()) == record


def test_bad_data_fails_the_run_naming_the_step_and_error_with_no_outputs(package, sample_dir, tmp_path, capsys):
    import pyarrow as pa

    table = pq.read_table(sample_dir)
    labels = table["churned"].to_pylist()
    labels[10] = None
    bad = tmp_path / "bad"
    bad.mkdir()
    pq.write_table(
        table.set_column(table.column_names.index("churned"), "churned", pa.array(labels)), bad / "x.parquet"
    )
    root = tmp_path / "root"
    code = run_training(package, root, "--config", str(write_config(tmp_path, str(bad))))
    out = capsys.readouterr().out
    assert code == 1
    assert "Pipeline kfp-mlops-training: FAILED" in out
    assert "step 'ingest' failed: InputError:" in out and "column 'churned' row 11: label is null or NaN" in out
    run_dir = run_dir_of(root)
    assert f"log: {run_dir / 'logs' / 'ingest.log'}" in out  # the failing step's log, and its last lines
    assert re.search(r"^  \| .*InputError: .*label is null or NaN", out, re.MULTILINE)
    assert not any((run_dir / "ingest").glob("train*")), "a failed ingest left a partial output"


def test_data_source_parameter_overrides_the_config(package, sample_dir, tmp_path, capsys):
    config = write_config(tmp_path, str(sample_dir))
    code = run_training(
        package, tmp_path / "root", "--config", str(config), "--param", f"data_source={tmp_path}/elsewhere/"
    )
    assert code == 1
    assert f"data.source {tmp_path}/elsewhere/: no data files found" in capsys.readouterr().out


def test_unknown_parameter_is_rejected_before_running(package, tmp_path, capsys):
    code = run_training(package, tmp_path / "root", "--param", "epochs=3")
    assert code == 2
    assert "unknown pipeline parameter 'epochs'; parameters are config, data_source" in capsys.readouterr().err
    assert not (tmp_path / "root").exists()


@pytest.mark.servers
def test_ingest_step_reads_its_config_and_data_from_s3(package, s3, sample_dir, tmp_path, capsys):
    from kfp_mlops.components.shared import storage

    storage.copy_tree(str(sample_dir), s3.uri("runs/raw"))
    document = yaml.safe_load((REPO / "examples" / "training.yaml").read_text())
    document["data"]["source"] = s3.uri("runs/raw/")
    storage.write_bytes(s3.uri("runs/config.yaml"), yaml.safe_dump(document).encode())
    code = run_training(package, tmp_path / "root", "--param", f"config={s3.uri('runs/config.yaml')}")
    out = capsys.readouterr().out
    assert code == 0, out
    run_dir = run_dir_of(tmp_path / "root")
    assert pq.read_table(run_dir / "ingest" / "train").num_rows > 3_000


def test_later_steps_read_the_config_ingest_resolved_not_the_uri(package, sample_dir, tmp_path, capsys):
    """Later steps take ingest's resolved config, so an edit to the file mid-run or before a retry cannot mix two
    configs in one run; the model keeps the config it was trained with."""
    config = write_config(tmp_path, str(sample_dir))
    compiled = next(yaml.safe_load_all(package.read_text()))
    features_inputs = compiled["root"]["dag"]["tasks"]["features"]["inputs"]["parameters"]
    assert features_inputs["config"] == {
        "taskOutputParameter": {"outputParameterKey": "Output", "producerTask": "ingest"}
    }
    code = run_training(package, tmp_path / "root", "--param", f"config={config}")
    assert code == 0, capsys.readouterr().out
    recorded = yaml.safe_load(
        (run_dir_of(tmp_path / "root") / "train-model" / "model" / "pipeline_config.yaml").read_text()
    )
    assert recorded["data"]["source"] == str(sample_dir) and recorded["train"]["epochs"] == 4


def test_a_training_config_error_fails_in_seconds_before_any_gpu_step_or_retry(package, sample_dir, tmp_path, capsys):
    """bf16 asked of a machine without GPUs: prepare-training (CPU, no retries) stops the run; train-model, which
    retries with back-off, never starts."""
    config = write_config(tmp_path, str(sample_dir), train={"precision": "bf16", "epochs": 1})
    started = time.monotonic()
    code = run_training(package, tmp_path / "root", "--config", str(config))
    seconds = time.monotonic() - started
    out = capsys.readouterr().out
    assert code == 1
    assert "step 'prepare-training' failed: ConfigError: train.precision: bf16 needs a GPU" in out
    assert "train-model" not in out and "retrying" not in out
    assert seconds < 60  # ingest and Feast included; the error itself comes as soon as prepare-training runs
