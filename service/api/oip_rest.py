"""Open Inference Protocol (KServe v2) REST routes: model metadata, readiness and inference.

Thin adapters over ``service.api.oip``. Inference takes the JSON body of the protocol and
the binary tensor extension: with an ``Inference-Header-Content-Length: N`` header, the first
N bytes of the body are the JSON header and the rest holds the inputs whose ``parameters``
carry ``binary_data_size``, in input order. Outputs requested with ``"binary_data": true`` (or
every output, with the request parameter ``"binary_data_output": true``) come back the same
way: the answer is the JSON header followed by the raw bytes, and ``Inference-Header-Content-Length``
says where the header ends.

Mounted by ``create_app()`` with ``app.include_router(router)``; the core is ``app.state.core``.
Errors are raised as typed errors; the app's handlers turn them into ``{"error": "..."}``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from service.api.deadlines import TIMEOUT_HEADER, parse_timeout
from service.api.oip import (
    InferRequest,
    InferResponse,
    InputTensor,
    ModelMetadata,
    ModelReady,
    OpenInference,
    RequestedOutput,
)
from service.api.rest_common import parse_json_body, read_body_limited
from service.api.serving import ServingCore
from service.errors import InvalidInput, UnsupportedMediaType

__all__ = ["HEADER_LENGTH", "TIMEOUT_HEADER", "InferRequestBody", "InferResponseBody", "router"]

#: The binary tensor extension's header: the length of the JSON part of the body.
HEADER_LENGTH = "Inference-Header-Content-Length"

router = APIRouter(tags=["oip"])


# -- JSON bodies -------------------------------------------------------------------------------------
class RequestInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="pixels or image.")
    shape: list[int] = Field(description="Tensor shape, e.g. [1, 3, 224, 224].")
    datatype: str = Field(description="FP32, FP16 or UINT8 for pixels; BYTES for image.")
    parameters: dict[str, Any] = Field(
        default_factory=dict, description="binary_data_size: the tensor's bytes in the binary part of the body."
    )
    data: Any = Field(
        default=None,
        description="Row-major elements, flat or nested; BYTES elements as base64 strings. "
        "Omitted when the tensor is sent as binary data.",
    )


class RequestOutput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="embedding or logits.")
    parameters: dict[str, Any] = Field(default_factory=dict, description="binary_data: return this output as bytes.")


class InferRequestBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(default=None, description="Echoed in the response.")
    parameters: dict[str, Any] = Field(
        default_factory=dict, description="binary_data_output: return every output as bytes."
    )
    inputs: list[RequestInput] = Field(description="Exactly one input: pixels or image.")
    outputs: list[RequestOutput] | None = Field(default=None, description="Outputs to return; all when omitted.")


class ResponseOutput(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    parameters: dict[str, Any] | None = Field(default=None, description="binary_data_size when sent as bytes.")
    data: list[float] | None = None


class InferResponseBody(BaseModel):
    """The JSON answer (or the JSON header of a binary answer)."""

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "model_name": "vit_small",
                "model_version": "1",
                "id": "req-1",
                "parameters": {
                    "timing_ms": {"decode": 0.0, "preprocess": 0.4, "queue": 1.2, "inference": 28.1, "total": 30.2},
                    "memory": {"device": "cpu", "peak_bytes": 612000000, "allocated_bytes": 598000000},
                    "backend": "onnxruntime",
                    "precision": "fp32",
                    "weights": "untrained",
                    "batch_size": 1,
                },
                "outputs": [{"name": "embedding", "datatype": "FP32", "shape": [1, 384], "data": [0.12, -0.4]}],
            }
        }
    )

    model_name: str
    model_version: str
    id: str | None = None
    parameters: dict[str, Any] = Field(
        default_factory=dict,
        description="timing_ms (decode, preprocess, queue, inference, total), memory (device, peak_bytes, "
        "allocated_bytes), backend, precision, weights, batch_size.",
    )
    outputs: list[ResponseOutput]


def _inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """A JSON schema with its ``$defs`` inlined, to embed in an OpenAPI request body."""
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return resolve(defs[ref.rsplit("/", 1)[-1]])
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    resolved: dict[str, Any] = resolve(schema)
    return resolved


_INFER_EXAMPLE = {
    "id": "req-1",
    "inputs": [{"name": "pixels", "shape": [1, 3, 224, 224], "datatype": "FP32", "data": [0.0, 0.1, "..."]}],
    "outputs": [{"name": "embedding"}],
}
_INFER_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": _inline_refs(InferRequestBody.model_json_schema()),
                "examples": {
                    "pixels": {"summary": "FP32 pixels as JSON", "value": _INFER_EXAMPLE},
                    "image": {
                        "summary": "An encoded image (base64 in JSON)",
                        "value": {
                            "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["/9j/4AAQ..."]}]
                        },
                    },
                },
            },
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
                "description": f"Binary tensor extension: the JSON header (its length in {HEADER_LENGTH}) "
                "followed by the raw tensors.",
            },
        },
    },
    "parameters": [
        {
            "name": HEADER_LENGTH,
            "in": "header",
            "required": False,
            "schema": {"type": "integer", "minimum": 0},
            "description": "Binary tensor extension: length of the JSON header at the start of the body.",
        },
        {
            "name": TIMEOUT_HEADER,
            "in": "header",
            "required": False,
            "schema": {"type": "number", "exclusiveMinimum": 0, "maximum": 3600},
            "description": "Deadline in seconds (the server's default when absent).",
        },
    ],
}
_INFER_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The outputs: JSON, or with binary outputs the JSON header followed by the raw tensors.",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    },
    400: {"description": "Malformed request", "content": {"application/json": {"example": {"error": "..."}}}},
    404: {"description": "Unknown model or version"},
}


# -- routes ------------------------------------------------------------------------------------------
ModelName = Annotated[str, Path(description="Model name, e.g. vit_small.")]
ModelVersion = Annotated[str, Path(description="Model version, e.g. 1.")]


def _oip(request: Request) -> OpenInference:
    core: ServingCore = request.app.state.core
    return OpenInference(core)


@router.get("/v2/models/{model}", response_model=ModelMetadata, summary="Model metadata")
async def model_metadata(request: Request, model: ModelName) -> ModelMetadata:
    """The model's versions, platform, inputs (``pixels`` or ``image``) and outputs; -1 marks a variable size."""
    return _oip(request).model_metadata(model)


