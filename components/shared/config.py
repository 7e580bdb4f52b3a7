"""The pipeline config: one YAML document, validated with pydantic; unknown keys are rejected.

A run receives it as the pipeline parameter ``config``: either the YAML text itself or the URI of a YAML file
(local path, ``file://``, ``s3://``, ``gs://``). Later steps add a section each.

Over 500 lines on purpose: one typed section per step, read and validated as the one document users write.
"""

from __future__ import annotations

import re
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from kfp_mlops.components.shared import runs, storage
from kfp_mlops.components.shared.errors import ConfigError

MODEL_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
STAGING_NAME_PATTERN = re.compile(r"-candidate-[0-9a-f]{8}$")  # deploy's staging names (deploy/repository.py)


def check_model_name(name: str, key: str = "deploy.model_name") -> str:
    """``name`` if it is safe as one path segment of the model repository (so never ``.`` or ``..``, nothing a
    rollback's delete could resolve outside ``<repo>/<name>/``); else ValueError naming ``key`` and the value."""
    if not MODEL_NAME_PATTERN.fullmatch(name) or name in (".", ".."):
        raise ValueError(
            f"{key} {name!r} is not a safe model name: use letters, digits, '_', '.', '-', starting with a letter "
            "or digit (it names a folder of the model repository)"
        )
    if STAGING_NAME_PATTERN.search(name):
        raise ValueError(
            f"{key} {name!r} ends like a deployment's staging name (-candidate-<8 hex digits>), which the deploy "
            "of the model it starts with would remove as a leftover: choose another name"
        )
    return name


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class DataConfig(_Strict):
    """Where the raw data is: a file, a prefix/directory, or a glob."""

    source: str = Field(min_length=1)
    format: Literal["parquet", "csv"] | None = None  # None: by file extension


class SchemaConfig(_Strict):
    """Column roles. Features omitted: every column that is not entity, timestamp or label."""

    entity: str
    timestamp: str
    label: str
    features: list[str] | None = None
    categorical: list[str] = []
    allow_extra_columns: bool = False  # extra columns are dropped instead of failing the run
    # impute: a missing feature value (empty, null, NaN, "n/a") becomes the training median (numeric) or the
    # reserved category (categorical), inside the exported model too; error: ingest rejects it naming file/row
    missing_values: Literal["impute", "error"] = "impute"
    # classification: a label with more distinct values than this (or a float one with a fraction) is refused
    max_classes: int = Field(50, ge=2)
    # rows of one entity and timestamp with different labels: error, or keep_latest (the last row in file order)
    conflicting_labels: Literal["error", "keep_latest"] = "error"
    max_future_days: float = Field(1.0, ge=0, le=36_500)  # a timestamp later than now + this many days is refused
    # what the model predicts: classes (binary or multiclass, by the number of classes) or a number. auto:
    # regression when the label is a floating-point column holding a value with a fraction, else classification
    # (tabular.resolve_task is the one rule; ingest decides on every row and hands its answer to training)
    task: Literal["auto", "classification", "regression"] = "auto"

    @model_validator(mode="after")
    def _roles_are_distinct(self) -> SchemaConfig:
        roles = {"entity": self.entity, "timestamp": self.timestamp, "label": self.label}
        if len(set(roles.values())) != 3:
            raise ValueError(f"entity, timestamp and label must be different columns, got {roles}")
        for role, column in roles.items():
            if self.features is not None and column in self.features:
                raise ValueError(f"column {column!r} is the {role} and cannot also be a feature")
        if self.features is not None:
            duplicated = sorted({f for f in self.features if self.features.count(f) > 1})
            if duplicated:
                raise ValueError(f"features listed twice: {duplicated}")
            unknown = sorted(set(self.categorical) - set(self.features))
            if unknown:
                raise ValueError(f"categorical columns {unknown} are not in features")
        return self


