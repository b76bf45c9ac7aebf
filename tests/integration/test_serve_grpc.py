"""gRPC through Ray Serve's own gRPC proxy, called with the standard OIP client (tritonclient)."""

from __future__ import annotations

import grpc
import httpx
import numpy as np
import pytest

from tests.helpers import jpeg_bytes

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def grpc_target(serve_url: str, serve_settings) -> str:
    return f"127.0.0.1:{serve_settings.grpc_port}"


def test_standard_oip_client_over_ray_grpc(serve_url: str, grpc_target: str) -> None:
    import tritonclient.grpc as tg

    client = tg.InferenceServerClient(grpc_target)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("vit_small")
    meta = client.get_model_metadata("vit_small", as_json=True)
    assert {i["name"] for i in meta["inputs"]} == {"pixels", "image"}
    assert {o["name"] for o in meta["outputs"]} == {"embedding", "logits"}

    pixels = np.random.default_rng(1).standard_normal((2, 3, 224, 224)).astype(np.float32)
    inp = tg.InferInput("pixels", list(pixels.shape), "FP32")
    inp.set_data_from_numpy(pixels)
    result = client.infer("vit_small", [inp], outputs=[tg.InferRequestedOutput("embedding")])
    embedding = result.as_numpy("embedding")
    assert embedding.shape == (2, 384) and np.isfinite(embedding).all()

    # the same pixels over REST OIP give the same embedding
    body = {
        "inputs": [
            {"name": "pixels", "shape": list(pixels.shape), "datatype": "FP32", "data": pixels.ravel().tolist()}
        ],
        "outputs": [{"name": "embedding"}],
    }
    rest = httpx.post(f"{serve_url}/v2/models/vit_small/infer", json=body, timeout=60).json()
    rest_emb = np.asarray(rest["outputs"][0]["data"], np.float32).reshape(2, 384)
    np.testing.assert_allclose(embedding, rest_emb, atol=1e-4)

    image = tg.InferInput("image", [1], "BYTES")
    image.set_data_from_numpy(np.array([jpeg_bytes(seed=5)], dtype=np.object_))
    assert client.infer("vit_small", [image]).as_numpy("embedding").shape == (1, 384)


def test_grpc_errors_carry_the_mapped_codes(serve_url: str, grpc_target: str) -> None:
    import tritonclient.grpc as tg
    from tritonclient.utils import InferenceServerException

    client = tg.InferenceServerClient(grpc_target)
    with pytest.raises(InferenceServerException) as unknown:
        client.get_model_metadata("no_such_model")
    assert "NOT_FOUND" in str(unknown.value.status())
    wrong = tg.InferInput("pixels", [1, 3, 100, 100], "FP32")
    wrong.set_data_from_numpy(np.zeros((1, 3, 100, 100), np.float32))
    with pytest.raises(InferenceServerException) as invalid:
        client.infer("vit_small", [wrong])
    assert "INVALID_ARGUMENT" in str(invalid.value.status())


def test_images_predict_over_ray_grpc(serve_url: str, grpc_target: str) -> None:
    from service.api.protos import tessera_images_pb2, tessera_images_pb2_grpc

    with grpc.insecure_channel(grpc_target) as channel:
        stub = tessera_images_pb2_grpc.ImagesStub(channel)
        reply = stub.Predict(tessera_images_pb2.PredictRequest(image=jpeg_bytes(), content_type="image/jpeg"))
        assert reply.model == "vit_small" and len(reply.embedding) == 384
        with pytest.raises(grpc.RpcError) as err:
            stub.Predict(tessera_images_pb2.PredictRequest(image=b"not an image"))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
