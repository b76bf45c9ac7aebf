"""gRPC: the bad-input corpus and access control, against plain gRPC servers in a subprocess.

The messages are tritonclient's ``inference.*`` (wire-identical to ours; ours cannot be imported
in a process that has tritonclient, see ``grpc_server_main``) and our ``tessera.v1`` ones.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as oip
from tritonclient.grpc import service_pb2_grpc as oip_grpc

from service.api.grpc_servicer import (  # the servicers' own method lists
    _IMAGES_METHODS,
    _OIP_METHODS,
    _OIP_STREAM_METHODS,
)
from service.api.protos import tessera_images_pb2 as images
from service.api.protos import tessera_images_pb2_grpc as images_grpc
from tests.unit.hardening.conftest import GRPC_TOKEN, GrpcServers
from tests.unit.hardening.corpus import ImageCase, encode, image_cases

CALL_TIMEOUT_S = 30.0
MESSAGE_LIMIT = 64 << 20
IMAGES = image_cases()
_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    413: grpc.StatusCode.INVALID_ARGUMENT,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
}


@dataclass
class Stubs:
    oip: Any
    images: Any


def _stubs(address: str) -> Iterator[Stubs]:
    options = [("grpc.max_send_message_length", MESSAGE_LIMIT), ("grpc.max_receive_message_length", MESSAGE_LIMIT)]
    with grpc.insecure_channel(address, options=options) as channel:
        yield Stubs(oip_grpc.GRPCInferenceServiceStub(channel), images_grpc.ImagesStub(channel))


@pytest.fixture(scope="module")
def open_stubs(grpc_servers: GrpcServers) -> Iterator[Stubs]:
    yield from _stubs(grpc_servers.open)


@pytest.fixture(scope="module")
def auth_stubs(grpc_servers: GrpcServers) -> Iterator[Stubs]:
    yield from _stubs(grpc_servers.auth)


def _refused(call: Callable[[], Any]) -> tuple[grpc.StatusCode, str, float]:
    start = time.perf_counter()
    with pytest.raises(grpc.RpcError) as info:
        call()
    error: Any = info.value
    return error.code(), error.details() or "", time.perf_counter() - start


# -- bad inputs over gRPC ----------------------------------------------------------------------------
@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", IMAGES, ids=lambda c: c.id)
def test_bad_image_predict_is_a_clear_client_error(open_stubs: Stubs, case: ImageCase) -> None:
    request = images.PredictRequest(image=case.data, content_type=case.content_type or "")
    code, details, elapsed = _refused(lambda: open_stubs.images.Predict(request, timeout=CALL_TIMEOUT_S))
    (status,) = case.statuses
    assert code == _CODES[status], (code, details)
    assert elapsed < 20
    assert details.strip()
    if case.says:
        assert any(s.lower() in details.lower() for s in case.says), details


def _tensor(name: str, shape: list[int], datatype: str = "FP32") -> Any:
    return oip.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=shape)


def _infer(*tensors: Any, raws: list[bytes] | None = None, model: str = "vit_small", **fields: Any) -> Any:
    request = oip.ModelInferRequest(model_name=model, inputs=list(tensors), **fields)
    request.raw_input_contents.extend(raws or [])
    return request


_SHAPE = [1, 3, 224, 224]
_RAW = np.zeros(_SHAPE, np.float32).tobytes()


def _raw_with(value: float, index: int = 11) -> bytes:
    array = np.zeros(_SHAPE, np.float32)
    array.flat[index] = value
    return array.tobytes()


def _fp32_contents(count: int) -> Any:
    tensor = _tensor("pixels", _SHAPE)
    tensor.contents.fp32_contents.extend([0.0] * count)
    return tensor


def _int_contents() -> Any:
    tensor = _tensor("pixels", _SHAPE, "INT32")
    tensor.contents.int_contents.extend([0] * (3 * 224 * 224))
    return tensor


def _fp16_contents() -> Any:
    return _tensor("pixels", _SHAPE, "FP16")


def _bytes_input(data: bytes) -> Any:
    tensor = _tensor("image", [1], "BYTES")
    tensor.contents.bytes_contents.append(data)
    return tensor


INFER_CASES: list[tuple[str, Any, grpc.StatusCode, tuple[str, ...]]] = [
    ("no-inputs", _infer(), grpc.StatusCode.INVALID_ARGUMENT, ("no inputs",)),
    (
        "unknown-input-name",
        _infer(_tensor("input0", _SHAPE), raws=[_RAW]),
        grpc.StatusCode.INVALID_ARGUMENT,
        ("unknown input",),
    ),
    (
        "two-inputs",
        _infer(_tensor("pixels", _SHAPE), _tensor("image", [1], "BYTES"), raws=[_RAW, b"\0\0\0\0"]),
        grpc.StatusCode.INVALID_ARGUMENT,
        ("exactly one",),
    ),
    (
        "shape-rank-3",
        _infer(_tensor("pixels", [3, 224, 224]), raws=[_RAW]),
        grpc.StatusCode.INVALID_ARGUMENT,
        ("shape",),
    ),
    (
        "shape-wrong-size",
        _infer(_tensor("pixels", [1, 3, 100, 100]), raws=[bytes(3 * 100 * 100 * 4)]),
        grpc.StatusCode.INVALID_ARGUMENT,
        ("accepts",),
    ),
    (
        "shape-negative",
        _infer(_tensor("pixels", [1, 3, -224, 224]), raws=[_RAW]),
        grpc.StatusCode.INVALID_ARGUMENT,
        ("non-negative",),
    ),
    (
        "shape-zero-images",
        _infer(_tensor("pixels", [0, 3, 224, 224]), raws=[b""]),
        grpc.StatusCode.INVALID_ARGUMENT,
        ("no images",),
    ),
    (
        "shape-huge-batch",
        _infer(_tensor("pixels", [10**9, 3, 224, 224]), raws=[_RAW]),
        grpc.StatusCode.INVALID_ARGUMENT,
        ("limit",),
    ),
    ("datatype-int32", _infer(_int_contents()), grpc.StatusCode.INVALID_ARGUMENT, ("datatype",)),
    (
        "datatype-unknown",
        _infer(_tensor("pixels", _SHAPE, "FP8"), raws=[_RAW]),
        grpc.StatusCode.INVALID_ARGUMENT,
        ("datatype",),
    ),
    ("fp16-as-contents", _infer(_fp16_contents()), grpc.StatusCode.INVALID_ARGUMENT, ("raw_input_contents",)),
    ("element-count-short", _infer(_fp32_contents(10)), grpc.StatusCode.INVALID_ARGUMENT, ("elements",)),
    ("no-data", _infer(_tensor("pixels", _SHAPE)), grpc.StatusCode.INVALID_ARGUMENT, ("no data",)),
    (
        "raw-size-mismatch",
        _infer(_tensor("pixels", _SHAPE), raws=[_RAW[:-4]]),
        grpc.StatusCode.INVALID_ARGUMENT,
        ("bytes",),
    ),
    (
        "raw-count-mismatch",
        _infer(_tensor("pixels", _SHAPE), raws=[_RAW, _RAW]),
        grpc.StatusCode.INVALID_ARGUMENT,
        ("raw_input_contents",),
    ),
    ("raw-and-contents", _infer(_fp32_contents(10), raws=[_RAW]), grpc.StatusCode.INVALID_ARGUMENT, ("use one",)),
    (
        "fp32-nan",
        _infer(_tensor("pixels", _SHAPE), raws=[_raw_with(np.nan)]),
        grpc.StatusCode.INVALID_ARGUMENT,
        ("NaN or Inf",),
    ),
    (
        "fp32-pos-inf",
        _infer(_tensor("pixels", _SHAPE), raws=[_raw_with(np.inf)]),
        grpc.StatusCode.INVALID_ARGUMENT,
        ("NaN or Inf",),
    ),
    (
        "fp32-neg-inf",
        _infer(_tensor("pixels", _SHAPE), raws=[_raw_with(-np.inf)]),
        grpc.StatusCode.INVALID_ARGUMENT,
        ("NaN or Inf",),
    ),
    (
        "unknown-output",
        _infer(
            _tensor("pixels", _SHAPE),
            raws=[_RAW],
            outputs=[oip.ModelInferRequest.InferRequestedOutputTensor(name="features")],
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        ("unknown output",),
    ),
    (
        "image-corrupt",
        _infer(_bytes_input(encode("PNG")[:100])),
        grpc.StatusCode.INVALID_ARGUMENT,
        ("truncated", "corrupt", "not a valid"),
    ),
    ("image-empty", _infer(_bytes_input(b"")), grpc.StatusCode.INVALID_ARGUMENT, ("empty",)),
    (
        "image-raw-length-prefix-lies",
        _infer(_tensor("image", [1], "BYTES"), raws=[b"\xff\xff\x00\x00abc"]),
        grpc.StatusCode.INVALID_ARGUMENT,
        ("claims",),
    ),
    (
        "unknown-model",
        _infer(_tensor("pixels", _SHAPE), raws=[_RAW], model="nope"),
        grpc.StatusCode.NOT_FOUND,
        ("nope",),
    ),
    (
        "unknown-version",
        _infer(_tensor("pixels", _SHAPE), raws=[_RAW], model_version="99"),
        grpc.StatusCode.NOT_FOUND,
        ("version",),
    ),
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("request_", "code", "says"), [pytest.param(*c[1:], id=c[0]) for c in INFER_CASES])
def test_bad_model_infer_is_a_clear_client_error(
    open_stubs: Stubs, request_: Any, code: grpc.StatusCode, says: tuple[str, ...]
) -> None:
    got, details, elapsed = _refused(lambda: open_stubs.oip.ModelInfer(request_, timeout=CALL_TIMEOUT_S))
    assert got == code, (got, details)
    assert elapsed < 20
    assert any(s.lower() in details.lower() for s in says), details


@pytest.mark.timeout(60)
def test_metadata_and_readiness_of_unknown_models_are_not_found(open_stubs: Stubs) -> None:
    for call in (
        lambda: open_stubs.oip.ModelMetadata(oip.ModelMetadataRequest(name="nope"), timeout=CALL_TIMEOUT_S),
        lambda: open_stubs.oip.ModelReady(oip.ModelReadyRequest(name="nope"), timeout=CALL_TIMEOUT_S),
        lambda: open_stubs.oip.ModelReady(oip.ModelReadyRequest(name="vit_small", version="x"), timeout=30),
        lambda: open_stubs.images.Predict(images.PredictRequest(image=encode("PNG"), model="nope"), timeout=30),
    ):
        code, details, _ = _refused(call)
        assert code == grpc.StatusCode.NOT_FOUND and details


def test_grpc_corpus_size() -> None:
    total = len(IMAGES) + len(INFER_CASES) + 4
    print(f"\ngRPC: {len(IMAGES)} image faults (Predict), {len(INFER_CASES)} ModelInfer faults, 4 not-found; {total}")
    assert len(INFER_CASES) >= 25


# -- access control over gRPC ---------------------------------------------------------------------------
def _valid_calls(stubs: Stubs) -> dict[str, Callable[[list[tuple[str, str]]], Any]]:
    """Every RPC of both services, each with a request that succeeds when authorised."""
    pixels = _infer(_tensor("pixels", _SHAPE), raws=[_RAW])
    image = images.PredictRequest(image=encode("JPEG"), model="vit_small")
    return {
        "ServerLive": lambda md: stubs.oip.ServerLive(oip.ServerLiveRequest(), metadata=md, timeout=30),
        "ServerReady": lambda md: stubs.oip.ServerReady(oip.ServerReadyRequest(), metadata=md, timeout=30),
        "ModelReady": lambda md: stubs.oip.ModelReady(oip.ModelReadyRequest(name="vit_small"), metadata=md, timeout=30),
        "ServerMetadata": lambda md: stubs.oip.ServerMetadata(oip.ServerMetadataRequest(), metadata=md, timeout=30),
        "ModelMetadata": lambda md: stubs.oip.ModelMetadata(
            oip.ModelMetadataRequest(name="vit_small"), metadata=md, timeout=30
        ),
        "ModelInfer": lambda md: stubs.oip.ModelInfer(pixels, metadata=md, timeout=60),
        "ModelStreamInfer": lambda md: list(stubs.oip.ModelStreamInfer(iter([pixels]), metadata=md, timeout=60)),
        "ModelConfig": lambda md: stubs.oip.ModelConfig(
            oip.ModelConfigRequest(name="vit_small"), metadata=md, timeout=30
        ),
        "ModelStatistics": lambda md: stubs.oip.ModelStatistics(
            oip.ModelStatisticsRequest(name="vit_small"), metadata=md, timeout=30
        ),
        "RepositoryIndex": lambda md: stubs.oip.RepositoryIndex(oip.RepositoryIndexRequest(), metadata=md, timeout=30),
        "RepositoryModelLoad": lambda md: stubs.oip.RepositoryModelLoad(
            oip.RepositoryModelLoadRequest(model_name="vit_small"), metadata=md, timeout=30
        ),
        "RepositoryModelUnload": lambda md: stubs.oip.RepositoryModelUnload(
            oip.RepositoryModelUnloadRequest(model_name="vit_small"), metadata=md, timeout=30
        ),
        "Predict": lambda md: stubs.images.Predict(image, metadata=md, timeout=60),
    }


#: refused by the server's configuration (model control is off here) once the token is accepted
CONTROL = {"RepositoryModelLoad", "RepositoryModelUnload"}


PUBLIC = {"ServerLive", "ServerReady"}


def test_every_rpc_but_health_needs_a_token(auth_stubs: Stubs) -> None:
    calls = _valid_calls(auth_stubs)
    assert set(calls) == {*_OIP_METHODS, *_OIP_STREAM_METHODS, *_IMAGES_METHODS}, (
        "a new RPC needs an access-control test"
    )
    for name, call in calls.items():
        if name in PUBLIC:
            assert call([]) is not None
            continue
        code, details, _ = _refused(lambda call=call: call([]))
        assert code == grpc.StatusCode.UNAUTHENTICATED, (name, code, details)
        assert "bearer token" in details.lower()
        code, details, _ = _refused(lambda call=call: call([("authorization", "Bearer wrong-token")]))
        assert code == grpc.StatusCode.PERMISSION_DENIED, (name, code, details)
        code, _, _ = _refused(lambda call=call: call([("authorization", GRPC_TOKEN)]))  # no "Bearer "
        assert code == grpc.StatusCode.UNAUTHENTICATED, name
        if name in CONTROL:
            code, details, _ = _refused(lambda call=call: call([("authorization", f"Bearer {GRPC_TOKEN}")]))
            assert code == grpc.StatusCode.PERMISSION_DENIED and "model control" in details.lower(), (name, details)
            continue
        assert call([("authorization", f"Bearer {GRPC_TOKEN}")]) is not None, name


def test_grpc_without_tokens_is_open(open_stubs: Stubs) -> None:
    for name, call in _valid_calls(open_stubs).items():
        if name in CONTROL:
            code, details, _ = _refused(lambda call=call: call([]))
            assert code == grpc.StatusCode.PERMISSION_DENIED and "model control" in details.lower(), name
            continue
        assert call([]) is not None, name


def test_grpc_token_rotation_by_rewriting_the_file(auth_stubs: Stubs, grpc_servers: GrpcServers) -> None:
    call = _valid_calls(auth_stubs)["ModelMetadata"]
    path: Path = grpc_servers.token_file
    original = path.read_text()
    rotated = "rotated-token-for-grpc-0123456789"
    try:
        assert call([("authorization", f"Bearer {GRPC_TOKEN}")]).name == "vit_small"
        path.write_text(f"# rotated\n{rotated}\n")
        code, _, _ = _refused(lambda: call([("authorization", f"Bearer {GRPC_TOKEN}")]))
        assert code == grpc.StatusCode.PERMISSION_DENIED
        assert call([("authorization", f"Bearer {rotated}")]).name == "vit_small"
    finally:
        path.write_text(original)
    assert call([("authorization", f"Bearer {GRPC_TOKEN}")]).name == "vit_small"
