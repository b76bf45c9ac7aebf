"""Slide jobs through Ray Serve: the SlideJobs deployment encoding on the backbone deployments."""

from __future__ import annotations

import io
import time
from pathlib import Path

import h5py
import httpx
import numpy as np
import pytest

pytestmark = pytest.mark.integration


def _wait(url: str, job_id: str, timeout: float = 300, until: tuple[str, ...] = ("succeeded", "failed")) -> dict:
    deadline = time.monotonic() + timeout
    status: dict = {}
    while time.monotonic() < deadline:
        try:
            status = httpx.get(f"{url}/v1/slides/{job_id}", timeout=30).json()
        except httpx.HTTPError:  # the replica may be restarting
            time.sleep(1)
            continue
        if status.get("state") in until:
            return status
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} stuck: {status}")


def _features(url: str, job_id: str) -> tuple[np.ndarray, np.ndarray]:
    data = httpx.get(f"{url}/v1/slides/{job_id}/features", timeout=60).content
    with h5py.File(io.BytesIO(data)) as h5:
        return h5["coords"][:], h5["features"][:]


def test_real_slide_job(serve_url: str, cmu_slide: Path) -> None:
    response = httpx.post(f"{serve_url}/v1/slides?mpp=1.0", json={"path": cmu_slide.name}, timeout=60)
    assert response.status_code == 202, response.text
    status = _wait(serve_url, response.json()["id"])
    assert status["state"] == "succeeded", status
    coords, features = _features(serve_url, status["id"])
    assert len(coords) == status["tiles_total"] > 0 and features.shape[1] == 384


def test_missing_mpp_fails_clearly_and_slide_mpp_fixes_it(serve_url: str) -> None:
    bad = httpx.post(f"{serve_url}/v1/slides", json={"path": "TCGA-CR-7395-01A-01-TS1.svs"}, timeout=60)
    assert bad.status_code == 400 and "slide_mpp" in bad.json()["error"]["message"]
    good = httpx.post(
        f"{serve_url}/v1/slides?slide_mpp=0.25&mpp=2.0", json={"path": "TCGA-CR-7395-01A-01-TS1.svs"}, timeout=60
    )
    assert good.status_code == 202
    assert _wait(serve_url, good.json()["id"])["state"] == "succeeded"


@pytest.mark.slow
def test_job_resumes_after_its_replica_is_killed(serve_url: str) -> None:
    import ray

    options = "mpp=0.5&tissue_threshold=0.0&tile=224"
    reference = httpx.post(f"{serve_url}/v1/slides?{options}", json={"path": "synthetic.tiff"}, timeout=60).json()
    reference = _wait(serve_url, reference["id"])
    assert reference["state"] == "succeeded"

    job = httpx.post(f"{serve_url}/v1/slides?{options}", json={"path": "synthetic.tiff"}, timeout=60).json()
    status = _wait(serve_url, job["id"], until=("running", "succeeded"))
    while status["state"] == "running" and status["tiles_done"] < max(1, (status["tiles_total"] or 0) // 3):
        time.sleep(0.2)
        status = httpx.get(f"{serve_url}/v1/slides/{job['id']}", timeout=30).json()
    assert status["state"] == "running", "job finished before the kill: use a larger slide"
    replicas = [a for a in ray.util.list_named_actors(all_namespaces=True) if "SlideJobs" in a["name"]]
    assert len(replicas) == 1
    ray.kill(ray.get_actor(replicas[0]["name"], namespace=replicas[0]["namespace"]), no_restart=False)

    final = _wait(serve_url, job["id"], timeout=600)
    assert final["state"] == "succeeded", final
    assert final["attempts"] >= 2
    ref_coords, ref_features = _features(serve_url, reference["id"])
    coords, features = _features(serve_url, job["id"])
    assert np.array_equal(coords, ref_coords)
    np.testing.assert_allclose(features, ref_features, atol=1e-5)


def test_upload_is_forwarded_in_chunks_and_results_stream_back(serve_url: str, cmu_slide: Path) -> None:
    """Through the ingress → SlideJobs handle: a multipart upload (staged in chunks), then the
    features, the partial snapshot and the GeoJSON streamed back through a streaming handle."""
    with cmu_slide.open("rb") as fh:
        response = httpx.post(
            f"{serve_url}/v1/slides?mpp=2.0&slide_mpp=0.5",
            files={"slide": (cmu_slide.name, fh, "application/octet-stream")},
            timeout=120,
        )
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["mpp_source"] == "caller" and job["metadata_mpp"] == pytest.approx(0.499)
    status = _wait(serve_url, job["id"])
    assert status["state"] == "succeeded", status
    coords, features = _features(serve_url, status["id"])
    assert len(coords) == status["tiles_total"] > 0
    partial = httpx.get(f"{serve_url}/v1/slides/{job['id']}/features.partial", timeout=60)
    with h5py.File(io.BytesIO(partial.content)) as h5:
        np.testing.assert_array_equal(h5["features"][:], features)
    tiles = httpx.get(f"{serve_url}/v1/slides/{job['id']}/tiles.geojson", timeout=60).json()
    assert len(tiles["features"]) == len(coords)
    missing = httpx.get(f"{serve_url}/v1/slides/0123456789abcdef0123456789abcdef/features", timeout=60)
    assert missing.status_code == 404


def test_implausible_mpp_is_refused_through_serve(serve_url: str) -> None:
    bad = httpx.post(f"{serve_url}/v1/slides?slide_mpp=352.8", json={"path": "synthetic.tiff"}, timeout=60)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "slide_mpp"
