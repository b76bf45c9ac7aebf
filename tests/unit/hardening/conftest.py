"""Fixtures for the hardening tests: the REST app over an in-process core (no Ray), a slide root
laid out for path attacks, and a gRPC server subprocess (open and token-protected ports)."""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from service.api.auth import ENV_VAR, TokenAuth
from service.api.rest import create_app
from service.api.serving import ServingCore
from service.api.slides_service import LocalSlideService
from service.models import ModelRepository
from service.runtime import Backend
from service.slides import BackendEncoder, JobManager
from tests.helpers import ROOT, free_port
from tests.unit.hardening.corpus import encode, noise
from tests.unit.hardening.support import MAX_SLIDE_BYTES, build_core, load_backends

#: Tokens the gRPC server's token file starts with (the rotation test changes and restores it).
GRPC_TOKEN = "grpc-token-Ah7vXw2Lq9"
START_TIMEOUT_S = 120.0


@pytest.fixture(scope="package")
def backends(small_repo: Path) -> dict[str, Backend]:
    return load_backends(small_repo)


@pytest.fixture(scope="package")
def core(small_repo: Path, backends: dict[str, Backend]) -> ServingCore:
    return build_core(small_repo, backends)


@pytest.fixture(scope="package")
def slide_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A slide root holding no slide: only things that must be refused, and links that lead out."""
    base = tmp_path_factory.mktemp("slide_attack")
    root = base / "slides"
    (root / "sub").mkdir(parents=True)
    (root / "notes.svs").write_text("a text file with a slide's suffix\n")
    (root / "photo.png").write_bytes(encode("PNG"))
    (root / "plain.tiff").write_bytes(encode("TIFF", noise(64, 64)))
    (root / "empty.svs").write_bytes(b"")
    outside = base / "outside"
    outside.mkdir()
    (outside / "passwd").write_text("root:x:0:0\n")
    shutil.copy(root / "plain.tiff", base / "outside.svs")
    (root / "escape.svs").symlink_to(base / "outside.svs")
    (root / "escape_dir").symlink_to(outside, target_is_directory=True)
    return root


@pytest.fixture(scope="package")
def manager(
    small_repo: Path, backends: dict[str, Backend], slide_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[JobManager]:
    repo = ModelRepository(small_repo)
    jobs = JobManager(
        tmp_path_factory.mktemp("jobs"),
        lambda model: BackendEncoder(backends["vit_small"], repo.config("vit_small")),
        slide_root,
    )
    yield jobs
    jobs.shutdown(wait=False)


def make_app(core: ServingCore, manager: JobManager | None = None, auth: TokenAuth | None = None) -> FastAPI:
    app = create_app()
    app.state.core = core
    app.state.max_slide_bytes = MAX_SLIDE_BYTES
    app.state.auth = auth or TokenAuth()  # explicit: TESSERA_AUTH_TOKENS in the environment must not leak in
    if manager is not None:
        app.state.slides = LocalSlideService(manager)
    return app


@pytest.fixture(scope="package")
def client(core: ServingCore, manager: JobManager) -> TestClient:
    return TestClient(make_app(core, manager), raise_server_exceptions=False)


# -- gRPC -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GrpcServers:
    open: str
    """Address of the server without access control."""
    auth: str
    """Address of the server that requires a token from ``token_file``."""
    token_file: Path


@pytest.fixture(scope="package")
def grpc_servers(small_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GrpcServers]:
    work = tmp_path_factory.mktemp("grpc_hardening")
    token_file = work / "tokens"
    token_file.write_text(f"# accepted tokens\n{GRPC_TOKEN}\n")
    ports = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k != ENV_VAR}
    log = work / "server.log"
    with log.open("wb") as stderr:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.unit.hardening.grpc_server_main",
                str(small_repo),
                *map(str, ports),
                str(token_file),
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=stderr,
            env={**env, "PYTHONPATH": str(ROOT)},
        )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], START_TIMEOUT_S)
        line = proc.stdout.readline().decode() if ready else ""
        if not line.startswith("READY"):
            proc.kill()
            pytest.fail(f"gRPC server did not start: {line!r}\n{log.read_text()[-3000:]}")
        yield GrpcServers(f"127.0.0.1:{ports[0]}", f"127.0.0.1:{ports[1]}", token_file)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
