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
    validation: float = Field(0.15, ge=0.0, lt=1.0)
    test: float = Field(0.15, gt=0.0, lt=1.0)
    seed: int = 0

    @model_validator(mode="after")
    def _leaves_training_rows(self) -> SplitConfig:
        if self.validation + self.test >= 1.0:
            raise ValueError(f"validation + test must be below 1, got {self.validation} + {self.test}")
        return self


class PipelineConfig(_Strict):
    """The whole pipeline config."""

    data: DataConfig
    schema_: SchemaConfig = Field(alias="schema")
    split: SplitConfig = SplitConfig()

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