class SplitConfig(_Strict):
    """Deterministic train/validation/test split: by event time (latest rows to test) or by entity hash.
    ``stratify``: the same rule applied within each label class (time: each class's latest rows to test; entity
    hash: entities grouped by the label of their latest row), so every class with at least 3 rows (entities) has
    rows in every split; without it, ingest warns about a class missing from validation or test."""

    by: Literal["time", "entity_hash"] = "time"
    validation: float = Field(0.15, gt=0.0, lt=1.0)  # training needs it: early stopping, threshold tuning
    test: float = Field(0.15, gt=0.0, lt=1.0)
    seed: int = 0
    stratify: bool = False

    @model_validator(mode="after")
    def _leaves_training_rows(self) -> SplitConfig:
        if self.validation + self.test >= 1.0:
            raise ValueError(f"validation + test must be below 1, got {self.validation} + {self.test}")
        return self


class OnlineStoreConfig(_Strict):
    """Feast online store. ``sqlite`` (embedded default, a file in the feature repository) or ``redis``, whose
    connection string comes from the environment variable named here (a Kubernetes Secret in the cluster)."""

    type: Literal["sqlite", "redis"] = "sqlite"
    connection_string_env: str = "FEAST_REDIS_CONNECTION_STRING"


class RegistryConfig(_Strict):
    """Feast registry. ``file`` (embedded default: Feast's registry file in the feature repository) or ``sql``
    (PostgreSQL), whose SQLAlchemy URL comes from the environment variable named here."""

    type: Literal["file", "sql"] = "file"
    url_env: str = "FEAST_REGISTRY_URL"


class FeaturesConfig(_Strict):
    """Feast feature repository generated from the schema: one entity, one FeatureView over the ingested data."""

    project: str = Field("kfp_mlops", pattern=r"^[a-z][a-z0-9_]*$")
    view: str = Field("features", pattern=r"^[a-z][a-z0-9_]*$")
    ttl_days: int = Field(3650, ge=1)
    online_store: OnlineStoreConfig = OnlineStoreConfig()
    registry: RegistryConfig = RegistryConfig()
    online_check_entities: int = Field(50, ge=0)  # entities compared online vs offline after materializing

    @model_validator(mode="after")
    def _shared_registry_needs_shared_online_store(self) -> FeaturesConfig:
        """A sql registry is shared and records every run's materializations; an SQLite online store lives in one
        run's repository, so the next run would skip the window the registry calls done and serve nothing."""
        if self.registry.type == "sql" and self.online_store.type == "sqlite":
            raise ValueError(
                "features.online_store.type: sqlite lives in each run's feature repository and cannot be used with "
                "the shared registry of features.registry.type sql; use redis"
            )
        return self


class OptimizerConfig(_Strict):
    type: Literal["AdamW", "Adam", "SGD"] = "AdamW"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)


class SchedulerConfig(_Strict):
    """A DeepSpeed LR scheduler: linear warm-up, then constant, linear decay or cosine decay."""

    type: Literal["WarmupLR", "WarmupDecayLR", "WarmupCosineLR"] = "WarmupLR"
    warmup_steps: int = Field(10, ge=0)


class EarlyStoppingConfig(_Strict):
    patience: int = Field(3, ge=1)  # epochs without validation-loss improvement before stopping
    min_delta: float = Field(0.0, ge=0)


class ModelSpecConfig(_Strict):
    """The network the step trains: a built-in architecture by name (``mlp``, ``ft_transformer``) or the user's
    ``package.module:function``, called as ``function(spec, **options)`` with the feature spec (see
    ``components/train/architectures.py``); it returns a ``torch.nn.Module`` over the preprocessed tensors."""

    entry_point: str = Field("mlp", min_length=1)
    options: dict[str, Any] = {}  # keyword arguments of the entry point (mlp: hidden_layers, dropout, embedding_dim)

    @field_validator("entry_point")
    @classmethod
    def _names_a_function(cls, entry_point: str) -> str:
        if ":" not in entry_point and not re.fullmatch(r"[a-z][a-z0-9_]*", entry_point):
            raise ValueError(
                f"{entry_point!r} is neither a built-in architecture (mlp, ft_transformer) nor "
                "'package.module:function'"
            )
        if ":" in entry_point and not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", entry_point):
            raise ValueError(f"{entry_point!r} is not of the form 'package.module:function'")
        return entry_point


