"""gRPC without Ray: the standard OIP client (tritonclient.grpc) and the tessera.v1 stub against
``serve_grpc_inprocess`` running in a subprocess over an in-process core.

The server runs in its own process because tritonclient.grpc and our generated
``grpc_predict_v2_pb2`` both define the ``inference.*`` messages in protobuf's default pool.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from service.api.protos import tessera_images_pb2, tessera_images_pb2_grpc
from tests.helpers import jpeg_bytes
from tests.unit.api.conftest import Reference, grpc_server

ATOL = 1e-4


@pytest.fixture(scope="module")
def server(small_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with grpc_server(small_repo, tmp_path_factory.mktemp("grpc") / "server.log") as url:
        yield url


@pytest.fixture(scope="module")
def oip(server: str) -> Iterator[triton.InferenceServerClient]:
    with triton.InferenceServerClient(url=server) as client:
        yield client


def _status(exc: pytest.ExceptionInfo[InferenceServerException]) -> str:
    return str(exc.value.status()).removeprefix("StatusCode.")


def test_health_and_metadata(oip: triton.InferenceServerClient) -> None:
    assert oip.is_server_live() and oip.is_server_ready()
    assert oip.is_model_ready("vit_small") and oip.is_model_ready("swin_tiny", "1")
    server = oip.get_server_metadata()
    assert server.name == "tessera" and "binary_tensor_data" in server.extensions
    meta = oip.get_model_metadata("vit_small")
    assert meta.name == "vit_small" and list(meta.versions) == ["1"] and meta.platform == "onnxruntime_onnx"
    inputs = {t.name: (t.datatype, list(t.shape)) for t in meta.inputs}
    assert inputs["image"] == ("BYTES", [-1]) and inputs["pixels"][1][:2] == [-1, 3]
    assert [t.datatype for t in meta.inputs if t.name == "pixels"] == ["FP32", "FP16", "UINT8"]
    outputs = {t.name: (t.datatype, list(t.shape)) for t in meta.outputs}
    assert outputs == {"embedding": ("FP32", [-1, 384]), "logits": ("FP32", [-1, 1000])}


def test_fp32_raw_input_matches_the_backbone(oip: triton.InferenceServerClient, reference: Reference) -> None:
    pixels = np.random.default_rng(11).standard_normal((2, 3, 224, 224)).astype(np.float32)
    tensor = triton.InferInput("pixels", list(pixels.shape), "FP32")
    tensor.set_data_from_numpy(pixels)  # raw_input_contents
    result = oip.infer("vit_small", [tensor], request_id="g-1", outputs=[triton.InferRequestedOutput("embedding")])
    embedding = result.as_numpy("embedding")
    assert embedding.shape == (2, 384) and result.as_numpy("logits") is None
    np.testing.assert_allclose(embedding, reference.embed("vit_small", pixels), atol=ATOL)
    response = result.get_response()
    assert response.id == "g-1" and response.model_name == "vit_small" and response.model_version == "1"
    timing = json.loads(response.parameters["timing_ms"].string_param)
    assert timing["total"] >= timing["inference"] > 0
    assert json.loads(response.parameters["memory"].string_param)["peak_bytes"] > 0
    assert response.parameters["backend"].string_param == "onnxruntime"


def test_bytes_input_and_both_outputs(oip: triton.InferenceServerClient, reference: Reference) -> None:
    jpeg = jpeg_bytes(320, 240, seed=12)
    tensor = triton.InferInput("image", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([jpeg], dtype=np.object_))
    result = oip.infer("swin_tiny", [tensor], model_version="1")
    np.testing.assert_allclose(result.as_numpy("embedding")[0], reference.embed_encoded("swin_tiny", jpeg), atol=ATOL)
    assert result.as_numpy("logits").shape == (1, 1000)


def test_uint8_raw_input(oip: triton.InferenceServerClient, reference: Reference) -> None:
    rgb = np.random.default_rng(13).integers(0, 256, (1, 3, 224, 224), dtype=np.uint8)
    tensor = triton.InferInput("pixels", [1, 3, 224, 224], "UINT8")
    tensor.set_data_from_numpy(rgb)
    got = oip.infer("vit_small", [tensor]).as_numpy("embedding")
    np.testing.assert_allclose(got, reference.embed("vit_small", reference.normalise("vit_small", rgb)), atol=ATOL)


def _pixels_input(shape: list[int], dtype: type = np.float32, datatype: str = "FP32") -> triton.InferInput:
    tensor = triton.InferInput("pixels", shape, datatype)
    tensor.set_data_from_numpy(np.zeros(shape, dtype=dtype))
    return tensor


def test_invalid_input_is_invalid_argument(oip: triton.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as exc:
        oip.infer("vit_small", [_pixels_input([1, 3, 64, 64])])
    assert _status(exc) == "INVALID_ARGUMENT" and "224x224" in exc.value.message()

    nan = np.zeros((1, 3, 224, 224), np.float32)
    nan[0, 0, 0, 0] = np.inf
    tensor = triton.InferInput("pixels", [1, 3, 224, 224], "FP32")
    tensor.set_data_from_numpy(nan)
    with pytest.raises(InferenceServerException) as exc:
        oip.infer("vit_small", [tensor])
    assert _status(exc) == "INVALID_ARGUMENT" and "NaN or Inf" in exc.value.message()

    with pytest.raises(InferenceServerException) as exc:
        oip.infer("vit_small", [_pixels_input([1, 3, 224, 224], np.int32, "INT32")])
    assert _status(exc) == "INVALID_ARGUMENT" and "datatype" in exc.value.message()

    with pytest.raises(InferenceServerException) as exc:
        oip.infer("vit_small", [_pixels_input([1, 3, 224, 224])], outputs=[triton.InferRequestedOutput("x")])
    assert _status(exc) == "INVALID_ARGUMENT" and "unknown output" in exc.value.message()

    with pytest.raises(InferenceServerException) as exc:
        oip.infer("vit_small", [_pixels_input([1, 3, 224, 224])], headers={"x-request-timeout": "soon"})
    assert _status(exc) == "INVALID_ARGUMENT" and "x-request-timeout" in exc.value.message()


def test_unknown_model_or_version_is_not_found(oip: triton.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as exc:
        oip.infer("nope", [_pixels_input([1, 3, 224, 224])])
    assert _status(exc) == "NOT_FOUND" and "nope" in exc.value.message()
    with pytest.raises(InferenceServerException) as exc:
        oip.infer("vit_small", [_pixels_input([1, 3, 224, 224])], model_version="3")
    assert _status(exc) == "NOT_FOUND"
    with pytest.raises(InferenceServerException) as exc:
        oip.get_model_metadata("nope")
    assert _status(exc) == "NOT_FOUND"
    with pytest.raises(InferenceServerException) as exc:
        oip.is_model_ready("vit_small", "2")
    assert _status(exc) == "NOT_FOUND"


# -- tessera.v1.Images/Predict ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def images(server: str) -> Iterator[tessera_images_pb2_grpc.ImagesStub]:
    with grpc.insecure_channel(server) as channel:
        yield tessera_images_pb2_grpc.ImagesStub(channel)


def test_predict_answers_like_v1(images: tessera_images_pb2_grpc.ImagesStub, reference: Reference) -> None:
    jpeg = jpeg_bytes(224, 224, seed=14)
    request = tessera_images_pb2.PredictRequest(image=jpeg, content_type="image/jpeg", output="both", top_k=3)
    reply = images.Predict(request, metadata=[("x-request-id", "img-1")], timeout=60)
    assert reply.request_id == "img-1" and reply.model == reply.route.model == "vit_small"
    assert reply.weights == "untrained" and reply.backend == "onnxruntime" and reply.version == 1
    assert list(reply.input.processed) == [224, 224] and reply.input.tokens == 196
    np.testing.assert_allclose(np.asarray(reply.embedding), reference.embed_encoded("vit_small", jpeg), atol=ATOL)
    assert len(reply.logits) == 1000 and len(reply.top_k) == 3
    assert reply.top_k[0].score >= reply.top_k[-1].score
    assert json.loads(reply.route.json)["model"] == "vit_small" and reply.route.reason
    assert reply.timing_ms.total >= reply.timing_ms.inference > 0 and reply.memory.peak_bytes > 0


def test_predict_errors_are_grpc_statuses(images: tessera_images_pb2_grpc.ImagesStub) -> None:
    cases = [
        (tessera_images_pb2.PredictRequest(image=b"not an image"), grpc.StatusCode.INVALID_ARGUMENT),
        (tessera_images_pb2.PredictRequest(image=jpeg_bytes(), model="nope"), grpc.StatusCode.NOT_FOUND),
        (tessera_images_pb2.PredictRequest(image=jpeg_bytes(), output="everything"), grpc.StatusCode.INVALID_ARGUMENT),
        (tessera_images_pb2.PredictRequest(image=jpeg_bytes(), top_k=500), grpc.StatusCode.INVALID_ARGUMENT),
    ]
    for request, code in cases:
        with pytest.raises(grpc.RpcError) as exc:
            images.Predict(request, timeout=60)
        assert exc.value.code() == code, exc.value.details()
        assert exc.value.details()
