"""The REST app over an in-process serving core: contract fields and the error mapping, no Ray."""

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.api.rest import create_app
from service.api.serving import LocalBackboneClient, ServingCore
from service.imaging import DecodeLimits
from service.models import ModelRepository
from service.routing.factory import make_router
from service.runtime import load_backend
from tests.helpers import encode, jpeg_bytes, slide_crop_jpeg


@pytest.fixture(scope="module")
def client(small_repo: Path) -> TestClient:
    repo = ModelRepository(small_repo)
    backends = {name: load_backend(repo, name) for name in repo.names()}
    app = create_app()
    app.state.core = ServingCore(
        repo,
        make_router(repo),
        LocalBackboneClient(backends),
        limits=DecodeLimits(max_bytes=2 << 20, max_pixels=4096 * 4096),
    )
    return TestClient(app, raise_server_exceptions=False)


def test_predict_answers_with_the_contract_fields(client: TestClient, cmu_slide: Path) -> None:
    response = client.post(
        "/v1/predict", content=slide_crop_jpeg(), headers={"content-type": "image/jpeg", "x-request-id": "abc-123"}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    for key in (
        "model",
        "version",
        "backend",
        "precision",
        "weights",
        "input",
        "route",
        "embedding",
        "timing_ms",
        "memory",
    ):
        assert key in body
    assert body["model"] == "vit_small" and body["backend"] == "onnxruntime"
    assert body["weights"] == "untrained" and "random" in body["weights_note"]
    assert len(body["embedding"]) == 384
    assert body["input"]["original"] == [224, 224] and body["input"]["tokens"] == 196
    assert body["route"]["model"] == "vit_small" and body["route"]["reason"]
    assert set(body["timing_ms"]) == {"decode", "preprocess", "queue", "inference", "total"}
    assert body["timing_ms"]["total"] >= body["timing_ms"]["inference"] > 0
    assert body["memory"]["device"] == "cpu" and body["memory"]["peak_bytes"] > 0
    assert response.headers["x-request-id"] == "abc-123" and body["request_id"] == "abc-123"


def test_same_image_gives_same_embedding(client: TestClient) -> None:
    data = jpeg_bytes(300, 200, seed=4)
    a = client.post("/v1/predict", content=data, headers={"content-type": "image/jpeg"}).json()
    b = client.post("/v1/predict", files={"image": ("x.jpg", data, "image/jpeg")}).json()
    assert a["embedding"] == b["embedding"]


def test_answer_follows_the_cheapest_fitting_route(client: TestClient) -> None:
    body = client.post(
        "/v1/predict?output=both&top_k=3", content=jpeg_bytes(1000, 750), headers={"content-type": "image/jpeg"}
    ).json()
    route = body["route"]
    fitting = [c for c in route["candidates"] if c["fits"]]
    cheapest = min(fitting, key=lambda c: c["predicted_latency_ms"])
    assert body["model"] == route["model"] == cheapest["model"]
    # pad policy: a 1000x750 image goes unscaled into the 1024 bucket
    assert body["input"]["processed"] == [1024, 1024] and body["input"]["content"] == [750, 1000]
    assert len(body["logits"]) == 1000 and len(body["top_k"]) == 3
    scores = [t["score"] for t in body["top_k"]]
    assert scores == sorted(scores, reverse=True)


def test_oversize_images_are_downscaled_into_the_largest_bucket(client: TestClient) -> None:
    body = client.post("/v1/predict", content=jpeg_bytes(3000, 600), headers={"content-type": "image/jpeg"}).json()
    assert body["route"]["fit"] == "downscale"
    assert max(body["input"]["content"]) == max(body["input"]["processed"])


def test_explicit_model(client: TestClient) -> None:
    body = client.post(
        "/v1/predict?model=swin_tiny", content=jpeg_bytes(300, 300), headers={"content-type": "image/jpeg"}
    )
    assert body.json()["model"] == "swin_tiny" and body.json()["route"]["reason"] == "requested"


@pytest.mark.parametrize(
    ("body", "headers", "status", "code"),
    [
        (b"not an image", {"content-type": "image/jpeg"}, 400, "invalid_argument"),
        (b"", {"content-type": "image/jpeg"}, 400, "invalid_argument"),
        (b"hello", {"content-type": "text/plain"}, 415, "unsupported_media_type"),
        (b"\xff\xd8\xff" + b"0" * (3 << 20), {"content-type": "image/jpeg"}, 413, "too_large"),
    ],
)
def test_bad_input_is_a_clear_4xx(client: TestClient, body: bytes, headers: dict, status: int, code: str) -> None:
    response = client.post("/v1/predict", content=body, headers=headers)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] == code and error["message"]


def test_multipart_without_the_image_field_is_400(client: TestClient) -> None:
    response = client.post("/v1/predict", files={"file": ("x.jpg", jpeg_bytes(), "image/jpeg")})
    assert response.status_code == 400
    assert "image" in response.json()["error"]["message"]


def test_unknown_model_is_404(client: TestClient) -> None:
    response = client.post("/v1/predict?model=nope", content=jpeg_bytes(), headers={"content-type": "image/jpeg"})
    assert response.status_code == 404 and response.json()["error"]["param"] == "model"


def test_bad_options_are_400(client: TestClient) -> None:
    response = client.post(
        "/v1/predict?output=everything", content=jpeg_bytes(), headers={"content-type": "image/jpeg"}
    )
    assert response.status_code == 400


def test_png_is_accepted(client: TestClient) -> None:
    import numpy as np

    data = encode(np.zeros((64, 96, 3), np.uint8), "PNG")
    assert client.post("/v1/predict", content=data, headers={"content-type": "image/png"}).status_code == 200


def test_route_models_and_health(client: TestClient) -> None:
    route = client.get("/v1/route", params={"width": 2048, "height": 2048}).json()
    candidates = {c["model"]: c for c in route["candidates"]}
    assert set(candidates) == {"vit_small", "swin_tiny", "nat_tiny"}
    assert not candidates["vit_small"]["fits"]  # routes.yaml: ViT takes at most 1024 px
    assert route["model"] in ("swin_tiny", "nat_tiny") and route["input_size"] == [2048, 2048]
    assert client.get("/v1/route", params={"width": 0, "height": 5}).status_code == 400
    models = {m["name"]: m for m in client.get("/v1/models").json()}
    assert models["vit_small"]["arch"]["patch_size"] == 16 and models["vit_small"]["ready"]
    assert models["swin_tiny"]["arch"]["window_size"] == 7 and "onnx" in models["swin_tiny"]["backends_built"]
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