_MOVED_TO_MODEL_OPTIONS = ("hidden_layers", "dropout", "embedding_dim")


class TrainConfig(_Strict):
    """Model and DeepSpeed settings. ``workers``: processes on this node (0: one per GPU, or 2 on CPU)."""

    model: ModelSpecConfig = ModelSpecConfig()
    epochs: int = Field(10, ge=1)
    micro_batch_size: int = Field(256, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    optimizer: OptimizerConfig = OptimizerConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    gradient_clipping: float = Field(1.0, ge=0)
    zero_stage: int = Field(0, ge=0, le=3)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    workers: int = Field(0, ge=0)
    nodes: int = Field(1, ge=1)  # > 1: a Kubeflow Trainer TrainJob of this many nodes runs the same workers
    namespace: str = ""  # of the TrainJob; empty: the namespace of the pipeline's pod
    runtime: str = "torch-distributed"  # the ClusterTrainingRuntime of the TrainJob
    checkpoint_every_steps: int = Field(50, ge=1)
    checkpoint_dir: str = ""  # checkpoints go to <this, or <pipeline root>/checkpoints>/<run id>/train
    early_stopping: EarlyStoppingConfig = EarlyStoppingConfig()
    seed: int = 0

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, document: Any) -> Any:
        moved = [key for key in _MOVED_TO_MODEL_OPTIONS if isinstance(document, dict) and key in document]
        if moved:
            raise ValueError(
                f"{', '.join(moved)} moved to train.model.options (train: {{model: {{entry_point: mlp, options: "
                f"{{{moved[0]}: ...}}}}}})"
            )
        return document


HigherIsBetter = Literal["accuracy", "precision", "recall", "f1", "roc_auc", "r2"]  # r2: regression
LowerIsBetter = Literal["log_loss", "expected_calibration_error", "mse", "rmse", "mae"]  # mse, rmse, mae: regression
REGRESSION_METRICS = ("mse", "rmse", "mae", "r2")
CLASSIFICATION_METRICS = ("accuracy", "precision", "recall", "f1", "roc_auc", "log_loss", "expected_calibration_error")
# the gates a config leaves unset (None), by task: classification models are judged on ROC AUC, regression ones on
# R² (above 0: better than predicting the training mean)
DEFAULT_GATES = {
    "classification": {"min_metrics": {"roc_auc": 0.6}, "max_regression": {"roc_auc": 0.01},
                       "max_metric_drop": {"accuracy": 0.01, "roc_auc": 0.005}},
    "regression": {"min_metrics": {"r2": 0.0}, "max_regression": {"r2": 0.01}, "max_metric_drop": {"r2": 0.005}},
}  # fmt: skip


def task_kind(task: str) -> str:
    """classification for binary and multiclass models, regression for regression ones."""
    return "regression" if task == "regression" else "classification"


class EvaluateConfig(_Strict):
    """Blessing: absolute thresholds, and the largest allowed regression against the recorded baseline (for a
    lower-is-better metric such as mse: the largest allowed increase). None: the task's defaults (DEFAULT_GATES)."""

    min_metrics: dict[HigherIsBetter, float] | None = None
    max_metrics: dict[LowerIsBetter, float] = {}
    max_regression: dict[HigherIsBetter | LowerIsBetter, float] | None = None

    def gates(self, task: str) -> tuple[dict[str, float], dict[str, float]]:
        """(min_metrics, max_regression) for a model of ``task`` (binary, multiclass or regression)."""
        defaults = DEFAULT_GATES[task_kind(task)]
        return (
            defaults["min_metrics"] if self.min_metrics is None else self.min_metrics,
            defaults["max_regression"] if self.max_regression is None else self.max_regression,
        )

    baseline: str = ""  # URI of the deployed model's metrics record (JSON); empty or absent: thresholds only
    # the baseline's model is re-scored on this run's test split; when it cannot be read, fail, unless this allows
    # falling back to the metrics the record holds (scored on another test split)
    allow_recorded_baseline_metrics: bool = False
    decision_threshold: float | None = Field(None, gt=0, lt=1)  # None: the model's, tuned for F1 on validation
    calibration_bins: int = Field(10, ge=2)


