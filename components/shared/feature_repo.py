"""A feature repository the features step wrote, opened by its readers: ``kfp-mlops predict`` (online features,
kfp_mlops/serving.py) and batch inference (point-in-time features, components/inference/). Feast is imported only
when a store is opened."""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from kfp_mlops.components.shared import storage
from kfp_mlops.components.shared.errors import InputError
from kfp_mlops.components.shared.layout import FEATURE_STORE_YAML
from kfp_mlops.components.shared.model_package import ModelConfig

if TYPE_CHECKING:
    from feast import FeatureStore, FeatureView

FEATURE_REPO_ARTIFACT = "feature_repo"  # the features step's output: a sibling of its train_features


@contextlib.contextmanager
def feature_repo_dir(uri: str) -> Iterator[Path]:
    """The feature repository as a local directory: ``uri`` itself, or a temporary copy of an s3:// or gs://
    prefix (removed on exit)."""
    with contextlib.ExitStack() as stack:
        if storage.is_remote(uri):
            path = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="kfp-mlops-feature-repo-")))
            storage.copy_tree(uri, str(path))
        else:
            path = Path(storage.parse(uri).key)
        if not (path / FEATURE_STORE_YAML).is_file():
            raise FileNotFoundError(f"{uri} is not a feature repository: {FEATURE_STORE_YAML} is missing")
        yield path


def sibling_feature_repo(features_output: str) -> str:
    """The feature repository written by the same features task as ``features_output`` (one of its datasets, e.g.
    the serving record's ``reference_data``): KFP puts a task's outputs side by side, named after the output."""
    location = storage.parse(features_output)
    parent = location.key.rstrip("/").rpartition("/")[0]
    return storage.Location(location.scheme, location.bucket, f"{parent}/{FEATURE_REPO_ARTIFACT}").uri


def open_feature_store(repo_dir: str | Path) -> FeatureStore:
    """Feast on the repository's ``feature_store.yaml``; the ``${VAR}`` placeholders it holds (Redis connection
    string, SQL registry URL) must be set in the environment, which Feast reads them from."""
    from feast import FeatureStore

    path = Path(repo_dir) / FEATURE_STORE_YAML
    placeholders = re.findall(r"\$\{(\w+)\}", json.dumps(yaml.safe_load(path.read_text())))  # comments left out
    unset = sorted({name for name in placeholders if not os.environ.get(name)})
    if unset:
        raise InputError(f"{path} reads environment variable(s) {unset}: set them (the Feast secrets) and retry")
    return FeatureStore(repo_path=str(repo_dir))


def find_feature_view(store: FeatureStore, config: ModelConfig, name: str | None = None) -> FeatureView:
    """The feature view (``name``, or the only one) keyed by the model's entity that holds every model feature."""
    views = [store.get_feature_view(name)] if name else store.list_feature_views()
    fitting = [
        v for v in views if config.entity in v.join_keys and set(config.features) <= {f.name for f in v.features}
    ]
    if len(fitting) == 1:
        return fitting[0]
    project = store.config.project
    if not fitting:
        raise InputError(
            f"no feature view of project {project!r} is keyed by {config.entity!r} and holds the model's features "
            f"{config.features}; views: {[v.name for v in views]}"
        )
    raise InputError(f"feature views {[v.name for v in fitting]} of project {project!r} all fit the model: name one")
