"""Predict by entity id: read the entities' latest features from the Feast online store the features step
materialized and send them to the model Triton serves (HTTP or gRPC).

Which features the model takes, in which order and of which kind (numeric or categorical), is the model package's
``model_config.json``: Triton's own model config names tensors and shapes, never features. ``predict`` reads it from

- the model package (``model_config``: a directory or an ``s3://`` / ``gs://`` prefix holding ``model_config.json``,
  or the JSON file itself), or
- the served version's ``kfp-mlops.json``, which the deploy step writes beside ``model.onnx``
  (``<model repository>/<model>/<version>/kfp-mlops.json``, ``model_repository``): the version is the one asked for,
  else the latest version Triton serves. Per version, so versions trained on different features stay right.

``kfp-mlops.json`` holds the package's model config, either as the whole document or under a ``model_config`` key.
Its ``task`` says what comes back: a classifier's probabilities per class and predicted label, or a regression
model's ``prediction`` (in the label's units). Every request pins the version whose config was read. Errors:
``InputError`` (bad ids, missing entities, a feature repository or model config that does not fit) and
``ServingError`` (Triton unreachable, model not ready, inference).
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import ValidationError

from kfp_mlops.components.shared import layout, prediction_log, storage, triton_access
from kfp_mlops.components.shared.config import DeployConfig
from kfp_mlops.components.shared.errors import InputError, ServiceError
from kfp_mlops.components.shared.feature_repo import feature_repo_dir, find_feature_view, open_feature_store
from kfp_mlops.components.shared.layout import VERSION_METADATA_FILE
from kfp_mlops.components.shared.model_package import MODEL_CONFIG_FILE, ModelConfig, raw_inputs

if TYPE_CHECKING:
    from feast import FeatureStore, FeatureView

DEFAULT_MODEL_NAME: str = DeployConfig.model_fields["model_name"].default
Protocol = Literal["http", "grpc"]
EntityId = int | str


class ServingError(ServiceError):
    """Triton could not be reached, does not serve the model, or failed the request."""


class MissingEntitiesError(InputError):
    """Entities the online store holds no features for; ``entity_ids`` names them."""

    def __init__(self, message: str, entity_ids: list[EntityId]):
        super().__init__(message)
        self.entity_ids = entity_ids


@dataclass(frozen=True)
class Predictions:
    """One row per requested entity, in request order. A classifier fills ``classes``, ``probabilities`` and
    ``labels``; a regression model (``task`` regression) fills ``predictions``, and has no classes, probabilities of
    shape [N, 0] and no labels."""

    entity: str  # the entity's join key, e.g. customer_id
    entity_ids: list[EntityId]
    classes: list[EntityId]  # empty for regression
    probabilities: np.ndarray  # float32 [N, len(classes)]
    labels: list[EntityId]  # the predicted class under the model's decision threshold; empty for regression
    model: str
    version: str
    task: str = "binary"  # binary, multiclass or regression (the model config's)
    label: str = ""  # the label column the model predicts
    predictions: np.ndarray | None = None  # regression: float32 [N], the predicted value in the label's units
    features: dict[str, list[Any]] | None = None  # the model's raw features as served, per column (for the log)
    timestamp: str = ""  # the schema's timestamp column (the model config's): the prediction log's time column

    @property
    def regression(self) -> bool:
        return self.task == "regression"


# --- the model config ------------------------------------------------------------------------------------------


def parse_model_metadata(document: Any, where: str) -> ModelConfig:
    """The model config in a ``model_config.json`` or ``kfp-mlops.json`` document (whole, or under
    ``model_config``)."""
    body = document.get("model_config", document) if isinstance(document, dict) else document
    try:
        return ModelConfig.model_validate(body)
    except ValidationError as exc:
        missing = sorted({str(e["loc"][0]) for e in exc.errors() if e["type"] == "missing" and e["loc"]})
        detail = f"it lacks {', '.join(missing)}" if missing else exc.errors()[0]["msg"]
        raise InputError(
            f"{where}: not a kfp-mlops model config ({detail}); was the model deployed by this version's deploy step?"
        ) from None


def load_model_config(uri: str) -> ModelConfig:
    """The model config from a JSON file, or from a directory / prefix holding ``kfp-mlops.json`` (a Triton version
    directory) or ``model_config.json`` (a model package). Local, ``s3://`` or ``gs://``."""
    base = uri.rstrip("/")
    candidates = [uri] if base.endswith(".json") else [f"{base}/{VERSION_METADATA_FILE}", f"{base}/{MODEL_CONFIG_FILE}"]
    for candidate in candidates:
        try:
            data = storage.read_bytes(candidate)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            continue
        try:
            document = json.loads(data)
        except ValueError as exc:
            raise InputError(f"{candidate}: not JSON: {exc}") from None
        return parse_model_metadata(document, candidate)
    raise FileNotFoundError(f"{uri}: no model config there (looked for {', '.join(candidates)})")


