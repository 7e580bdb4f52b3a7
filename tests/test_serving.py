"""Predict by entity id on real servers: a feature repository built by the features step (SQLite and Redis online
stores), the DeepSpeed-trained package's model.onnx in a real Triton (python backend), HTTP and gRPC. Predictions
must equal the package's own onnxruntime run on the entities' latest offline rows. Nothing is mocked."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from support.packages import REGRESSION_LABEL
from support.triton import running_triton

from kfp_mlops import serving, triton_local
from kfp_mlops.cli import main
from kfp_mlops.components.deploy.core import deploy
from kfp_mlops.components.features.core import build_feature_sets
from kfp_mlops.components.shared import layout, storage
from kfp_mlops.components.shared.config import DeployConfig, FeaturesConfig
from kfp_mlops.components.shared.errors import InputError
from kfp_mlops.components.shared.model_package import ModelConfig, Predictor, read_model_config
from kfp_mlops.components.shared.splits import SplitPaths
from kfp_mlops.processes import free_port
from kfp_mlops.sample_data import ENTITY, TIMESTAMP

pytestmark = pytest.mark.servers

MODEL = "churn"
REDIS_ENV = "FEAST_REDIS_CONNECTION_STRING"
MISSING = [1, 2]  # ids far below the sample's (100000 and up)


def build_repo(config, paths: SplitPaths, directory: Path) -> Path:
    out = SplitPaths(*(str(directory / "out" / name) for name in ("train", "validation", "test")))
    build_feature_sets(config, paths, str(directory / "repo"), out)
    return directory / "repo"


@pytest.fixture(scope="module")
def latest(ingested) -> pd.DataFrame:
    """Every entity's latest row over the three ingested splits (what the online store must serve), by pandas."""
    _, paths = ingested
    frame = pd.concat([pq.read_table(path).to_pandas() for _, path in paths.items()])
    return frame.sort_values([TIMESTAMP, ENTITY], kind="stable").drop_duplicates(ENTITY, keep="last").set_index(ENTITY)


@pytest.fixture(scope="module")
def entities(latest) -> list[int]:
    """Seven entities spread over the sorted ids (more than the served max_batch_size of 4: two requests)."""
    ids = np.sort(latest.index.to_numpy())
    return [int(i) for i in ids[np.linspace(0, len(ids) - 1, 7).round().astype(int)]]


@pytest.fixture(scope="module")
def sqlite_repo(ingested, tmp_path_factory) -> Path:
    config, paths = ingested
    assert config.features.online_store.type == "sqlite"
    return build_repo(config, paths, tmp_path_factory.mktemp("sqlite-features"))


@pytest.fixture(scope="module")
def redis_repo(ingested, redis_server, tmp_path_factory) -> Path:
    config, paths = ingested
    features = FeaturesConfig.model_validate({"project": "serving_redis", "online_store": {"type": "redis"}})
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(REDIS_ENV, redis_server.connection_string)
        return build_repo(config.model_copy(update={"features": features}), paths, tmp_path_factory.mktemp("redis-fs"))


@pytest.fixture(scope="module")
def model_repository(trained_package, tmp_path_factory) -> Path:
    """Versions 1 and 2 of the package's model.onnx; each version directory holds the kfp-mlops.json the deploy step
    writes. Version 2's lists the features the model takes; version 1's a wrong order, which only it would show."""
    root = tmp_path_factory.mktemp("triton-models")
    config = read_model_config(trained_package)
    for version, numeric in ((1, config.numeric[::-1]), (2, config.numeric)):
        triton_local.add_onnx_model(
            root, MODEL, trained_package / "model.onnx", version, max_batch_size=4, version_policy={"all": True}
        )
        published = config.model_copy(update={"numeric": numeric})
        metadata = {"model_config": published.model_dump(mode="json"), "package": str(trained_package)}
        (root / MODEL / str(version) / layout.VERSION_METADATA_FILE).write_text(json.dumps(metadata))
    return root


@pytest.fixture(scope="module")
def triton(model_repository, tmp_path_factory) -> Iterator[triton_local.TritonServer]:
    with running_triton(model_repository, load=[MODEL], state_dir=tmp_path_factory.mktemp("triton")) as server:
        yield server


