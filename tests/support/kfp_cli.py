"""Helpers of the KFP API tests: the command line as the console script runs it, and the golden training YAML."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from kfp_mlops import __version__, cli

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden" / "training.yaml"
DISPLAY_NAME = "kfp-mlops-training"
TOKEN = "s3cret-token-value"


def kfp_mlops(*argv: str) -> int:
    """``kfp-mlops ARGV`` as the console script runs it; argparse's exit is returned as the code."""
    try:
        return cli.main(list(argv))
    except SystemExit as exc:
        return int(exc.code or 0)


def expected_version(package: Path) -> str:
    return f"{__version__}-{hashlib.sha256(package.read_bytes()).hexdigest()[:12]}"


def one(mapping: dict[str, Any]) -> Any:
    assert len(mapping) == 1, mapping
    return next(iter(mapping.values()))
