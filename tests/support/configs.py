"""The one pipeline-config builder of the tests: examples/training.yaml on a data source, sections updated."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]


ENVIRONMENT_SECTIONS = ("evaluate", "deploy")  # the example's point at the demo's local Triton and build/ paths
# Tracking is off unless a test asks for it (tracking={...}): the MLflow tests run it against a real server, and
# every other pipeline run would pay MLflow's import in each step (tests/test_tracking.py, benchmarks/tracking.py).
UNTRACKED = {"enabled": False}


def config_document(source: str | Path, **sections: dict[str, Any]) -> dict[str, Any]:
    """examples/training.yaml's data, schema and split as a document on ``source`` (its evaluate and deploy
    sections are the demo's: a test gives its own); each section given is merged into the example's
    (``train={"epochs": 2}`` keeps the rest of the train section). Tracking is off unless ``tracking`` is given."""
    document = yaml.safe_load((REPO / "examples" / "training.yaml").read_text())
    document = {name: values for name, values in document.items() if name not in ENVIRONMENT_SECTIONS}
    document["data"]["source"] = str(source)
    document["tracking"] = {} if "tracking" in sections else dict(UNTRACKED)
    for name, values in sections.items():
        document[name] = {**document.get(name, {}), **values}
    return document


def pipeline_config(source: str | Path, **sections: dict[str, Any]):
    """The validated PipelineConfig of ``config_document``."""
    from kfp_mlops.components.shared.config import parse_config

    return parse_config(config_document(source, **sections))


def write_config(directory: Path, source: str | Path, **sections: dict[str, Any]) -> Path:
    """``config_document`` written to ``directory/config.yaml``."""
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(config_document(source, **sections)))
    return path


CUSTOM_MODEL_EXAMPLE = REPO / "examples" / "custom_model"


def write_custom_model_config(directory: Path, triton_url: str, repository: Path) -> Path:
    """examples/custom_model/config.yaml on the regression sample written to ``directory/data`` (3,000 rows), with
    its serving record in ``directory``, the given Triton and a shorter training; written to
    ``directory/config.yaml``."""
    from kfp_mlops.sample_data import write_sample_data

    write_sample_data(str(directory / "data"), rows=3_000, seed=4, task="regression")
    document = yaml.safe_load((CUSTOM_MODEL_EXAMPLE / "config.yaml").read_text())
    document["data"]["source"] = str(directory / "data")
    document["evaluate"]["baseline"] = str(directory / "serving" / "record.json")
    document["deploy"] |= {"model_repository": str(repository), "triton_url": triton_url}
    document["train"] |= {"epochs": 4, "micro_batch_size": 64}
    document["tracking"] = dict(UNTRACKED)
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(document))
    return path