@router.get("/v2/models/{model}/versions/{version}", response_model=ModelMetadata, summary="Model metadata (version)")
async def model_version_metadata(request: Request, model: ModelName, version: ModelVersion) -> ModelMetadata:
    """The metadata of one version of the model; 404 when the model does not have it."""
    return _oip(request).model_metadata(model, version)


_READY_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/json": {"example": {"name": "vit_small", "ready": True}}}},
    503: {"description": "Known but not ready (not built)", "model": ModelReady},
}


@router.get("/v2/models/{model}/ready", response_model=ModelReady, responses=_READY_RESPONSES, summary="Model ready")
async def model_ready(request: Request, model: ModelName) -> JSONResponse:
    """200 when the model can serve, 503 when it is known but not built; 404 for an unknown model."""
    return _ready_response(_oip(request).model_ready(model))


@router.get(
    "/v2/models/{model}/versions/{version}/ready",
    response_model=ModelReady,
    responses=_READY_RESPONSES,
    summary="Model ready (version)",
)
async def model_version_ready(request: Request, model: ModelName, version: ModelVersion) -> JSONResponse:
    """Readiness of one version of the model."""
    return _ready_response(_oip(request).model_ready(model, version))


@router.post(
    "/v2/models/{model}/infer",
    response_model=InferResponseBody,
    responses=_INFER_RESPONSES,
    openapi_extra=_INFER_OPENAPI,
    summary="Inference (JSON or binary tensors)",
)
async def infer(request: Request, model: ModelName) -> Response:
    """Embed N images sent as ``pixels`` [N,3,H,W] (FP32, FP16, UINT8) or as encoded ``image`` bytes [N]."""
    return await answer_infer(request, model, None)


@router.post(
    "/v2/models/{model}/versions/{version}/infer",
    response_model=InferResponseBody,
    responses=_INFER_RESPONSES,
    openapi_extra=_INFER_OPENAPI,
    summary="Inference on a version (JSON or binary tensors)",
)
async def infer_version(request: Request, model: ModelName, version: ModelVersion) -> Response:
    """As ``/v2/models/{model}/infer``, on one version of the model (404 when it does not have it)."""
    return await answer_infer(request, model, version)


def _ready_response(ready: ModelReady) -> JSONResponse:
    return JSONResponse(ready.model_dump(), status_code=200 if ready.ready else 503)


#: The two inference paths, as ``InferFastPath`` (``service.api.rest``) matches them.
INFER_PATH = re.compile(r"/v2/models/(?P<model>[^/]+)(?:/versions/(?P<version>[^/]+))?/infer")


