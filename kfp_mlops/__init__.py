"""kfp-mlops: Kubeflow Pipelines (KFP v2) components and pipelines for production ML."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("kfp-mlops")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"
