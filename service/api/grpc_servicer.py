"""gRPC servicers: ``inference.GRPCInferenceService`` (OIP) and ``tessera.v1.Images``, over the core.

``GrpcIngressMixin`` holds one async method per RPC, named like the RPC, taking
``(request, grpc_context=None)``: the shape Ray Serve's gRPC proxy calls on the ingress
deployment (``service.serve.ingress.Ingress`` inherits it; the proxy registers the servicers
named in ``SERVICER_FUNCTIONS``). Errors become the gRPC status through the one mapping
(``service.api.errors.grpc_code``): the method sets the code and details on the context and
returns an empty message of the right type, as Ray Serve expects.

``grpc_server`` runs the same methods on a plain gRPC server (``service.api.grpc_loop_server``:
grpcio's threaded server, each call handed to the core's event loop): the ingress replica's own
(``front_end: replica``), and ``serve_grpc_inprocess``'s, for tests and for running without Ray.

Deadline: a plain grpc server exposes the call's deadline (``time_remaining``) and it is
honoured. Ray Serve 2.60's proxy does not pass the deadline to the replica (its
``RayServegRPCContext`` carries metadata, not the deadline; the proxy enforces its own
``gRPCOptions.request_timeout_s``), so there a client sets metadata ``x-request-timeout``
(seconds); without either, the server's default applies.

The generated ``*_pb2`` modules are imported lazily, when an RPC runs or a server is built,
never at import time: ``grpc_predict_v2_pb2`` registers the ``inference.*`` messages in
protobuf's default pool, and so does ``tritonclient.grpc``, so a process that imports both
fails ("duplicate symbol 'inference.ServerLiveRequest'"). Importing this module (as the Ray
driver does through the ingress) must not commit the process to one of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from service.api.auth import AUTHORIZATION, TokenAuth
from service.api.deadlines import TIMEOUT_HEADER, parse_timeout
from service.api.errors import as_tessera_error, grpc_code
from service.api.model_repository import TritonModelConfig
from service.api.oip import InferRequest, InferResponse, InputTensor, OpenInference, RequestedOutput
from service.api.protocol import PredictOptions, PredictResponse
from service.api.serving import ServingCore
from service.api.statistics import StatisticsResponse
from service.errors import DeadlineExceeded, InvalidInput

if TYPE_CHECKING:
    from service.api.grpc_loop_server import LoopServer

__all__ = [
    "SERVICER_FUNCTIONS",
    "TIMEOUT_METADATA",
    "GrpcIngressMixin",
    "grpc_server",
    "message_limit",
    "serve_grpc_inprocess",
]

#: ``add_*Servicer_to_server`` functions for Ray Serve's ``gRPCOptions.grpc_servicer_functions``.
SERVICER_FUNCTIONS = [
    "service.api.protos.grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server",
    "service.api.protos.tessera_images_pb2_grpc.add_ImagesServicer_to_server",
]
#: Metadata key carrying a deadline in seconds where the transport does not expose the call's own.
TIMEOUT_METADATA = TIMEOUT_HEADER
REQUEST_ID_METADATA = "x-request-id"

_OIP_PB2 = "service.api.protos.grpc_predict_v2_pb2"
_OIP_GRPC = "service.api.protos.grpc_predict_v2_pb2_grpc"
_MODEL_CONFIG_PB2 = "service.api.protos.model_config_pb2"
_IMAGES_PB2 = "service.api.protos.tessera_images_pb2"
_IMAGES_GRPC = "service.api.protos.tessera_images_pb2_grpc"
_OIP_METHODS = (
    "ServerLive",
    "ServerReady",
    "ModelReady",
    "ServerMetadata",
    "ModelMetadata",
    "ModelInfer",
    "ModelConfig",
    "ModelStatistics",
    "RepositoryIndex",
    "RepositoryModelLoad",
    "RepositoryModelUnload",
)
_OIP_STREAM_METHODS = ("ModelStreamInfer",)
#: Requests of one ModelStreamInfer call that may be in progress at once (answers come in completion order).
STREAM_CONCURRENCY = 16
_IMAGES_METHODS = ("Predict",)

#: The typed-contents field of ``InferTensorContents`` for each datatype (FP16 only travels raw).
_CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


@functools.cache
def _module(name: str) -> ModuleType:
    return importlib.import_module(name)


class GrpcIngressMixin:
    """The RPCs of both services as methods over ``self.core``; the host sets ``self.core``."""

    core: ServingCore
    auth: TokenAuth | None = None

    def _auth(self) -> TokenAuth:
        """Bearer tokens for every RPC but the health probes: ``self.auth``, else made from ``self.settings``."""
        if self.auth is None:
            self.auth = TokenAuth.from_settings(getattr(self, "settings", None))
        return self.auth

    # -- inference.GRPCInferenceService -----------------------------------------------------------
    async def ServerLive(self, request: Any, grpc_context: Any = None) -> Any:
        pb = _module(_OIP_PB2)

        async def work() -> Any:
            return pb.ServerLiveResponse(live=True)

        return await _answer(grpc_context, pb.ServerLiveResponse, work)

    async def ServerReady(self, request: Any, grpc_context: Any = None) -> Any:
        pb = _module(_OIP_PB2)

        async def work() -> Any:
            return pb.ServerReadyResponse(ready=OpenInference(self.core).server_ready())

        return await _answer(grpc_context, pb.ServerReadyResponse, work)

    async def ModelReady(self, request: Any, grpc_context: Any = None) -> Any:
        pb = _module(_OIP_PB2)

        async def work() -> Any:
            ready = OpenInference(self.core).model_ready(request.name, request.version or None)
            return pb.ModelReadyResponse(ready=ready.ready)

        return await _answer(grpc_context, pb.ModelReadyResponse, work, auth=self._auth())

    async def ServerMetadata(self, request: Any, grpc_context: Any = None) -> Any:
        pb = _module(_OIP_PB2)

        async def work() -> Any:
            meta = OpenInference(self.core).server_metadata()
            return pb.ServerMetadataResponse(name=meta.name, version=meta.version, extensions=meta.extensions)

        return await _answer(grpc_context, pb.ServerMetadataResponse, work, auth=self._auth())

    async def ModelMetadata(self, request: Any, grpc_context: Any = None) -> Any:
        pb = _module(_OIP_PB2)

        async def work() -> Any:
            meta = OpenInference(self.core).model_metadata(request.name, request.version or None)
            tensor = pb.ModelMetadataResponse.TensorMetadata
            return pb.ModelMetadataResponse(
                name=meta.name,
                versions=meta.versions,
                platform=meta.platform,
                inputs=[tensor(name=t.name, datatype=t.datatype, shape=t.shape) for t in meta.inputs],
                outputs=[tensor(name=t.name, datatype=t.datatype, shape=t.shape) for t in meta.outputs],
            )

        return await _answer(grpc_context, pb.ModelMetadataResponse, work, auth=self._auth())

    async def ModelInfer(self, request: Any, grpc_context: Any = None) -> Any:
        pb = _module(_OIP_PB2)

        async def work() -> Any:
            parsed = infer_request_from_proto(request)
            result = await OpenInference(self.core).infer(
                request.model_name, request.model_version or None, parsed, timeout_s=_deadline_s(grpc_context)
            )
            return infer_response_to_proto(pb, result)

        endpoint = "/inference.GRPCInferenceService/ModelInfer"
        return await _answer(
            grpc_context, pb.ModelInferResponse, work, self.core, endpoint, request.model_name, auth=self._auth()
        )

    async def ModelStreamInfer(self, request_stream: Any, grpc_context: Any = None) -> AsyncIterator[Any]:
        """Bidirectional streaming inference: each request runs as ``ModelInfer`` does (admission,
        deadline, parameters); its answer, or its error as ``error_message``, comes back on the
        stream in completion order (match them by ``id``), and the stream stays open after an error."""
        pb = _module(_OIP_PB2)
        try:
            self._auth().check(_metadata(grpc_context, AUTHORIZATION))
        except Exception as exc:
            err = as_tessera_error(exc)
            if grpc_context is None:
                raise err from exc
            grpc_context.set_code(grpc_code(err))
            grpc_context.set_details(err.message)
            return
        endpoint = "/inference.GRPCInferenceService/ModelStreamInfer"
        results: asyncio.Queue[Any] = asyncio.Queue()
        slots = asyncio.Semaphore(STREAM_CONCURRENCY)

        async def answer(request: Any) -> Any:
            async def work() -> Any:
                parsed = infer_request_from_proto(request, stream=True)
                result = await OpenInference(self.core).infer(
                    request.model_name, request.model_version or None, parsed, timeout_s=_deadline_s(grpc_context)
                )
                return infer_response_to_proto(pb, result)

            try:
                reply = await _answer(None, pb.ModelInferResponse, work, self.core, endpoint, request.model_name)
                return pb.ModelStreamInferResponse(infer_response=reply)
            except Exception as exc:
                err = as_tessera_error(exc)
                echo = pb.ModelInferResponse(
                    model_name=request.model_name, model_version=request.model_version, id=request.id
                )
                message = f"{err.grpc_status}: {err.message}"
                return pb.ModelStreamInferResponse(error_message=message, infer_response=echo)

        async def one(request: Any) -> None:
            try:
                await results.put(await answer(request))
            finally:
                slots.release()

        async def feed() -> None:
            try:
                async with asyncio.TaskGroup() as group:
                    async for request in request_stream:
                        await slots.acquire()
                        group.create_task(one(request))
            finally:
                await results.put(None)  # the stream ended (or failed): let the answers loop finish

        feeder = asyncio.create_task(feed())
        try:
            while (item := await results.get()) is not None:
                yield item
            await feeder
        finally:
            if not feeder.done():
                feeder.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await feeder

    async def ModelConfig(self, request: Any, grpc_context: Any = None) -> Any:
        pb = _module(_OIP_PB2)

        async def work() -> Any:
            config = OpenInference(self.core).model_config(request.name, request.version or None)
            return pb.ModelConfigResponse(config=model_config_to_proto(pb, config))

        return await _answer(grpc_context, pb.ModelConfigResponse, work, auth=self._auth())

    async def ModelStatistics(self, request: Any, grpc_context: Any = None) -> Any:
        pb = _module(_OIP_PB2)

        async def work() -> Any:
            stats = OpenInference(self.core).statistics(request.name or None, request.version or None)
            return statistics_to_proto(pb, stats)

        return await _answer(grpc_context, pb.ModelStatisticsResponse, work, auth=self._auth())

    async def RepositoryIndex(self, request: Any, grpc_context: Any = None) -> Any:
        pb = _module(_OIP_PB2)

        async def work() -> Any:
            entries = OpenInference(self.core).repository_index(ready_only=request.ready)
            index = pb.RepositoryIndexResponse.ModelIndex
            return pb.RepositoryIndexResponse(models=[index(**entry.model_dump()) for entry in entries])

        return await _answer(grpc_context, pb.RepositoryIndexResponse, work, auth=self._auth())

    async def RepositoryModelLoad(self, request: Any, grpc_context: Any = None) -> Any:
        pb = _module(_OIP_PB2)

        async def work() -> Any:
            await OpenInference(self.core).load(request.model_name, _params(request.parameters))
            return pb.RepositoryModelLoadResponse()

        return await _answer(grpc_context, pb.RepositoryModelLoadResponse, work, auth=self._auth())

    async def RepositoryModelUnload(self, request: Any, grpc_context: Any = None) -> Any:
        pb = _module(_OIP_PB2)

        async def work() -> Any:
            await OpenInference(self.core).unload(request.model_name, _params(request.parameters))
            return pb.RepositoryModelUnloadResponse()

        return await _answer(grpc_context, pb.RepositoryModelUnloadResponse, work, auth=self._auth())

    # -- tessera.v1.Images ------------------------------------------------------------------------
    async def Predict(self, request: Any, grpc_context: Any = None) -> Any:
        pb = _module(_IMAGES_PB2)

        async def work() -> Any:
            options = _predict_options(request)
            answer = await self.core.predict(
                bytes(request.image),
                request.content_type or None,
                options,
                request_id=_request_id(grpc_context),
                timeout_s=_deadline_s(grpc_context),
            )
            return predict_reply(pb, answer)

        endpoint = "/tessera.v1.Images/Predict"
        return await _answer(grpc_context, pb.PredictReply, work, self.core, endpoint, request.model, auth=self._auth())


async def _answer(
    context: Any,
    empty: Callable[[], Any],
    work: Callable[[], Awaitable[Any]],
    core: ServingCore | None = None,
    endpoint: str = "",
    model: str = "",
    *,
    auth: TokenAuth | None = None,
) -> Any:
    """Run ``work``; on failure set the mapped status on ``context`` and return ``empty()``.

    Without a context (a direct Python call) the typed error is raised instead. ``model`` labels
    the request metric only when the call succeeded, so unknown names never become labels.
    With ``auth`` (every RPC but ServerLive and ServerReady), the metadata ``authorization:
    Bearer <token>`` is checked first: UNAUTHENTICATED without it, PERMISSION_DENIED when wrong.
    """
    start = time.perf_counter()
    status = 200
    try:
        if auth is not None:
            auth.check(_metadata(context, AUTHORIZATION))
        return await work()
    except Exception as exc:
        err = as_tessera_error(exc)
        status = err.http_status
        if context is None:
            raise err from exc
        context.set_code(grpc_code(err))
        context.set_details(err.message)
        return empty()
    finally:
        if core is not None:
            label = model if status == 200 else ""
            core.telemetry.request(endpoint, label, status, time.perf_counter() - start)


def _metadata(context: Any, key: str) -> str | None:
    reader = getattr(context, "invocation_metadata", None)
    if not callable(reader):
        return None
    for name, value in reader() or ():
        if name.lower() == key:
            return value.decode() if isinstance(value, bytes) else str(value)
    return None


def _deadline_s(context: Any) -> float | None:
    """Seconds left for this call: the gRPC deadline, else metadata ``x-request-timeout``, else None."""
    if context is None:
        return None
    remaining = getattr(context, "time_remaining", None)
    if callable(remaining):
        left = remaining()
        if left is not None:
            if left <= 0:
                raise DeadlineExceeded("the call's deadline passed before it started")
            return float(left)
    return parse_timeout(_metadata(context, TIMEOUT_METADATA), where=f"metadata {TIMEOUT_METADATA}")


def _request_id(context: Any) -> str | None:
    explicit = _metadata(context, REQUEST_ID_METADATA)
    if explicit:
        return explicit
    ray_id = getattr(context, "request_id", None)  # RayServegRPCContext: the proxy's request id
    value = ray_id() if callable(ray_id) else None
    return str(value) if value else None


# -- OIP messages <-> the transport-free dataclasses ------------------------------------------------
def _param_value(parameter: Any) -> Any:
    which = parameter.WhichOneof("parameter_choice")
    return getattr(parameter, which) if which else None


def _params(parameters: Mapping[str, Any]) -> dict[str, Any]:
    return {key: _param_value(value) for key, value in parameters.items()}


def _set_param(target: Any, value: Any) -> None:
    if isinstance(value, bool):
        target.bool_param = value
    elif isinstance(value, int):
        target.int64_param = value
    elif isinstance(value, float):
        target.double_param = value
    elif isinstance(value, str):
        target.string_param = value
    else:  # nested values (timing_ms, memory) travel as JSON strings
        target.string_param = json.dumps(value, separators=(",", ":"))


#: Request parameters that only mean something on a stream (Triton's decoupled-model flag).
_STREAM_PARAMETERS = ("triton_enable_empty_final_response",)


#: ``ModelInferRequest.raw_input_contents``'s field number (``protos/grpc_predict_v2.proto``).
RAW_INPUT_CONTENTS_FIELD = 7
#: Top-level fields ``split_field`` walks before it leaves a message to protobuf whole: a request
#: has a handful plus one per input, and a walk in Python over a message of many tiny fields
#: would cost far more than protobuf's parse.
MAX_SPLIT_FIELDS = 64
#: Protobuf's wire types: varint, 64-bit, length-delimited, 32-bit (groups are not split).
_VARINT, _FIXED64, _LENGTH_DELIMITED, _FIXED32 = 0, 1, 2, 5


class ViewedInferRequest:
    """A ``ModelInferRequest`` whose ``raw_input_contents`` are views of the bytes it was received
    as (``infer_request_deserializer``); every other field is read from ``message``, parsed from
    the rest of those bytes."""

    __slots__ = ("message", "raw_input_contents")

    def __init__(self, message: Any, raw_input_contents: list[memoryview]) -> None:
        self.message = message
        self.raw_input_contents = raw_input_contents

    def __getattr__(self, name: str) -> Any:
        return getattr(self.message, name)


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while shift < 64:
        if pos >= len(data):
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
    raise ValueError("varint longer than 10 bytes")


def _canonical(data: bytes, start: int, pos: int, max_bytes: int) -> bool:
    """Whether the varint in ``data[start:pos]`` is at most ``max_bytes`` long and has no padding
    (a multi-byte varint that ends in a zero byte encodes its value in fewer bytes)."""
    return pos - start <= max_bytes and (pos - start == 1 or data[pos - 1] != 0)


def split_field(data: bytes, number: int, max_fields: int = MAX_SPLIT_FIELDS) -> tuple[bytes, list[memoryview]]:
    """``data`` (a serialized message) without its top-level length-delimited field ``number``, and
    that field's occurrences as views of ``data``, in order.

    Raises ``ValueError`` on anything it does not split, for the caller to hand to protobuf whole:
    malformed bytes, groups, the field with another wire type or with its tag or length encoded in
    more bytes than they need (protobuf takes some such encodings and refuses others; this takes
    none), or more than ``max_fields`` top-level fields (this walk runs in Python; protobuf's is C).
    """
    view = memoryview(data)
    rest: list[memoryview] = []
    found: list[memoryview] = []
    pos, end = 0, len(data)
    while pos < end:
        if len(rest) + len(found) >= max_fields:
            raise ValueError(f"more than {max_fields} top-level fields")
        start = pos
        key, pos = _varint(data, pos)
        wire, field = key & 7, key >> 3
        if field == 0:
            raise ValueError("field number 0")
        if field == number:
            if wire != _LENGTH_DELIMITED or not _canonical(data, start, pos, 5):
                raise ValueError(f"field {number} is not a plainly encoded length-delimited field")
            size_at = pos
            size, pos = _varint(data, pos)
            if not _canonical(data, size_at, pos, 5) or size >= 1 << 31 or pos + size > end:
                raise ValueError(f"field {number} has a length protobuf may not take")
            found.append(view[pos : pos + size])
            pos += size
            continue
        if wire == _LENGTH_DELIMITED:
            size, pos = _varint(data, pos)
            pos += size
        elif wire == _VARINT:
            _, pos = _varint(data, pos)
        elif wire == _FIXED64:
            pos += 8
        elif wire == _FIXED32:
            pos += 4
        else:
            raise ValueError(f"wire type {wire} is not split")
        if pos > end:
            raise ValueError("truncated field")
        rest.append(view[start:pos])
    return b"".join(rest), found


def infer_request_deserializer(pb: ModuleType) -> Callable[[bytes], Any]:
    """A ``ModelInferRequest`` deserializer for a gRPC server that leaves the tensors' bytes where
    gRPC received them: protobuf parses the small rest of the message, and ``raw_input_contents``
    are views of the received bytes (``ViewedInferRequest``), where parsing the whole message
    copies each tensor twice (into protobuf's arena, and out of it when the field is read). Bytes
    it does not split (``split_field``) go to protobuf whole, which parses them or raises as it
    would have; the fields it keeps out of protobuf's parse are only plainly encoded tensors."""
    parse = pb.ModelInferRequest.FromString

    def deserialize(data: bytes) -> Any:
        try:
            rest, raws = split_field(data, RAW_INPUT_CONTENTS_FIELD)
        except ValueError:
            raws = []
        if not raws:  # not split, or typed contents: nothing to keep out of protobuf's parse
            return parse(data)
        return ViewedInferRequest(parse(rest), raws)

    return deserialize


def infer_request_from_proto(message: Any, *, stream: bool = False) -> InferRequest:
    """A ``ModelInferRequest`` as the transport-free request (inputs raw or typed, as sent).

    On a stream, ``triton_enable_empty_final_response`` is accepted and has no effect: every
    request has exactly one response, so no empty final one is ever needed."""
    raws: Sequence[bytes | memoryview] = message.raw_input_contents
    if raws and len(raws) != len(message.inputs):
        raise InvalidInput(
            f"raw_input_contents has {len(raws)} entries for {len(message.inputs)} inputs; send one per input",
            param="raw_input_contents",
        )
    inputs = []
    for index, tensor in enumerate(message.inputs):
        has_contents = tensor.HasField("contents")
        raw: bytes | memoryview | None = None
        values: Any = None
        if raws:
            if has_contents:
                raise InvalidInput(
                    f"input {tensor.name!r} sets contents but the request uses raw_input_contents; use one",
                    param=tensor.name,
                )
            raw = raws[index]
        elif has_contents:
            field = _CONTENTS_FIELD.get(tensor.datatype)
            if field is not None:
                values = list(getattr(tensor.contents, field))
        elif tensor.datatype == "FP16":
            raise InvalidInput(
                f"input {tensor.name!r}: FP16 data must be sent in raw_input_contents", param=tensor.name
            )
        inputs.append(
            InputTensor(
                name=tensor.name,
                datatype=tensor.datatype,
                shape=tuple(int(d) for d in tensor.shape),
                raw=raw,
                values=values,
                parameters=_params(tensor.parameters),
            )
        )
    outputs = [RequestedOutput(out.name, _params(out.parameters)) for out in message.outputs]
    parameters = _params(message.parameters)
    if stream:
        for key in _STREAM_PARAMETERS:
            parameters.pop(key, None)
    return InferRequest(inputs=inputs, outputs=outputs or None, id=message.id, parameters=parameters)


def infer_response_to_proto(pb: ModuleType, result: InferResponse) -> Any:
    """The transport-free response as a ``ModelInferResponse`` with ``raw_output_contents``."""
    message = pb.ModelInferResponse(model_name=result.model_name, model_version=result.model_version, id=result.id)
    for key, value in result.parameters.items():
        _set_param(message.parameters[key], value)
    for out in result.outputs:
        message.outputs.add(name=out.name, datatype=out.datatype, shape=list(out.shape))
        message.raw_output_contents.append(out.raw())
    return message


def model_config_to_proto(pb: ModuleType, config: TritonModelConfig) -> Any:
    """Triton's ``ModelConfig`` message from the transport-free configuration."""
    mc = _module(_MODEL_CONFIG_PB2)
    return mc.ModelConfig(
        name=config.name,
        platform=config.platform,
        backend=config.backend,
        max_batch_size=config.max_batch_size,
        input=[mc.ModelInput(name=t.name, data_type=mc.DataType.Value(t.data_type), dims=t.dims) for t in config.input],
        output=[
            mc.ModelOutput(
                name=t.name,
                data_type=mc.DataType.Value(t.data_type),
                dims=t.dims,
                label_filename=t.label_filename or "",
            )
            for t in config.output
        ],
        dynamic_batching=mc.ModelDynamicBatching(**config.dynamic_batching.model_dump()),
        instance_group=[
            mc.ModelInstanceGroup(name=g.name, kind=mc.ModelInstanceGroup.Kind.Value(g.kind), count=g.count)
            for g in config.instance_group
        ],
        parameters={k: mc.ModelParameter(string_value=v.string_value) for k, v in config.parameters.items()},
    )


def statistics_to_proto(pb: ModuleType, stats: StatisticsResponse) -> Any:
    """Triton's ``ModelStatisticsResponse`` from the transport-free statistics."""
    return pb.ModelStatisticsResponse(model_stats=[one.model_dump() for one in stats.model_stats])


# -- tessera.v1.Images -------------------------------------------------------------------------------
def _predict_options(request: Any) -> PredictOptions:
    try:
        return PredictOptions(
            model=request.model or None,
            output=request.output or "embedding",
            top_k=request.top_k if request.HasField("top_k") else 5,
        )
    except ValidationError as exc:
        raise InvalidInput.from_validation(exc.errors(), "option") from None


def predict_reply(pb: ModuleType, answer: PredictResponse) -> Any:
    """A ``/v1/predict`` answer as a ``tessera.v1.PredictReply``."""
    route = answer.route
    return pb.PredictReply(
        request_id=answer.request_id,
        model=answer.model,
        version=answer.version,
        backend=answer.backend,
        precision=answer.precision,
        weights=answer.weights,
        weights_note=answer.weights_note,
        input=pb.InputInfo(
            format=answer.input.format,
            original=list(answer.input.original),
            content=list(answer.input.content),
            processed=list(answer.input.processed),
            tokens=answer.input.tokens,
            fit=answer.input.fit,
        ),
        route=pb.Route(
            model=route.model,
            reason=route.reason,
            explanation=route.explanation,
            fit=route.fit,
            input_size=list(route.input_size),
            json=route.model_dump_json(),
        ),
        embedding=answer.embedding or [],
        logits=answer.logits or [],
        top_k=[pb.TopK(index=t.index, score=t.score) for t in answer.top_k or []],
        timing_ms=pb.Timing(**answer.timing_ms.model_dump()),
        memory=pb.Memory(**answer.memory.model_dump()),
        batch_size=answer.batch_size,
    )


# -- a plain gRPC server (the replica front end; tests, running without Ray) ---------------------------
class _Ingress(GrpcIngressMixin):
    def __init__(self, core: ServingCore, auth: TokenAuth | None = None):
        self.core = core
        self.auth = auth


def message_limit(max_body_bytes: int) -> int:
    """The largest gRPC message a server takes: the body limit plus 1 MiB of framing (a larger one
    is refused by gRPC itself with RESOURCE_EXHAUSTED, naming both sizes)."""
    return max_body_bytes + (1 << 20)


def grpc_server(
    target: GrpcIngressMixin, port: int, *, host: str, max_message_bytes: int, reuse_port: bool = False
) -> LoopServer:
    """A server with both services calling ``target``'s methods on the event loop that starts it
    (``service.api.grpc_loop_server``), bound to ``host:port`` (raises ``OSError`` when it cannot
    bind) and not yet started: ``await server.start()``.

    ``reuse_port``: other processes that also ask for it may bind the same port, and the kernel
    spreads the connections over them (the ingress replicas of ``front_end: replica``); off, a
    port already bound is refused.
    """
    from service.api.grpc_loop_server import LoopServer

    oip_grpc, images_grpc = _module(_OIP_GRPC), _module(_IMAGES_GRPC)
    server = LoopServer(
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.so_reuseport", int(reuse_port)),
        ]
    )
    deserialize = infer_request_deserializer(_module(_OIP_PB2))
    server.add_servicer(
        oip_grpc.add_GRPCInferenceServiceServicer_to_server,
        oip_grpc.GRPCInferenceServiceServicer,
        target,
        _OIP_METHODS,
        _OIP_STREAM_METHODS,
        deserializers={"ModelInfer": deserialize, "ModelStreamInfer": deserialize},
    )
    server.add_servicer(images_grpc.add_ImagesServicer_to_server, images_grpc.ImagesServicer, target, _IMAGES_METHODS)
    try:
        bound = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError as exc:  # grpc raises where older versions returned 0
        raise OSError(f"could not bind the gRPC server to {host}:{port}: {exc}") from None
    if bound == 0:
        raise OSError(f"could not bind the gRPC server to {host}:{port}")
    return server


async def serve_grpc_inprocess(
    core: ServingCore,
    port: int,
    *,
    host: str = "127.0.0.1",
    max_message_bytes: int | None = None,
    auth: TokenAuth | None = None,
) -> LoopServer:
    """Start a gRPC server with both services over ``core``, listening on ``host:port``.

    ``auth``: the bearer tokens to require (default: ``TESSERA_AUTH_TOKENS``, off when unset).

    The caller owns the server: ``await server.stop(grace)`` ends it. Messages up to the core's
    body limit (plus 1 MiB of framing) are accepted unless ``max_message_bytes`` says otherwise.
    """
    limit = max_message_bytes or message_limit(core.limits.max_bytes)
    server = grpc_server(_Ingress(core, auth), port, host=host, max_message_bytes=limit)
    await server.start()
    return server
