"""What the hardening tests share with their gRPC server subprocess: the core they run over.

No pytest here: ``grpc_server_main`` imports this in a process of its own.
"""

from __future__ import annotations

from pathlib import Path

from service.api.serving import LocalBackboneClient, ServingCore
from service.imaging import DecodeLimits
from service.models import ModelRepository
from service.routing.factory import make_router
from service.runtime import Backend, load_backend

#: Limits of the core under attack: small enough that the corpus can cross them cheaply.
LIMITS = DecodeLimits(max_bytes=16 << 20, max_pixels=4096 * 4096, max_side=16384)
#: The largest slide upload the hardened app accepts.
MAX_SLIDE_BYTES = 1 << 20


def load_backends(root: Path) -> dict[str, Backend]:
    repo = ModelRepository(root)
    return {name: load_backend(repo, name) for name in repo.names()}


def build_core(root: Path, backends: dict[str, Backend] | None = None) -> ServingCore:
    repo = ModelRepository(root)
    return ServingCore(
        repo, make_router(repo), LocalBackboneClient(backends or load_backends(root)), limits=LIMITS, timeout_s=60.0
    )
