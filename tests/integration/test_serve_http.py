"""The real Ray Serve deployments over HTTP: ingress → router → batched backbone replicas."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.helpers import jpeg_bytes, slide_crop_jpeg

pytestmark = pytest.mark.integration

JPEG = {"content-type": "image/jpeg"}


def test_predict_through_ray_serve(serve_url: str, cmu_slide: Path) -> None:
    response = httpx.post(f"{serve_url}/v1/predict", content=slide_crop_jpeg(), headers=JPEG, timeout=60)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "vit_small" and body["backend"] == "onnxruntime"
    assert len(body["embedding"]) == 384
    assert body["timing_ms"]["queue"] >= 0 and body["timing_ms"]["inference"] > 0


def test_ray_answer_equals_in_process_answer(serve_url: str, small_repo: Path) -> None:
    import asyncio

    from service.api.protocol import PredictOptions
    from service.api.serving import LocalBackboneClient, ServingCore
    from service.models import ModelRepository
    from service.routing.factory import make_router
    from service.runtime import load_backend

    data = jpeg_bytes(640, 480, seed=7)
    remote = httpx.post(f"{serve_url}/v1/predict", content=data, headers=JPEG, timeout=60).json()
    repo = ModelRepository(small_repo)
    backends = {name: load_backend(repo, name) for name in repo.names()}
    core = ServingCore(repo, make_router(repo), LocalBackboneClient(backends))
    local = asyncio.run(core.predict(data, "image/jpeg", PredictOptions()))
    assert remote["model"] == local.model and remote["route"] == local.route.model_dump(mode="json")
    assert max(abs(a - b) for a, b in zip(remote["embedding"], local.embedding or [], strict=True)) < 1e-4


def test_concurrent_requests_are_batched(serve_url: str) -> None:
    data = jpeg_bytes(seed=3)

    def call(_: int) -> dict:
        return httpx.post(f"{serve_url}/v1/predict", content=data, headers=JPEG, timeout=120).json()

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(call, range(32)))
    assert all(a["model"] == "vit_small" for a in answers)
    assert max(a["batch_size"] for a in answers) > 1
    first = answers[0]["embedding"]
    assert all(a["embedding"] == pytest.approx(first, abs=1e-4) for a in answers)


def test_errors_over_http(serve_url: str) -> None:
    bad = httpx.post(f"{serve_url}/v1/predict", content=b"nope", headers=JPEG, timeout=30)
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_argument"
    unsupported = httpx.post(f"{serve_url}/v1/predict", content=b"x", headers={"content-type": "text/csv"})
    assert unsupported.status_code == 415
    assert httpx.get(f"{serve_url}/v1/models").status_code == 200
    assert httpx.get(f"{serve_url}/v2/health/ready").json() == {"ready": True}


def test_metrics_scrape_after_traffic(serve_url: str) -> None:
    import time

    from prometheus_client.parser import text_string_to_metric_families

    for _ in range(3):
        httpx.post(f"{serve_url}/v1/predict", content=jpeg_bytes(seed=9), headers=JPEG, timeout=60)
    wanted = {
        "tessera_requests",
        "tessera_request_duration_seconds",
        "tessera_stage_duration_seconds",
        "tessera_batch_size",
        "tessera_route",
        "tessera_device_memory_bytes",
        "tessera_host_memory_bytes",
    }
    deadline = time.monotonic() + 60
    names: set[str] = set()
    while time.monotonic() < deadline:  # Ray's agent exports on an interval
        text = httpx.get(f"{serve_url}/metrics", timeout=30).text
        families = {f.name: f for f in text_string_to_metric_families(text)}
        names = set(families)
        if wanted <= names:
            break
        time.sleep(2)
    assert wanted <= names, f"missing: {wanted - names}"
    assert not any(n.startswith("ray_tessera_") for n in names)
    stages = {s.labels["stage"] for s in families["tessera_stage_duration_seconds"].samples if "stage" in s.labels}
    assert {"decode", "preprocess", "queue", "inference"} <= stages
    ok = [s for s in families["tessera_requests"].samples if s.labels.get("code") == "200"]
    assert ok and sum(s.value for s in ok if s.name.endswith("_total")) >= 3
