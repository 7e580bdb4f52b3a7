"""Batch inference: entities at a time → their point-in-time features from Feast's offline store → the serving
model's predictions → the prediction log (components/shared/prediction_log.py). Paths and values only; no KFP.

Streaming: ``inference.batch_rows`` entities are read, joined, scored and written at a time, so memory is bounded by
the batch, not by the number of entities. Batch ``i`` of run ``run_id`` is the log file ``part-<run id>-<i>``: a
retried task (same run id, same entities and as-of time) rewrites the same files with the same rows.

Which model: the serving record's (``evaluate.baseline``). ``inference.source`` auto scores through Triton when the
record names a deployment (its model name and version at ``deploy.triton_url``), else with the model package
in-process; ``triton`` or ``package`` force one.

Errors: InputError for no serving record (train first), no prediction log configured, an entities file that cannot
be read or lacks the entity column, a malformed id or timestamp (file, column and row named), or entities of which
none has features at their time. Entities without features at their time are counted, reported and left out.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kfp_mlops.components.inference.entities import read_entities, view_entities
from kfp_mlops.components.inference.scoring import PackageScorer, Scorer, TritonScorer
from kfp_mlops.components.shared import layout, prediction_log
from kfp_mlops.components.shared.config import InferenceConfig
from kfp_mlops.components.shared.errors import InputError
from kfp_mlops.components.shared.feature_repo import feature_repo_dir, find_feature_view, open_feature_store
from kfp_mlops.components.shared.model_package import ModelConfig, raw_inputs, read_model_config
from kfp_mlops.components.shared.prediction_log import TIMESTAMP_TYPE
from kfp_mlops.components.shared.records import ServingRecord

if TYPE_CHECKING:
    from feast import FeatureStore, FeatureView

_ROW = "__kfp_mlops_row"
_ARROW_TYPE_OF = {"Int64": pa.int64(), "Int32": pa.int32(), "Float64": pa.float64(), "Float32": pa.float32(),
                  "String": pa.string(), "Bool": pa.bool_()}  # fmt: skip
SHOWN_UNKNOWN = 10  # unknown entity ids named in the output


@dataclass
class InferenceResult:
    """What a run predicted, where it wrote it, and how fast."""

    log: str
    source: str  # triton or package
    model_name: str
    model_version: int
    model_uri: str
    as_of: str
    rows: int = 0  # predictions written
    entities_read: int = 0
    unknown_entities: int = 0  # rows with no feature at their time: left out
    unknown_examples: list = field(default_factory=list)
    batches: int = 0
    files: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def metrics(self) -> dict[str, float]:
        return {"rows": self.rows, "entities_read": self.entities_read, "unknown_entities": self.unknown_entities,
                "batches": self.batches, "files": len(self.files), "seconds": round(self.seconds, 3),
                "rows_per_second": round(self.rows_per_second, 1), "model_version": self.model_version}  # fmt: skip


def require_record(record: ServingRecord | None, baseline: str) -> ServingRecord:
    if record is None:
        where = baseline or "(evaluate.baseline is empty)"
        raise InputError(
            f"serving record {where}: no model serves yet, so there is nothing to predict with; run the training "
            "pipeline first (it records the deployed model there)"
        )
    return record


def open_scorer(settings: InferenceConfig, record: ServingRecord, config: ModelConfig, triton_url: str,
                max_batch_size: int = 0) -> Scorer:  # fmt: skip
    """Triton when ``source`` is triton, or auto and the record names a deployment; else the package in-process.
    ``max_batch_size`` (deploy's): the request size when ``request_rows`` is 0."""
    deployment = record.deployment
    if settings.source == "triton" and deployment is None:
        raise InputError("inference.source is triton but the serving record names no deployment: use auto or package")
    if deployment is not None and settings.source != "package":
        return TritonScorer(triton_url or deployment.endpoint, deployment.model_name, deployment.version, config,
                            settings.request_rows, settings.concurrency, settings.timeout_seconds,
                            max_batch_size)  # fmt: skip
    name = record.registry.model_name if record.registry else (deployment.model_name if deployment else "")
    return PackageScorer(record.model, name)


def parse_as_of(text: str, default: datetime) -> datetime:
    """``inference.as_of`` (ISO 8601; naive: UTC), else ``default``."""
    if not text:
        return default.astimezone(UTC)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InputError(f"inference.as_of {text!r}: not an ISO 8601 time, e.g. 2026-01-31T00:00:00Z") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def point_in_time(store: FeatureStore, view: FeatureView, config: ModelConfig, rows: pa.Table) -> pa.Table:
    """``rows`` (entity, timestamp) with each model feature's latest value at or before the row's time (Feast's
    offline store, within the view's ttl), in the order of ``rows``; a row Feast has no feature row for keeps nulls.
    Each distinct (entity, timestamp) is asked once (Feast's file store keeps one answer per pair)."""
    keys = [config.entity, config.timestamp]
    distinct = rows.group_by(keys, use_threads=False).aggregate([])
    frame = distinct.to_pandas()
    answered = store.get_historical_features(
        entity_df=frame, features=[f"{view.name}:{name}" for name in config.features]
    ).to_arrow()
    types = {f.name: _ARROW_TYPE_OF.get(str(f.dtype)) for f in view.features}
    found = pa.table(
        {
            config.entity: answered[config.entity].cast(rows.schema.field(config.entity).type),
            config.timestamp: pc.cast(answered[config.timestamp], TIMESTAMP_TYPE),
            **{name: _typed(answered[name], types.get(name)) for name in config.features},
        }
    )
    numbered = rows.append_column(_ROW, pa.array(np.arange(rows.num_rows)))
    joined = numbered.join(found, keys=keys, join_type="left outer", use_threads=False).sort_by(_ROW)
    return joined.select([*keys, *config.features])


def _typed(values: pa.ChunkedArray, target: pa.DataType | None) -> pa.ChunkedArray:
    """Feast hands an integer feature back as float64 when a value is missing: restore the type (NaN → null)."""
    if target is None:
        return values
    if pa.types.is_floating(values.type) and pa.types.is_integer(target):
        values = pc.if_else(pc.is_nan(values), pa.scalar(None, values.type), values)
    return values.cast(target)


def unknown_mask(table: pa.Table, features: list[str]) -> pa.Array:
    """Rows where no feature has a value: entities Feast has no feature row for at (or before) their time."""
    mask = pa.chunked_array([pa.array(np.zeros(table.num_rows, bool))]) if not features else None
    for name in features:
        missing = pc.is_null(table[name], nan_is_null=True)
        mask = missing if mask is None else pc.and_(mask, missing)
    return mask.combine_chunks() if isinstance(mask, pa.ChunkedArray) else mask


def log_table(table: pa.Table, answers: list[np.ndarray], config: ModelConfig, scorer: Scorer, registry_version: str,
              model_uri: str, run_id: str, predicted_at: datetime) -> pa.Table:  # fmt: skip
    """The batch's rows (entity, timestamp, features) with the prediction log's columns."""
    rows = table.num_rows
    if config.regression:
        outputs = {"probabilities": None, "predicted": None, "prediction": answers[0].reshape(rows).astype(np.float64)}
    else:
        probabilities = np.ascontiguousarray(answers[0], dtype=np.float32)
        if probabilities.shape != (rows, len(config.classes)):
            raise ValueError(f"the model returned probabilities of shape {probabilities.shape} for {rows} rows and "
                             f"{len(config.classes)} classes")  # fmt: skip
        values = pa.FixedSizeListArray.from_arrays(pa.array(probabilities.ravel()), len(config.classes))
        labels = [str(label) for label in layout.decode_labels(answers[1])]
        outputs = {"probabilities": values, "predicted": pa.array(labels, pa.string()), "prediction": None}
    columns = prediction_log.log_columns(rows, **outputs, model_name=scorer.model_name,
                                         model_version=scorer.model_version, registry_version=registry_version,
                                         model_uri=model_uri, run_id=run_id, predicted_at=predicted_at)  # fmt: skip
    for name, values in columns.items():
        table = table.append_column(name, values)
    return table


def entity_batches(
    settings: InferenceConfig, store: FeatureStore, view: FeatureView, repo: Path, config: ModelConfig,
    as_of: datetime,
) -> Iterator[pa.Table]:  # fmt: skip
    entity_type = pa.int64() if _entity_is_integer(store, config.entity) else pa.string()
    if settings.entities:
        return read_entities(settings.entities, config.entity, config.timestamp, entity_type, as_of,
                             settings.batch_rows)  # fmt: skip
    source = Path(view.batch_source.path)
    source = source if source.is_absolute() else repo / source
    return view_entities(source, config.entity, config.timestamp, entity_type, as_of, settings.batch_rows)


def _entity_is_integer(store: FeatureStore, entity: str) -> bool:
    from feast import ValueType

    if entity not in {e.name for e in store.list_entities()}:
        raise InputError(f"the feature repository has no entity {entity!r} (the model's entity)")
    return store.get_entity(entity).value_type in (ValueType.INT64, ValueType.INT32)


def run_inference(
    settings: InferenceConfig,
    record: ServingRecord,
    feature_repo: str,
    run_id: str,
    as_of: datetime,
    *,
    triton_url: str = "",
    feature_view: str | None = None,
    log: str | None = None,
    max_batch_size: int = 0,
) -> InferenceResult:
    """Predict for the configured entities at ``as_of`` with the model the serving record names, appending the
    predictions to ``log`` (default ``inference.log``) as batches ``0..n-1`` of writer ``run_id``. Triton is reached
    at ``triton_url`` (deploy.triton_url; empty: the deployment's endpoint), in requests of ``request_rows`` rows or,
    when 0, ``max_batch_size`` (deploy.max_batch_size)."""
    log = log or settings.log
    if not log:
        raise InputError("inference.log is empty: name the prediction log's URI (local, s3:// or gs://)")
    if not run_id:
        raise InputError("run_id is empty: the prediction log names its files after the run (retries rewrite them)")
    started = time.perf_counter()
    config = read_model_config(record.model)
    registry_version = str(record.registry.version) if record.registry and record.registry.version else ""
    scorer = open_scorer(settings, record, config, triton_url, max_batch_size)
    result = InferenceResult(log=log, source="package" if scorer.model_version == 0 else "triton",
                             model_name=scorer.model_name, model_version=scorer.model_version,
                             model_uri=record.model, as_of=as_of.isoformat())  # fmt: skip
    try:
        with feature_repo_dir(feature_repo) as repo:
            store = open_feature_store(repo)
            view = find_feature_view(store, config, feature_view)
            for batch in entity_batches(settings, store, view, repo, config, as_of):
                result.entities_read += batch.num_rows
                table = point_in_time(store, view, config, batch)
                unknown = unknown_mask(table, config.features)
                missing = pc.sum(unknown).as_py() or 0
                if missing:
                    result.unknown_entities += missing
                    room = SHOWN_UNKNOWN - len(result.unknown_examples)
                    if room > 0:
                        result.unknown_examples += table.filter(unknown)[config.entity][:room].to_pylist()
                    table = table.filter(pc.invert(unknown))
                if table.num_rows:
                    answers = scorer.score(raw_inputs(table, config.numeric, config.categorical))
                    rows = log_table(table, answers, config, scorer, registry_version, record.model, run_id,
                                     datetime.now(UTC))  # fmt: skip
                    result.files += prediction_log.write_batch(log, rows, config.timestamp, run_id, result.batches)
                    result.rows += table.num_rows
                result.batches += 1
                print(f"[inference] batch {result.batches}: {result.rows} predictions so far "
                      f"({result.unknown_entities} unknown)")  # fmt: skip
    finally:
        scorer.close()
    result.seconds = time.perf_counter() - started
    if result.entities_read == 0:
        raise InputError(f"inference.entities {settings.entities or '(the feature view)'}: no entities to predict for")
    if result.rows == 0:
        raise InputError(
            f"none of the {result.entities_read} entities has features at its time in feature view {view.name!r} "
            f"(e.g. {config.entity} {', '.join(map(str, result.unknown_examples))}); is inference.as_of before the "
            "data, or are these ids of another entity?"
        )
    return result


def render_summary(result: InferenceResult) -> str:
    """The run as Markdown."""
    where = "Triton (gRPC)" if result.source == "triton" else "the model package, in-process"
    unknown = f"- Unknown entities (no features at their time, left out): {result.unknown_entities}" + (
        f" (e.g. {', '.join(map(str, result.unknown_examples))})" if result.unknown_examples else ""
    )
    lines = [
        "# Batch inference",
        "",
        f"- Model: {result.model_name or '(unnamed)'} version {result.model_version} ({result.model_uri}), "
        f"scored by {where}",
        f"- Features as of: {result.as_of} (rows without their own timestamp)",
        f"- Predictions: {result.rows} of {result.entities_read} entities, {result.batches} batch(es), "
        f"{len(result.files)} file(s)",
        unknown,
        f"- Time: {result.seconds:.1f} s ({result.rows_per_second:,.0f} rows/s)",
        f"- Log: {result.log}",
    ]
    return "\n".join(lines) + "\n"
