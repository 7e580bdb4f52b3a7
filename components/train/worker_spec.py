"""What the launcher (``core.train_prepared``) hands each training worker (``worker.py``): one JSON document.

On the step's own node it is a local file naming local paths; a TrainJob's copy lies on object storage beside the
checkpoints and names URIs (``arrays``, ``preprocessing``, ``checkpoint_uri``, ``output_uri``) that each node
downloads into local paths (``worker.localise``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from kfp_mlops.components.shared.config import TrainConfig

PREPARED_ARRAYS = "arrays.npz"  # the arrays ``prepare`` writes and the workers train on


class WorkerSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    train: TrainConfig
    deepspeed: dict[str, Any]  # the DeepSpeed config, batching fitted to the data
    arrays: str  # the prepared arrays (.npz): a path, or a URI in a TrainJob's staged spec
    preprocessing_dir: str  # the directory holding the fitted preprocessing
    preprocessing: str = ""  # a TrainJob's staged spec: URI of the preprocessing file
    checkpoint_dir: str = ""  # local checkpoints the workers write
    checkpoint_uri: str = ""  # the object-storage checkpoints they mirror (empty: local checkpoints only)
    output_dir: str  # rank 0 writes the best weights and the metrics here
    output_uri: str = ""  # a TrainJob's staged spec: where rank 0 copies ``output_dir``
    process_started: float  # when the task's process started: start-up time is measured from it

    def write(self, path: Path) -> None:
        """Write the spec as JSON to a local path."""
        path.write_text(self.model_dump_json(), encoding="utf-8")

    @classmethod
    def read(cls, text: str | bytes) -> WorkerSpec:
        return cls.model_validate_json(text)
