"""The Open Inference Protocol (KServe v2) over the serving core, independent of transport.

REST (``service.api.oip_rest``) and gRPC (``service.api.grpc_servicer``) turn their wire formats into
the dataclasses here (``InputTensor``, ``RequestedOutput``, ``InferRequest``) and back from
``InferResponse``; everything else (what a model's tensors are, validation, running the
backbone, the per-request cost report) lives here, once.

Each model exposes two alternative inputs and two outputs:

``pixels``  FP32 | FP16 | UINT8, ``[N, 3, H, W]``: images already at one of the model's allowed
            sizes (``input.sizes``, else its native size). FP32 and FP16 are the model's
            normalised input; UINT8 is 0-255 RGB, normalised here with the model's mean/std.
``image``   BYTES, ``[N]`` (or ``[N, 1]``): encoded images (JPEG, PNG, TIFF, WebP), decoded with
            the server's limits and fitted to the model's native size without routing. In JSON
            the elements are base64 strings.
``embedding``  FP32 ``[N, D]``;  ``logits``  FP32 ``[N, C]`` (absent when the model has no head).

An output requested with the parameter ``classification: k`` (Triton's classification extension,
``InferRequestedOutput(name, class_count=k)``) comes back as BYTES ``[N, k]`` instead: the top k
entries of each image as ``"value:index"``, or ``"value:index:label"`` when the model's folder has
a ``labels.txt`` (one label per line), highest first; ``value`` is the output's own element.

Parameters (Triton's parameters extension): the request may carry ``timeout`` (microseconds; the
deadline is the smallest of it, the transport's and the server's), inputs ``binary_data_size``
and outputs ``binary_data`` (REST's binary tensor extension) and ``classification``; any other
parameter is refused with 400 / INVALID_ARGUMENT naming it, rather than ignored. Inference goes
through the serving core's admission limit, as ``/v1/predict`` does.

A request carries exactly one of the inputs. One image goes to the backbone's batcher, where it
shares a batch with other requests' images; N images of one shape already are a batch and run as
such (``infer_batch``), in chunks of the model's ``max_batch_size`` run concurrently.
The response's ``parameters`` report what the request cost, as ``/v1/predict`` does:
``timing_ms`` (decode, preprocess, queue, inference, total), ``memory`` (device, peak_bytes,
allocated_bytes), ``backend``, ``precision``, ``weights`` and ``batch_size``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from service import __version__
from service.api.model_repository import TRITON_STATES, RepositoryModel, TritonModelConfig, triton_model_config
from service.api.serving import ServingCore
from service.api.statistics import Measurement, StatisticsResponse
from service.errors import DeadlineExceeded, InvalidInput, NotFound, PayloadTooLarge, TesseraError
from service.imaging import decode_image, prepare
from service.models.config import ModelConfig

__all__ = [
    "DATATYPES",
    "EXTENSIONS",
    "INPUT_PARAMETERS",
    "MAX_IMAGES_PER_REQUEST",
    "OUTPUT_PARAMETERS",
    "PIXEL_DATATYPES",
    "REQUEST_PARAMETERS",
    "SERVER_NAME",
    "InferRequest",
    "InferResponse",
    "InputTensor",
    "ModelMetadata",
    "ModelReady",
    "OpenInference",
    "OutputTensor",
    "RequestedOutput",
    "ServerMetadata",
    "TensorMetadata",
    "pack_bytes",
    "unpack_bytes",
]

SERVER_NAME = "tessera"
#: Protocol extensions this server implements, on REST and gRPC (``binary_tensor_data`` is REST's).
EXTENSIONS = (
    "binary_tensor_data",
    "classification",
    "model_configuration",
    "model_repository",
    "parameters",
    "statistics",
)
#: Parameters the server honours; any other is refused (400 / INVALID_ARGUMENT) naming it.
REQUEST_PARAMETERS = ("binary_data_output", "timeout")
INPUT_PARAMETERS = ("binary_data_size",)
OUTPUT_PARAMETERS = ("binary_data", "classification")
#: The largest ``classification`` (top-k) an output may ask for.
MAX_CLASS_COUNT = 1000
#: Images one inference request may carry (each becomes one backbone call).
MAX_IMAGES_PER_REQUEST = 256

#: OIP datatypes with a fixed-size element, as little-endian numpy dtypes. BYTES is variable-size.
DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
PIXEL_DATATYPES = ("FP32", "FP16", "UINT8")
_PIXELS, _IMAGE = "pixels", "image"
_PLATFORMS = (("onnx", "onnxruntime_onnx"), ("onnx_fp16", "onnxruntime_onnx"), ("tensorrt", "tensorrt_plan"))


# -- metadata (pydantic: shared by the REST responses and the gRPC messages) -----------------------
class TensorMetadata(BaseModel):
    name: str = Field(description="Tensor name.")
    datatype: str = Field(description="OIP datatype: FP32, FP16, UINT8, BYTES, ...")
    shape: list[int] = Field(description="Shape; -1 marks a variable dimension.")


class ServerMetadata(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"example": {"name": "tessera", "version": "0.1.0", "extensions": ["binary_tensor_data"]}}
    )

    name: str
    version: str
    extensions: list[str]


class ModelMetadata(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "name": "vit_small",
                "versions": ["1"],
                "platform": "onnxruntime_onnx",
                "inputs": [
                    {"name": "pixels", "datatype": "FP32", "shape": [-1, 3, 224, 224]},
                    {"name": "image", "datatype": "BYTES", "shape": [-1]},
                ],
                "outputs": [
                    {"name": "embedding", "datatype": "FP32", "shape": [-1, 384]},
                    {"name": "logits", "datatype": "FP32", "shape": [-1, 1000]},
                ],
            }
        }
    )

    name: str = Field(description="Model name.")
    versions: list[str] = Field(description="Versions served (one: the repository's).")
    platform: str = Field(description="Runtime family of the built artifact, e.g. onnxruntime_onnx.")
    inputs: list[TensorMetadata] = Field(
        description="Alternative inputs: send exactly one of them. ``pixels`` is listed once per datatype it accepts."
    )
    outputs: list[TensorMetadata]


class ModelReady(BaseModel):
    name: str
    ready: bool


# -- requests and responses (dataclasses: they carry numpy data) -----------------------------------
@dataclass(frozen=True)
class InputTensor:
    """One input tensor as it came off the wire, not yet validated.

    Exactly one of ``raw`` (the binary form: little-endian elements; BYTES elements each
    prefixed with a 4-byte little-endian length; a view of the request's own bytes where the
    transport gives one, so that a tensor is not copied on its way to the batch) and ``values``
    (the typed form: a flat or nested sequence of numbers, or for BYTES a sequence of ``bytes``
    or base64 ``str``) is set.
    """

    name: str
    datatype: str
    shape: tuple[int, ...]
    raw: bytes | memoryview | None = None
    values: Any = None
    parameters: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    parameters: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class InferRequest:
    inputs: Sequence[InputTensor]
    outputs: Sequence[RequestedOutput] | None = None
    """The outputs to return; ``None`` (or empty) means all of them."""
    id: str = ""
    parameters: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class OutputTensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray
    parameters: Mapping[str, Any] = field(default_factory=dict)
    """The parameters the client sent with its request for this output (e.g. ``binary_data``)."""

    def raw(self) -> bytes:
        """The binary form: row-major little-endian elements (BYTES: each length-prefixed)."""
        if self.datatype == "BYTES":
            return pack_bytes([bytes(item) for item in self.data.reshape(-1)])
        return np.ascontiguousarray(self.data, dtype=DATATYPES[self.datatype]).tobytes()

    def values(self) -> list[Any]:
        """The typed form: a flat row-major list (BYTES elements as text)."""
        if self.datatype == "BYTES":
            return [bytes(item).decode() for item in self.data.reshape(-1)]
        flat: list[Any] = self.data.reshape(-1).tolist()
        return flat


@dataclass(frozen=True)
class InferResponse:
    model_name: str
    model_version: str
    outputs: list[OutputTensor]
    id: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _Batch:
    """Validated input: N model-ready images and what producing them cost."""

    pixels: list[np.ndarray]  # each (3, H, W) float32, normalised
    decode_ms: float
    preprocess_ms: float


# -- BYTES helpers ---------------------------------------------------------------------------------
def pack_bytes(items: Sequence[bytes]) -> bytes:
    """The binary form of a BYTES tensor: each element prefixed by its 4-byte little-endian length."""
    return b"".join(len(item).to_bytes(4, "little") + bytes(item) for item in items)


def unpack_bytes(raw: bytes | memoryview, *, name: str = "input") -> list[bytes]:
    """Split the binary form of a BYTES tensor into its elements."""
    items: list[bytes] = []
    offset, end = 0, len(raw)
    view = memoryview(raw)
    while offset < end:
        if offset + 4 > end:
            raise InvalidInput(
                f"input {name!r}: BYTES data ends inside an element's 4-byte length prefix (at byte {offset})",
                param=name,
            )
        size = int.from_bytes(view[offset : offset + 4], "little")
        offset += 4
        if offset + size > end:
            raise InvalidInput(
                f"input {name!r}: a BYTES element claims {size} bytes but only {end - offset} remain",
                param=name,
            )
        items.append(bytes(view[offset : offset + size]))
        offset += size
    return items


# -- the protocol over the core --------------------------------------------------------------------
class OpenInference:
    """OIP server metadata, model metadata and readiness, and inference, over one ``ServingCore``."""

    def __init__(self, core: ServingCore, *, max_images: int = MAX_IMAGES_PER_REQUEST):
        self.core = core
        self.max_images = max_images

    # -- health and metadata ----------------------------------------------------------------------
    def server_metadata(self) -> ServerMetadata:
        return ServerMetadata(name=SERVER_NAME, version=__version__, extensions=list(EXTENSIONS))

    def server_ready(self) -> bool:
        return self.core.server_ready()

    def version_of(self, model: str, version: str | None = None) -> str:
        return str(self.config(model, version).version)

    def config(self, model: str, version: str | None = None) -> ModelConfig:
        """The model's config; ``NotFound`` for an unknown model or a version it does not have."""
        cfg = self.core.repo.config(model)
        if version:
            try:
                number = int(version)
            except ValueError:
                raise NotFound(
                    f"model {model!r} has no version {version!r} (serving version {cfg.version})", param="version"
                ) from None
            self.core.repo.version_dir(model, number)
        return cfg

    def model_ready(self, model: str, version: str | None = None) -> ModelReady:
        self.config(model, version)
        return ModelReady(name=model, ready=self.core.is_ready(model))

    def platform(self, model: str) -> str:
        """Runtime family of the model's built artifact (Triton's platform names), "" when not built."""
        manifest = self.core.manifests.get(model)
        built = set(manifest.artifacts) if manifest else set()
        return next((p for kind, p in _PLATFORMS if kind in built), "")

    def model_metadata(self, model: str, version: str | None = None) -> ModelMetadata:
        cfg = self.config(model, version)
        platform = self.platform(model)
        buckets = cfg.input.buckets
        side = buckets[0] if len(buckets) == 1 else -1
        outputs = [TensorMetadata(name="embedding", datatype="FP32", shape=[-1, cfg.output.embedding_dim])]
        if cfg.output.num_classes > 0:
            outputs.append(TensorMetadata(name="logits", datatype="FP32", shape=[-1, cfg.output.num_classes]))
        return ModelMetadata(
            name=cfg.name,
            versions=[str(cfg.version)],
            platform=platform,
            inputs=[
                *(TensorMetadata(name=_PIXELS, datatype=d, shape=[-1, 3, side, side]) for d in PIXEL_DATATYPES),
                TensorMetadata(name=_IMAGE, datatype="BYTES", shape=[-1]),
            ],
            outputs=outputs,
        )

    # -- extensions: statistics, model configuration, model repository ---------------------------
    def statistics(self, model: str | None = None, version: str | None = None) -> StatisticsResponse:
        """Per (model, version) counts and durations; every model when ``model`` is empty."""
        names = [model] if model else self.core.repo.names()
        return self.core.stats.snapshot([(name, self.version_of(name, version)) for name in names])

    def model_config(self, model: str, version: str | None = None) -> TritonModelConfig:
        cfg = self.config(model, version)
        return triton_model_config(
            cfg,
            self.core.manifests.get(model),
            platform=self.platform(model),
            pixel_datatypes=PIXEL_DATATYPES,
            labels=bool(self.labels(model)),
        )

    def repository_index(self, ready_only: bool = False) -> list[RepositoryModel]:
        entries = []
        for name in self.core.repo.names():
            cfg = self.core.repo.config(name)
            status = self.core.control.status(name)
            if ready_only and status.state != "ready":
                continue
            entries.append(
                RepositoryModel(
                    name=name,
                    version=str(cfg.version),
                    state=TRITON_STATES.get(status.state, "UNAVAILABLE"),
                    reason="" if status.state == "ready" else status.describe(),
                )
            )
        return entries

    async def load(self, model: str, parameters: Mapping[str, Any] | None = None) -> None:
        self.config(model)
        await self.core.control.load(model, dict(parameters or {}))

    async def unload(self, model: str, parameters: Mapping[str, Any] | None = None) -> None:
        self.config(model)
        await self.core.control.unload(model, dict(parameters or {}))

    def labels(self, model: str) -> list[str]:
        """The model's class labels (``<model>/labels.txt``, one a line); empty when it has none."""
        path = self.core.repo.model_dir(model) / "labels.txt"
        if not path.is_file():
            return []
        return path.read_text(encoding="utf-8").splitlines()

    # -- inference --------------------------------------------------------------------------------
    async def infer(
        self, model: str, version: str | None, request: InferRequest, *, timeout_s: float | None = None
    ) -> InferResponse:
        """Validate ``request``, run its images on ``model`` and return the requested outputs.

        ``timeout_s`` is the transport's deadline; the request's ``timeout`` parameter and the
        server's default can only shorten it. Admission is the serving core's, as for ``/v1/predict``.
        """
        start = time.perf_counter()
        cfg = self.config(model, version)
        self.core.control.require_loaded(cfg.name)
        _check_parameters(request)
        budget = min(b for b in (timeout_s, _timeout_parameter(request), self.core.timeout_s) if b)
        available = self._output_names(cfg)
        wanted = _requested_outputs(request.outputs, available, cfg.name)
        tensor = self._single_input(request.inputs, cfg.name)
        try:
            async with self.core.admission():
                return await self._infer(cfg, request, tensor, wanted, budget, start)
        except TesseraError as exc:
            if not isinstance(exc, InvalidInput | PayloadTooLarge):
                self.core.stats.failure(cfg.name, str(cfg.version), time.perf_counter() - start)
            raise

    async def _infer(
        self,
        cfg: ModelConfig,
        request: InferRequest,
        tensor: InputTensor,
        wanted: list[RequestedOutput],
        budget: float,
        start: float,
    ) -> InferResponse:
        try:
            async with asyncio.timeout(budget):
                if tensor.name == _PIXELS:
                    batch = self._pixels(tensor, cfg)
                else:
                    batch = await self._images(tensor, cfg)
                replies, roundtrip_ms, chunks_run = await self._run(cfg, batch.pixels)
        except TimeoutError:
            raise DeadlineExceeded(f"no answer within the {budget:.3g} s deadline") from None
        done = time.perf_counter()

        inference_ms = max(float(r["inference_ms"]) for r in replies)
        queue_ms = max(0.0, roundtrip_ms - inference_ms)
        for stage, ms in (
            ("decode", batch.decode_ms),
            ("preprocess", batch.preprocess_ms),
            ("queue", queue_ms),
            ("inference", inference_ms),
        ):
            self.core.telemetry.stage(cfg.name, stage, ms / 1e3)

        outputs = []
        for out in wanted:
            rows = [np.asarray(r["outputs"][out.name], dtype=np.float32).reshape(-1) for r in replies]
            data = np.stack(rows)
            count = out.parameters.get("classification")
            if count is not None:
                outputs.append(self._classification(cfg.name, out, data, count))
            else:
                outputs.append(OutputTensor(out.name, "FP32", tuple(data.shape), data, out.parameters))
        memory = replies[-1]["memory"]
        total_ms = (time.perf_counter() - start) * 1e3
        parameters: dict[str, Any] = {
            "timing_ms": {
                "decode": round(batch.decode_ms, 3),
                "preprocess": round(batch.preprocess_ms, 3),
                "queue": round(queue_ms, 3),
                "inference": round(inference_ms, 3),
                "total": round(total_ms, 3),
            },
            "memory": {
                "device": str(memory.get("device", "cpu")),
                "peak_bytes": max(int(r["memory"].get("peak_bytes", 0)) for r in replies),
                "allocated_bytes": int(memory.get("allocated_bytes", 0)),
            },
            "backend": str(replies[0].get("backend", "unknown")),
            "precision": str(replies[0].get("precision", "fp32")),
            "weights": "trained" if cfg.trained else "untrained",
            "batch_size": max(int(r.get("batch_size", 1)) for r in replies),
        }
        self.core.stats.success(
            cfg.name,
            str(cfg.version),
            Measurement(
                images=len(replies),
                batch_sizes=chunks_run or tuple(int(r.get("batch_size", 1)) for r in replies),
                chunked=chunks_run is not None,
                compute_input_s=(batch.decode_ms + batch.preprocess_ms) / 1e3,
                queue_s=queue_ms / 1e3,
                compute_infer_s=inference_ms / 1e3,
                compute_output_s=time.perf_counter() - done,
                total_s=time.perf_counter() - start,
            ),
        )
        return InferResponse(
            model_name=cfg.name,
            model_version=str(cfg.version),
            outputs=outputs,
            id=request.id,
            parameters=parameters,
        )

    def _classification(self, model: str, out: RequestedOutput, data: np.ndarray, count: Any) -> OutputTensor:
        """Triton's classification: the top ``count`` entries per image as BYTES ``value:index[:label]``."""
        k = min(int(count), data.shape[1])
        labels = self.labels(model)
        order = np.argsort(-data, axis=1, kind="stable")[:, :k]
        rows = []
        for image, indices in zip(data, order, strict=True):
            entries = []
            for index in indices:
                text = f"{float(image[index]):f}:{int(index)}"
                if labels and int(index) < len(labels):
                    text += f":{labels[int(index)]}"
                entries.append(text.encode())
            rows.append(entries)
        array = np.array(rows, dtype=np.object_).reshape(len(rows), k)
        return OutputTensor(out.name, "BYTES", tuple(array.shape), array, out.parameters)

    @staticmethod
    def _output_names(cfg: ModelConfig) -> list[str]:
        return ["embedding", "logits"] if cfg.output.num_classes > 0 else ["embedding"]

    @staticmethod
    def _single_input(inputs: Sequence[InputTensor], model: str) -> InputTensor:
        if not inputs:
            raise InvalidInput(f"the request has no inputs; send one of {_PIXELS!r} or {_IMAGE!r}", param="inputs")
        for tensor in inputs:
            if tensor.name not in (_PIXELS, _IMAGE):
                raise InvalidInput(
                    f"unknown input {tensor.name!r}; model {model!r} takes {_PIXELS!r} "
                    f"({'/'.join(PIXEL_DATATYPES)} [N,3,H,W]) or {_IMAGE!r} (BYTES [N], encoded images)",
                    param="inputs",
                )
        if len(inputs) > 1:
            names = [t.name for t in inputs]
            raise InvalidInput(
                f"the request has inputs {names}; send exactly one: {_PIXELS!r} or {_IMAGE!r}", param="inputs"
            )
        return inputs[0]

    def _pixels(self, tensor: InputTensor, cfg: ModelConfig) -> _Batch:
        t = time.perf_counter()
        name = tensor.name
        if tensor.datatype not in PIXEL_DATATYPES:
            raise InvalidInput(
                f"input {name!r} has datatype {tensor.datatype!r}; expected one of {', '.join(PIXEL_DATATYPES)}",
                param=name,
            )
        shape = _check_shape(tensor)
        if len(shape) != 4 or shape[1] != 3:
            raise InvalidInput(f"input {name!r} has shape {list(shape)}; expected [N, 3, H, W]", param=name)
        n, _, height, width = shape
        buckets = cfg.input.buckets
        if height != width or height not in buckets:
            allowed = ", ".join(f"{s}x{s}" for s in buckets)
            raise InvalidInput(
                f"input {name!r} is {height}x{width} pixels; model {cfg.name!r} accepts {allowed} "
                f"(send {_IMAGE!r} to have the server resize)",
                param=name,
            )
        self._check_count(name, n, math.prod(shape))
        array = _numeric(tensor, shape).reshape(shape)
        if tensor.datatype == "UINT8":
            mean = np.asarray(cfg.input.mean, dtype=np.float32).reshape(1, 3, 1, 1)
            std = np.asarray(cfg.input.std, dtype=np.float32).reshape(1, 3, 1, 1)
            pixels = (array.astype(np.float32) / 255.0 - mean) / std
        else:
            pixels = array.astype(np.float32, copy=False)  # FP32 stays a view of the request's bytes
            if not np.isfinite(pixels).all():
                raise InvalidInput(f"input {name!r} contains NaN or Inf", param=name)
        images = [np.ascontiguousarray(p) for p in pixels]
        return _Batch(images, decode_ms=0.0, preprocess_ms=(time.perf_counter() - t) * 1e3)

    async def _images(self, tensor: InputTensor, cfg: ModelConfig) -> _Batch:
        name = tensor.name
        if tensor.datatype != "BYTES":
            raise InvalidInput(
                f"input {name!r} has datatype {tensor.datatype!r}; expected BYTES (encoded images)", param=name
            )
        shape = _check_shape(tensor)
        if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
            raise InvalidInput(f"input {name!r} has shape {list(shape)}; expected [N] or [N, 1]", param=name)
        n = shape[0]
        self._check_count(name, n, 0)
        items = _byte_items(tensor, n)
        limits = self.core.limits

        def decode(data: bytes) -> tuple[np.ndarray, float, float]:
            t0 = time.perf_counter()
            decoded = decode_image(data, None, limits)
            t1 = time.perf_counter()
            prepared = prepare(decoded.pixels, cfg.input)  # native size, the model's own fit: no routing
            return prepared.pixels, (t1 - t0) * 1e3, (time.perf_counter() - t1) * 1e3

        done = await asyncio.gather(*(asyncio.to_thread(decode, item) for item in items))
        return _Batch(
            pixels=[p for p, _, _ in done],
            decode_ms=sum(d for _, d, _ in done),
            preprocess_ms=sum(p for _, _, p in done),
        )

    def _check_count(self, name: str, images: int, elements: int) -> None:
        if images < 1:
            raise InvalidInput(f"input {name!r} holds no images (first dimension is 0)", param=name)
        if images > self.max_images:
            raise PayloadTooLarge(
                f"input {name!r} holds {images} images; the limit is {self.max_images} per request", param=name
            )
        max_elements = 3 * self.core.limits.max_pixels
        if elements > max_elements:
            raise PayloadTooLarge(
                f"input {name!r} has {elements} elements; the limit is {max_elements} per request", param=name
            )

    async def _run(
        self, cfg: ModelConfig, pixels: list[np.ndarray]
    ) -> tuple[list[dict[str, Any]], float, tuple[int, ...] | None]:
        """One image goes to the backbone's batcher, to share a batch with other requests; N images
        of one shape already are a batch and run as such, in chunks of the model's batch size.
        Returns the replies, the round trip in ms and, when the images ran as ready-made chunks,
        each chunk's batch size (``None`` when they went through the backbone's batcher)."""
        model, client, telemetry = cfg.name, self.core.client, self.core.telemetry
        t = time.perf_counter()
        telemetry.inflight(model, len(pixels))
        chunks_run: tuple[int, ...] | None = None
        try:
            if len(pixels) == 1 or len({p.shape for p in pixels}) > 1:
                with self.core.control.using(model):
                    replies = list(await asyncio.gather(*(client.infer(model, p) for p in pixels)))
            else:
                step = cfg.batching.max_batch_size
                chunks = [np.stack(pixels[i : i + step]) for i in range(0, len(pixels), step)]
                with self.core.control.using(model):
                    parts = await asyncio.gather(*(client.infer_batch(model, chunk) for chunk in chunks))
                replies = [reply for part in parts for reply in part]
                chunks_run = tuple(len(part) for part in parts)
        finally:
            telemetry.inflight(model, -len(pixels))
        return replies, (time.perf_counter() - t) * 1e3, chunks_run


