"""Triton's tooling surface through Ray Serve's own proxies, with the standard client (tritonclient).

REST through Ray's HTTP proxy, gRPC through Ray's gRPC proxy (ModelStreamInfer is
bidirectional streaming there too). The integration tier's service runs with explicit model
control, so load and unload are allowed.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from service.api.oip import EXTENSIONS
from service.serve.runner import model_states

pytestmark = pytest.mark.integration


@pytest.fixture(params=["http", "grpc"])
def triton(request: pytest.FixtureRequest, serve_url: str, serve_settings: Any) -> Iterator[tuple[str, Any]]:
    if request.param == "http":
        client: Any = triton_http.InferenceServerClient(f"127.0.0.1:{serve_settings.http_port}", network_timeout=120)
    else:
        client = triton_grpc.InferenceServerClient(f"127.0.0.1:{serve_settings.grpc_port}")
    yield request.param, client
    client.close()


def _mod(kind: str) -> ModuleType:
    return triton_http if kind == "http" else triton_grpc


def _pixels(kind: str, n: int = 1) -> Any:
    tensor = _mod(kind).InferInput("pixels", [n, 3, 224, 224], "FP32")
    tensor.set_data_from_numpy(np.random.default_rng(n).standard_normal((n, 3, 224, 224)).astype(np.float32))
    return tensor


def test_metadata_statistics_config_and_index(triton: tuple[str, Any]) -> None:
    kind, client = triton
    json_kw = {} if kind == "http" else {"as_json": True}
    server = client.get_server_metadata(**json_kw)
    assert sorted(server["extensions"]) == sorted(EXTENSIONS)

    client.infer("vit_small", [_pixels(kind, 2)])
    stats = client.get_inference_statistics("vit_small", **json_kw)["model_stats"][0]
    assert int(stats["inference_count"]) >= 2 and int(stats["inference_stats"]["success"]["count"]) >= 1
    assert int(stats["inference_stats"]["compute_infer"]["ns"]) > 0

    config = client.get_model_config("vit_small", **json_kw)
    config = config if kind == "http" else config["config"]
    assert config["name"] == "vit_small" and config["max_batch_size"] == 8
    assert config["instance_group"][0]["kind"] == "KIND_CPU"
    assert config["parameters"]["runtime"]["string_value"] == "onnxruntime"

    index = client.get_model_repository_index(**json_kw)
    index = index if kind == "http" else index["models"]
    assert {e["name"]: e["state"] for e in index} == {n: "READY" for n in ("nat_tiny", "swin_tiny", "vit_small")}


def test_classification_and_parameters(triton: tuple[str, Any]) -> None:
    kind, client = triton
    mod = _mod(kind)
    result = client.infer("vit_small", [_pixels(kind, 2)], outputs=[mod.InferRequestedOutput("logits", class_count=3)])
    top = result.as_numpy("logits")
    assert top.shape == (2, 3) and all(len(bytes(e).split(b":")) == 2 for e in top.ravel())
    with pytest.raises(InferenceServerException) as exc:
        client.infer("vit_small", [_pixels(kind)], priority=2)
    assert "'priority'" in exc.value.message()
    assert str(exc.value.status()).removeprefix("StatusCode.") in ("400", "INVALID_ARGUMENT")


def test_unload_and_load_follow_through_the_router(triton: tuple[str, Any], serve_url: str) -> None:
    kind, client = triton
    try:
        client.unload_model("swin_tiny")
        assert not client.is_model_ready("swin_tiny")
        # unload returned once every backbone replica had released the model (session and memory)
        assert model_states()["swin_tiny"].state == "unloaded"
        listed = {m["name"]: m for m in httpx.get(f"{serve_url}/v1/models", timeout=30).json()}
        assert listed["swin_tiny"]["status"]["state"] == "unloaded" and not listed["swin_tiny"]["ready"]
        with pytest.raises(InferenceServerException) as exc:
            client.infer("swin_tiny", [_pixels(kind)])
        assert str(exc.value.status()).removeprefix("StatusCode.") in ("503", "UNAVAILABLE")
    finally:
        client.load_model("swin_tiny")
    assert client.is_model_ready("swin_tiny")
    assert model_states()["swin_tiny"].state == "ready"
    listed = {m["name"]: m for m in httpx.get(f"{serve_url}/v1/models", timeout=30).json()}
    assert listed["swin_tiny"]["ready"] and listed["swin_tiny"]["status"]["state"] == "ready"


def test_stream_infer_through_rays_grpc_proxy(serve_url: str, serve_settings: Any) -> None:
    answers: list[tuple[Any, Any]] = []
    done = threading.Event()

    def callback(result: Any, error: Any) -> None:
        answers.append((result, error))
        if len(answers) == 4:
            done.set()

    with triton_grpc.InferenceServerClient(f"127.0.0.1:{serve_settings.grpc_port}") as client:
        client.start_stream(callback=callback)
        for i in range(3):
            client.async_stream_infer("vit_small", [_pixels("grpc")], request_id=f"r{i}")
        client.async_stream_infer("vit_small", [_pixels("grpc")], request_id="bad", parameters={"nope": 1})
        assert done.wait(120), answers
        client.stop_stream()
    ok = sorted(r.get_response().id for r, e in answers if e is None)
    errors = [str(e) for _, e in answers if e is not None]
    assert ok == ["r0", "r1", "r2"] and len(errors) == 1 and "'nope'" in errors[0]