class QuantizeConfig(_Strict):
    """Quantization candidates and the accuracy budget. Every candidate is measured on the validation split against
    the fp32 model; the choice (``fastest`` at batch 1, or ``smallest``) is made among those within the budget.
    fp32 is a candidate by default, so a model that int8 does not speed up stays fp32 under ``fastest``; without
    fp32 in the list the step fails with the comparison table when no quantized candidate is within the budget."""

    candidates: list[Literal["fp32", "int8_dynamic", "int8_static", "fp16"]] = Field(
        ["fp32", "int8_dynamic", "int8_static"], min_length=1
    )
    target: Literal["cpu", "gpu"] = "cpu"  # gpu: the fp16 candidate joins (it pays off on GPUs only)
    choose: Literal["fastest", "smallest"] = "fastest"
    # absolute drops against fp32 (0.01 = 1 percentage point). Accuracy moves in steps of 1/validation rows and flips
    # near the decision threshold: below a few thousand validation rows a tighter accuracy budget is within noise;
    # ROC AUC, free of the threshold, is the steadier measure of quantization error.
    # None: the task's default (DEFAULT_GATES); for a lower-is-better metric (mse, rmse, mae) the allowed increase
    max_metric_drop: dict[HigherIsBetter | LowerIsBetter, float] | None = None
    # largest allowed |probability - fp32 probability| on any row; regression: |prediction - fp32 prediction| over
    # the standard deviation of the validation labels
    max_abs_diff: float = Field(0.05, gt=0)
    calibration_rows: int = Field(512, ge=16)  # of the train split, for int8_static
    latency_repeats: int = Field(200, ge=10)  # batch-1 runs timed per candidate (median reported)
    seed: int = 0

    def metric_drops(self, task: str) -> dict[str, float]:
        """``max_metric_drop`` for a model of ``task``."""
        default = DEFAULT_GATES[task_kind(task)]["max_metric_drop"]
        return default if self.max_metric_drop is None else self.max_metric_drop


class VerifyConfig(_Strict):
    """In-server verification before a version takes traffic (TFX InfraValidator's role)."""

    rows: int = Field(256, ge=1)  # validation rows sent through Triton, compared with the model's own outputs
    atol: float = Field(1e-4, ge=0)  # allowed |Triton - reference| per probability
    requests: int = Field(200, ge=10)  # batch-1 requests timed for the latency budget
    max_p50_ms: float = Field(50.0, gt=0)
    max_p99_ms: float = Field(250.0, gt=0)


