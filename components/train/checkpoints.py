"""DeepSpeed checkpoints mirrored to object storage (no torch here): upload shards before the ``latest`` pointer,
resume from the newest checkpoint only, and prune old ones remotely as they are pruned locally. The tag ``latest``
names is checked before it is used in a path: a writer of the checkpoint directory could point it anywhere."""

from __future__ import annotations

import re
from pathlib import Path

from kfp_mlops.components.shared import storage

LATEST = "latest"
BEST_WEIGHTS = "best.pt"
FAILURE_MARKER = "deterministic_failure.json"  # a failure a retry would repeat: the retry fails at once
TAG = re.compile(r"(step|epoch)[0-9]+")  # the tags the worker writes: step<optimizer step>, epoch<epoch>


class UnsafeCheckpointError(ValueError):
    """A checkpoint this trainer refuses to resume from: ``latest`` names no tag it writes, or a checkpoint file
    holds objects beyond tensors and plain state (it would run code when unpickled)."""


def read_tag(checkpoint_dir: str) -> str | None:
    """The tag ``latest`` in ``checkpoint_dir`` (a path or URI) names, checked; None when there is no ``latest``."""
    latest = storage.parse(checkpoint_dir).child(LATEST).uri
    try:
        raw = storage.read_bytes(latest)
    except FileNotFoundError:
        return None
    tag = raw.decode("utf-8", errors="replace").strip()
    if not TAG.fullmatch(tag):
        raise UnsafeCheckpointError(
            f"checkpoint directory {checkpoint_dir}: {LATEST} names {tag[:200]!r}, not a checkpoint tag this trainer "
            f"writes (step<N> or epoch<N>); refusing to resume from it (delete {latest} to train from the start)"
        )
    return tag


def upload_shards(local_dir: Path, remote: str, tag: str) -> None:
    """A node's first process uploads the checkpoint files its node wrote (nodes of a TrainJob share no disk)."""
    storage.copy_tree(str(local_dir / tag), storage.parse(remote).child(tag).uri)


def upload_pointers(local_dir: Path, remote: str, best_changed: bool) -> None:
    """Rank 0, once every node's shards are up: the best weights (when they changed), then ``latest`` last, so a
    reader never follows ``latest`` to an incomplete checkpoint."""
    base = storage.parse(remote)
    if best_changed and (local_dir / BEST_WEIGHTS).exists():
        storage.upload_file(local_dir / BEST_WEIGHTS, base.child(BEST_WEIGHTS).uri)
    storage.upload_file(local_dir / LATEST, base.child(LATEST).uri)


def download_latest(remote: str, local_dir: Path) -> str | None:
    """Fetch the checkpoint ``latest`` names, the pointer itself and the best weights; returns the tag or None."""
    base = storage.parse(remote)
    if (tag := read_tag(remote)) is None:
        return None
    storage.copy_tree(base.child(tag).uri, str(local_dir / tag))
    storage.download_file(base.child(LATEST).uri, local_dir / LATEST)
    if storage.exists(base.child(BEST_WEIGHTS).uri):
        storage.download_file(base.child(BEST_WEIGHTS).uri, local_dir / BEST_WEIGHTS)
    return tag


def prune_remote(remote: str, tags: list[str], keep: int = 2) -> list[str]:
    """Delete all but the ``keep`` newest of ``tags`` (oldest first) under ``remote``; returns the tags kept."""
    for tag in tags[:-keep]:
        storage.delete_tree(storage.parse(remote).child(tag).uri)
    return tags[-keep:]