# --- Triton ----------------------------------------------------------------------------------------------------


class TritonModel:
    """A served model on Triton over HTTP or gRPC, pinned to one ready version. Raises ServingError."""

    def __init__(
        self, url: str, model: str, version: str = "", protocol: Protocol = "http", timeout: float = 30.0
    ) -> None:
        if protocol not in ("http", "grpc"):
            raise InputError(f"protocol must be http or grpc, not {protocol!r}")
        self.url, self.model, self.protocol = url, model, protocol
        scheme, sep, address = url.partition("://")
        address, ssl = (address, scheme in ("https", "grpcs")) if sep else (url, False)
        with self._explained():
            if protocol == "http":
                import tritonclient.http as client

                self._client = client.InferenceServerClient(
                    address, ssl=ssl, connection_timeout=timeout, network_timeout=timeout
                )
                self._options: dict[str, Any] = {}
            else:
                import tritonclient.grpc as client

                self._client = client.InferenceServerClient(address, ssl=ssl)
                self._options = {"client_timeout": timeout}
            self._module = client
            if not self._client.is_server_live(**self._options):
                raise ServingError(f"Triton at {url} ({protocol}) is not live")
            if not self._client.is_model_ready(model, version, **self._options):
                raise ServingError(self._not_ready(version))
            self.version = version or max(self._json("get_model_metadata", model)["versions"], key=int)
            self.metadata = self._json("get_model_metadata", model, self.version)
            config = self._json("get_model_config", model, self.version)
            self.max_batch_size = int(config.get("config", config).get("max_batch_size", 0))

    @contextlib.contextmanager
    def _explained(self) -> Iterator[None]:
        from tritonclient.utils import InferenceServerException

        try:
            yield
        except (InferenceServerException, OSError) as exc:
            raise ServingError(f"Triton at {self.url} ({self.protocol}), model {self.model!r}: {exc}") from None

    def _json(self, method: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        extra = {"as_json": True} if self.protocol == "grpc" else {}
        return getattr(self._client, method)(*args, **extra, **self._options, **kwargs)

    def _not_ready(self, version: str) -> str:
        index = self._json("get_model_repository_index", headers=triton_access.control_headers(self.protocol))
        models = index.get("models", []) if isinstance(index, dict) else index
        served = ", ".join(f"{m['name']} v{m.get('version', '-')} {m.get('state', 'UNAVAILABLE')}" for m in models)
        which = f"model {self.model!r}" + (f" version {version}" if version else "")
        return (
            f"{which} is not ready on Triton at {self.url} ({self.protocol}); its repository holds: {served or 'none'}"
        )

    def check_inputs(self, config: ModelConfig) -> None:
        """The served model must take the config's columns (one input per kind, the last dimension its width) and
        give the config's outputs (a classifier's probabilities and label, a regression model's prediction)."""
        widths = {"numeric": len(config.numeric), "categorical": len(config.categorical)}
        served = {i["name"]: [int(d) for d in i["shape"]] for i in self.metadata["inputs"]}
        expected = {name: widths[name] for name in config.inputs}
        problems = (
            [f"inputs {sorted(served)}, the model config {sorted(expected)}"] if set(served) != set(expected) else []
        )
        problems += [
            f"{name!r} has shape {served[name]}, the model config lists {width} {name} feature(s)"
            for name, width in expected.items()
            if name in served and served[name][-1] not in (-1, width)
        ]
        outputs = [o["name"] for o in self.metadata.get("outputs", [])]
        missing = [name for name in config.outputs if name not in outputs]
        if missing:
            problems.append(f"outputs {outputs}, the {config.task} model config reads {config.outputs}")
        if problems:
            raise InputError(
                f"model {self.model!r} version {self.version} on Triton does not fit the model config: "
                f"{'; '.join(problems)}"
            )

    def infer(self, feeds: dict[str, np.ndarray], outputs: Sequence[str]) -> list[np.ndarray]:
        """The arrays of ``outputs`` (``ModelConfig.outputs``: probabilities [N, classes] and label [N, 1], or
        prediction [N, 1]), in chunks of at most ``max_batch_size`` rows."""
        rows = len(next(iter(feeds.values())))
        step = self.max_batch_size or rows
        chunks: list[list[np.ndarray]] = [[] for _ in outputs]
        with self._explained():
            for start in range(0, rows, step):
                chunk = {name: array[start : start + step] for name, array in feeds.items()}
                inputs = layout.infer_inputs(self._module, chunk)
                requested = layout.requested_outputs(self._module, outputs)
                result = self._client.infer(
                    self.model, inputs, model_version=self.version, outputs=requested, **self._options
                )
                for parts, name in zip(chunks, outputs, strict=True):
                    array = result.as_numpy(name)
                    if array is None:
                        raise ServingError(f"model {self.model!r} version {self.version} returned no {name!r}")
                    parts.append(array)
        return [np.concatenate(parts) for parts in chunks]


# --- Feast -----------------------------------------------------------------------------------------------------


def entity_keys(store: FeatureStore, entity: str, entity_ids: Sequence[EntityId]) -> list[EntityId]:
    """The ids as the entity's value type takes them: int for an integer entity, else str."""
    from feast import ValueType

    if entity not in {e.name for e in store.list_entities()}:
        raise InputError(f"the feature repository has no entity {entity!r} (the model's entity)")
    if store.get_entity(entity).value_type not in (ValueType.INT64, ValueType.INT32):
        return [str(e) for e in entity_ids]
    bad = [e for e in entity_ids if not re.fullmatch(r"[+-]?\d+", str(e).strip())]
    if bad:
        raise InputError(f"{entity} is an integer entity; not integers: {bad}")
    return [int(str(e)) for e in entity_ids]


def online_features(
    store: FeatureStore, view: FeatureView, config: ModelConfig, entity_ids: Sequence[EntityId]
) -> dict[str, list[Any]]:
    """The latest value of every model feature for each entity, as columns (Feast's ``to_dict``). Raises
    MissingEntitiesError naming the entities the online store has no features for."""
    from feast.protos.feast.serving.ServingService_pb2 import FieldStatus

    response = store.get_online_features(
        features=[f"{view.name}:{name}" for name in config.features],
        entity_rows=[{config.entity: entity} for entity in entity_ids],
    )
    names = list(response.proto.metadata.feature_names.val)
    statuses = [response.proto.results[names.index(name)].statuses for name in config.features]
    found = {FieldStatus.PRESENT, FieldStatus.NULL_VALUE}
    missing = [e for row, e in enumerate(entity_ids) if not any(s[row] in found for s in statuses)]
    if missing:
        raise MissingEntitiesError(
            f"{config.entity} {', '.join(map(str, dict.fromkeys(missing)))}: not in the online store of feature view "
            f"{view.name!r} (project {store.config.project!r}): never materialized, or older than the view's ttl",
            list(dict.fromkeys(missing)),
        )
    return response.to_dict()


# --- predict ---------------------------------------------------------------------------------------------------


def predict_entities(
    entity_ids: Sequence[EntityId],
    feature_repo: str,
    triton_url: str,
    model_name: str = DEFAULT_MODEL_NAME,
    *,
    model_config: ModelConfig | str | None = None,
    model_repository: str | None = None,
    protocol: Protocol = "http",
    version: str = "",
    feature_view: str | None = None,
    timeout: float = 30.0,
) -> Predictions:
    """Predict for entities by id: their online features from ``feature_repo`` (a directory, s3:// or gs://),
    sent to ``model_name`` on Triton. The model config is ``model_config`` (a ModelConfig, or a package / JSON URI
    for ``load_model_config``) or the served version's ``kfp-mlops.json`` under ``model_repository``."""
    if not entity_ids:
        raise InputError("no entity ids given")
    if (model_config is None) == (model_repository is None):
        raise InputError("give the model config (a model package or JSON) or the model repository, exactly one")
    triton = TritonModel(triton_url, model_name, version, protocol, timeout)
    if model_repository is not None:
        metadata = layout.version_path(model_name, triton.version, VERSION_METADATA_FILE)
        config = load_model_config(f"{model_repository.rstrip('/')}/{metadata}")
    else:
        config = model_config if isinstance(model_config, ModelConfig) else load_model_config(str(model_config))
    triton.check_inputs(config)
    with feature_repo_dir(feature_repo) as repo:
        store = open_feature_store(repo)
        view = find_feature_view(store, config, feature_view)
        keys = entity_keys(store, config.entity, entity_ids)
        columns = online_features(store, view, config, keys)
    answers = triton.infer(raw_inputs(columns, config.numeric, config.categorical), config.outputs)
    expected = (len(keys), 1 if config.regression else len(config.classes))
    if answers[0].shape != expected:
        raise ServingError(
            f"model {model_name!r} version {triton.version} returned {config.outputs[0]} of shape {answers[0].shape} "
            f"for {len(keys)} entities" + ("" if config.regression else f" and {len(config.classes)} classes")
        )
    common = {"entity": config.entity, "entity_ids": keys, "model": model_name, "version": triton.version,
              "task": config.task, "label": config.label, "timestamp": config.timestamp,
              "features": {name: list(columns[name]) for name in config.features}}  # fmt: skip
    if config.regression:
        empty = np.zeros((len(keys), 0), np.float32)
        return Predictions(**common, classes=[], probabilities=empty, labels=[],
                           predictions=answers[0][:, 0].astype(np.float32))  # fmt: skip
    return Predictions(**common, classes=list(config.classes), probabilities=answers[0].astype(np.float32),
                       labels=layout.decode_labels(answers[1]))  # fmt: skip


def log_predictions(predictions: Predictions, log: str, model_uri: str, at: datetime | None = None) -> list[str]:
    """Append the predictions to the prediction log (components/shared/prediction_log.py) as one batch of the
    writer ``predict-<UTC time>-<random>``, each row at the prediction time; returns the files written."""
    at = (at or datetime.now(UTC)).astimezone(UTC)
    writer = f"predict-{at:%Y%m%dT%H%M%S%fZ}-{secrets.token_hex(4)}"
    rows = len(predictions.entity_ids)
    if predictions.regression:
        outputs = {"probabilities": None, "predicted": None, "prediction": [float(v) for v in predictions.predictions]}
    else:
        outputs = {"probabilities": [list(map(float, p)) for p in predictions.probabilities],
                   "predicted": [str(label) for label in predictions.labels], "prediction": None}  # fmt: skip
    columns = prediction_log.log_columns(rows, **outputs, model_name=predictions.model,
                                         model_version=int(predictions.version), registry_version="",
                                         model_uri=model_uri, run_id=writer, predicted_at=at)  # fmt: skip
    timestamp = predictions.timestamp or "event_timestamp"
    table = pa.table({predictions.entity: predictions.entity_ids, timestamp: pa.array([at] * rows,
                      prediction_log.TIMESTAMP_TYPE), **(predictions.features or {}), **columns})  # fmt: skip
    return prediction_log.write_batch(log, table, timestamp, writer, 0)


def format_predictions(predictions: Predictions, digits: int = 6) -> str:
    """A plain-text table: the entity id, one ``p(<class>)`` column per class, and the predicted label; for a
    regression model the entity id and ``<label> (predicted)``."""
    if predictions.regression:
        header = [predictions.entity, f"{predictions.label or 'prediction'} (predicted)"]
        values = predictions.predictions if predictions.predictions is not None else []
        rows = [
            [str(entity), f"{value:.{digits}f}"] for entity, value in zip(predictions.entity_ids, values, strict=True)
        ]
    else:
        header = [predictions.entity, *(f"p({c})" for c in predictions.classes), "label"]
        rows = [
            [str(entity), *(f"{p:.{digits}f}" for p in probabilities), str(label)]
            for entity, probabilities, label in zip(
                predictions.entity_ids, predictions.probabilities, predictions.labels, strict=True
            )
        ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in [header, *rows]
    )
