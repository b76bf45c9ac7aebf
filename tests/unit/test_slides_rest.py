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
    # bytes that are no text at all (the fuzz test found this one answering 500)
    not_text = client.post("/v1/slides", content=b"\x80", headers={"content-type": "application/json"})
    assert not_text.status_code == 400 and "JSON is not valid" in not_text.text and "UTF-8" in not_text.text
    assert client.get("/v1/slides/0123456789abcdef0123456789abcdef").status_code == 404
    assert client.get("/v1/slides/not-an-id/heatmap.png").status_code == 404


def test_implausible_mpp_is_a_400_naming_slide_mpp(client: TestClient, cmu_slide: Path) -> None:
    response = client.post("/v1/slides?slide_mpp=352.8", json={"path": cmu_slide.name})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "slide_mpp"
    ok = client.post("/v1/slides?mpp=4.0&slide_mpp=0.25", json={"path": cmu_slide.name})
    assert ok.status_code == 202
    job = ok.json()
    assert job["mpp_source"] == "caller" and job["level0_mpp"] == 0.25
    assert job["metadata_mpp"] == pytest.approx(0.499)
    assert _wait(client, job["id"])["state"] == "succeeded"


def test_upload_with_a_clam_grid_streams_geojson_and_partial_features(client: TestClient, cmu_slide: Path) -> None:
    import numpy as np

    coords = np.array([[0, 0], [600, 600], [1200, 1800]], dtype=np.int64)
    grid = io.BytesIO()
    with h5py.File(grid, "w") as f:
        dset = f.create_dataset("coords", data=coords)
        dset.attrs["patch_level"], dset.attrs["patch_size"] = 0, 448
    with cmu_slide.open("rb") as fh:
        response = client.post(
            "/v1/slides",
            files={
                "slide": (cmu_slide.name, fh, "application/octet-stream"),
                "coords": ("grid.h5", grid.getvalue(), "application/x-hdf5"),
            },
            data={"export": "trident"},
        )
    assert response.status_code == 202, response.text
    status = _wait(client, response.json()["id"])
    assert status["state"] == "succeeded" and status["tiles_done"] == 3
    features = client.get(f"/v1/slides/{status['id']}/features")
    with h5py.File(io.BytesIO(features.content)) as h5:
        assert h5["coords"][:].tolist() == coords.tolist() and h5.attrs["grid_source"] == "clam"
    partial = client.get(f"/v1/slides/{status['id']}/features.partial")
    assert partial.status_code == 200
    with h5py.File(io.BytesIO(partial.content)) as h5:
        assert h5["features"].shape[0] == 3 and not bool(h5.attrs["partial"])
    tiles = client.get(f"/v1/slides/{status['id']}/tiles.geojson")
    assert tiles.status_code == 200 and tiles.headers["content-type"] == "application/geo+json"
    assert len(tiles.json()["features"]) == 3
    assert client.get(f"/v1/slides/{status['id']}/tissue.geojson").json()["type"] == "FeatureCollection"


def test_a_grid_for_another_slide_is_a_400(client: TestClient, cmu_slide: Path) -> None:
    grid = io.BytesIO()
    with h5py.File(grid, "w") as f:
        dset = f.create_dataset("coords", data=[[0, 0]])
        dset.attrs["patch_size_level0"], dset.attrs["level0_width"] = 448, 99999
    with cmu_slide.open("rb") as fh:
        response = client.post(
            "/v1/slides",
            files={"slide": (cmu_slide.name, fh, "application/octet-stream"), "coords": ("g.h5", grid.getvalue())},
        )
    assert response.status_code == 400 and response.json()["error"]["param"] == "coords"


def test_partial_features_of_an_unknown_job_is_404(client: TestClient) -> None:
    assert client.get("/v1/slides/0123456789abcdef0123456789abcdef/features.partial").status_code == 404
