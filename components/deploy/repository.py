"""The Triton model repository (a local path, ``s3://`` or ``gs://``) as the deploy step reads and writes it: the
versions and their commit markers, the served version, and versions written whole (see ``layout``)."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kfp_mlops.components.shared import layout, storage, triton_config
from kfp_mlops.components.shared.config import check_model_name

CANDIDATE_INFIX = "-candidate-"  # <name>-candidate-<8 hex digits>: one per deployment attempt
STAGING_PREFIX = ".staging-"  # local commits: a non-numeric directory Triton ignores, renamed to <N>


@dataclass
class State:
    """What the repository holds for the model: versions (marker or None when uncommitted), the served version
    (from config.pbtxt) and the config text."""

    versions: dict[int, dict[str, Any] | None]
    served: int | None
    config_text: str | None
    other: list[str]  # non-version entries under <name>/ besides config.pbtxt (staging leftovers)


class UnsafeDeleteError(ValueError):
    """A delete that would reach outside the model's folders of the repository."""


def candidate_pattern(name: str) -> re.Pattern[str]:
    """The staging names of ``name``'s deployments: ``<name>-candidate-<8 hex digits>``."""
    return re.compile(rf"{re.escape(name)}{CANDIDATE_INFIX}[0-9a-f]{{8}}")