class DeployConfig(_Strict):
    """Triton deployment: the model repository the server reads, the server (gRPC, for model control and
    verification), and the generated model config. ``model_repository`` empty: the deploy step records that nothing
    was deployed (the training pipeline then only blesses and records)."""

    model_repository: str = ""  # local path, s3:// or gs://: the same storage Triton reads
    triton_url: str = "triton.kfp-mlops-serving.svc:8001"  # gRPC host:port
    replicas_host: str = ""  # a headless Service resolving to every Triton pod (load on each); empty: triton_url only
    model_name: str = "kfp-mlops"  # one folder of the repository: see check_model_name
    backend: Literal["onnxruntime", "python"] = "onnxruntime"  # python: the local Triton (python backend only)
    instance_kind: Literal["auto", "cpu", "gpu"] = "auto"  # auto: gpu when quantize.target is gpu
    instance_count: int = Field(1, ge=1)
    max_batch_size: int = Field(64, ge=1)
    preferred_batch_sizes: list[int] = [8, 32, 64]
    max_queue_delay_microseconds: int = Field(0, ge=0)  # 0: dispatch at once (best latency at low load)
    ready_timeout_seconds: int = Field(180, ge=1)
    keep_versions: int = Field(2, ge=1)  # versions kept in the repository (the served one and its predecessor)
    # One deployment of a model name at a time (components/deploy/lease.py): another one waits this long, at most;
    # a lease not renewed (each stage renews it) expires after lease_seconds, so a killed deployment blocks nobody.
    lease_wait_seconds: int = Field(600, ge=0)
    lease_seconds: int = Field(900, ge=60)
    verify: VerifyConfig = VerifyConfig()

    @field_validator("model_name")
    @classmethod
    def _safe_model_name(cls, name: str) -> str:
        return check_model_name(name)

    @model_validator(mode="after")
    def _batch_sizes_fit(self) -> DeployConfig:
        too_big = [size for size in self.preferred_batch_sizes if size > self.max_batch_size or size < 1]
        if too_big:
            raise ValueError(f"deploy.preferred_batch_sizes {too_big} must lie in 1..max_batch_size")
        if self.lease_seconds < 2 * self.ready_timeout_seconds + 60:  # one stage loads and unloads at most
            raise ValueError(
                f"deploy.lease_seconds {self.lease_seconds} must be at least 2 × ready_timeout_seconds + 60 "
                f"({2 * self.ready_timeout_seconds + 60}): a stage between two renewals may take that long"
            )
        return self


DriftMethod = Literal["ks", "chisquare", "z", "wasserstein", "jensenshannon", "psi", "kl_div"]


class ColumnDriftConfig(_Strict):
    """One column's test (Evidently's name) and threshold; None keeps the setting above it."""

    method: DriftMethod | None = None
    threshold: float | None = Field(None, gt=0)


class DriftConfig(_Strict):
    """The drift check, with Evidently 0.7 DataDriftPreset's semantics and defaults, computed on every row."""

    columns: list[str] | None = None  # None: every feature of the deployed model
    method: DriftMethod | None = None  # None: Evidently's automatic choice per column
    threshold: float | None = Field(None, gt=0)  # None: the method's default (0.05 for p-values, 0.1 for distances)
    per_column: dict[str, ColumnDriftConfig] = {}
    drift_share: float = Field(0.5, gt=0, le=1)  # the dataset drifts when this share of columns (or more) drifts
    report_sample_rows: int = Field(20_000, ge=1_000)  # rows of each frame the Evidently HTML report is drawn from
    report_seed: int = 0


class MonitoringConfig(_Strict):
    """How the monitoring pipeline retrains on drift: the training steps inside this run (``nested``), or a run of
    the uploaded training pipeline through the KFP API (``kfp_api``)."""

    retrain: Literal["nested", "kfp_api"] = "nested"
    kfp_host: str = ""  # kfp_api: the KFP API endpoint (in-cluster: http://ml-pipeline.kubeflow:8888)
    kfp_namespace: str = ""  # kfp_api on multi-user Kubeflow: the profile; empty: the namespace of the run's pod
    service_account: str = "kfp-mlops-runner"  # kfp_api: the training run's account (manifests/runner); "": default
    training_pipeline: str = "kfp-mlops-training"  # kfp_api: the uploaded pipeline's name
    experiment: str = "kfp-mlops-monitoring"
    poll_seconds: float = Field(30.0, gt=0)  # kfp_api: how often the training run's state is read while waiting
    # kfp_api: how long to wait for the training run before cancelling it and failing; below the submit-training
    # task's own deadline (pipelines/train_and_deploy.py TIMEOUTS), so the step cancels the run before its pod stops
    wait_timeout_seconds: float = Field(28 * 3600, gt=0)