# -- validation helpers ----------------------------------------------------------------------------
def _check_parameters(request: InferRequest) -> None:
    """Refuse every parameter the server does not honour, naming it (Triton's parameters extension)."""
    for key in request.parameters:
        if key not in REQUEST_PARAMETERS:
            raise InvalidInput(
                f"unsupported request parameter {key!r}; this server honours: {', '.join(REQUEST_PARAMETERS)}",
                param=key,
            )
    for tensor in request.inputs:
        for key in tensor.parameters:
            if key not in INPUT_PARAMETERS:
                raise InvalidInput(
                    f"unsupported parameter {key!r} on input {tensor.name!r}; "
                    f"inputs take: {', '.join(INPUT_PARAMETERS)}",
                    param=key,
                )
    for out in request.outputs or ():
        for key, value in out.parameters.items():
            if key not in OUTPUT_PARAMETERS:
                raise InvalidInput(
                    f"unsupported parameter {key!r} on output {out.name!r}; "
                    f"outputs take: {', '.join(OUTPUT_PARAMETERS)}",
                    param=key,
                )
            if key == "classification" and (
                isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_CLASS_COUNT
            ):
                raise InvalidInput(
                    f"output {out.name!r}: classification must be an integer class count in [1, {MAX_CLASS_COUNT}]",
                    param=key,
                )


