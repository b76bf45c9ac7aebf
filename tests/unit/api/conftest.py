"""Fixtures for the API tests: a serving core over in-process backends (no Ray), and its REST app."""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.api.oip_rest import router
from service.api.rest import create_app
from service.api.serving import LocalBackboneClient, ServingCore
from service.imaging import DecodeLimits, decode_image, prepare
from service.models import ModelRepository
from service.routing.factory import make_router
from service.runtime import Backend, load_backend
from tests.helpers import ROOT, free_port

#: The limits both the in-process core and the gRPC server subprocess use.
LIMITS = DecodeLimits(max_bytes=16 << 20, max_pixels=4096 * 4096)


def build_core(root: Path, backends: dict[str, Backend] | None = None, **options: Any) -> ServingCore:
    """A core over in-process backends; ``options`` are ``ServingCore``'s keywords (max_pending, ...)."""
    repo = ModelRepository(root)
    backends = backends or {name: load_backend(repo, name) for name in repo.names()}
    return ServingCore(repo, make_router(repo), LocalBackboneClient(backends), limits=LIMITS, **options)


class Reference:
    """The backbones run directly, without any transport: what every answer must equal."""

    def __init__(self, core: ServingCore, backends: dict[str, Backend]):
        self.core = core
        self.backends = backends

    def embed(self, model: str, pixels: np.ndarray) -> np.ndarray:
        """Embeddings of normalised (N, 3, H, W) float32 pixels."""
        return self.backends[model].infer(np.asarray(pixels, dtype=np.float32)).outputs["embedding"]

    def embed_encoded(self, model: str, data: bytes) -> np.ndarray:
        """The embedding of one encoded image, decoded and fitted to the model's native size."""
        decoded = decode_image(data, None, LIMITS)
        prepared = prepare(decoded.pixels, self.core.repo.config(model).input)
        return self.embed(model, prepared.pixels[None])[0]

    def normalise(self, model: str, rgb: np.ndarray) -> np.ndarray:
        """(N, 3, H, W) uint8 RGB normalised with the model's mean and std."""
        cfg = self.core.repo.config(model).input
        mean = np.asarray(cfg.mean, np.float32).reshape(1, 3, 1, 1)
        std = np.asarray(cfg.std, np.float32).reshape(1, 3, 1, 1)
        return (rgb.astype(np.float32) / 255.0 - mean) / std


@contextlib.contextmanager
def http_server(core: ServingCore) -> Iterator[str]:
    """The REST app over ``core`` on a real port (uvicorn in a thread), for HTTP clients such as tritonclient."""
    import uvicorn

    app = create_app()
    app.state.core = core
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the in-process HTTP server did not start")
        time.sleep(0.05)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextlib.contextmanager
def grpc_server(repo: Path, log: Path, *flags: str, start_timeout_s: float = 120.0) -> Iterator[str]:
    """``grpc_server_main`` in a subprocess (``flags``: --explicit, --max-pending N, --slow S)."""
    port = free_port()
    with log.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.unit.api.grpc_server_main", str(repo), str(port), *flags],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=stderr,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], start_timeout_s)
        line = proc.stdout.readline().decode() if ready else ""
        if not line.startswith("READY"):
            proc.kill()
            pytest.fail(f"gRPC server did not start: {line!r}\n{log.read_text()[-3000:]}")
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="package")
def backends(small_repo: Path) -> dict[str, Backend]:
    repo = ModelRepository(small_repo)
    return {name: load_backend(repo, name) for name in repo.names()}


@pytest.fixture(scope="package")
def core(small_repo: Path, backends: dict[str, Backend]) -> ServingCore:
    return build_core(small_repo, backends)


@pytest.fixture(scope="package")
def reference(core: ServingCore, backends: dict[str, Backend]) -> Reference:
    return Reference(core, backends)


def oip_client(core: ServingCore) -> TestClient:
    """The REST app (``/v1`` and the OIP routes) over ``core``, in process."""
    app = create_app()
    if not any(getattr(route, "path", None) == "/v2/models/{model}/infer" for route in app.routes):
        app.include_router(router)  # until create_app() includes it itself
    app.state.core = core
    return TestClient(app, raise_server_exceptions=False)


@pytest.fixture(scope="package")
def client(core: ServingCore) -> TestClient:
    return oip_client(core)