class InferenceConfig(_Strict):
    """Batch inference (pipelines/inference.py) and ``kfp-mlops predict --log``: entities at a time → Feast's
    point-in-time features → the serving model's predictions → the prediction log
    (components/shared/prediction_log.py)."""

    entities: str = ""  # URI of entity ids (Parquet/CSV: the schema's entity column, and its timestamp column if
    # each row has its own time); empty: every entity of the Feast feature view
    as_of: str = ""  # ISO 8601 time the features are read at (rows without their own timestamp); empty: the run's
    # start (kept in the run's state folder, so a retry reads the same features)
    log: str = ""  # URI (local, s3://, gs://) of the prediction log: Parquet partitioned date=YYYY-MM-DD
    source: Literal["auto", "triton", "package"] = "auto"  # auto: Triton when the serving record names a
    # deployment, else the model package in-process
    batch_rows: int = Field(50_000, ge=1)  # rows read, scored and written at a time (memory is bounded by it)
    request_rows: int = Field(0, ge=0)  # rows per Triton request; 0: deploy.max_batch_size (at most the served one's)
    concurrency: int = Field(4, ge=1, le=64)  # Triton requests in flight
    timeout_seconds: float = Field(60.0, gt=0)  # each Triton request


class PerformanceConfig(_Strict):
    """The performance check (components/performance/): predictions of a window joined with the labels that arrived
    later, scored with evaluate's metrics (components/shared/metrics.py), judged per model.

    A label row (entity, timestamp, label) is the outcome of the prediction of that entity at that timestamp (the
    same meaning as a training row); it matches the latest prediction of the entity whose timestamp is at most
    ``tolerance_hours`` before it (0: the same instant)."""

    labels: str = ""  # URI of the labels (file, prefix or glob; Parquet/CSV); empty: no performance check
    log: str = ""  # the prediction log to read; empty: inference.log
    window_days: float | None = Field(None, gt=0)  # predictions of the last N days before the newest; None: all
    tolerance_hours: float = Field(24.0, ge=0)
    min_rows: int = Field(100, ge=1)  # fewer matched rows of the serving model: verdict "insufficient", no retrain
    min_metrics: dict[HigherIsBetter, float] = {}  # absolute floors, e.g. {roc_auc: 0.7}
    max_metrics: dict[LowerIsBetter, float] = {}  # absolute ceilings, e.g. {log_loss: 0.6}
    # allowed change against the metrics the model had at evaluation (the serving record), e.g. {roc_auc: 0.05}
    max_drop: dict[HigherIsBetter | LowerIsBetter, float] = {"roc_auc": 0.05}


def check_server_url(url: str, key: str) -> str:
    """``url`` if it is empty or ``http(s)://host[:port][/path]`` without a password (the config travels in the
    compiled pipeline and its logs); else ValueError naming ``key``."""
    if not url:
        return url
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 (raises on a malformed port)
    except ValueError:
        raise ValueError(f"{key} {url!r} has a malformed port") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{key} {url!r} is not an http(s)://host[:port] URL")
    if parts.password:
        raise ValueError(f"{key} holds a password: the config is no place for one")
    return url


class AlertsConfig(_Strict):
    """Where a monitoring verdict (drift, degraded performance) or a failed monitoring run is sent
    (components/shared/alerts.py). Delivery is retried within a bound and never changes a step's result."""

    alertmanager_url: str = ""  # e.g. http://alertmanager.monitoring:9093 (API v2: POST /api/v2/alerts)
    webhook_url_env: str = ""  # name of an environment variable holding a webhook URL (a secret: never in config)
    webhook_format: Literal["json", "slack"] = "json"
    severity: str = "warning"  # of drift and degradation; a failed run is "critical"
    resolve_after_minutes: int = Field(240, ge=1)  # endsAt sent to Alertmanager
    timeout_seconds: float = Field(5.0, gt=0, le=60)  # each delivery attempt
    retries: int = Field(2, ge=0, le=10)
    run_url: str = ""  # the KFP UI's page of a run, {run_id} replaced; empty: tracking.run_url

    @field_validator("alertmanager_url")
    @classmethod
    def _alertmanager_url(cls, url: str) -> str:
        return check_server_url(url, "alerts.alertmanager_url")


