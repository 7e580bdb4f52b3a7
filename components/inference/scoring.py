"""What scores a batch: the model Triton serves (gRPC, requests of ``request_rows`` rows, ``concurrency`` of them in
flight, each with a deadline), or the model package in-process (onnxruntime). Both take the serving graph's inputs
(``model_package.raw_inputs``) and give its outputs (``ModelConfig.outputs``), so their results are the same graph's.
"""

from __future__ import annotations

import contextlib
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

import numpy as np

from kfp_mlops.components.shared import layout, storage
from kfp_mlops.components.shared.errors import InputError, ServiceError
from kfp_mlops.components.shared.model_package import ModelConfig, Predictor


class TritonError(ServiceError):
    """Triton could not be reached, does not serve the model's version, or failed a request."""


class Scorer(Protocol):
    model_name: str
    model_version: int  # Triton's version; 0 in-process

    def score(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]: ...

    def close(self) -> None: ...


class PackageScorer:
    """The model package's serving graph in this process (a remote package is copied to a temporary folder)."""

    def __init__(self, model_uri: str, model_name: str, threads: int = 0) -> None:
        self._stack = contextlib.ExitStack()
        local = model_uri
        if storage.is_remote(model_uri):
            local = self._stack.enter_context(tempfile.TemporaryDirectory(prefix="kfp-mlops-package-"))
            storage.copy_tree(model_uri, local)
        self._predictor = Predictor(Path(storage.parse(local).key), threads=threads)
        self.config = self._predictor.config
        self.model_name, self.model_version = model_name, 0

    def score(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self._predictor.session.run(self.config.outputs, feeds)

    def close(self) -> None:
        self._stack.close()


class TritonScorer:
    """A model version on Triton over gRPC. One client per worker thread (a tritonclient gRPC client is not
    thread-safe); the rows of a batch go out in requests of ``request_rows`` (0: the model's max_batch_size), at most
    ``concurrency`` at a time, each with ``timeout`` seconds; the answers come back in the batch's order.
    ``request_rows`` 0: ``default_rows`` (deploy.max_batch_size), at most the served model's max_batch_size."""

    def __init__(self, url: str, model: str, version: int, config: ModelConfig, request_rows: int = 0,
                 concurrency: int = 4, timeout: float = 60.0, default_rows: int = 0) -> None:  # fmt: skip
        import tritonclient.grpc as client

        self._module, self.url, self.model_name, self.model_version = client, url, model, int(version)
        self.outputs, self.timeout = config.outputs, timeout
        self._local = threading.local()
        self._clients: list = []
        self._lock = threading.Lock()
        with self._explained():
            probe = self._client()
            if not probe.is_server_live(client_timeout=timeout):
                raise TritonError(f"Triton at {url} (gRPC) is not live")
            if not probe.is_model_ready(model, str(self.model_version), client_timeout=timeout):
                raise TritonError(
                    f"model {model!r} version {self.model_version} is not ready on Triton at {url}: the serving "
                    "record names it; was it unloaded, or is this the wrong Triton (deploy.triton_url)?"
                )
            served = probe.get_model_config(model, str(self.model_version), as_json=True, client_timeout=timeout)
            max_batch = int(served.get("config", served).get("max_batch_size", 0))
        if request_rows and max_batch and request_rows > max_batch:
            raise InputError(
                f"inference.request_rows {request_rows} exceeds the served model's max_batch_size {max_batch}"
            )
        rows = request_rows or default_rows or max_batch or 1024
        self.request_rows = min(rows, max_batch) if max_batch else rows
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="triton")

    def _client(self):
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._module.InferenceServerClient(self.url)
            self._local.client = client
            with self._lock:
                self._clients.append(client)
        return client

    @contextlib.contextmanager
    def _explained(self):
        from tritonclient.utils import InferenceServerException

        try:
            yield
        except (InferenceServerException, OSError) as exc:
            raise TritonError(f"Triton at {self.url} (gRPC), model {self.model_name!r}: {exc}") from None

    def _request(self, chunk: dict[str, np.ndarray]) -> list[np.ndarray]:
        with self._explained():
            result = self._client().infer(
                self.model_name,
                layout.infer_inputs(self._module, chunk),
                model_version=str(self.model_version),
                outputs=layout.requested_outputs(self._module, self.outputs),
                client_timeout=self.timeout,
            )
        arrays = [result.as_numpy(name) for name in self.outputs]
        missing = [name for name, array in zip(self.outputs, arrays, strict=True) if array is None]
        if missing:
            raise TritonError(f"model {self.model_name!r} version {self.model_version} returned no {missing}")
        return arrays

    def score(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        rows = len(next(iter(feeds.values())))
        chunks = [
            {name: array[start : start + self.request_rows] for name, array in feeds.items()}
            for start in range(0, rows, self.request_rows)
        ]
        answers = list(self._pool.map(self._request, chunks))
        return [np.concatenate([answer[i] for answer in answers]) for i in range(len(self.outputs))]

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        for client in self._clients:
            with contextlib.suppress(Exception):
                client.close()
