"""The pipeline config: one YAML document, validated with pydantic; unknown keys are rejected.

A run receives it as the pipeline parameter ``config``: either the YAML text itself or the URI of a YAML file
(local path, ``file://``, ``s3://``, ``gs://``). Later steps add a section each.
"""

from __future__ import annotations

from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from kfp_mlops.components.shared.errors import ConfigError


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
    """Deterministic train/validation/test split: by event time (latest rows to test) or by entity hash."""

    by: Literal["time", "entity_hash"] = "time"
    validation: float = Field(0.15, gt=0.0, lt=1.0)  # training needs it: early stopping, threshold tuning
    test: float = Field(0.15, gt=0.0, lt=1.0)
    seed: int = 0

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


class TrainConfig(_Strict):
    """Model and DeepSpeed settings. ``workers``: processes on this node (0: one per GPU, or 2 on CPU)."""

    hidden_layers: list[int] = Field([64, 32], min_length=1)
    dropout: float = Field(0.1, ge=0, lt=1)
    embedding_dim: int = Field(4, ge=1)
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


class EvaluateConfig(_Strict):
    """Blessing: absolute thresholds, and the largest allowed regression against the recorded baseline."""

    min_metrics: dict[Literal["accuracy", "precision", "recall", "f1", "roc_auc"], float] = {"roc_auc": 0.6}
    max_metrics: dict[Literal["log_loss", "expected_calibration_error"], float] = {}
    max_regression: dict[Literal["accuracy", "precision", "recall", "f1", "roc_auc"], float] = {"roc_auc": 0.01}
    baseline: str = ""  # URI of the deployed model's metrics record (JSON); empty or absent: thresholds only
    # the baseline's model is re-scored on this run's test split; when it cannot be read, fail, unless this allows
    # falling back to the metrics the record holds (scored on another test split)
    allow_recorded_baseline_metrics: bool = False
    decision_threshold: float | None = Field(None, gt=0, lt=1)  # None: the model's, tuned for F1 on validation
    calibration_bins: int = Field(10, ge=2)


class PipelineConfig(_Strict):
    """The whole pipeline config."""

    data: DataConfig
    schema_: SchemaConfig = Field(alias="schema")
    split: SplitConfig = SplitConfig()
    features: FeaturesConfig = FeaturesConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()

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
            key = ".".join(str(part) for part in error["loc"]) or "<top level>"
            message = "unknown key" if error["type"] == "extra_forbidden" else error["msg"]
            problems.append(f"{key}: {message}")
        raise ConfigError(f"{origin}: " + "; ".join(problems)) from None


def load_config(text_or_uri: str, data_source: str = "") -> PipelineConfig:
    """Load the config from YAML text or from the URI of a YAML file; ``data_source`` overrides data.source."""
    from kfp_mlops.components.shared import storage

    origin = "config"
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
    return config.with_source(data_source) if data_source else config
