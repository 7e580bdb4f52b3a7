"""The one home of shared fixtures: the real servers (tests/support/servers.py and monitoring_servers.py, registered
here as plugins), the sample data, its ingested splits, a model trained on them for real and its package, and every
pipeline compiled.
Helpers shared by several test modules live in tests/support/; a fixture only one module uses stays there."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.configs import pipeline_config
from support.kfp_api_server import FakeKfpApiServer
from support.kfp_cli import GOLDEN
from support.packages import edited_package, halve_weights
from support.packages import regression_package as build_regression_package

pytest_plugins = ["support.servers", "support.monitoring_servers"]


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory) -> Path:
    """The sample dataset (5,000 rows, seed 0) as a directory with one Parquet file."""
    from kfp_mlops.sample_data import write_sample_data

    directory = tmp_path_factory.mktemp("sample")
    write_sample_data(str(directory), rows=5_000, seed=0)
    return directory


@pytest.fixture(scope="session")
def ingested(tmp_path_factory, sample_dir):
    """The sample data ingested: (config, SplitPaths) of train/validation/test Parquet files."""
    from kfp_mlops.components.ingest.core import ingest
    from kfp_mlops.components.shared.splits import SplitPaths

    directory = tmp_path_factory.mktemp("ingested")
    config = pipeline_config(sample_dir)
    paths = SplitPaths(*(str(directory / name) for name in ("train", "validation", "test")))
    ingest(config, paths)
    return config, paths


TRAIN_SETTINGS = {"epochs": 4, "micro_batch_size": 64, "zero_stage": 2, "workers": 2, "checkpoint_every_steps": 10}


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory, ingested):
    """A model trained for real: DeepSpeed ZeRO-2, 2 CPU worker processes with gloo."""
    from kfp_mlops.components.train.core import train

    directory = tmp_path_factory.mktemp("trained")
    config, paths = ingested
    config = config.model_copy(update={"train": config.train.model_copy(update=TRAIN_SETTINGS)})
    result = train(config, paths.train, paths.validation, str(directory / "model"), str(directory / "ckpt"),
                   str(directory / "train.log"))  # fmt: skip
    return result, directory


# --- KFP API (tests/support/kfp_api_server.py) --------------------------------------------------------------------


@pytest.fixture
def kfp_client_settings(tmp_path, monkeypatch) -> None:
    """No user settings leak in: kfp.Client's context file (its namespace) and the connection variables."""
    from kfp.client.client import Client

    monkeypatch.setattr(Client, "_LOCAL_KFP_CONTEXT", str(tmp_path / "kfp-context.json"))
    for variable in (
        "KFP_HOST",
        "KFP_NAMESPACE",
        "KFP_EXISTING_TOKEN",
        "KF_PIPELINES_ENDPOINT",
        "KF_PIPELINES_UI_ENDPOINT",
    ):
        monkeypatch.delenv(variable, raising=False)


@pytest.fixture
def kfp_server() -> Iterator[FakeKfpApiServer]:
    with FakeKfpApiServer() as server:
        yield server


@pytest.fixture
def golden_package(tmp_path) -> Path:
    """A compiled training pipeline: the golden YAML."""
    return Path(shutil.copy(GOLDEN, tmp_path / "training.yaml"))


@pytest.fixture
def changed_package(tmp_path) -> Path:
    """The golden training pipeline with one default changed: another YAML, another content hash."""
    documents = list(yaml.safe_load_all(GOLDEN.read_text()))
    documents[0]["root"]["inputDefinitions"]["parameters"]["train_cpu"]["defaultValue"] = "16"
    path = tmp_path / "changed" / "training.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump_all(documents, sort_keys=True))
    return path


@pytest.fixture(scope="session")
def trained_package(trained_model) -> Path:
    """The trained model's package directory (model.onnx, its config, weights)."""
    return trained_model[1] / "model"


@pytest.fixture(params=["local", "s3", "gcs"])
def root(request, tmp_path) -> str:
    """A fresh, empty location on each storage backend: local disk, SeaweedFS S3, fake-gcs-server."""
    if request.param == "local":
        return str(tmp_path / "root")
    server = request.getfixturevalue(request.param)
    return server.uri(f"t-{uuid.uuid4().hex[:8]}")


@pytest.fixture(scope="session")
def regression_package(tmp_path_factory, ingested) -> Path:
    """A regression package on the ingested sample's features (label ``support.packages.REGRESSION_LABEL``): a
    least-squares linear core in the serving graph, built in a second, without training."""
    import pyarrow.parquet as pq

    config, paths = ingested
    schema = config.schema_
    return build_regression_package(tmp_path_factory.mktemp("regression") / "model", pq.read_table(paths.train),
                                    schema.features, schema.categorical, schema.entity, schema.timestamp)  # fmt: skip


@pytest.fixture(scope="session")
def other_package(trained_package, tmp_path_factory) -> Path:
    """Another model: the trained package with its weight matrices halved."""
    return edited_package(trained_package, tmp_path_factory.mktemp("other") / "model", halve_weights)


@pytest.fixture(scope="session")
def compiled_documents(tmp_path_factory) -> dict[str, list[dict[str, Any]]]:
    """Every pipeline compiled now: name -> its YAML documents."""
    from kfp_mlops.components.shared.images import ImageConfig
    from kfp_mlops.pipelines import compile_all

    paths = compile_all(tmp_path_factory.mktemp("compiled"), ImageConfig("registry.example/kfp-mlops", "test"))
    return {path.stem: [d for d in yaml.safe_load_all(path.read_text()) if d] for path in paths}