async def answer_infer(request: Request, model: str, version: str | None) -> Response:
    """One OIP inference over REST: the body read within the limit, parsed, run and rendered."""
    oip = _oip(request)
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise UnsupportedMediaType(
            f"Content-Encoding {encoding!r} is not supported; send the body uncompressed", param="content-encoding"
        )
    timeout = _timeout(request)
    body = await read_body_limited(request, oip.core.limits.max_bytes)
    parsed, binary_output = parse_infer_body(body, request.headers.get(HEADER_LENGTH))
    result = await oip.infer(model, version, parsed, timeout_s=timeout)
    request.state.model = result.model_name  # the metrics label: known models only
    return render_infer_response(result, binary_output)


def _timeout(request: Request) -> float | None:
    return parse_timeout(request.headers.get(TIMEOUT_HEADER))


# -- wire format ---------------------------------------------------------------------------------------
def parse_infer_body(body: bytes, header_length: str | None) -> tuple[InferRequest, bool]:
    """The request in a body (JSON, or JSON header plus binary tensors), and whether all outputs go binary."""
    if header_length is not None:
        try:
            split = int(header_length)
        except ValueError:
            raise InvalidInput(f"{HEADER_LENGTH} is not an integer", param=HEADER_LENGTH) from None
        if not 0 < split <= len(body):
            raise InvalidInput(f"{HEADER_LENGTH} is {split} but the body has {len(body)} bytes", param=HEADER_LENGTH)
        header, binary = body[:split], memoryview(body)[split:]
    else:
        header, binary = body, memoryview(b"")
    hint = f" (binary tensors need the {HEADER_LENGTH} header)" if header_length is None else ""
    payload = parse_json_body(header, hint=hint)
    try:
        parsed = InferRequestBody.model_validate(payload)
    except ValidationError as exc:
        raise InvalidInput.from_validation(exc.errors(), "inference request") from None

    inputs: list[InputTensor] = []
    offset = 0
    for tensor in parsed.inputs:
        size = tensor.parameters.get("binary_data_size")
        raw: memoryview | None = None
        if size is not None:
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise InvalidInput(
                    f"input {tensor.name!r}: binary_data_size must be a non-negative integer", param=tensor.name
                )
            if tensor.data is not None:
                raise InvalidInput(
                    f"input {tensor.name!r} has both binary_data_size and data; send one", param=tensor.name
                )
            if offset + size > len(binary):
                raise InvalidInput(
                    f"input {tensor.name!r}: binary_data_size is {size} but only {len(binary) - offset} bytes of "
                    "binary data remain in the body",
                    param=tensor.name,
                )
            raw = binary[offset : offset + size]  # a view: the tensor is not copied out of the body
            offset += size
        elif tensor.data is None:
            raise InvalidInput(f"input {tensor.name!r} has no data and no binary_data_size", param=tensor.name)
        inputs.append(
            InputTensor(
                name=tensor.name,
                datatype=tensor.datatype,
                shape=tuple(tensor.shape),
                raw=raw,
                values=tensor.data if raw is None else None,
                parameters=tensor.parameters,
            )
        )
    if offset != len(binary):
        raise InvalidInput(
            f"the body has {len(binary)} bytes of binary data but the inputs' binary_data_size add up to {offset}",
            param="body",
        )

    binary_output = _flag(parsed.parameters, "binary_data_output", default=False)
    outputs = None
    if parsed.outputs is not None:
        outputs = []
        for out in parsed.outputs:
            _flag(out.parameters, "binary_data", default=False)  # type-checked here, read when answering
            outputs.append(RequestedOutput(out.name, out.parameters))
    request = InferRequest(inputs=inputs, outputs=outputs, id=parsed.id or "", parameters=parsed.parameters)
    return request, binary_output


def render_infer_response(result: InferResponse, binary_output: bool) -> Response:
    """JSON, or (when any output goes binary) the JSON header followed by the raw outputs."""
    entries: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for out in result.outputs:
        entry: dict[str, Any] = {"name": out.name, "datatype": out.datatype, "shape": list(out.shape)}
        if _flag(out.parameters, "binary_data", default=binary_output):
            raw = out.raw()
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = out.values()
        entries.append(entry)
    header: dict[str, Any] = {"model_name": result.model_name, "model_version": result.model_version}
    if result.id:
        header["id"] = result.id
    header["parameters"] = result.parameters
    header["outputs"] = entries
    text = json.dumps(header, separators=(",", ":")).encode()
    if not chunks:
        return Response(text, media_type="application/json")
    return Response(
        b"".join([text, *chunks]),
        media_type="application/octet-stream",
        headers={HEADER_LENGTH: str(len(text))},
    )


def _flag(parameters: Mapping[str, Any], key: str, *, default: bool) -> bool:
    value = parameters.get(key, default)
    if not isinstance(value, bool):
        raise InvalidInput(f"parameter {key!r} must be true or false", param=key)
    return value