class ObservabilityConfig(_Strict):
    """Prometheus: each step pushes its key figures to a Pushgateway (components/shared/observability.py), grouped
    by job, pipeline, task and model; a push replaces its group and never fails a step."""

    pushgateway: str = ""  # e.g. http://pushgateway.monitoring:9091; empty: nothing is pushed
    job: str = Field("kfp-mlops", min_length=1)
    timeout_seconds: float = Field(5.0, gt=0, le=60)  # the push (one attempt)

    @field_validator("pushgateway")
    @classmethod
    def _pushgateway_url(cls, url: str) -> str:
        return check_server_url(url, "observability.pushgateway")


TRACKING_SCHEMES = ("http", "https", "sqlite", "postgresql", "mysql", "mssql", "databricks")


def check_tracking_uri(uri: str, key: str = "tracking.uri") -> str:
    """``uri`` if MLflow can use it as a tracking and registry URI (``http(s)://host[:port][/path]``,
    ``sqlite:////absolute/path.db``, a SQLAlchemy URL of a database) with no password in it; else ValueError naming
    ``key``: a password belongs in MLFLOW_TRACKING_PASSWORD (or in MLFLOW_TRACKING_URI from a Secret), never in a
    config a compiled pipeline or a log could carry."""
    if not uri:
        return uri
    parsed = urlsplit(uri)
    scheme = parsed.scheme.split("+")[0]
    if scheme not in TRACKING_SCHEMES:
        raise ValueError(
            f"{key} {uri!r} is not an MLflow tracking URI: expected http(s)://host[:port], sqlite:////path/mlflow.db "
            "or a database URL (postgresql://, mysql://)"
        )
    if scheme in ("http", "https") and not parsed.hostname:
        raise ValueError(f"{key} {uri!r} names no host: expected {scheme}://host[:port]")
    if scheme == "sqlite" and not uri.startswith("sqlite:////"):
        raise ValueError(f"{key} {uri!r}: a SQLite file needs an absolute path, sqlite:////absolute/path/mlflow.db")
    if parsed.password:
        raise ValueError(
            f"{key} holds a password: put it in MLFLOW_TRACKING_PASSWORD (or the whole URI in MLFLOW_TRACKING_URI), "
            "from a Kubernetes Secret"
        )
    return uri


class TrackingConfig(_Strict):
    """MLflow tracking and model registry (components/shared/tracking.py). ``uri`` empty: the environment's
    MLFLOW_TRACKING_URI (the Secret kfp-mlops-tracking in a cluster); neither set: no tracking. ``kfp-mlops run
    --local`` sets a SQLite file beside the runs. Tracking never fails a step unless ``required``."""

    enabled: bool = True  # false: nothing is tracked, even where MLFLOW_TRACKING_URI is set
    uri: str = ""
    experiment: str = Field("kfp-mlops", min_length=1)
    registry: bool = True  # a blessed model becomes a version of deploy.model_name; deploy moves champion/previous
    required: bool = False  # an unreachable server fails the step instead of a warning
    timeout_seconds: int = Field(10, ge=1, le=600)  # each request to the server (MLFLOW_HTTP_REQUEST_TIMEOUT)
    retries: int = Field(2, ge=0, le=10)  # of a request that failed to connect or got a 5xx/429
    # the KFP UI's page of a run, tagged on the MLflow run: {run_id} is replaced, e.g.
    # https://kubeflow.example.com/_/pipeline/#/runs/details/{run_id}
    run_url: str = ""

    @field_validator("uri")
    @classmethod
    def _tracking_uri(cls, uri: str) -> str:
        return check_tracking_uri(uri)