def _timeout_parameter(request: InferRequest) -> float | None:
    """The ``timeout`` request parameter (microseconds, as Triton's) in seconds."""
    value = request.parameters.get("timeout")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= 3_600_000_000:
        raise InvalidInput(
            "parameter 'timeout' must be an integer number of microseconds in (0, 3.6e9]", param="timeout"
        )
    return value / 1e6


def _requested_outputs(
    requested: Sequence[RequestedOutput] | None, available: list[str], model: str
) -> list[RequestedOutput]:
    if not requested:
        return [RequestedOutput(name) for name in available]
    seen: set[str] = set()
    for out in requested:
        if out.name not in available:
            raise InvalidInput(
                f"unknown output {out.name!r}; model {model!r} has outputs: {', '.join(available)}", param="outputs"
            )
        if out.name in seen:
            raise InvalidInput(f"output {out.name!r} is requested twice", param="outputs")
        seen.add(out.name)
    return list(requested)


def _check_shape(tensor: InputTensor) -> tuple[int, ...]:
    shape = tensor.shape
    if not shape or any(not isinstance(d, int) or isinstance(d, bool) or d < 0 for d in shape):
        raise InvalidInput(
            f"input {tensor.name!r} has shape {list(shape)}; dimensions must be non-negative integers",
            param=tensor.name,
        )
    return tuple(shape)


