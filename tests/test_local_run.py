"""The compiled training YAML, loaded back from disk, runs through kfp.local (SubprocessRunner, no venv)."""

from __future__ import annotations

import json
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


def write_config(directory: Path, source: str) -> Path:
    document = yaml.safe_load((REPO / "examples" / "training.yaml").read_text())
    document["data"]["source"] = source
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def executor_output(task_dir: Path) -> dict:
    return json.loads((task_dir / "executor_output.json").read_text())


def test_training_yaml_runs_locally_and_ingest_writes_three_splits_with_statistics(
    package, sample_dir, tmp_path, capsys
):
    config = write_config(tmp_path, str(sample_dir))
    root = tmp_path / "root"
    code = main(["run", "training", "--local", "--package", str(package), "--config", str(config),
                 "--pipeline-root", str(root)])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    assert "Pipeline kfp-mlops-training: SUCCEEDED" in out
    assert "ingest  SUCCESS" in out
    (run_dir,) = list(root.iterdir())
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
    code = main(["run", "training", "--local", "--package", str(package), "--config",
                 str(write_config(tmp_path, str(bad))), "--pipeline-root", str(root)])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 1
    assert "Pipeline kfp-mlops-training: FAILED" in out
    assert "step 'ingest' failed: InputError:" in out and "column 'churned' row 11: label is null or NaN" in out
    (run_dir,) = list(root.iterdir())
    assert not any((run_dir / "ingest").glob("train*")), "a failed ingest left a partial output"


def test_data_source_parameter_overrides_the_config(package, sample_dir, tmp_path, capsys):
    config = write_config(tmp_path, "/nonexistent/data/")
    code = main(["run", "training", "--local", "--package", str(package), "--config", str(config),
                 "--param", f"data_source={sample_dir}", "--pipeline-root", str(tmp_path / "root")])  # fmt: skip
    assert code == 0, capsys.readouterr().out


def test_unknown_parameter_is_rejected_before_running(package, tmp_path, capsys):
    code = main(["run", "training", "--local", "--package", str(package), "--param", "epochs=3",
                 "--pipeline-root", str(tmp_path / "root")])  # fmt: skip
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
    code = main(["run", "training", "--local", "--package", str(package), "--param",
                 f"config={s3.uri('runs/config.yaml')}", "--pipeline-root", str(tmp_path / "root")])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    (run_dir,) = list((tmp_path / "root").iterdir())
    assert pq.read_table(run_dir / "ingest" / "train").num_rows > 3_000