class PipelineConfig(_Strict):
    """The whole pipeline config."""

    data: DataConfig
    schema_: SchemaConfig = Field(alias="schema")
    split: SplitConfig = SplitConfig()
    features: FeaturesConfig = FeaturesConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    quantize: QuantizeConfig = QuantizeConfig()
    deploy: DeployConfig = DeployConfig()
    drift: DriftConfig = DriftConfig()
    monitoring: MonitoringConfig = MonitoringConfig()
    tracking: TrackingConfig = TrackingConfig()
    inference: InferenceConfig = InferenceConfig()
    performance: PerformanceConfig = PerformanceConfig()
    alerts: AlertsConfig = AlertsConfig()
    observability: ObservabilityConfig = ObservabilityConfig()

    @model_validator(mode="after")
    def _gates_fit_the_task(self) -> PipelineConfig:
        """With the task stated (not auto), a gate on a metric that task never computes is refused here, not at
        blessing time; under auto, evaluate and quantize fail such a gate closed, naming it."""
        if self.schema_.task == "auto":
            return self
        own, foreign = (
            (REGRESSION_METRICS, CLASSIFICATION_METRICS)
            if self.schema_.task == "regression"
            else (CLASSIFICATION_METRICS, REGRESSION_METRICS)
        )
        gates = {"evaluate.min_metrics": self.evaluate.min_metrics, "evaluate.max_metrics": self.evaluate.max_metrics,
                 "evaluate.max_regression": self.evaluate.max_regression,
                 "quantize.max_metric_drop": self.quantize.max_metric_drop}  # fmt: skip
        for key, gate in gates.items():
            wrong = sorted(set(gate or {}) & set(foreign))
            if wrong:
                raise ValueError(
                    f"{key} gates on {', '.join(wrong)}, which a {self.schema_.task} model does not have (schema.task: "
                    f"{self.schema_.task}); its metrics are {', '.join(own)}"
                )
        return self

    def with_source(self, source: str) -> PipelineConfig:
        """Return a copy whose data.source is ``source`` (the pipeline's ``data_source`` override)."""
        return self.model_copy(update={"data": self.data.model_copy(update={"source": source})})

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(by_alias=True, exclude_none=True), sort_keys=False)


def parse_config(document: Any, origin: str = "config") -> PipelineConfig:
    """Validate a parsed YAML document; errors name the key, e.g. ``config: split.by: Input should be ...``."""
    if not isinstance(document, dict):
        raise ConfigError(f"{origin}: expected a mapping at the top level, got {type(document).__name__}")
    try:
        return PipelineConfig.model_validate(document)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            key = ".".join(str(part) for part in error["loc"])
            message = "unknown key" if error["type"] == "extra_forbidden" else error["msg"]
            problems.append(f"{key}: {message}" if key else message.removeprefix("Value error, "))
        raise ConfigError(f"{origin}: " + "; ".join(problems)) from None


def load_config(text_or_uri: str, data_source: str = "") -> PipelineConfig:
    """Load the config from YAML text or from the URI of a YAML file; ``data_source`` overrides data.source."""
    origin = "config"
    runs.reject_placeholder("pipeline parameter data_source", data_source, ConfigError)
    if "\n" not in text_or_uri.strip():
        runs.reject_placeholder("pipeline parameter config", text_or_uri.strip(), ConfigError)
    try:
        document = yaml.safe_load(text_or_uri)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config: not valid YAML ({exc})") from None
    if isinstance(document, str) and "\n" not in text_or_uri.strip():
        origin = text_or_uri.strip()
        try:
            document = yaml.safe_load(storage.read_bytes(origin))
        except FileNotFoundError:
            raise ConfigError(f"config file {origin} does not exist") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{origin}: not valid YAML ({exc})") from None
    config = parse_config(document, origin)
    config = config.with_source(data_source) if data_source else config
    for key, value in (("data.source", config.data.source), ("evaluate.baseline", config.evaluate.baseline),
                       ("deploy.model_repository", config.deploy.model_repository),
                       ("train.checkpoint_dir", config.train.checkpoint_dir)):  # fmt: skip
        runs.reject_placeholder(f"{origin}: {key}", value, ConfigError)
    return config
