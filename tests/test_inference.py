"""Batch inference on real servers and real data: a feature repository built by the features step (SQLite online,
file offline store), the DeepSpeed-trained package in-process and in a real Triton (python backend, gRPC), the
prediction log on local disk. Nothing is mocked. The compiled pipeline's kfp.local run is in test_local_run.py (it
reuses that module's deployed model)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from support.triton import running_triton

from kfp_mlops import triton_local
from kfp_mlops.cli import main
from kfp_mlops.components.features.core import build_feature_sets
from kfp_mlops.components.inference import core, executor
from kfp_mlops.components.inference.scoring import TritonScorer
from kfp_mlops.components.shared import prediction_log
from kfp_mlops.components.shared.config import InferenceConfig
from kfp_mlops.components.shared.errors import InputError
from kfp_mlops.components.shared.model_package import Predictor, read_model_config
from kfp_mlops.components.shared.records import Deployment, ServingRecord
from kfp_mlops.components.shared.registry import RegistryState
from kfp_mlops.components.shared.splits import SplitPaths
from kfp_mlops.sample_data import ENTITY, TIMESTAMP

MODEL = "churn"
AFTER_ALL = datetime(2026, 1, 1, tzinfo=UTC)  # after every row, within the view's ttl


@pytest.fixture(scope="module")
def repo(ingested, tmp_path_factory) -> Path:
    config, paths = ingested
    directory = tmp_path_factory.mktemp("inference-features")
    out = SplitPaths(*(str(directory / "out" / name) for name in ("train", "validation", "test")))
    build_feature_sets(config, paths, str(directory / "feature_repo"), out)
    return directory / "feature_repo"


@pytest.fixture(scope="module")
def rows(ingested) -> pd.DataFrame:
    """Every ingested row (the offline source), sorted by time."""
    _, paths = ingested
    frame = pd.concat([pq.read_table(path).to_pandas() for _, path in paths.items()])
    return frame.sort_values([TIMESTAMP, ENTITY], kind="stable").reset_index(drop=True)


@pytest.fixture(scope="module")
def ids(rows) -> list[int]:
    return sorted(int(i) for i in rows[ENTITY].unique())[:240]


@pytest.fixture
def record(trained_package) -> ServingRecord:
    return ServingRecord(model=str(trained_package), metrics={}, registry=RegistryState(model_name=MODEL, version=3))


def entities_file(directory: Path, values: dict, name: str = "entities.parquet") -> str:
    path = directory / name
    table = pa.table(values)
    if name.endswith(".csv"):
        import pyarrow.csv as pacsv

        pacsv.write_csv(table, path)
    else:
        pq.write_table(table, path)
    return str(path)


def settings(entities: str, log: Path, **more) -> InferenceConfig:
    return InferenceConfig(entities=entities, log=str(log), **more)


def read_back(log: Path) -> pd.DataFrame:
    table, _ = prediction_log.read_log(str(log), ENTITY, TIMESTAMP)
    return table.to_pandas().sort_values([ENTITY, TIMESTAMP]).reset_index(drop=True)


def expected_at(rows: pd.DataFrame, package: Path, keys: pd.DataFrame) -> np.ndarray:
    """The package's probabilities on each key's latest ingested row at or before its time (pandas merge_asof)."""

    def nanoseconds(times: pd.Series) -> pd.Series:
        return pd.to_datetime(times, utc=True).astype("datetime64[ns, UTC]")

    keys = keys.assign(**{TIMESTAMP: nanoseconds(keys[TIMESTAMP])}).sort_values(TIMESTAMP)
    source = rows.assign(**{TIMESTAMP: nanoseconds(rows[TIMESTAMP])})
    joined = pd.merge_asof(keys, source, on=TIMESTAMP, by=ENTITY, direction="backward")
    joined = joined.sort_values([ENTITY, TIMESTAMP]).reset_index(drop=True)
    probabilities, _ = Predictor(package).predict(pa.Table.from_pandas(joined, preserve_index=False))
    return probabilities


# --- in-process ------------------------------------------------------------------------------------------------


def test_in_process_predictions_equal_the_package_on_the_latest_rows_and_fill_the_log(
    repo, record, ids, rows, trained_package, tmp_path
):
    source = entities_file(tmp_path, {ENTITY: ids})
    result = core.run_inference(settings(source, tmp_path / "log"), record, str(repo), "run-1", AFTER_ALL)
    assert (result.rows, result.unknown_entities, result.batches, result.source) == (len(ids), 0, 1, "package")
    log = read_back(tmp_path / "log")
    assert log[ENTITY].tolist() == ids and (log[TIMESTAMP] == pd.Timestamp(AFTER_ALL)).all()
    keys = pd.DataFrame({ENTITY: ids, TIMESTAMP: [AFTER_ALL] * len(ids)})
    np.testing.assert_allclose(np.stack(log["probabilities"]), expected_at(rows, trained_package, keys), atol=1e-5)
    config = read_model_config(trained_package)
    assert set(log["predicted"]) <= {str(c) for c in config.classes} and log["prediction"].isna().all()
    assert list(log.columns[: 2 + len(config.features)]) == [ENTITY, TIMESTAMP, *config.features]
    assert (log["model_name"] == MODEL).all() and (log["model_version"] == 0).all()
    assert (log["registry_version"] == "3").all() and (log["model_uri"] == str(trained_package)).all()
    assert (log["run_id"] == "run-1").all()
    assert [Path(f).name for f in result.files] == ["part-run-1-00000.parquet"]
    assert "date=2026-01-01" in result.files[0]
    summary = core.render_summary(result)
    assert f"Predictions: {len(ids)} of {len(ids)} entities" in summary and "in-process" in summary


def test_point_in_time_features_follow_each_rows_own_timestamp(repo, record, rows, trained_package, tmp_path):
    """Rows at their own (earlier) time get the features as they were then, not the latest ones."""
    picked = rows.iloc[np.linspace(len(rows) // 4, len(rows) - 1, 60).astype(int)]
    times = pd.to_datetime(picked[TIMESTAMP], utc=True) + pd.Timedelta(seconds=1)
    keys = pd.DataFrame({ENTITY: picked[ENTITY].to_numpy(), TIMESTAMP: times.to_numpy()}).drop_duplicates()
    source = entities_file(tmp_path, {ENTITY: keys[ENTITY].to_numpy(), TIMESTAMP: pa.array(keys[TIMESTAMP])})
    result = core.run_inference(settings(source, tmp_path / "log"), record, str(repo), "run-pit", AFTER_ALL)
    log = read_back(tmp_path / "log")
    assert result.rows == len(keys) and len(log) == len(keys)
    np.testing.assert_allclose(np.stack(log["probabilities"]), expected_at(rows, trained_package, keys), atol=1e-5)


def test_streaming_small_batches_write_several_files_with_the_same_rows_and_a_retry_rewrites_them(
    repo, record, ids, tmp_path
):
    source = entities_file(tmp_path, {ENTITY: ids})
    whole = core.run_inference(settings(source, tmp_path / "one"), record, str(repo), "run-a", AFTER_ALL)
    small = settings(source, tmp_path / "many", batch_rows=50)
    first = core.run_inference(small, record, str(repo), "run-b", AFTER_ALL)
    assert (whole.batches, first.batches, len(first.files)) == (1, 5, 5)
    one, many = read_back(tmp_path / "one"), read_back(tmp_path / "many")
    assert many[ENTITY].tolist() == one[ENTITY].tolist()
    np.testing.assert_allclose(np.stack(many["probabilities"]), np.stack(one["probabilities"]), atol=0)
    retry = core.run_inference(small, record, str(repo), "run-b", AFTER_ALL)
    assert retry.files == first.files
    assert sorted(p.name for p in (tmp_path / "many").rglob("*.parquet")) == sorted(Path(f).name for f in first.files)
    assert len(read_back(tmp_path / "many")) == len(ids)  # no duplicates after the retry


def test_every_entity_of_the_feature_view_when_none_are_given(repo, record, rows, tmp_path):
    result = core.run_inference(settings("", tmp_path / "log", batch_rows=400), record, str(repo), "run-all", AFTER_ALL)
    assert result.rows == rows[ENTITY].nunique() and result.unknown_entities == 0
    assert result.batches == -(-rows[ENTITY].nunique() // 400)


def test_unknown_entities_are_counted_and_left_out(repo, record, ids, tmp_path):
    source = entities_file(tmp_path, {ENTITY: [1, *ids[:5], 2]})
    result = core.run_inference(settings(source, tmp_path / "log"), record, str(repo), "run-u", AFTER_ALL)
    assert (result.rows, result.unknown_entities, result.unknown_examples) == (5, 2, [1, 2])
    assert "Unknown entities (no features at their time, left out): 2 (e.g. 1, 2)" in core.render_summary(result)
    with pytest.raises(InputError, match=r"none of the 2 entities has features at its time"):
        core.run_inference(settings(entities_file(tmp_path, {ENTITY: [1, 2]}, "none.parquet"), tmp_path / "l2"),
                           record, str(repo), "run-u2", AFTER_ALL)  # fmt: skip
    early = datetime(1990, 1, 1, tzinfo=UTC)  # before any feature row
    with pytest.raises(InputError, match="none of the 5 entities"):
        core.run_inference(settings(entities_file(tmp_path, {ENTITY: ids[:5]}, "early.parquet"), tmp_path / "l3"),
                           record, str(repo), "run-u3", early)  # fmt: skip


def test_bad_input_is_an_input_error_naming_file_column_and_row(repo, record, ids, tmp_path):
    def run(uri: str, **more) -> None:
        core.run_inference(settings(uri, tmp_path / "log", **more), record, str(repo), "run-bad", AFTER_ALL)

    wrong = entities_file(tmp_path, {"id": ids[:3]}, "wrong.parquet")
    with pytest.raises(InputError, match=rf"entities file {wrong}: no column '{ENTITY}' .*columns: \['id'\]"):
        run(wrong)
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"not parquet at all")
    with pytest.raises(InputError, match=rf"entities file {garbage}: not a readable PARQUET file"):
        run(str(garbage))
    text = tmp_path / "ids.csv"
    text.write_text(f"{ENTITY}\n{ids[0]}\n{ids[1]}\nabc\n")
    with pytest.raises(InputError, match=rf"ids.csv: column '{ENTITY}', row 3 \(line 4\): 'abc' is not a entity id"):
        run(str(text))
    nulls = entities_file(tmp_path, {ENTITY: pa.array([ids[0], None], pa.int64())}, "nulls.parquet")
    with pytest.raises(InputError, match=rf"nulls.parquet: column '{ENTITY}', row 2: no entity id"):
        run(nulls)
    times = tmp_path / "times.csv"
    times.write_text(f"{ENTITY},{TIMESTAMP}\n{ids[0]},2026-01-01T00:00:00\n{ids[1]},yesterday\n")
    with pytest.raises(InputError, match=rf"times.csv: column '{TIMESTAMP}', row 2 \(line 3\): 'yesterday'"):
        run(str(times))
    with pytest.raises(InputError, match=r"inference.entities .*missing: no data files found"):
        run(str(tmp_path / "missing"))
    with pytest.raises(InputError, match="inference.log is empty"):
        core.run_inference(InferenceConfig(entities=wrong), record, str(repo), "run-bad", AFTER_ALL)
    with pytest.raises(InputError, match="no model serves yet.*run the training pipeline first"):
        core.require_record(None, str(tmp_path / "record.json"))
    with pytest.raises(InputError, match="source is triton but the serving record names no deployment"):
        run(entities_file(tmp_path, {ENTITY: ids[:3]}, "ok.parquet"), source="triton")


# --- through Triton --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def triton(trained_package, tmp_path_factory):
    repository = tmp_path_factory.mktemp("inference-triton")
    triton_local.add_onnx_model(repository, MODEL, trained_package / "model.onnx", 2, max_batch_size=16)
    with running_triton(repository, load=[MODEL], state_dir=tmp_path_factory.mktemp("triton-state")) as server:
        yield server


@pytest.mark.servers
def test_triton_predictions_agree_with_the_package_in_process(repo, trained_package, ids, triton, tmp_path):
    deployment = Deployment(endpoint=triton.grpc_url, model_name=MODEL, version=2, repository="unused")
    served = ServingRecord(model=str(trained_package), metrics={}, deployment=deployment)
    source = entities_file(tmp_path, {ENTITY: ids})
    options = {"batch_rows": 100, "request_rows": 7, "concurrency": 3, "timeout_seconds": 30}
    via_triton = core.run_inference(settings(source, tmp_path / "triton", **options), served, str(repo), "run-t",
                                    AFTER_ALL, triton_url=triton.grpc_url)  # fmt: skip
    in_process = core.run_inference(settings(source, tmp_path / "package", source="package", **options), served,
                                    str(repo), "run-p", AFTER_ALL)  # fmt: skip
    assert (via_triton.source, via_triton.model_version, via_triton.rows) == ("triton", 2, len(ids))
    assert (in_process.source, in_process.model_version) == ("package", 0)
    a, b = read_back(tmp_path / "triton"), read_back(tmp_path / "package")
    assert a[ENTITY].tolist() == b[ENTITY].tolist() == ids
    np.testing.assert_allclose(np.stack(a["probabilities"]), np.stack(b["probabilities"]), atol=1e-4, rtol=0)
    assert a["predicted"].tolist() == b["predicted"].tolist()
    assert (a["model_version"] == 2).all() and (a["model_name"] == MODEL).all() and (a["registry_version"] == "").all()
    config = read_model_config(trained_package)
    for request_rows, default_rows, expected in ((0, 64, 16), (0, 8, 8), (5, 64, 5)):  # 0: deploy.max_batch_size
        scorer = TritonScorer(triton.grpc_url, MODEL, 2, config, request_rows, 1, 10, default_rows)
        assert scorer.request_rows == expected
        scorer.close()
    with pytest.raises(InputError, match="request_rows 32 exceeds the served model's max_batch_size 16"):
        core.run_inference(settings(source, tmp_path / "x", request_rows=32), served, str(repo), "run-x", AFTER_ALL,
                           triton_url=triton.grpc_url)  # fmt: skip


@pytest.mark.servers
def test_predict_cli_appends_its_online_predictions_to_the_same_log(repo, trained_package, ids, triton, tmp_path):
    """``kfp-mlops predict --log``: latest (online) features, Triton's answers, the batch step's log format."""
    log = tmp_path / "log"
    argv = [
        "predict",
        *(f"--entity={e}" for e in ids[:4]),
        f"--url={triton.grpc_url}",
        "--protocol=grpc",
        f"--feature-repo={repo}",
        f"--model={MODEL}",
        f"--model-package={trained_package}",
        f"--log={log}",
    ]
    assert main(argv) == 0 and main(argv) == 0  # two calls: two writers, nothing replaced
    online = read_back(log)
    assert len(online) == 8 and online["run_id"].nunique() == 2
    assert all(w.startswith("predict-") for w in online["run_id"]) and (online["model_version"] == 2).all()
    assert (online["model_uri"] == str(trained_package)).all()
    config = read_model_config(trained_package)
    assert list(online.columns[: 2 + len(config.features)]) == [ENTITY, TIMESTAMP, *config.features]
    served = ServingRecord(model=str(trained_package), metrics={})
    source = entities_file(tmp_path, {ENTITY: ids[:4]})
    core.run_inference(settings(source, tmp_path / "batch"), served, str(repo), "run-o", AFTER_ALL)
    batch = read_back(tmp_path / "batch")
    first = online.drop_duplicates(ENTITY).sort_values(ENTITY)
    np.testing.assert_allclose(np.stack(first["probabilities"]), np.stack(batch["probabilities"]), atol=1e-4)


def test_the_inference_pipeline_is_scheduled_like_the_others(kfp_server, kfp_client_settings, tmp_path, capsys):
    """``kfp-mlops schedule inference``: compiled from the registry, uploaded, a recurring run with its parameters
    (against the KFP API test double, tests/support/kfp_api_server.py)."""
    package = tmp_path / "inference.yaml"
    assert main(["compile", "inference", "--output-dir", str(tmp_path)]) == 0
    argv = ["schedule", "inference", "--host", kfp_server.url, "--package", str(package), "--cron", "0 0 2 * * *",
            "--param", "entities=s3://bucket/ids/", "--param", "as_of=2026-01-31T00:00:00Z"]  # fmt: skip
    assert main(argv) == 0
    (created,) = kfp_server.recurring_runs.values()
    assert created["display_name"] == "inference" and created["trigger"]["cron_schedule"]["cron"] == "0 0 2 * * *"
    assert created["runtime_config"]["parameters"] == {"entities": "s3://bucket/ids/", "as_of": "2026-01-31T00:00:00Z"}
    (version,) = kfp_server.versions.values()
    assert created["pipeline_version_reference"]["pipeline_version_id"] == version["pipeline_version_id"]


def test_a_retried_task_reads_at_the_same_time_and_the_feature_repo_is_found_beside_the_reference(tmp_path):
    run_dir = str(tmp_path / "kfp-mlops-inference-2026-01-01-00-00-00-000000")
    first = executor.run_as_of(run_dir, "")
    assert executor.run_as_of(run_dir, "") == first  # kept in the run's state folder for its retries
    assert executor.run_as_of(run_dir, "2026-02-01T00:00:00Z") == datetime(2026, 2, 1, tzinfo=UTC)
    assert executor.feature_repo_of("", "s3://b/root/p/run/features/x1/train_features") == (
        "s3://b/root/p/run/features/x1/feature_repo"
    )
    assert executor.feature_repo_of("gs://b/repo", "ignored") == "gs://b/repo"
    with pytest.raises(InputError, match="no feature repository: pass feature_repo"):
        executor.feature_repo_of("", "")


def test_as_of_parsing_reads_iso_times_as_utc_and_names_a_bad_one():
    default = datetime(2026, 1, 1, tzinfo=UTC)
    assert core.parse_as_of("", default) == default
    assert core.parse_as_of("2026-03-01T12:00:00Z", default) == datetime(2026, 3, 1, 12, tzinfo=UTC)
    assert core.parse_as_of("2026-03-01T12:00:00", default) == datetime(2026, 3, 1, 12, tzinfo=UTC)
    assert core.parse_as_of("2026-03-01T13:00:00+01:00", default) == datetime(2026, 3, 1, 12, tzinfo=UTC)
    with pytest.raises(InputError, match="inference.as_of 'soon'"):
        core.parse_as_of("soon", default + timedelta(days=1))
