"""Shared fixtures: real object-storage servers (SeaweedFS S3, fake-gcs-server) and sample data.

The servers are real programs from PyPI wheels (see kfp_mlops.local_services), started once per session on free
loopback ports with fresh data directories. Tests that use them carry the ``servers`` marker.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kfp_mlops import local_services
from kfp_mlops.components.shared import storage


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> Iterator[local_services.Service]:
    with local_services.seaweedfs_s3(tmp_path_factory.mktemp("s3"), bucket="kfp-mlops-test") as service:
        yield service


@pytest.fixture(scope="session")
def gcs_server(tmp_path_factory) -> Iterator[local_services.Service]:
    with local_services.fake_gcs(tmp_path_factory.mktemp("gcs"), bucket="kfp-mlops-test") as service:
        yield service


def _use(service: local_services.Service, monkeypatch: pytest.MonkeyPatch) -> local_services.Service:
    for key, value in service.env.items():
        monkeypatch.setenv(key, value)
    storage.reset_clients()
    return service


@pytest.fixture
def s3(s3_server, monkeypatch) -> Iterator[local_services.Service]:
    """The S3 server, with this process's environment (and so its subprocesses') pointing at it."""
    yield _use(s3_server, monkeypatch)
    storage.reset_clients()


@pytest.fixture
def gcs(gcs_server, monkeypatch) -> Iterator[local_services.Service]:
    """The GCS emulator, with this process's environment pointing at it."""
    yield _use(gcs_server, monkeypatch)
    storage.reset_clients()


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory) -> Path:
    """The sample dataset (5,000 rows, seed 0) as a directory with one Parquet file."""
    from kfp_mlops.sample_data import write_sample_data

    directory = tmp_path_factory.mktemp("sample")
    write_sample_data(str(directory), rows=5_000, seed=0)
    return directory


def pipeline_config(source: str | Path, **sections):
    """The examples/training.yaml config on ``source``, with sections updated (e.g. train={"epochs": 2})."""
    import yaml

    from kfp_mlops.components.shared.config import parse_config

    document = yaml.safe_load((Path(__file__).resolve().parents[1] / "examples" / "training.yaml").read_text())
    document["data"]["source"] = str(source)
    for name, values in sections.items():
        document[name] = {**document.get(name, {}), **values}
    return parse_config(document)


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
