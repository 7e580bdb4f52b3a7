"""Credential scanning with detect-secrets (Yelp's scanner, its Python API and every default plugin: AWS keys,
private keys, basic-auth URLs, high-entropy strings, keywords such as ``password:`` and the vendors' token formats),
plus the project's baseline: the few findings that are not credentials, each with its reason.

detect-secrets reads text line by line; a Kubernetes env entry spreads a name and its value over two lines, so
``tests/support/manifests.py`` (``literal_credentials``) keeps checking the rendered objects' structure as well."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from kfp_mlops.components.shared.storage import (
    CREDENTIAL_SECRET_KEYS,
    KFP_MINIO_SECRET,
    KFP_MINIO_SECRET_KEYS,
    STORAGE_SECRET,
)
from kfp_mlops.components.shared.tracking import SECRET as TRACKING_SECRET
from kfp_mlops.components.shared.tracking import SECRET_KEYS as TRACKING_SECRET_KEYS
from kfp_mlops.components.shared.triton_access import CONTROL_ENV, CONTROL_SECRET, CONTROL_SECRET_KEY
from kfp_mlops.pipelines.train_and_deploy import FEAST_SECRET_KEYS

KEYWORD = "Secret Keyword"  # detect-secrets' KeywordDetector: `secret...: VALUE`, `password = VALUE`, ...

# Where a credential is read from, never a credential: a Kubernetes Secret's name, a key in it and the environment
# variable it becomes. The keyword detector reports them because they sit after a key named secret*: `secretKey:
# AWS_SECRET_ACCESS_KEY`, `secretName: kfp-mlops-feast-stores`. Taken from the code that writes them.
REFERENCE_NAMES = frozenset(
    {
        *CREDENTIAL_SECRET_KEYS,  # kfp-mlops-storage's keys = the variables (storage.py)
        *FEAST_SECRET_KEYS,  # kfp-mlops-feast's keys -> variables (pipelines/train_and_deploy.py)
        *FEAST_SECRET_KEYS.values(),
        *KFP_MINIO_SECRET_KEYS,  # KFP's own MinIO Secret: accesskey, secretkey -> KFP_MINIO_* (storage.py)
        *KFP_MINIO_SECRET_KEYS.values(),
        KFP_MINIO_SECRET,  # mlpipeline-minio-artifact
        STORAGE_SECRET,  # kfp-mlops-storage
        "kfp-mlops-feast-stores",  # the Secret of the Feast stores' passwords (manifests/secrets/*.env.example)
        CONTROL_SECRET,  # kfp-mlops-triton-control: Triton's model-control key (triton_access.py)
        CONTROL_SECRET_KEY,  # its key, control-key
        CONTROL_ENV,  # the variable it becomes, KFP_MLOPS_TRITON_CONTROL_KEY
        "kfp-mlops-triton-storage",  # Triton's read-only storage Secret (manifests/triton/base/deployment.yaml)
        TRACKING_SECRET,  # kfp-mlops-tracking: the MLflow client's settings (tracking.py)
        *TRACKING_SECRET_KEYS,  # its keys = the variables MLFLOW_TRACKING_URI/USERNAME/PASSWORD
    }
)


@dataclass(frozen=True)
class Accepted:
    """A finding that is not a credential: detect-secrets' type, the text it flagged, where (a glob over the
    scanned names) and why."""

    type: str
    value: str
    where: str
    reason: str


BASELINE = (
    Accepted(KEYWORD, "str [Default: ", "compiled/*.yaml",
             "the compiled YAML's header comment lists the parameters: `feast_secret: str [Default: ...]`"),
    Accepted(KEYWORD, "Kubernetes Secret the TrainJob", "compiled/*.yaml",
             "the train step's docstring, inlined in the YAML: `storage_secret: Kubernetes Secret the TrainJob's...`"),
    Accepted(KEYWORD, "storage_secret)  # fmt: skip\\n\\", "compiled/*.yaml",
             "the train step's source, inlined in the YAML: `storage_secret=storage_secret)  # fmt: skip`"),
    Accepted(KEYWORD, "shared between runs", "examples/cluster.yaml",
             "a comment: `FEAST_REGISTRY_URL from the same Secret: shared between runs`"),
    Accepted(KEYWORD, "FEAST_REGISTRY_URL` (`postgresql+psycopg://feast:…@host:5432/feast", "manifests/README.md",
             "the README's table of Secrets shows the URL's form, its password elided (…)"),
    Accepted("Basic Auth Credentials", "PASSWORD", "manifests/secrets/*.env.example",
             "the template's comment shows the form postgresql+psycopg://feast:PASSWORD@host: a placeholder"),
)  # fmt: skip


@dataclass(frozen=True)
class Finding:
    name: str  # the scanned file's name in the report (relative to its root, or a label)
    line: int
    type: str
    value: str

    def accepted_by(self, paths_under: tuple[str, ...] = ()) -> Accepted | None:
        if self.type == KEYWORD and self.value in REFERENCE_NAMES:
            return Accepted(KEYWORD, self.value, "*", "a Secret's name, key or variable")
        # a run's logs name its files: a long path looks random to the entropy plugins ([A-Za-z0-9/+] is base64's
        # alphabet), but a path under a directory the caller names is a path
        if self.type.endswith("High Entropy String") and any(self.value.startswith(root) for root in paths_under):
            return Accepted(self.type, self.value, "*", "a path under the run's own directories")
        for accepted in BASELINE:
            same = (accepted.type, accepted.value) == (self.type, self.value)
            if same and fnmatch.fnmatch(self.name, accepted.where):
                return accepted
        return None

    def __str__(self) -> str:  # never the whole value: a test report is a log too
        shown = self.value[:4] + "…" if len(self.value) > 8 else "…"
        return f"{self.name}:{self.line}: {self.type} ({shown})"


def scan(files: Mapping[str, Path]) -> list[Finding]:
    """Every finding of detect-secrets' default plugins (and its default filters) in ``files``: name -> path.

    Two passes per file. ``SecretsCollection.scan_file`` reads a file through detect-secrets' transformers: YAML is
    parsed (its comments dropped: a key pasted into a comment passes) and any text that parses as INI is read as
    INI (a log whose lines start with ``[ingest]`` does, and loses lines); it also reports a value once per file.
    So every line is scanned as written too, with the plugins and filters scan_file applies after its transformers
    (``_process_line_based_plugins``: internal to detect-secrets 1.x, hence the pin in pyproject.toml)."""
    from detect_secrets import SecretsCollection
    from detect_secrets.core.scan import _process_line_based_plugins
    from detect_secrets.settings import default_settings

    found: set[Finding] = set()
    with default_settings():
        for name, path in files.items():
            collection = SecretsCollection()
            collection.scan_file(str(path))
            found |= {Finding(name, s.line_number, s.type, s.secret_value or "") for _, s in collection}
            lines = list(enumerate(path.read_text(errors="replace").splitlines(), start=1))
            found |= {
                Finding(name, s.line_number, s.type, s.secret_value or "")
                for s in _process_line_based_plugins(lines, str(path))
            }
    return sorted(found, key=lambda f: (f.name, f.line, f.type, f.value))


def files_under(root: Path, *folders: str) -> dict[str, Path]:
    """Every file under ``root/folder`` for each folder, named relative to ``root``."""
    return {
        str(path.relative_to(root)): path
        for folder in folders
        for path in sorted((root / folder).rglob("*"))
        if path.is_file()
    }


def unaccepted(findings: Iterable[Finding], paths_under: Iterable[str | Path] = ()) -> list[Finding]:
    """The findings neither the baseline nor ``paths_under`` (directories, e.g. a run's pipeline root) accept."""
    roots = tuple(str(root).rstrip("/") + "/" for root in paths_under)
    return [finding for finding in findings if finding.accepted_by(roots) is None]
