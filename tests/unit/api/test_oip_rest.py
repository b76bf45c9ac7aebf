"""Open Inference Protocol over REST on an in-process core: metadata, readiness, inference, errors."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton_http
from fastapi.testclient import TestClient

from service.api.oip import pack_bytes
from service.api.oip_rest import HEADER_LENGTH, TIMEOUT_HEADER
from service.api.rest import TIMEOUT_HEADER as REST_TIMEOUT_HEADER
from service.api.serving import ServingCore
from tests.helpers import ROOT, jpeg_bytes
from tests.unit.api.conftest import Reference, oip_client

ATOL = 1e-4


def _pixels(n: int = 1, seed: int = 0, size: int = 224) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, size, size)).astype(np.float32)


def _infer(client: TestClient, body: dict[str, Any], model: str = "vit_small", **kwargs: Any) -> Any:
    return client.post(f"/v2/models/{model}/infer", content=json.dumps(body), **kwargs)


def _split(response: Any) -> tuple[dict[str, Any], bytes]:
    """A binary answer's JSON header and the raw bytes after it."""
    length = int(response.headers[HEADER_LENGTH])
    return json.loads(response.content[:length]), response.content[length:]


def _binary(shape: list[int], size: int, datatype: str = "FP32", name: str = "pixels") -> dict[str, Any]:
    return {"name": name, "shape": shape, "datatype": datatype, "parameters": {"binary_data_size": size}}


def _fp32(shape: list[int], data: Any = None) -> dict[str, Any]:
    """A JSON FP32 ``pixels`` input; zeros of the right count unless ``data`` is given."""
    return {
        "name": "pixels",
        "shape": shape,
        "datatype": "FP32",
        "data": [0.0] * int(np.prod(shape)) if data is None else data,
    }


# -- metadata and readiness ------------------------------------------------------------------------
def test_model_metadata_lists_inputs_and_outputs(client: TestClient, core: ServingCore) -> None:
    meta = client.get("/v2/models/vit_small").json()
    assert meta["name"] == "vit_small" and meta["versions"] == ["1"]
    assert meta["platform"] == "onnxruntime_onnx"
    buckets = core.repo.config("vit_small").input.buckets
    side = buckets[0] if len(buckets) == 1 else -1  # one allowed size is fixed; several are variable
    assert meta["inputs"] == [
        {"name": "pixels", "datatype": "FP32", "shape": [-1, 3, side, side]},
        {"name": "pixels", "datatype": "FP16", "shape": [-1, 3, side, side]},
        {"name": "pixels", "datatype": "UINT8", "shape": [-1, 3, side, side]},
        {"name": "image", "datatype": "BYTES", "shape": [-1]},
    ]
    assert meta["outputs"] == [
        {"name": "embedding", "datatype": "FP32", "shape": [-1, 384]},
        {"name": "logits", "datatype": "FP32", "shape": [-1, 1000]},
    ]
    swin = client.get("/v2/models/swin_tiny/versions/1").json()
    assert swin["outputs"][0]["shape"] == [-1, 768]


def test_readiness_and_server_metadata(client: TestClient) -> None:
    assert client.get("/v2/models/vit_small/ready").json() == {"name": "vit_small", "ready": True}
    assert client.get("/v2/models/swin_tiny/versions/1/ready").status_code == 200
    assert "binary_tensor_data" in client.get("/v2").json()["extensions"]


