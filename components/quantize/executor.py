"""Quantize executor: unpacks the KFP artifacts (duck-typed), calls ``core.quantize``, records metrics, the
comparison table and the chosen model's metadata. Imports no KFP."""

from __future__ import annotations

import math
from typing import Any

from kfp_mlops.components.quantize import core
from kfp_mlops.components.shared import runs, tracking
from kfp_mlops.components.shared.artifacts import log_metrics, update_metadata, write_text_atomically
from kfp_mlops.components.shared.config import load_config
from kfp_mlops.components.shared.tracking import StepLog

CARRIED_METADATA = ("framework", "format", "onnx_file", "content_hash")  # of the input model, kept as they are


def run(
    config: str,
    model: Any,
    train_data: Any,
    validation_data: Any,
    quantized_model: Any,
    metrics: Any,
    comparison: Any,
    run_id: str = "",
) -> core.QuantizeResult:
    pipeline_config = load_config(config)
    run_dir = runs.run_directory(metrics.uri, run_id) if run_id else ""
    tracker = tracking.for_step(pipeline_config.tracking, run_id, run_dir, "quantize-model")
    result = core.quantize(pipeline_config, model.path, train_data.path, validation_data.path, quantized_model.path)
    log_metrics(metrics, result.metrics())
    write_text_atomically(comparison.path, result.table())
    chosen = result.selected
    update_metadata(
        quantized_model,
        {key: model.metadata[key] for key in CARRIED_METADATA if key in model.metadata}
        | {
            "precision": chosen.name,
            "onnx_bytes": chosen.onnx_bytes,
            "metric_deltas": {name: value for name, value in chosen.deltas.items() if math.isfinite(value)},
            "max_abs_diff": chosen.max_abs_diff,
            "latency_ms_batch1": chosen.latency_ms,
            "source_model": getattr(model, "uri", ""),
            "rejected": result.rejected,
        }
        | ({} if chosen.label_agreement is None else {"label_agreement": chosen.label_agreement})
        | ({"task": result.task, "label_std": result.budget["label_std"]} if "label_std" in result.budget else {}),
    )
    print(result.summary())
    finite = {name: value for name, value in result.metrics().items() if isinstance(value, (int, float))}
    tracker.log_step(
        StepLog(
            params={f"quantize.{key}": value for key, value in pipeline_config.quantize.model_dump().items()},
            metrics={k: float(v) for k, v in finite.items() if math.isfinite(v)},
            tags={"quantize.chosen": chosen.name, "quantize.rejected": ", ".join(sorted(result.rejected))},
            artifacts={comparison.path: ""},
        )
    )  # fmt: skip
    return result
