"""Shared fixtures: the real servers (tests/support/servers.py), the sample data, its ingested splits and a model
trained on them for real. Helpers shared by several test modules live in tests/support/."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from support.configs import pipeline_config
from support.kfp_api_server import FakeKfpApiServer
from support.kfp_cli import GOLDEN
from support.servers import (  # noqa: F401 - fixtures, used by name
    gcs,
    gcs_server,
    kube_api,
    postgres_registry_url,
    redis_server,
    s3,
    s3_server,
)


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