def expected(package: Path, latest: pd.DataFrame, ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
    rows = pa.Table.from_pandas(latest.loc[ids].reset_index(), preserve_index=False)
    return Predictor(package).predict(rows)


def assert_matches(predictions: serving.Predictions, package: Path, latest: pd.DataFrame, ids: list[int]) -> None:
    probabilities, labels = expected(package, latest, ids)
    assert predictions.entity == ENTITY and predictions.entity_ids == ids
    assert predictions.classes == read_model_config(package).classes
    assert predictions.probabilities.shape == probabilities.shape
    np.testing.assert_allclose(predictions.probabilities, probabilities, atol=1e-5, rtol=0)
    assert predictions.labels == labels.tolist()


def predict_cli(*argv: str) -> int:
    """``kfp-mlops predict`` through the command line's entry point (its exit codes and error messages)."""
    return main(["predict", *argv])


# --- predictions ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_predictions_by_entity_id_equal_the_package_on_the_latest_offline_rows(
    protocol, triton, sqlite_repo, trained_package, latest, entities
):
    url = triton.http_url if protocol == "http" else triton.grpc_url
    ids = [*entities, entities[0]]  # a repeated id is answered twice, in request order
    predictions = serving.predict_entities(
        ids, str(sqlite_repo), url, MODEL, model_config=str(trained_package), protocol=protocol, version="2"
    )
    assert (predictions.model, predictions.version) == (MODEL, "2")
    assert_matches(predictions, trained_package, latest, ids)
    labels = set(predictions.labels)
    assert labels <= set(predictions.classes) and predictions.probabilities.sum(axis=1) == pytest.approx(1, abs=1e-5)


def test_redis_online_store_and_the_published_model_config_of_the_latest_version(
    triton, redis_repo, redis_server, trained_package, latest, entities, model_repository, monkeypatch, capfd
):
    monkeypatch.setenv(REDIS_ENV, redis_server.connection_string)
    ids = [str(e) for e in entities]  # ids as a command line gives them: converted per the entity's value type
    predictions = serving.predict_entities(
        ids, str(redis_repo), triton.grpc_url, MODEL, model_repository=str(model_repository), protocol="grpc"
    )
    assert predictions.version == "2"  # the latest served version, and its kfp-mlops.json
    assert_matches(predictions, trained_package, latest, entities)
    captured = capfd.readouterr()
    assert redis_server.password not in captured.out + captured.err


def test_a_published_model_config_that_does_not_match_the_features_gives_other_predictions(
    triton, sqlite_repo, trained_package, latest, entities, model_repository
):
    """Version 1's kfp-mlops.json lists the numeric features reversed: the test above passing is no accident."""
    predictions = serving.predict_entities(
        entities, str(sqlite_repo), triton.http_url, MODEL, model_repository=str(model_repository), version="1"
    )
    probabilities, _ = expected(trained_package, latest, entities)
    assert np.abs(predictions.probabilities - probabilities).max() > 1e-3


def test_feature_repository_on_s3_is_copied_and_read(triton, sqlite_repo, trained_package, latest, entities, s3):
    prefix = f"s3://kfp-mlops-test/serving/{free_port()}/repo"
    storage.copy_tree(str(sqlite_repo), prefix)
    predictions = serving.predict_entities(
        entities[:2], prefix, triton.http_url, MODEL, model_config=str(trained_package)
    )
    assert_matches(predictions, trained_package, latest, entities[:2])


def test_cli_prints_a_table_of_entity_probabilities_and_label(
    triton, sqlite_repo, trained_package, latest, entities, capsys
):
    code = predict_cli(
        *(f"--entity={e}" for e in entities[:3]),
        f"--url={triton.http_url}",
        f"--feature-repo={sqlite_repo}",
        f"--model={MODEL}",
        f"--model-package={trained_package}",
    )
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert out[0] == f"model {MODEL} version 2 on {triton.http_url} (http)"
    classes = read_model_config(trained_package).classes
    assert out[1].split() == [ENTITY, *(f"p({c})" for c in classes), "label"]
    probabilities, labels = expected(trained_package, latest, entities[:3])
    for line, entity, row, label in zip(out[2:], entities[:3], probabilities, labels, strict=True):
        cells = line.split()
        assert cells[0] == str(entity) and cells[-1] == str(label)
        np.testing.assert_allclose([float(c) for c in cells[1:-1]], row, atol=1e-6)


