"""``kfp-mlops lineage MODEL[@alias|/version]``: a registered model version's chain, read back from MLflow.

data source and content hash → ingest statistics → Feast feature repository → training (config, batching, final
losses) → evaluation (metrics against the baseline, blessing) → quantization → Triton version and deploy time → the
monitoring runs that compared windows against it. Everything comes from the registry and the runs the steps logged
(``components/shared/tracking.py``): the version's tag ``kfp.run_id`` names the KFP run, whose step runs hold the rest.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

from kfp_mlops.components.shared import registry
from kfp_mlops.components.shared.tracking import TAG_COMPARED_WITH, TAG_LEVEL, TAG_RUN, TAG_TASK

_SPEC = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9_.-]*?)(?:@(?P<alias>[A-Za-z0-9_-]+)|/(?P<version>\d+))?$")
MONITORING_RUNS_SHOWN = 20


def parse_spec(spec: str) -> tuple[str, str, int]:
    """``MODEL``, ``MODEL@alias`` or ``MODEL/version`` → (name, alias, version); a bare name means @champion."""
    match = _SPEC.fullmatch(spec.strip())
    if not match:
        raise ValueError(f"{spec!r}: expected MODEL, MODEL@alias (e.g. churn@champion) or MODEL/version (e.g. churn/3)")
    version = int(match["version"]) if match["version"] else 0
    return match["name"], match["alias"] or ("" if version else registry.CHAMPION), version


def _when(millis: int | None) -> str:
    return datetime.fromtimestamp(millis / 1000, UTC).isoformat(timespec="seconds") if millis else ""


def _run_facts(run: Any) -> dict[str, Any]:
    return {
        "mlflow_run_id": run.info.run_id,
        "status": run.info.status,
        "started": _when(run.info.start_time),
        "params": dict(run.data.params),
        "metrics": dict(run.data.metrics),
        "tags": {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")},
    }


def lineage(client: Any, spec: str) -> dict[str, Any]:
    """The chain of the version ``spec`` names, as a JSON-ready mapping (``render`` writes it as text)."""
    name, alias, number = parse_spec(spec)
    try:
        found = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, str(number))
    except Exception as exc:
        raise LookupError(f"{spec}: no such model version in the registry ({str(exc).splitlines()[0]})") from None
    version = registry.as_version(found)
    kfp_run = version.tags.get(TAG_RUN, "")
    experiment = client.get_run(version.run_id).info.experiment_id if version.run_id else None
    steps: dict[str, dict[str, Any]] = {}
    pipeline: dict[str, Any] = {}
    if kfp_run and experiment:
        for run in client.search_runs([experiment], filter_string=f"tags.`{TAG_RUN}` = '{kfp_run}'", max_results=100):
            if run.data.tags.get(TAG_LEVEL) == "pipeline":
                pipeline = _run_facts(run)
            elif TAG_TASK in run.data.tags:
                steps[run.data.tags[TAG_TASK]] = _run_facts(run)
    monitoring = []
    if experiment:
        compared = f"{name}/{version.version}"
        checks = client.search_runs(
            [experiment],
            filter_string=f"tags.`{TAG_COMPARED_WITH}` = '{compared}' and tags.`{TAG_TASK}` = 'drift-check'",
            max_results=MONITORING_RUNS_SHOWN,
            order_by=["attributes.start_time DESC"],
        )
        for run in checks:
            tags, metrics = run.data.tags, run.data.metrics
            monitoring.append(
                {
                    "kfp_run_id": tags.get(TAG_RUN, ""),
                    "started": _when(run.info.start_time),
                    "drifted": tags.get("drifted") == "True",
                    "share": metrics.get("share_of_drifted_columns"),
                    "drifted_columns": tags.get("drifted_columns", ""),
                    "action": tags.get("action", ""),
                }
            )
    previous = None
    try:
        before = registry.as_version(client.get_model_version_by_alias(name, registry.PREVIOUS))
        previous = {
            "version": before.version,
            "triton_version": before.triton_version,
            "kfp_run_id": before.tags.get(TAG_RUN, ""),
        }
    except Exception:
        previous = None
    return {
        "model": {
            "name": name,
            "version": version.version,
            "aliases": version.aliases,
            "source": version.source,
            "kfp_run_id": kfp_run,
            "tags": version.tags,
        },
        "pipeline_run": pipeline,
        "steps": steps,
        "previous": previous,
        "monitoring": monitoring,
    }


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    return str(value)


def render(chain: dict[str, Any]) -> str:
    """The chain as the console shows it: one block per link."""
    model, steps = chain["model"], chain["steps"]
    tags = model["tags"]
    aliases = f" ({', '.join(model['aliases'])})" if model["aliases"] else ""
    lines = [
        f"{model['name']} version {model['version']}{aliases}: KFP run {model['kfp_run_id'] or '(unknown)'}",
        f"  package      {model['source']}",
    ]
    ingest = steps.get("ingest", {})
    if ingest:
        t, m = ingest["tags"], ingest["metrics"]
        rows = ", ".join(f"{s} {int(m[f'rows_{s}']):,}" for s in ("train", "validation", "test") if f"rows_{s}" in m)
        lines.append(
            f"  data         {t.get('data.source', '?')}  {t.get('data.content_hash', tags.get('content_hash', ''))}"
        )
        lines.append(
            f"  ingest       {int(m.get('rows_read', 0)):,} rows read; splits {rows}; task {t.get('task', '?')}; "
            f"{len(ingest['params'])} config params (run {ingest['mlflow_run_id']})"
        )
    features = steps.get("features", {})
    if features:
        p = features["params"]
        lines.append(
            f"  features     Feast project {p.get('feast.project', '?')}, view {p.get('feast.view', '?')}, "
            f"repo {features['tags'].get('feast.feature_repo', '?')}"
        )
    train = steps.get("train-model", {})
    if train:
        p, m = train["params"], train["metrics"]
        lines.append(
            f"  training     precision {p.get('effective.precision', '?')}, ZeRO {p.get('effective.zero_stage', '?')}, "
            f"{p.get('effective.world_size', '?')} worker(s), micro-batch {p.get('batching.micro_batch_size', '?')}; "
            f"{_fmt(m.get('epochs', 0))} epochs, train_loss {_fmt(m.get('final_train_loss'))}, "
            f"val_loss {_fmt(m.get('final_val_loss'))}, {_fmt(m.get('samples_per_second', 0.0))} samples/s"
        )
    evaluate = steps.get("evaluate-model", {})
    if evaluate:
        t, m = evaluate["tags"], evaluate["metrics"]
        shown = [k for k in m if not k.startswith("baseline.")][:6]
        figures = ", ".join(
            f"{k} {_fmt(m[k])}" + (f" (baseline {_fmt(m['baseline.' + k])})" if f"baseline.{k}" in m else "")
            for k in shown
        )
        verdict = "BLESSED" if t.get("blessed") == "True" else f"NOT BLESSED ({t.get('reasons', '')})"
        lines.append(f"  evaluation   {verdict}: {figures}")
    quantize = steps.get("quantize-model", {})
    if quantize:
        m = quantize["metrics"]
        lines.append(
            f"  quantization {quantize['tags'].get('quantize.chosen', '?')}: max |diff| {_fmt(m.get('max_abs_diff'))}, "
            f"{_fmt(m.get('latency_ms_batch1'))} ms at batch 1, {_fmt(m.get('size_ratio'))}× smaller"
        )
    triton = tags.get(registry.TAG_TRITON_VERSION)
    if triton:
        repository = tags.get(registry.TAG_TRITON_REPOSITORY) or "(no repository)"
        lines.append(
            f"  deployment   Triton version {triton} from {repository}, "
            f"deployed {tags.get(registry.TAG_DEPLOYED_AT, '?')}"
        )
    previous = chain["previous"]
    if previous and previous["version"] != model["version"]:
        lines.append(
            f"  before it    version {previous['version']} (Triton version {previous['triton_version']}, "
            f"KFP run {previous['kfp_run_id']})"
        )
    checks = chain["monitoring"]
    if checks:
        lines.append(f"  monitoring   {len(checks)} drift check(s) against it:")
        for check in checks:
            verdict = f"drift ({check['drifted_columns']}) → {check['action']}" if check["drifted"] else "no drift"
            lines.append(f"               {check['started']} KFP run {check['kfp_run_id']}: {verdict}")
    else:
        lines.append("  monitoring   no drift check has compared a window with it yet")
    return "\n".join(lines)


def as_json(chain: dict[str, Any]) -> str:
    return json.dumps(chain, indent=2, default=str)