@pytest.mark.parametrize(
    "path",
    [
        "/v2/models/nope",
        "/v2/models/nope/ready",
        "/v2/models/vit_small/versions/2",
        "/v2/models/vit_small/versions/abc/ready",
    ],
)
def test_unknown_model_or_version_is_404(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 404
    assert isinstance(response.json()["error"], str) and response.json()["error"]


def test_infer_on_unknown_model_or_version_is_404(client: TestClient) -> None:
    body = {"inputs": [{"name": "pixels", "shape": [1, 3, 224, 224], "datatype": "FP32", "data": [0.0]}]}
    assert _infer(client, body, model="nope").status_code == 404
    response = client.post("/v2/models/vit_small/versions/7/infer", content=json.dumps(body))
    assert response.status_code == 404 and "version" in response.json()["error"]


def test_openapi_documents_the_routes(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    infer = paths["/v2/models/{model}/infer"]["post"]
    assert infer["summary"] and "examples" in infer["requestBody"]["content"]["application/json"]
    assert "/v2/models/{model}/versions/{version}/ready" in paths


# -- inference -------------------------------------------------------------------------------------
def test_json_fp32_matches_the_backbone(client: TestClient, reference: Reference) -> None:
    pixels = _pixels(2, seed=1)
    body = {
        "id": "req-7",
        "inputs": [
            {"name": "pixels", "shape": list(pixels.shape), "datatype": "FP32", "data": pixels.ravel().tolist()}
        ],
    }
    response = _infer(client, body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["model_name"] == "vit_small" and answer["model_version"] == "1" and answer["id"] == "req-7"
    outputs = {o["name"]: o for o in answer["outputs"]}
    assert set(outputs) == {"embedding", "logits"}
    assert outputs["embedding"]["shape"] == [2, 384] and outputs["logits"]["shape"] == [2, 1000]
    got = np.asarray(outputs["embedding"]["data"], np.float32).reshape(2, 384)
    np.testing.assert_allclose(got, reference.embed("vit_small", pixels), atol=ATOL)
    params = answer["parameters"]
    assert set(params["timing_ms"]) == {"decode", "preprocess", "queue", "inference", "total"}
    assert params["timing_ms"]["total"] >= params["timing_ms"]["inference"] > 0
    assert params["memory"]["device"] == "cpu" and params["memory"]["peak_bytes"] > 0
    assert params["backend"] == "onnxruntime" and params["weights"] == "untrained"


class _RecordingClient:
    """The in-process backbones, noting how each call arrived."""

    def __init__(self, inner: Any):
        self.inner = inner
        self.calls: list[tuple[str, tuple[int, ...]]] = []

    async def infer(self, model: str, pixels: np.ndarray) -> dict[str, Any]:
        self.calls.append(("infer", pixels.shape))
        return await self.inner.infer(model, pixels)  # type: ignore[no-any-return]

    async def infer_batch(self, model: str, pixels: np.ndarray) -> list[dict[str, Any]]:
        self.calls.append(("infer_batch", pixels.shape))
        return await self.inner.infer_batch(model, pixels)  # type: ignore[no-any-return]


def test_many_images_run_as_batches_of_the_models_size(core: ServingCore, reference: Reference) -> None:
    """N images in one request are one batch already: chunks of max_batch_size, not N single calls."""
    recording = _RecordingClient(core.client)
    client = oip_client(ServingCore(core.repo, core.router, recording))
    step = core.repo.config("vit_small").batching.max_batch_size
    pixels = _pixels(step + 2, seed=5)
    body = {"inputs": [_fp32(list(pixels.shape), pixels.ravel().tolist())]}
    response = _infer(client, body)
    assert response.status_code == 200, response.text
    assert recording.calls == [("infer_batch", (step, 3, 224, 224)), ("infer_batch", (2, 3, 224, 224))]
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    got = np.asarray(outputs["embedding"]["data"], np.float32).reshape(step + 2, -1)
    np.testing.assert_allclose(got, reference.embed("vit_small", pixels), atol=ATOL)
    recording.calls.clear()
    one = _pixels(1, seed=6)
    assert _infer(client, {"inputs": [_fp32([1, 3, 224, 224], one.ravel().tolist())]}).status_code == 200
    assert recording.calls == [("infer", (3, 224, 224))]  # a single image joins the backbone's batcher


def test_nested_json_data_and_one_requested_output(client: TestClient, reference: Reference) -> None:
    pixels = _pixels(1, seed=2)
    body = {
        "inputs": [{"name": "pixels", "shape": [1, 3, 224, 224], "datatype": "FP32", "data": pixels.tolist()}],
        "outputs": [{"name": "embedding"}],
    }
    answer = _infer(client, body, model="swin_tiny").json()
    assert [o["name"] for o in answer["outputs"]] == ["embedding"] and "id" not in answer
    got = np.asarray(answer["outputs"][0]["data"], np.float32)
    np.testing.assert_allclose(got, reference.embed("swin_tiny", pixels)[0], atol=ATOL)


@pytest.mark.parametrize("model", ["vit_small", "swin_tiny"])
def test_every_allowed_size_is_accepted(
    client: TestClient, reference: Reference, core: ServingCore, model: str
) -> None:
    for size in core.repo.config(model).input.buckets[:2]:
        raw = _pixels(1, seed=size, size=size).tobytes()
        header = json.dumps({"inputs": [_binary([1, 3, size, size], len(raw))], "outputs": [{"name": "embedding"}]})
        response = client.post(
            f"/v2/models/{model}/infer", content=header.encode() + raw, headers={HEADER_LENGTH: str(len(header))}
        )
        assert response.status_code == 200, (size, response.text)
        got = np.asarray(response.json()["outputs"][0]["data"], np.float32)
        expected = reference.embed(model, _pixels(1, seed=size, size=size))[0]
        np.testing.assert_allclose(got, expected, atol=ATOL)


def test_uint8_pixels_are_normalised_with_the_models_mean_and_std(client: TestClient, reference: Reference) -> None:
    rgb = np.random.default_rng(3).integers(0, 256, (1, 3, 224, 224), dtype=np.uint8)
    body = {
        "inputs": [{"name": "pixels", "shape": [1, 3, 224, 224], "datatype": "UINT8", "data": rgb.ravel().tolist()}]
    }
    answer = _infer(client, body).json()
    got = np.asarray(answer["outputs"][0]["data"], np.float32)
    np.testing.assert_allclose(got, reference.embed("vit_small", reference.normalise("vit_small", rgb))[0], atol=ATOL)


def test_fp16_binary_input_and_binary_outputs(client: TestClient, reference: Reference) -> None:
    pixels = _pixels(1, seed=4).astype(np.float16)
    raw = pixels.tobytes()
    header = json.dumps(
        {
            "inputs": [_binary([1, 3, 224, 224], len(raw), "FP16")],
            "outputs": [{"name": "embedding", "parameters": {"binary_data": True}}, {"name": "logits"}],
        }
    ).encode()
    response = client.post(
        "/v2/models/vit_small/infer",
        content=header + raw,
        headers={HEADER_LENGTH: str(len(header)), "content-type": "application/octet-stream"},
    )
    assert response.status_code == 200, response.text
    head, tail = _split(response)
    embedding, logits = head["outputs"]
    assert embedding["parameters"] == {"binary_data_size": 384 * 4} and "data" not in embedding
    assert len(logits["data"]) == 1000 and len(tail) == 384 * 4
    expected = reference.embed("vit_small", pixels.astype(np.float32))[0]
    np.testing.assert_allclose(np.frombuffer(tail, "<f4"), expected, atol=ATOL)


def test_bytes_input_json_base64_matches_v1_predict(client: TestClient, reference: Reference) -> None:
    jpeg = jpeg_bytes(224, 224, seed=5)
    body = {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [base64.b64encode(jpeg).decode()]}]}
    answer = _infer(client, body).json()
    got = np.asarray(answer["outputs"][0]["data"], np.float32)
    np.testing.assert_allclose(got, reference.embed_encoded("vit_small", jpeg), atol=ATOL)
    v1 = client.post("/v1/predict?model=vit_small", content=jpeg, headers={"content-type": "image/jpeg"}).json()
    np.testing.assert_allclose(got, np.asarray(v1["embedding"], np.float32), atol=ATOL)
    assert answer["parameters"]["timing_ms"]["decode"] > 0


def test_standard_client_request_and_response_bodies(client: TestClient, reference: Reference) -> None:
    """tritonclient.http builds the binary request and parses the binary answer: wire compatibility."""
    jpegs = [jpeg_bytes(300, 200, seed=6), jpeg_bytes(224, 224, seed=7)]
    image = triton_http.InferInput("image", [2], "BYTES")
    image.set_data_from_numpy(np.array(jpegs, dtype=np.object_), binary_data=True)
    outputs = [triton_http.InferRequestedOutput("embedding", binary_data=True)]
    body, json_size = triton_http.InferenceServerClient.generate_request_body([image], outputs, request_id="r1")
    response = client.post("/v2/models/swin_tiny/infer", content=body, headers={HEADER_LENGTH: str(json_size)})
    assert response.status_code == 200, response.text
    result = triton_http.InferenceServerClient.parse_response_body(
        response.content, header_length=int(response.headers[HEADER_LENGTH])
    )
    got = result.as_numpy("embedding")
    assert got.shape == (2, 768) and result.get_response()["id"] == "r1"
    for row, jpeg in zip(got, jpegs, strict=True):
        np.testing.assert_allclose(row, reference.embed_encoded("swin_tiny", jpeg), atol=ATOL)
    assert result.get_response()["parameters"]["batch_size"] >= 1


def test_binary_data_output_request_parameter(client: TestClient) -> None:
    pixels = _pixels(1, seed=8)
    body = {
        "parameters": {"binary_data_output": True},
        "inputs": [{"name": "pixels", "shape": [1, 3, 224, 224], "datatype": "FP32", "data": pixels.ravel().tolist()}],
    }
    head, tail = _split(_infer(client, body))
    assert [o["parameters"]["binary_data_size"] for o in head["outputs"]] == [384 * 4, 1000 * 4]
    assert len(tail) == (384 + 1000) * 4


# -- malformed requests: a clear 400 each ------------------------------------------------------------
MALFORMED: list[tuple[str, dict[str, Any], str]] = [
    ("wrong rank", {"inputs": [_fp32([3, 224, 224])]}, "expected [N, 3, H, W]"),
    ("wrong channels", {"inputs": [_fp32([1, 1, 224, 224])]}, "expected [N, 3, H, W]"),
    ("size not allowed", {"inputs": [_fp32([1, 3, 64, 64])]}, "accepts 224x224"),
    ("negative dim", {"inputs": [_fp32([-1, 3, 224, 224], data=[0.0])]}, "non-negative"),
    ("element count", {"inputs": [_fp32([1, 3, 224, 224], data=[0.0] * 10)]}, "needs 150528"),
    ("wrong datatype", {"inputs": [{**_fp32([1, 3, 224, 224]), "datatype": "INT32"}]}, "expected one of FP32"),
    (
        "unknown datatype for image",
        {"inputs": [{"name": "image", "shape": [1], "datatype": "FP32", "data": [1]}]},
        "BYTES",
    ),
    ("unknown input", {"inputs": [{**_fp32([1, 3, 224, 224]), "name": "tokens"}]}, "unknown input 'tokens'"),
    ("two inputs", {"inputs": [_fp32([1, 3, 224, 224]), _fp32([1, 3, 224, 224])]}, "exactly one"),
    ("no inputs", {"inputs": []}, "no inputs"),
    ("no data", {"inputs": [{"name": "pixels", "shape": [1, 3, 224, 224], "datatype": "FP32"}]}, "no data"),
    ("strings as numbers", {"inputs": [_fp32([1, 3, 224, 224], data=["a"] * 150528)]}, "must be numbers"),
    ("ragged data", {"inputs": [_fp32([1, 3, 224, 224], data=[[0.0], [0.0, 1.0]])]}, "regular"),
    (
        "uint8 out of range",
        {"inputs": [{**_fp32([1, 3, 224, 224], data=[300] * 150528), "datatype": "UINT8"}]},
        "[0, 255]",
    ),
    (
        "uint8 not integer",
        {"inputs": [{**_fp32([1, 3, 224, 224], data=[0.5] * 150528), "datatype": "UINT8"}]},
        "integers",
    ),
    ("unknown output", {"inputs": [_fp32([1, 3, 224, 224])], "outputs": [{"name": "features"}]}, "unknown output"),
    ("output twice", {"inputs": [_fp32([1, 3, 224, 224])], "outputs": [{"name": "logits"}] * 2}, "twice"),
    ("bad base64", {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["%%%"]}]}, "base64"),
    ("bytes count", {"inputs": [{"name": "image", "shape": [2], "datatype": "BYTES", "data": ["AAAA"]}]}, "needs 2"),
    ("not an image", {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["AAAA"]}]}, "JPEG"),
    ("zero images", {"inputs": [_fp32([0, 3, 224, 224])]}, "no images"),
    ("typo in a field", {"input": [_fp32([1, 3, 224, 224])]}, "inputs"),
    ("binary size without binary part", {"inputs": [_binary([1, 3, 224, 224], 8)]}, "remain"),
]