def test_an_entity_with_missing_feature_values_is_predicted_not_refused(triton, sqlite_repo, trained_package, tmp_path):
    """Feast serves a null age and plan: NaN and "" reach the model, which imputes them as the package does."""
    repo = tmp_path / "repo"
    shutil.copytree(sqlite_repo, repo)
    row = {ENTITY: 7, TIMESTAMP: pd.Timestamp("2026-06-01", tz="UTC"), "age": None, "tenure_months": 3,
           "monthly_charges": 20.0, "total_spend": 60.0, "support_calls": 1, "sessions_last_30d": 4, "plan": None,
           "region": "north", "device": "ios"}  # fmt: skip
    serving.open_feature_store(repo).write_to_online_store("features", pd.DataFrame([row]))
    predictions = serving.predict_entities([7], str(repo), triton.http_url, MODEL, model_config=str(trained_package))
    probabilities, labels = Predictor(trained_package).predict({k: [v] for k, v in row.items()})
    np.testing.assert_allclose(predictions.probabilities, probabilities, atol=1e-5, rtol=0)
    assert predictions.labels == labels.tolist()


# --- a regression model ------------------------------------------------------------------------------------------


REGRESSION_MODEL = "spend"


@pytest.fixture(scope="module")
def regression_triton(
    regression_package, ingested, tmp_path_factory
) -> Iterator[tuple[triton_local.TritonServer, Path]]:
    """The regression package put into a real Triton by the deploy step (verified there on validation rows), with
    max_batch_size 4: (the server, its model repository, whose version 1 holds the kfp-mlops.json predict reads)."""
    repository = tmp_path_factory.mktemp("regression-models")
    with running_triton(repository, state_dir=tmp_path_factory.mktemp("regression-triton")) as server:
        settings = DeployConfig(model_repository=str(repository), triton_url=server.grpc_url,
                                model_name=REGRESSION_MODEL, backend="python", max_batch_size=4,
                                preferred_batch_sizes=[4], ready_timeout_seconds=60,
                                verify={"rows": 64, "requests": 10, "max_p50_ms": 500, "max_p99_ms": 5000})  # fmt: skip
        assert deploy(str(regression_package), ingested[1].validation, settings).version == 1
        yield server, repository


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_regression_model_predicts_the_value_of_its_label_as_the_package_does(
    protocol, regression_triton, sqlite_repo, regression_package, latest, entities
):
    server, repository = regression_triton
    url = server.http_url if protocol == "http" else server.grpc_url
    ids = [*entities, entities[0]]  # 8 rows: two requests of max_batch_size 4
    predictions = serving.predict_entities(
        ids, str(sqlite_repo), url, REGRESSION_MODEL, model_repository=str(repository), protocol=protocol
    )
    assert (predictions.task, predictions.label, predictions.version) == ("regression", REGRESSION_LABEL, "1")
    assert predictions.entity == ENTITY and predictions.entity_ids == ids
    assert predictions.classes == [] and predictions.labels == [] and predictions.probabilities.shape == (len(ids), 0)
    _, values = expected(regression_package, latest, ids)
    assert predictions.predictions.dtype == np.float32 and predictions.predictions.shape == (len(ids),)
    np.testing.assert_allclose(predictions.predictions, values, rtol=1e-6, atol=0)
    assert predictions.predictions[0] == predictions.predictions[-1]


def test_cli_prints_the_predicted_value_of_a_regression_model_s_label(
    regression_triton, sqlite_repo, regression_package, latest, entities, capsys
):
    server, repository = regression_triton
    code = predict_cli(
        *(f"--entity={e}" for e in entities[:3]),
        f"--url={server.http_url}",
        f"--feature-repo={sqlite_repo}",
        f"--model={REGRESSION_MODEL}",
        f"--model-repository={repository}",
    )
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert out[0] == f"model {REGRESSION_MODEL} version 1 on {server.http_url} (http)"
    assert out[1].split() == [ENTITY, REGRESSION_LABEL, "(predicted)"]
    _, values = expected(regression_package, latest, entities[:3])
    for line, entity, value in zip(out[2:], entities[:3], values, strict=True):
        cells = line.split()
        assert len(cells) == 2 and cells[0] == str(entity) and re.fullmatch(r"-?\d+\.\d{6}", cells[1])
        assert float(cells[1]) == pytest.approx(float(value), abs=1e-5)


def test_a_classifier_config_for_a_regression_model_is_refused_naming_the_outputs(
    regression_triton, sqlite_repo, regression_package
):
    server, _ = regression_triton
    classifier = read_model_config(regression_package).model_copy(update={"task": "binary", "classes": [0, 1]})
    message = r"outputs \['prediction'\], the binary model config reads \['probabilities', 'label'\]"
    with pytest.raises(InputError, match=message):
        serving.predict_entities([1], str(sqlite_repo), server.http_url, REGRESSION_MODEL, model_config=classifier)


