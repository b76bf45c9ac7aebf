"""/v1/slides over an in-process job manager and a real ONNX Runtime tile encoder (no Ray)."""

from __future__ import annotations

import io
import shutil
import time
from pathlib import Path

import h5py
import pytest
from fastapi.testclient import TestClient

from service.api.rest import create_app
from service.api.slides_service import LocalSlideService
from service.models import ModelRepository
from service.runtime import load_backend
from service.slides import BackendEncoder, JobManager


@pytest.fixture(scope="module")
def client(small_repo: Path, cmu_slide: Path, tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    repo = ModelRepository(small_repo)
    backend = load_backend(repo, "vit_small")
    slide_root = tmp_path_factory.mktemp("slides")
    shutil.copy(cmu_slide, slide_root / cmu_slide.name)
    manager = JobManager(
        tmp_path_factory.mktemp("jobs"),
        lambda model: BackendEncoder(backend, repo.config("vit_small")),
        slide_root,
    )
    app = create_app()
    app.state.slides = LocalSlideService(manager)
    return TestClient(app, raise_server_exceptions=False)


def _wait(client: TestClient, job_id: str, timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.get(f"/v1/slides/{job_id}").json()
        if status["state"] in ("succeeded", "failed", "cancelled"):
            return status
        time.sleep(0.5)
    raise AssertionError("job did not finish")


def test_path_job_runs_and_serves_results(client: TestClient, cmu_slide: Path) -> None:
    response = client.post("/v1/slides?mpp=1.0&tissue_threshold=0.5", json={"path": cmu_slide.name})
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["state"] in ("queued", "running") and response.headers["location"].endswith(job["id"])
    status = _wait(client, job["id"])
    assert status["state"] == "succeeded", status
    assert status["tiles_done"] == status["tiles_total"] > 0
    features = client.get(f"/v1/slides/{job['id']}/features")
    assert features.status_code == 200 and features.headers["content-type"] == "application/x-hdf5"
    with h5py.File(io.BytesIO(features.content)) as h5:
        assert h5["coords"].shape == (status["tiles_total"], 2) and h5["features"].shape[1] == 384
        assert h5.attrs["target_mpp"] == pytest.approx(1.0)
    heatmap = client.get(f"/v1/slides/{job['id']}/heatmap.png")
    assert heatmap.status_code == 200 and heatmap.content.startswith(b"\x89PNG")


def test_upload_job(client: TestClient, cmu_slide: Path) -> None:
    with cmu_slide.open("rb") as fh:
        response = client.post("/v1/slides?mpp=2.0", files={"slide": (cmu_slide.name, fh, "application/octet-stream")})
    assert response.status_code == 202, response.text
    assert _wait(client, response.json()["id"])["state"] == "succeeded"


@pytest.mark.parametrize("path", ["../etc/passwd", "/etc/passwd", "nope.svs"])
def test_paths_outside_the_root_or_missing_are_400(client: TestClient, path: str) -> None:
    response = client.post("/v1/slides", json={"path": path})
    assert response.status_code == 400
    assert response.json()["error"]["message"]


def test_bad_requests(client: TestClient) -> None:
    assert client.post("/v1/slides", content=b"x", headers={"content-type": "text/plain"}).status_code == 400
    assert client.post("/v1/slides", json={"path": "a.svs", "colour": 1}).status_code == 400
    assert client.post("/v1/slides?mpp=-1", json={"path": "a.svs"}).status_code == 400
    assert client.post("/v1/slides", files={"other": ("a", b"x")}).status_code == 400
    assert client.get("/v1/slides/0123456789abcdef0123456789abcdef").status_code == 404
    assert client.get("/v1/slides/not-an-id/heatmap.png").status_code == 404
