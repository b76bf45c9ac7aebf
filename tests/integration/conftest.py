"""One embedded Ray Serve instance for the whole integration tier."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import free_port


@pytest.fixture(scope="session")
def slide_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Slides the service may read by path: the real fixtures plus a synthetic pyramid."""
    from service.testing import make_synthetic_slide
    from tests.helpers import SLIDES

    root = tmp_path_factory.mktemp("slide_root")
    for slide in SLIDES.glob("*.svs"):
        shutil.copy(slide, root / slide.name)
    make_synthetic_slide(root / "synthetic.tiff", 6000, 4000, mpp=0.25, seed=3)
    return root


@pytest.fixture(scope="session")
def serve_settings(small_repo: Path, slide_root: Path, tmp_path_factory: pytest.TempPathFactory):
    """``TESSERA_TEST_TOPOLOGY=colocated`` runs the tier with the backbones in the ingress;
    ``TESSERA_TEST_FRONT_END=haproxy|replica`` with another front end on the ports."""
    import os

    from service.settings import ServerSettings

    return ServerSettings(
        model_repo=str(small_repo),
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=free_port(),
        request_timeout_s=60,
        slide_root=str(slide_root),
        job_dir=str(tmp_path_factory.mktemp("jobs")),
        model_control_mode="explicit",  # Triton's repository load/unload (test_triton_tooling.py)
        topology=os.environ.get("TESSERA_TEST_TOPOLOGY", "split"),
        front_end=os.environ.get("TESSERA_TEST_FRONT_END", "ray"),
    )


@pytest.fixture(scope="package")
def serve_url(serve_settings) -> Iterator[str]:
    """Ray stops when the integration tier ends, so the tiers after it start clean."""
    from service.serve.runner import start_service, stop_service

    start_service(serve_settings)
    try:
        yield f"http://127.0.0.1:{serve_settings.http_port}"
    finally:
        stop_service()