# --- errors --------------------------------------------------------------------------------------------------


def test_missing_entities_are_named_exit_2(triton, sqlite_repo, trained_package, entities, capsys):
    with pytest.raises(serving.MissingEntitiesError) as error:
        serving.predict_entities(
            [entities[0], *MISSING], str(sqlite_repo), triton.http_url, MODEL, model_config=str(trained_package)
        )
    assert error.value.entity_ids == MISSING
    assert f"{ENTITY} 1, 2: not in the online store" in str(error.value)

    common = (f"--url={triton.grpc_url}", "--protocol=grpc", f"--feature-repo={sqlite_repo}", f"--model={MODEL}")
    assert predict_cli("--entity=2", f"--entity={entities[1]}", *common, f"--model-package={trained_package}") == 2
    err = capsys.readouterr().err
    assert err.startswith("kfp-mlops predict: error: customer_id 2: not in the online store")
    assert predict_cli("--entity=abc", *common, f"--model-package={trained_package}") == 2
    assert "integer entity; not integers: ['abc']" in capsys.readouterr().err


def test_unreachable_triton_and_unknown_model_exit_1(triton, sqlite_repo, trained_package, capsys):
    common = (f"--feature-repo={sqlite_repo}", f"--model-package={trained_package}", "--entity=100000", "--timeout=5")
    closed = f"127.0.0.1:{free_port()}"
    for protocol in ("http", "grpc"):
        assert predict_cli(f"--url={closed}", f"--protocol={protocol}", f"--model={MODEL}", *common) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"kfp-mlops predict: error: Triton at {closed} ({protocol})"), err
    assert predict_cli(f"--url={triton.http_url}", "--model=nope", *common) == 1
    err = capsys.readouterr().err
    assert f"model 'nope' is not ready on Triton at {triton.http_url} (http)" in err and f"{MODEL} v2 READY" in err
    assert predict_cli(f"--url={triton.grpc_url}", "--protocol=grpc", f"--model={MODEL}", "--version=7", *common) == 1
    assert f"model '{MODEL}' version 7 is not ready" in capsys.readouterr().err


def test_redis_repository_without_its_connection_string_names_the_variable(
    triton, redis_repo, trained_package, monkeypatch, capsys
):
    monkeypatch.delenv(REDIS_ENV, raising=False)
    args = (f"--url={triton.http_url}", f"--feature-repo={redis_repo}", f"--model={MODEL}", "--entity=100000")
    assert predict_cli(*args, f"--model-package={trained_package}") == 2
    assert f"reads environment variable(s) ['{REDIS_ENV}']" in capsys.readouterr().err


def test_a_model_config_that_does_not_fit_the_served_model_is_refused(triton, sqlite_repo, trained_package):
    config = read_model_config(trained_package)
    fewer = config.model_copy(update={"numeric": config.numeric[:-1], "features": config.features[1:]})
    with pytest.raises(InputError, match=r"'numeric' has shape \[-1, \d+\], the model config lists \d+ numeric"):
        serving.predict_entities([100000], str(sqlite_repo), triton.http_url, MODEL, model_config=fewer)


def test_model_config_reads_a_package_a_version_directory_and_either_json(trained_package, tmp_path):
    config = read_model_config(trained_package)
    version_dir = tmp_path / "models" / MODEL / "3"
    version_dir.mkdir(parents=True)
    (version_dir / layout.VERSION_METADATA_FILE).write_text(
        json.dumps({"model_config": config.model_dump(mode="json")})
    )
    shutil.copyfile(trained_package / "model_config.json", tmp_path / "bare.json")
    for uri in (
        trained_package,
        f"{trained_package}/",
        trained_package / "model_config.json",
        version_dir,
        tmp_path / "bare.json",
    ):
        assert serving.load_model_config(str(uri)) == config, uri
    (tmp_path / "broken.json").write_text(json.dumps({"model_config": {"features": []}}))
    with pytest.raises(InputError, match="broken.json: not a kfp-mlops model config"):
        serving.load_model_config(str(tmp_path / "broken.json"))
    with pytest.raises(FileNotFoundError, match="no model config there"):
        serving.load_model_config(str(tmp_path))
    assert isinstance(serving.load_model_config(str(trained_package)), ModelConfig)
