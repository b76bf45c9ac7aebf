"""Fuzzing: schemathesis over the app's own OpenAPI document (every operation, positive and
negative examples), and hypothesis properties of the image decoder and the OIP request parser.

Bounded for CI: ``FUZZ_EXAMPLES`` per operation and per property; raise it locally with
``TESSERA_FUZZ_EXAMPLES=2000`` for a longer run.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
from typing import Any

import numpy as np
import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode

from service.api.oip import DATATYPES, InferResponse, OpenInference
from service.api.oip_rest import parse_infer_body
from service.api.rest import create_app
from service.api.serving import ServingCore
from service.errors import InvalidInput, NotFound, PayloadTooLarge, TesseraError
from service.imaging import decode_image
from service.slides import JobManager
from tests.unit.hardening.conftest import make_app
from tests.unit.hardening.corpus import encode, noise
from tests.unit.hardening.support import LIMITS

FUZZ_EXAMPLES = int(os.environ.get("TESSERA_FUZZ_EXAMPLES", "25"))
PROPERTY_EXAMPLES = int(os.environ.get("TESSERA_FUZZ_EXAMPLES", "300"))
_SETTINGS = {"deadline": None, "suppress_health_check": list(HealthCheck), "derandomize": True}


# -- schemathesis: every operation of /openapi.json ------------------------------------------------------
@pytest.fixture(scope="module")
def fuzz_app(core: ServingCore, manager: JobManager) -> FastAPI:
    return make_app(core, manager)


@pytest.fixture(scope="module")
def api_schema(fuzz_app: FastAPI) -> Any:
    return schemathesis.openapi.from_asgi("/openapi.json", fuzz_app)


def _operation_labels() -> list[str]:
    """Every operation in the OpenAPI document (it does not depend on the core, so no fixture)."""
    document = schemathesis.openapi.from_asgi("/openapi.json", create_app())
    return sorted(result.ok().label for result in document.get_all_operations())


OPERATIONS = _operation_labels()


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("label", OPERATIONS)
def test_no_operation_answers_a_server_error(api_schema: Any, label: str) -> None:
    """Examples that fit the schema and examples that break it (where the schema can be broken)."""
    operation = api_schema.find_operation_by_label(label)
    assert operation is not None, label
    cases = st.one_of(*(operation.as_strategy(generation_mode=mode) for mode in GenerationMode))

    @settings(max_examples=FUZZ_EXAMPLES, **_SETTINGS)
    @given(case=cases)
    def fuzz(case: Any) -> None:
        response = case.call()
        case.validate_response(response, checks=[not_a_server_error])
        if 400 <= response.status_code < 500:
            assert "error" in response.json(), f"{case.method} {case.formatted_path}: {response.text[:200]}"

    fuzz()


def test_every_operation_is_fuzzed() -> None:
    print(f"\nschemathesis: {len(OPERATIONS)} operations x {FUZZ_EXAMPLES} examples (positive and negative)")
    assert len(OPERATIONS) >= 15 and "POST /v1/predict" in OPERATIONS and "POST /v2/models/{model}/infer" in OPERATIONS


# -- decode_image: arbitrary bytes and damaged real images ------------------------------------------------
_SEEDS = [encode(fmt, noise(24, 16, seed=i)) for i, fmt in enumerate(("JPEG", "PNG", "TIFF", "WEBP"))]
_SEEDS += [encode("TIFF", noise(24, 16), compression="tiff_lzw"), encode("PNG", noise(24, 16)[:, :, 0])]
_CONTENT_TYPES = st.one_of(
    st.none(),
    st.sampled_from(["image/jpeg", "image/png", "image/tiff", "image/webp", "application/octet-stream", "image/*"]),
    st.text(max_size=40),
)


def _decode_property(data: bytes, content_type: str | None) -> None:
    try:
        decoded = decode_image(data, content_type, LIMITS)
    except TesseraError as exc:
        assert 400 <= exc.http_status < 500, exc
        assert isinstance(exc, InvalidInput | PayloadTooLarge) or exc.code == "unsupported_media_type", exc
        assert exc.message
        return
    assert decoded.pixels.dtype == np.uint8 and decoded.pixels.ndim == 3 and decoded.pixels.shape[2] == 3
    assert decoded.width * decoded.height <= LIMITS.max_pixels


@settings(max_examples=PROPERTY_EXAMPLES, **_SETTINGS)
@given(data=st.binary(max_size=2048), content_type=_CONTENT_TYPES)
def test_decode_arbitrary_bytes_raises_only_client_errors(data: bytes, content_type: str | None) -> None:
    _decode_property(data, content_type)


@st.composite
def damaged_images(draw: st.DrawFn) -> bytes:
    """A real image, truncated and/or with bytes overwritten, inserted or deleted."""
    data = bytearray(draw(st.sampled_from(_SEEDS)))
    for _ in range(draw(st.integers(0, 8))):
        position = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["set", "insert", "delete"]))
        if action == "set":
            data[position] = draw(st.integers(0, 255))
        elif action == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=16))
        elif len(data) > 1:
            del data[position]
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


@settings(max_examples=PROPERTY_EXAMPLES, **_SETTINGS)
@given(data=damaged_images(), content_type=_CONTENT_TYPES)
def test_decode_damaged_images_raises_only_client_errors(data: bytes, content_type: str | None) -> None:
    _decode_property(data, content_type)


# -- the OIP request parser and validator ------------------------------------------------------------------
class _FakeClient:
    """A backbone that answers instantly: the property is about parsing and validation."""

    async def infer(self, model: str, pixels: np.ndarray) -> dict[str, Any]:
        assert pixels.dtype == np.float32 and pixels.shape[0] == 3 and np.isfinite(pixels).all()
        return {
            "outputs": {"embedding": np.zeros(384, np.float32), "logits": np.zeros(1000, np.float32)},
            "inference_ms": 0.1,
            "memory": {"device": "cpu", "peak_bytes": 1, "allocated_bytes": 1},
            "backend": "fake",
            "batch_size": 1,
        }

    async def infer_batch(self, model: str, pixels: np.ndarray) -> list[dict[str, Any]]:
        return [await self.infer(model, p) for p in pixels]


@pytest.fixture(scope="module")
def oip_server(core: ServingCore) -> OpenInference:
    fake = ServingCore(core.repo, core.router, _FakeClient(), limits=LIMITS)
    return OpenInference(fake, max_images=8)


_JSON_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True), st.text(max_size=8)
)
_JSON = st.recursive(
    _JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)
_NUMBERS = st.one_of(st.integers(-300, 300), st.floats(allow_nan=True, allow_infinity=True, width=32))
_PNG_B64 = base64.b64encode(encode("PNG", noise(20, 20))).decode()


_PIXEL_SHAPES = st.sampled_from(
    [
        [1, 3, 224, 224],
        [2, 3, 224, 224],
        [1, 3, 384, 384],
        [1, 3, 100, 100],
        [1, 3, 224],
        [1, 1, 224, 224],
        [0, 3, 224, 224],
        [9, 3, 224, 224],
    ]
)


@st.composite
def tensor_data(draw: st.DrawFn, shape: Any) -> Any:
    """Data that often has the right element count for ``shape``, sometimes not, sometimes not numbers."""
    dims = [d for d in shape if isinstance(d, int) and not isinstance(d, bool)] if isinstance(shape, list) else []
    count = int(np.prod(dims)) if dims and all(0 <= d <= 64 for d in dims) and len(dims) == len(shape) else 3
    kind = draw(st.sampled_from(["numbers", "fill", "json"]))
    if kind == "numbers":
        return draw(st.lists(_NUMBERS, min_size=max(0, count - 1), max_size=count + 1))
    if kind == "fill":
        return [draw(_NUMBERS)] * count
    return draw(_JSON)


@st.composite
def pixel_tensors(draw: st.DrawFn) -> dict[str, Any]:
    """``pixels`` with an allowed-looking shape and (usually) the right element count, in JSON."""
    shape = draw(_PIXEL_SHAPES)
    count = int(np.prod(shape))
    if draw(st.integers(0, 3)) == 0:
        count += draw(st.sampled_from([-1, 1]))
    value = draw(st.one_of(st.integers(-2, 300), st.floats(allow_nan=True, allow_infinity=True, width=16)))
    return {
        "name": "pixels",
        "datatype": draw(st.sampled_from(["FP32", "FP16", "UINT8", "INT8", "FP64"])),
        "shape": shape,
        "data": [value] * max(0, count),
    }


@st.composite
def image_tensors(draw: st.DrawFn) -> dict[str, Any]:
    """``image`` with a BYTES shape of 0 to 3 elements, encoded images good and bad, in JSON."""
    items = draw(
        st.lists(st.sampled_from([_PNG_B64, "%%%", "", base64.b64encode(b"\xff\xd8\xff").decode()]), max_size=3)
    )
    n = len(items) + draw(st.sampled_from([0, 0, 0, 1, -1]))
    shape = draw(st.sampled_from([[n], [n, 1], [n, 2], [1, n]]))
    return {
        "name": "image",
        "datatype": draw(st.sampled_from(["BYTES", "BYTES", "UINT8"])),
        "shape": shape,
        "data": draw(st.sampled_from([items, [items], *items[:1]])),
    }


@st.composite
def wild_tensors(draw: st.DrawFn) -> dict[str, Any]:
    """Any names, datatypes and shapes, data or not, arbitrary parameters."""
    small = st.sampled_from([-1, 0, 1, 2, 3, 4, 224, 2**40])
    shape = draw(
        st.one_of(st.lists(small, max_size=5), st.lists(st.sampled_from([1, 2]), min_size=1, max_size=2), _JSON)
    )
    tensor: dict[str, Any] = {
        "name": draw(st.sampled_from(["pixels", "image"]) | st.text(max_size=6)),
        "datatype": draw(st.sampled_from([*DATATYPES, "BYTES"]) | st.text(max_size=6)),
        "shape": shape,
    }
    if draw(st.booleans()):
        tensor["data"] = draw(tensor_data(shape))
    if draw(st.integers(0, 4)) == 0:
        tensor["parameters"] = draw(st.dictionaries(st.sampled_from(["binary_data_size", "x"]), _JSON, max_size=2))
    return tensor


@st.composite
def infer_requests(draw: st.DrawFn, tensors: st.SearchStrategy[dict[str, Any]] | None = None) -> dict[str, Any]:
    """JSON-ish OIP requests: near-valid ones (to reach deep validation) mixed with arbitrary JSON."""
    choices = st.one_of(image_tensors(), image_tensors(), pixel_tensors(), wild_tensors())
    tensor = draw(tensors if tensors is not None else choices)
    inputs = draw(st.sampled_from(["one"] * 6 + ["two", "json"]))
    body: dict[str, Any] = {
        "inputs": [tensor] if inputs == "one" else [tensor, tensor] if inputs == "two" else draw(_JSON)
    }
    if draw(st.integers(0, 2)) == 0:
        outputs = st.lists(
            st.fixed_dictionaries(
                {"name": st.sampled_from(["embedding", "embedding", "logits", "x"])},
                optional={"parameters": st.dictionaries(st.just("binary_data"), st.booleans() | _JSON, max_size=1)},
            ),
            max_size=3,
        )
        body["outputs"] = draw(outputs | _JSON)
    if draw(st.integers(0, 9)) == 0:
        body.update(draw(st.dictionaries(st.sampled_from(["id", "parameters", "extra"]), _JSON, max_size=2)))
    return body


@st.composite
def binary_requests(draw: st.DrawFn) -> tuple[dict[str, Any], bytes]:
    """``pixels`` sent with the binary tensor extension: sizes right or off, values finite or not."""
    shape = draw(_PIXEL_SHAPES)
    datatype = draw(st.sampled_from(["FP32", "FP16", "UINT8", "INT32"]))
    dtype = DATATYPES[datatype]
    array = np.full(int(np.prod(shape)), draw(st.sampled_from([0.0, 1.0, np.nan, np.inf, -np.inf, 255.0])))
    with np.errstate(invalid="ignore", over="ignore"):
        raw = array.astype(dtype).tobytes()
    raw = raw[: len(raw) + draw(st.sampled_from([0, 0, 0, -1, -dtype.itemsize]))]
    raw += bytes(draw(st.sampled_from([0, 0, 0, 1, 4])))
    size = len(raw) + draw(st.sampled_from([0, 0, 0, 1, -1]))
    tensor = {"name": "pixels", "datatype": datatype, "shape": shape, "parameters": {"binary_data_size": size}}
    return draw(infer_requests(st.just(tensor))), raw


def _infer_property(oip_server: OpenInference, body: bytes, header_length: str | None) -> None:
    try:
        parsed, _ = parse_infer_body(body, header_length)
        result = asyncio.run(oip_server.infer("vit_small", None, parsed))
    except (InvalidInput, NotFound, PayloadTooLarge) as exc:
        assert 400 <= exc.http_status < 500 and exc.message
        return
    assert isinstance(result, InferResponse) and result.outputs
    images = parsed.inputs[0].shape[0]  # one row per image sent
    for out in result.outputs:
        assert out.data.shape == (images, 384 if out.name == "embedding" else 1000) and np.isfinite(out.data).all()


@settings(max_examples=PROPERTY_EXAMPLES, **_SETTINGS)
@given(request=infer_requests())
def test_oip_requests_parse_or_raise_client_errors(oip_server: OpenInference, request: dict[str, Any]) -> None:
    _infer_property(oip_server, json.dumps(request, allow_nan=True).encode(), None)


@settings(max_examples=PROPERTY_EXAMPLES, **_SETTINGS)
@given(request=binary_requests(), split=st.one_of(st.none(), st.none(), st.integers(-2, 4096)))
def test_oip_binary_bodies_parse_or_raise_client_errors(
    oip_server: OpenInference, request: tuple[dict[str, Any], bytes], split: int | None
) -> None:
    header = json.dumps(request[0], allow_nan=True).encode()
    length = str(len(header) if split is None else split)
    _infer_property(oip_server, header + request[1], length)


@settings(max_examples=PROPERTY_EXAMPLES, **_SETTINGS)
@given(body=st.binary(max_size=512), header=st.one_of(st.none(), st.text(max_size=6)))
def test_oip_arbitrary_bodies_raise_client_errors(oip_server: OpenInference, body: bytes, header: str | None) -> None:
    assume(header is None or "\x00" not in header)
    _infer_property(oip_server, body, header)
