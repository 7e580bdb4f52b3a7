"""``make demo-monitoring``: monitoring beyond drift, end to end on this machine, from the compiled YAMLs.

After ``make demo`` trained and deployed the sample model (its serving record, Feast repository and local Triton):
a real Alertmanager and Pushgateway start here; the inference pipeline scores the latest sample rows (each entity at
its own time) into the prediction log; the labels of those rows arrive: first as they are (monitoring with them:
performance ``ok``, no alert), then with a share of them flipped (monitoring: performance ``degraded``, an alert in
Alertmanager, a retrain). What Alertmanager and the Pushgateway hold is printed at the end.

``window_files`` writes the entities and both label files; the tests (tests/test_local_run.py) use it too.
"""

from __future__ import annotations

import argparse
import json
import shutil
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml

from kfp_mlops import monitoring_services
from kfp_mlops.cli import main as cli
from kfp_mlops.cli_common import config_text
from kfp_mlops.sample_data import ENTITY, LABEL, TIMESTAMP

FLIP_SHARE = 0.6  # of the degraded labels: a model right 80 % of the time is then right about 40 %


@dataclass(frozen=True)
class WindowFiles:
    entities: Path  # entity and timestamp of each row scored
    labels: Path  # their true labels
    degraded_labels: Path  # the same, FLIP_SHARE of them flipped


def window_files(data: Path, directory: Path, rows: int = 1_000, flip_share: float = FLIP_SHARE, seed: int = 0
                 ) -> WindowFiles:  # fmt: skip
    """The ``rows`` latest rows of the sample data at ``data`` (a file or a directory of Parquet) as entities to score
    and their labels, true and degraded."""
    table = pq.read_table(data, columns=[ENTITY, TIMESTAMP, LABEL])
    table = table.take(pc.sort_indices(table, [(TIMESTAMP, "descending"), (ENTITY, "ascending")]))
    latest = table.group_by([ENTITY, TIMESTAMP], use_threads=False).aggregate([(LABEL, "max")])
    latest = latest.rename_columns([ENTITY, TIMESTAMP, LABEL])
    latest = latest.take(pc.sort_indices(latest, [(TIMESTAMP, "descending"), (ENTITY, "ascending")])).slice(0, rows)
    labels = latest.column(LABEL).to_numpy()
    flip = np.random.default_rng(seed).random(len(labels)) < flip_share
    degraded = latest.set_column(2, LABEL, pa.array(np.where(flip, 1 - labels, labels), latest.column(LABEL).type))
    directory.mkdir(parents=True, exist_ok=True)
    files = WindowFiles(
        directory / "entities.parquet", directory / "labels.parquet", directory / "labels-degraded.parquet"
    )
    pq.write_table(latest.select([ENTITY, TIMESTAMP]), files.entities)
    pq.write_table(latest, files.labels)
    pq.write_table(degraded, files.degraded_labels)
    return files


def monitored_config(config: Path, directory: Path, alertmanager: str, pushgateway: str) -> Path:
    """``config`` with the prediction log, the performance gates, the alerts and the Pushgateway of this demo."""
    document = yaml.safe_load(config_text(config))  # its relative paths made absolute
    document["inference"] = {"log": str(directory / "prediction-log")}
    document["performance"] = {"tolerance_hours": 0, "min_rows": 200, "max_drop": {"roc_auc": 0.05}}
    document["alerts"] = {"alertmanager_url": alertmanager}
    document["observability"] = {"pushgateway": pushgateway}
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - a local server of this demo
        return response.read().decode()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=Path("examples/training.yaml"))
    parser.add_argument("--data", type=Path, default=Path("build/sample-data"))
    parser.add_argument("--pipelines", type=Path, default=Path("build/pipelines"))
    parser.add_argument("--directory", type=Path, default=Path("build/monitoring"))
    parser.add_argument("--pipeline-root", type=Path, default=Path("build/local-runs"),
                        help="the training demo's: its MLflow file holds the lineage of every run")  # fmt: skip
    parser.add_argument("--rows", type=int, default=1_000)
    args = parser.parse_args(argv)
    directory = args.directory.resolve()
    shutil.rmtree(directory / "prediction-log", ignore_errors=True)  # this demo's predictions only
    files = window_files(args.data, directory, args.rows)
    root = str(args.pipeline_root.resolve())
    with monitoring_services.alertmanager(directory / "alertmanager") as alertmanager, \
            monitoring_services.pushgateway(directory / "pushgateway") as pushgateway:  # fmt: skip
        print(f"Alertmanager at {alertmanager.bucket}, Pushgateway at {pushgateway.bucket}")
        config = str(monitored_config(args.config, directory, alertmanager.bucket, pushgateway.bucket))
        steps = [
            ("Batch inference: the latest rows, each at its own time, into the prediction log",
             ["run", "inference", "--local", "--package", str(args.pipelines / "inference.yaml"), "--config", config,
              "--pipeline-root", root, "--param", f"entities={files.entities}"]),
            ("Monitoring with the true labels: performance ok, no alert",
             ["run", "monitoring", "--local", "--package", str(args.pipelines / "monitoring.yaml"), "--config",
              config, "--pipeline-root", root, "--param", f"labels={files.labels}"]),
            (f"Monitoring with {FLIP_SHARE:.0%} of the labels flipped: degraded, an alert, a retrain",
             ["run", "monitoring", "--local", "--package", str(args.pipelines / "monitoring.yaml"), "--config",
              config, "--pipeline-root", root, "--param", f"labels={files.degraded_labels}"]),
        ]  # fmt: skip
        for title, command in steps:
            print(f"\n=== {title}\n$ kfp-mlops {' '.join(command)}")
            code = cli(command)
            if code != 0:
                return code
        held = json.loads(_get(f"{alertmanager.bucket}/api/v2/alerts"))
        print(f"\n=== Alertmanager holds {len(held)} alert(s) ({alertmanager.bucket}/api/v2/alerts)")
        for alert in held:
            labels = alert["labels"]
            print(f"- {labels['alertname']} model={labels.get('model')} version={labels.get('version', '')} "
                  f"severity={labels.get('severity')}: {alert['annotations'].get('summary', '')}")  # fmt: skip
        pushed = [line for line in _get(f"{pushgateway.bucket}/metrics").splitlines() if line.startswith("kfp_mlops_")]
        print(f"\n=== The Pushgateway holds {len(pushed)} kfp_mlops_* sample(s), e.g.:")
        print("\n".join(pushed[:12]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
