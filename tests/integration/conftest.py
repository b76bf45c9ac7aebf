"""One embedded Ray Serve instance for the whole integration tier."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import free_port


@pytest.fixture(scope="session")
def serve_url(small_repo: Path) -> Iterator[str]:
    from service.serve.runner import start_service, stop_service
    from service.settings import ServerSettings

    settings = ServerSettings(
        model_repo=str(small_repo),
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=free_port(),
        request_timeout_s=60,
    )
    start_service(settings)
    try:
        yield f"http://127.0.0.1:{settings.http_port}"
    finally:
        stop_service()
