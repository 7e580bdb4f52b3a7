"""Features executor: unpacks the KFP artifacts (duck-typed: ``.path``, ``.metadata``, ``.log_metric``), calls
``core.build_feature_sets`` and records its result. Imports no KFP, so the component body stays a single call."""

from __future__ import annotations

from typing import Any

from kfp_mlops.components.features.core import FeaturesResult, build_feature_sets
from kfp_mlops.components.shared import runs, tracking
from kfp_mlops.components.shared.artifacts import dataset_metadata, log_metrics, update_metadata
from kfp_mlops.components.shared.config import PipelineConfig, load_config
from kfp_mlops.components.shared.layout import FEATURE_STORE_YAML
from kfp_mlops.components.shared.splits import SplitPaths
from kfp_mlops.components.shared.tracking import StepLog


def run(
    config: str,
    train: Any,
    validation: Any,
    test: Any,
    feature_repo: Any,
    train_features: Any,
    validation_features: Any,
    test_features: Any,
    metrics: Any,
    run_id: str = "",
) -> None:
    pipeline_config = load_config(config)
    run_dir = runs.run_directory(metrics.uri, run_id) if run_id else ""
    tracker = tracking.for_step(pipeline_config.tracking, run_id, run_dir, "features")
    result = build_feature_sets(
        pipeline_config,
        SplitPaths(train.path, validation.path, test.path),
        feature_repo.path,
        SplitPaths(train_features.path, validation_features.path, test_features.path),
    )
    datasets = {"train": train_features, "validation": validation_features, "test": test_features}
    publish(result, pipeline_config, feature_repo, datasets, metrics, train.metadata.get("content_hash", ""))
    tracker.log_step(
        StepLog(
            params={"feast.project": result.project, "feast.view": result.view, "feast.entity": result.entity,
                    "feast.online_store": result.online_store, "feast.registry": result.registry},
            metrics={"rows_materialized": result.rows_materialized,
                     "materialize_rows_per_second": result.materialize_rows_per_second,
                     **{f"rows_{name}": rows for name, rows in result.rows.items()}},
            tags={"feast.feature_repo": getattr(feature_repo, "uri", feature_repo.path),
                  "feast.materialized_to": str(result.materialized_to)},
        )
    )  # fmt: skip


def publish(
    result: FeaturesResult,
    config: PipelineConfig,
    feature_repo: Any,
    datasets: dict[str, Any],
    metrics: Any,
    content_hash: str = "",
) -> None:
    """Repository metadata (project, view, stores, window), Dataset metadata (rows, column roles, the raw data's
    content hash carried on from ingest) and Metrics.
    Only store types are recorded: connection strings and registry URLs stay in the environment."""
    schema = config.schema_
    update_metadata(
        feature_repo,
        {
            "project": result.project,
            "feature_view": result.view,
            "entity": result.entity,
            "features": result.features,
            "feature_types": result.feature_types,
            "online_store": result.online_store,
            "registry": result.registry,
            "feature_store_yaml": FEATURE_STORE_YAML,
            "materialized_from": result.materialized_from,
            "materialized_to": result.materialized_to,
        },
    )
    for name, artifact in datasets.items():
        categorical = [f for f in result.features if result.feature_types[f] == "String"]
        metadata = dataset_metadata(schema, result.rows[name], result.features, categorical, content_hash)
        update_metadata(artifact, metadata | {"feature_view": result.view, "project": result.project})
    log_metrics(
        metrics,
        {
            "rows_materialized": result.rows_materialized,
            "materialize_seconds": result.materialize_seconds,
            "materialize_rows_per_second": result.materialize_rows_per_second,
            "views": result.views,
            **{f"rows_{name}": rows for name, rows in result.rows.items()},
            "online_entities_checked": result.online_entities_checked,
        },
    )