def _numeric(tensor: InputTensor, shape: tuple[int, ...]) -> np.ndarray:
    """The elements of a numeric tensor as a flat array of its datatype, count checked against ``shape``."""
    name, datatype = tensor.name, tensor.datatype
    dtype = DATATYPES[datatype]
    count = math.prod(shape)
    if tensor.raw is not None:
        if tensor.values is not None:
            raise InvalidInput(f"input {name!r} has both binary and typed data; send one", param=name)
        needed = count * dtype.itemsize
        if len(tensor.raw) != needed:
            raise InvalidInput(
                f"input {name!r}: binary data is {len(tensor.raw)} bytes but shape {list(shape)} of "
                f"{datatype} needs {needed} ({count} elements of {dtype.itemsize} bytes)",
                param=name,
            )
        return np.frombuffer(tensor.raw, dtype=dtype)
    if tensor.values is None:
        raise InvalidInput(f"input {name!r} has no data", param=name)
    try:
        values = np.asarray(tensor.values)
    except (ValueError, TypeError):
        raise InvalidInput(f"input {name!r}: data is not a regular (nested) list of numbers", param=name) from None
    if values.dtype.kind not in "iuf":
        raise InvalidInput(f"input {name!r}: data must be numbers for datatype {datatype}", param=name)
    values = values.reshape(-1)
    if values.size != count:
        raise InvalidInput(
            f"input {name!r} has {values.size} elements but shape {list(shape)} needs {count}", param=name
        )
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        if values.dtype.kind == "f" and not np.array_equal(values, np.round(values)):
            raise InvalidInput(f"input {name!r}: {datatype} data must be integers", param=name)
        if values.size and (values.min() < info.min or values.max() > info.max):
            raise InvalidInput(f"input {name!r}: {datatype} data must lie in [{info.min}, {info.max}]", param=name)
    with np.errstate(over="ignore", invalid="ignore"):
        return values.astype(dtype)