class Repository:
    """The model repository at ``uri``, as far as model ``name`` goes: nothing outside ``<repo>/<name>/`` and its
    deployments' staging folders ``<repo>/<name>-candidate-<8 hex>/`` is ever deleted (``delete``). ``candidate``
    is this deployment's own staging name (random: two deployments never share one)."""

    def __init__(self, uri: str, name: str):
        self.uri = uri
        self.root = storage.parse(uri)
        self.name = check_model_name(name)
        self.candidate = f"{self.name}{CANDIDATE_INFIX}{secrets.token_hex(4)}"
        self._candidates = candidate_pattern(name)

    def at(self, relative: str) -> str:
        return self.root.child(relative).uri

    def _relative_files(self, directory: str) -> list[str]:
        base = storage.parse(self.at(directory))
        uris = storage.list_uris(base.uri)
        if base.scheme == "file":
            return [os.path.relpath(uri, base.key) for uri in uris]
        return [storage.parse(uri).key[len(base.key.rstrip("/")) + 1 :] for uri in uris]

    def read_text(self, relative: str) -> str | None:
        try:
            return storage.read_bytes(self.at(relative)).decode()
        except FileNotFoundError:
            return None

    def marker(self, version: int) -> dict[str, Any] | None:
        """The commit marker of ``<name>/<version>/``; None when absent or unreadable (an uncommitted version)."""
        text = self.read_text(layout.version_path(self.name, version, layout.VERSION_METADATA_FILE))
        try:
            marker = json.loads(text) if text else None
        except ValueError:
            return None
        return marker if isinstance(marker, dict) else None

    def write_text(self, relative: str, text: str) -> None:
        storage.write_bytes(self.at(relative), text.encode())

    def delete(self, relative: str) -> None:
        """Delete the file or tree ``relative``; UnsafeDeleteError unless it resolves inside (or to) the model's
        folder or its candidate's: a local path after resolving links and ``..``, a storage key with no ``..``
        segment and the folder's prefix."""
        storage.delete_tree(self.scoped(relative))

    def scoped(self, relative: str) -> str:
        """The URI of ``relative``, if it lies inside (or is) ``<repo>/<name>/`` or a staging folder of ``name``."""
        target = self.root.child(relative)
        top = relative.replace("\\", "/").split("/", 1)[0]
        staging = top if self._candidates.fullmatch(top) else self.candidate
        scopes = [self.root.child(folder) for folder in (self.name, staging)]
        if self.root.scheme == "file":
            path = os.path.realpath(target.key)
            folders = [os.path.realpath(scope.key) for scope in scopes]
            inside = any(path == folder or path.startswith(folder + os.sep) for folder in folders)
        else:
            key = target.key.rstrip("/")
            inside = ".." not in key.split("/") and any(
                key == scope.key or key.startswith(scope.key + "/") for scope in scopes
            )
        if not inside:
            raise UnsafeDeleteError(
                f"refusing to delete {target.uri}: outside {scopes[0].uri}/ and the staging folders "
                f"{self.name}{CANDIDATE_INFIX}*/ (deploy.model_name {self.name!r} in {self.uri})"
            )
        return target.uri

    def staged(self) -> list[str]:
        """The staging folders of ``name``'s deployments in the repository (this one's included)."""
        prefix = f"{self.name}{CANDIDATE_INFIX}"
        if self.root.scheme == "file":
            entries = os.listdir(self.root.key) if os.path.isdir(self.root.key) else []
        else:
            base = self.root.key.rstrip("/")
            keys = [storage.parse(uri).key for uri in storage.list_key_prefix(self.at(prefix))]
            entries = [(key[len(base) + 1 :] if base else key).split("/", 1)[0] for key in keys]
        return sorted({entry for entry in entries if self._candidates.fullmatch(entry)})

    def state(self) -> State:
        tops = {path.split("/", 1)[0] for path in self._relative_files(self.name)}
        if self.root.scheme == "file" and os.path.isdir(self.at(self.name)):
            tops.update(os.listdir(self.at(self.name)))  # empty directories too (an interrupted local commit)
        numbered = sorted(int(top) for top in tops if top.isdigit() and int(top) > 0)
        versions: dict[int, dict[str, Any] | None] = {}
        for version in numbered:
            versions[version] = self.marker(version)
        config_text = self.read_text(f"{self.name}/{triton_config.CONFIG_FILE}")
        other = sorted(top for top in tops if not (top.isdigit() and int(top) > 0) and top != triton_config.CONFIG_FILE)
        return State(versions, served_version(config_text, versions), config_text, other)

    def write_version(self, name: str, version: int, files: dict[str, Path], marker: dict[str, Any]) -> None:
        """Write ``<name>/<version>/``: the files, then the marker (the commit)."""
        target = layout.version_path(name, version)
        marker_bytes = json.dumps(marker, indent=2).encode()
        if self.root.scheme == "file":  # complete under a name Triton ignores, then one rename
            staging = Path(self.scoped(f"{name}/{STAGING_PREFIX}{secrets.token_hex(4)}"))  # removed at the end
            staging.mkdir(parents=True)
            if layout.PYTHON_BACKEND_FILE in files:
                # A local Triton's python backend compiles model.py into __pycache__/ here, as the server's own user
                # (its stub ignores PYTHONDONTWRITEBYTECODE). Made by this step, the folder stays the step's: a deploy
                # running as another user (the step image's uid 10001) can still remove the version later.
                (staging / "__pycache__").mkdir()
            try:
                for relative, path in files.items():
                    shutil.copyfile(path, staging / relative)
                (staging / layout.VERSION_METADATA_FILE).write_bytes(marker_bytes)
                os.rename(staging, self.at(target))  # fails if <version> exists: never overwrite a version
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        else:  # each object appears whole; the marker written last commits the version
            for relative, path in files.items():
                storage.upload_file(path, self.at(f"{target}/{relative}"))
            storage.write_bytes(self.at(f"{target}/{layout.VERSION_METADATA_FILE}"), marker_bytes)


def served_version(config_text: str | None, versions: dict[int, Any]) -> int | None:
    """The version config.pbtxt serves: its ``specific`` version, else (another policy) the highest version."""
    if config_text is None:
        return None
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    try:
        config = text_format.Parse(config_text, model_config_pb2.ModelConfig())
    except text_format.ParseError:
        return max(versions, default=None)
    if config.version_policy.WhichOneof("policy_choice") == "specific" and config.version_policy.specific.versions:
        return max(config.version_policy.specific.versions)
    return max(versions, default=None)