@pytest.mark.parametrize(("case", "body", "message"), MALFORMED, ids=[c[0] for c in MALFORMED])
def test_malformed_request_is_400(client: TestClient, case: str, body: dict[str, Any], message: str) -> None:
    response = _infer(client, body)
    assert response.status_code == 400, (case, response.text)
    error = response.json()["error"]
    assert isinstance(error, str) and message in error, (case, error)


@pytest.mark.parametrize("bad", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_inf_are_400(client: TestClient, bad: str) -> None:
    body = {"inputs": [_fp32([1, 3, 224, 224], data=[0.0] * 150527 + [float(bad)])]}
    response = _infer(client, body)  # json writes NaN / Infinity, as numpy-minded clients do
    assert response.status_code == 400 and "NaN or Inf" in response.json()["error"]


def test_nan_in_binary_fp32_is_400(client: TestClient) -> None:
    pixels = _pixels(1)
    pixels[0, 1, 2, 3] = np.nan
    raw = pixels.tobytes()
    header = json.dumps({"inputs": [_binary([1, 3, 224, 224], len(raw))]}).encode()
    response = client.post(
        "/v2/models/vit_small/infer", content=header + raw, headers={HEADER_LENGTH: str(len(header))}
    )
    assert response.status_code == 400 and "NaN or Inf" in response.json()["error"]


@pytest.mark.parametrize(
    ("cut", "extra", "message"),
    [(4, b"", "remain"), (0, b"\x00" * 4, "add up to")],
)
def test_binary_size_mismatch_is_400(client: TestClient, cut: int, extra: bytes, message: str) -> None:
    raw = _pixels(1).tobytes()
    header = json.dumps({"inputs": [_binary([1, 3, 224, 224], len(raw))]}).encode()
    body = header + raw[: len(raw) - cut] + extra
    response = client.post("/v2/models/vit_small/infer", content=body, headers={HEADER_LENGTH: str(len(header))})
    assert response.status_code == 400 and message in response.json()["error"]


def test_binary_size_disagreeing_with_the_shape_is_400(client: TestClient) -> None:
    raw = _pixels(1).tobytes()[:-4]
    header = json.dumps({"inputs": [_binary([1, 3, 224, 224], len(raw))]}).encode()
    response = client.post(
        "/v2/models/vit_small/infer", content=header + raw, headers={HEADER_LENGTH: str(len(header))}
    )
    assert response.status_code == 400 and "needs 602112" in response.json()["error"]


def test_bad_bytes_framing_is_400(client: TestClient) -> None:
    raw = pack_bytes([jpeg_bytes()])[:-10]
    header = json.dumps({"inputs": [_binary([1], len(raw), "BYTES", "image")]}).encode()
    response = client.post(
        "/v2/models/vit_small/infer", content=header + raw, headers={HEADER_LENGTH: str(len(header))}
    )
    assert response.status_code == 400 and "claims" in response.json()["error"]


@pytest.mark.parametrize(
    ("body", "headers", "status"),
    [
        (b"{not json", {}, 400),
        (b"{}", {HEADER_LENGTH: "99"}, 400),
        (b"{}", {HEADER_LENGTH: "x"}, 400),
        (b"{}", {"content-encoding": "gzip"}, 415),
        (b"{}", {"x-request-timeout": "-1"}, 400),
    ],
)
def test_unreadable_bodies_and_headers(client: TestClient, body: bytes, headers: dict[str, str], status: int) -> None:
    response = client.post("/v2/models/vit_small/infer", content=body, headers=headers)
    assert response.status_code == status and response.json()["error"]


def test_too_many_elements_is_refused_before_reading_the_data(client: TestClient) -> None:
    body = {"inputs": [_fp32([300, 3, 224, 224], data=[0.0])]}
    response = _infer(client, body)
    assert response.status_code == 413 and "limit" in response.json()["error"]


def test_deadline_header_is_honoured(client: TestClient) -> None:
    body = {"inputs": [_fp32([1, 3, 224, 224])]}
    response = _infer(client, body, headers={"x-request-timeout": "0.000001"})
    assert response.status_code == 504 and "deadline" in response.json()["error"]


def test_router_module_does_not_import_the_app_module() -> None:
    """service.api.rest includes this router: importing rest from oip_rest at load time would be circular."""
    assert TIMEOUT_HEADER == REST_TIMEOUT_HEADER
    code = "import sys, service.api.oip_rest; assert 'service.api.rest' not in sys.modules"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


# -- the inference fast path (service.api.rest.InferFastPath) ----------------------------------------
def test_inference_is_answered_before_fastapis_routing(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both inference paths reach ``answer_infer`` from the ASGI middleware, not through the route
    (which calls its own module's name); other methods and paths go on to FastAPI."""
    import service.api.rest as rest

    calls: list[tuple[str, str | None]] = []
    answer = rest.answer_infer

    async def counted(request: Any, model: str, version: str | None) -> Any:
        calls.append((model, version))
        return await answer(request, model, version)

    monkeypatch.setattr(rest, "answer_infer", counted)
    body = {"inputs": [_fp32([1, 3, 224, 224])]}
    assert _infer(client, body).status_code == 200
    response = client.post("/v2/models/vit_small/versions/1/infer", content=json.dumps(body))
    assert response.status_code == 200 and response.headers["x-request-id"]  # inside the access log
    assert calls == [("vit_small", None), ("vit_small", "1")]

    wrong_method = client.get("/v2/models/vit_small/infer")
    assert wrong_method.status_code == 405 and "method GET" in wrong_method.json()["error"]
    assert client.post("/v2/models/vit_small/infer/extra", content=b"{}").status_code == 404
    assert len(calls) == 2


def test_an_unexpected_error_on_the_fast_path_is_the_contracts_500(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    import service.api.rest as rest

    async def broken(request: Any, model: str, version: str | None) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(rest, "answer_infer", broken)
    response = _infer(client, {"inputs": [_fp32([1, 3, 224, 224])]})
    assert response.status_code == 500
    assert response.json() == {"error": "internal error (RuntimeError); this is a bug, please report it"}