def _byte_items(tensor: InputTensor, count: int) -> list[bytes]:
    name = tensor.name
    if tensor.raw is not None:
        if tensor.values is not None:
            raise InvalidInput(f"input {name!r} has both binary and typed data; send one", param=name)
        items = unpack_bytes(tensor.raw, name=name)
    elif tensor.values is None:
        raise InvalidInput(f"input {name!r} has no data", param=name)
    elif isinstance(tensor.values, (str, bytes)) or not isinstance(tensor.values, Sequence):
        raise InvalidInput(f"input {name!r}: BYTES data must be a list of elements", param=name)
    else:
        items = [_one_bytes(v, name) for v in _flatten(tensor.values)]
    if len(items) != count:
        raise InvalidInput(
            f"input {name!r} has {len(items)} elements but shape {list(tensor.shape)} needs {count}", param=name
        )
    return items


def _flatten(values: Sequence[Any]) -> list[Any]:
    flat: list[Any] = []
    for value in values:
        if isinstance(value, list | tuple):
            flat.extend(_flatten(value))
        else:
            flat.append(value)
    return flat


def _one_bytes(value: Any, name: str) -> bytes:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidInput(
                f"input {name!r}: BYTES elements in JSON must be base64-encoded images "
                "(or send them with the binary tensor extension)",
                param=name,
            ) from None
    raise InvalidInput(f"input {name!r}: BYTES elements must be strings, got {type(value).__name__}", param=name)
