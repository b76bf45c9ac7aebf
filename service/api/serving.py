"""The serving core: what ``/v1/predict`` does, independent of transport and of Ray.

REST routes, gRPC servicers and the offline CLI all call ``ServingCore``. Model execution is
behind ``BackboneClient``: Ray Serve deployment handles in the service, in-process backends in
the CLI and the unit tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from service.api.model_repository import ModelControl, ModelControlMode, ModelStates
from service.api.protocol import (
    InputInfo,
    MemoryInfo,
    ModelInfo,
    PredictOptions,
    PredictResponse,
    TimingInfo,
    TopK,
)
from service.api.statistics import InferenceStatistics, Measurement
from service.api.telemetry import NullTelemetry, Telemetry
from service.errors import DeadlineExceeded, InvalidInput, NotFound, Overloaded, TesseraError
from service.imaging import DecodedImage, DecodeLimits, PreparedImage, decode_image, fit_size, prepare
from service.models import ModelConfig, ModelRepository
from service.routing.decision import RouteDecision, Router
from service.runtime import Backend
from service.runtime.batching import run_batch

__all__ = ["BackboneClient", "LocalBackboneClient", "ServingCore", "split_batch_reply"]

UNTRAINED_NOTE = (
    "random initialisation with a fixed seed: outputs are deterministic but carry no learned "
    "meaning; point weights.path in config.yaml at a checkpoint"
)


class BackboneClient(Protocol):
    """Runs preprocessed images on a named backbone; replies (one per image) as ``run_batch`` does.

    ``infer`` takes one (3, H, W) image, which the backbone batches with other callers' images;
    ``infer_batch`` takes an (N, 3, H, W) batch the caller already holds and runs it as one call.
    """

    async def infer(self, model: str, pixels: np.ndarray) -> dict[str, Any]: ...

    async def infer_batch(self, model: str, pixels: np.ndarray) -> list[dict[str, Any]]: ...


def split_batch_reply(reply: dict[str, Any]) -> list[dict[str, Any]]:
    """One ``infer_batch`` reply (outputs with a leading N axis) as N per-image replies."""
    outputs: dict[str, Any] = reply["outputs"]
    n = int(reply["batch_size"])
    shared = {k: v for k, v in reply.items() if k != "outputs"}
    return [{**shared, "outputs": {name: value[i] for name, value in outputs.items()}} for i in range(n)]


class LocalBackboneClient:
    """In-process backends (CLI, unit tests): one image per call, run in a worker thread."""

    def __init__(self, backends: dict[str, Backend]):
        self.backends = backends

    async def infer(self, model: str, pixels: np.ndarray) -> dict[str, Any]:
        backend = self.backends.get(model)
        if backend is None:
            raise NotFound(f"model {model!r} is not loaded", param="model")
        replies = await asyncio.to_thread(run_batch, backend, [pixels])
        return replies[0]

    async def infer_batch(self, model: str, pixels: np.ndarray) -> list[dict[str, Any]]:
        backend = self.backends.get(model)
        if backend is None:
            raise NotFound(f"model {model!r} is not loaded", param="model")
        return await asyncio.to_thread(run_batch, backend, list(pixels))


@dataclass
class _Clock:
    start: float

    def ms_since(self, t: float) -> float:
        return (time.perf_counter() - t) * 1e3


class ServingCore:
    def __init__(
        self,
        repo: ModelRepository,
        router: Router,
        client: BackboneClient,
        *,
        limits: DecodeLimits | None = None,
        max_pending: int = 0,
        timeout_s: float = 30.0,
        telemetry: Telemetry | None = None,
        model_control_mode: ModelControlMode = "none",
        states: ModelStates | None = None,
        router_factory: Callable[[], Router] | None = None,
    ):
        self.repo = repo
        self.router = router
        self.router_factory = router_factory
        self.client = client
        self.limits = limits or DecodeLimits()
        self.timeout_s = timeout_s
        self.telemetry: Telemetry = telemetry or NullTelemetry()
        self.manifests = {name: repo.manifest(name) for name in repo.names()}
        self.max_pending = max_pending
        self._pending = 0
        #: Triton's statistics extension, fed with the same measurements as the stage metrics.
        self.stats = InferenceStatistics()
        #: Each model's state (building, ready, unloaded...; Triton's model repository extension)
        #: and its requests in flight. With shared ``states`` models join as they become ready.
        self.control = ModelControl(
            model_control_mode,
            drain_timeout_s=timeout_s,
            source=states,
            built=lambda model: self.manifests.get(model) is not None,
        )
        self.control.on_change = self.models_changed
        #: Requests in progress on any route (maintained by the transports) and the drain flag.
        self.inflight = 0
        self.draining = False

    # -- /v1/predict ---------------------------------------------------------------------------
    async def predict(
        self,
        data: bytes,
        content_type: str | None,
        options: PredictOptions,
        *,
        request_id: str | None = None,
        timeout_s: float | None = None,
    ) -> PredictResponse:
        async with self.admission():
            return await self._predict(data, content_type, options, request_id=request_id, timeout_s=timeout_s)

    @contextlib.asynccontextmanager
    async def admission(self) -> AsyncIterator[None]:
        """The ingress admission limit (``max_pending``), for ``/v1/predict`` and OIP inference alike."""
        if self.max_pending and self._pending >= self.max_pending:
            # Shed before any decoding: an overloaded server should answer "later" at once.
            self.telemetry.rejected("admission")
            raise Overloaded(f"{self._pending} requests are already in progress here; retry shortly", retry_after_s=1.0)
        self._pending += 1
        try:
            yield
        finally:
            self._pending -= 1

    def models_changed(self) -> None:
        """A model became ready or left service: re-read the manifests (a model built while the
        service runs) and rebuild the router over what is built and calibrated now."""
        self.manifests = {name: self.repo.manifest(name) for name in self.repo.names()}
        if self.router_factory is not None:
            self.router = self.router_factory()

    def server_ready(self) -> bool:
        """Ready to answer: at least one model is ready and the server is not draining."""
        return not self.draining and any(self.control.is_loaded(name) for name in self.repo.names())

    def decide(self, width: int, height: int, model: str | None = None) -> RouteDecision:
        """The router's decision among ready models: a choice that is not ready goes to the cheapest
        ready fit, and the decision lists the models it could not consider (``not_ready``)."""
        if model is not None:
            self.repo.config(model)
            self.control.require_loaded(model)
            return self.router.decide(width, height, model)
        not_ready = {
            name: self.control.status(name).describe() for name in self.repo.names() if not self.control.is_loaded(name)
        }
        decision = self.router.decide(width, height)
        if self.control.is_loaded(decision.model):
            return decision.model_copy(update={"not_ready": not_ready}) if not_ready else decision
        ready = [
            c for c in decision.candidates if c.fits and c.model != decision.model and self.control.is_loaded(c.model)
        ]
        ready.sort(key=lambda c: c.predicted_latency_ms if c.predicted_latency_ms is not None else float("inf"))
        if not ready:
            self.control.require_loaded(decision.model)
        chosen = self.router.decide(width, height, ready[0].model)
        latency = f"{chosen.predicted_latency_ms:.1f} ms" if chosen.predicted_latency_ms is not None else "no estimate"
        explanation = (
            f"{decision.model} would have been chosen but is not ready ({not_ready[decision.model]}): "
            f"{chosen.model} is the fastest ready model that fits, {latency} at {width}x{height}"
        )
        update = {"not_ready": not_ready, "explanation": explanation, "reason": "fastest_ready"}
        return chosen.model_copy(update=update)

    async def _predict(
        self,
        data: bytes,
        content_type: str | None,
        options: PredictOptions,
        *,
        request_id: str | None,
        timeout_s: float | None,
    ) -> PredictResponse:
        start = time.perf_counter()
        budget = min(timeout_s, self.timeout_s) if timeout_s else self.timeout_s
        deadline = start + budget
        if options.model is not None:
            self.repo.config(options.model)  # 404 for an unknown model before any work

        job = await self._decode_route_prepare(data, content_type, options)
        reply, roundtrip_ms, done = await self._infer_one(job, start, deadline, budget)
        inference_ms = float(reply["inference_ms"])
        queue_ms = max(0.0, roundtrip_ms - inference_ms)
        total_ms = (time.perf_counter() - start) * 1e3
        for stage, ms in (
            ("decode", job.decode_ms),
            ("preprocess", job.preprocess_ms),
            ("queue", queue_ms),
            ("inference", inference_ms),
        ):
            self.telemetry.stage(job.decision.model, stage, ms / 1e3)

        embedding, logits, top = _outputs(reply["outputs"], options)
        cfg = job.cfg
        self.stats.success(
            cfg.name,
            str(cfg.version),
            Measurement(
                images=1,
                batch_sizes=(int(reply.get("batch_size", 1)),),
                chunked=False,
                compute_input_s=(job.decode_ms + job.preprocess_ms) / 1e3,
                queue_s=queue_ms / 1e3,
                compute_infer_s=inference_ms / 1e3,
                compute_output_s=time.perf_counter() - done,
                total_s=time.perf_counter() - start,
            ),
        )
        timing = TimingInfo(
            decode=round(job.decode_ms, 3),
            preprocess=round(job.preprocess_ms, 3),
            queue=round(queue_ms, 3),
            inference=round(inference_ms, 3),
            total=round(total_ms, 3),
        )
        return _response(job, reply, request_id, embedding, logits, top, timing)

    async def _decode_route_prepare(
        self, data: bytes, content_type: str | None, options: PredictOptions
    ) -> _PreparedRequest:
        """Decode (limits checked first), route among the loaded models, fit and normalise."""
        t = time.perf_counter()
        decoded = await asyncio.to_thread(decode_image, data, content_type, self.limits)
        decode_ms = (time.perf_counter() - t) * 1e3

        decision = self.decide(decoded.width, decoded.height, options.model)
        self.telemetry.route(decision.model, decision.reason)
        cfg = self.repo.config(decision.model)
        t = time.perf_counter()
        content = decision.content_size or fit_size(
            decoded.height, decoded.width, decision.input_size, "resize" if decision.fit == "resize" else "letterbox"
        )
        prepared = await asyncio.to_thread(prepare, decoded.pixels, cfg.input, decision.input_size, content)
        preprocess_ms = (time.perf_counter() - t) * 1e3
        return _PreparedRequest(decoded, decision, cfg, prepared, decode_ms, preprocess_ms)

    async def _infer_one(
        self, job: _PreparedRequest, start: float, deadline: float, budget: float
    ) -> tuple[dict[str, Any], float, float]:
        """The backbone call within what is left of the deadline: (reply, round trip in ms, when it ended)."""
        decision, cfg = job.decision, job.cfg
        remaining = deadline - time.perf_counter()
        if remaining <= 0:
            raise DeadlineExceeded(f"deadline of {budget:.2f}s passed before inference")
        t = time.perf_counter()
        self.telemetry.inflight(decision.model, 1)
        try:
            with self.control.using(decision.model):
                reply = await asyncio.wait_for(self.client.infer(decision.model, job.prepared.pixels), remaining)
        except TimeoutError:
            self.stats.failure(cfg.name, str(cfg.version), time.perf_counter() - start)
            raise DeadlineExceeded(f"no answer within the {budget:.2f}s deadline") from None
        except TesseraError:
            self.stats.failure(cfg.name, str(cfg.version), time.perf_counter() - start)
            raise
        finally:
            self.telemetry.inflight(decision.model, -1)
        done = time.perf_counter()
        return reply, (done - t) * 1e3, done

    # -- /v1/route, /v1/models -----------------------------------------------------------------
    def route(self, width: int, height: int, model: str | None = None) -> RouteDecision:
        if not (0 < width <= 1 << 20 and 0 < height <= 1 << 20):
            raise InvalidInput("width and height must be between 1 and 1048576", param="width")
        return self.decide(width, height, model)

    def models(self) -> list[ModelInfo]:
        """Every configured model with its state: ready, building (with its phase and estimate),
        failed (with the reason), unloaded..."""
        return [self.model_info(name) for name in self.repo.names()]

    def is_ready(self, model: str) -> bool:
        """Built, loaded and answering."""
        return self.control.is_loaded(model)

    def model_info(self, name: str) -> ModelInfo:
        cfg = self.repo.config(name)
        manifest = self.manifests.get(name)
        return ModelInfo(
            name=name,
            version=cfg.version,
            family=cfg.family,
            description=cfg.description,
            weights="trained" if cfg.trained else "untrained",
            ready=self.is_ready(name),
            status=self.control.status(name),
            input={**cfg.input.model_dump(mode="json"), "buckets": cfg.input.buckets},
            output=cfg.output.model_dump(mode="json"),
            arch=manifest.arch if manifest else {},
            params=manifest.params if manifest else None,
            gmacs_native=manifest.gmacs_native if manifest else None,
            backends_built=sorted(manifest.artifacts) if manifest else [],
        )


@dataclass
class _PreparedRequest:
    """One ``/v1/predict`` image after decoding, routing and preprocessing."""

    decoded: DecodedImage
    decision: RouteDecision
    cfg: ModelConfig
    prepared: PreparedImage
    decode_ms: float
    preprocess_ms: float


def _outputs(
    outputs: dict[str, Any], options: PredictOptions
) -> tuple[list[float] | None, list[float] | None, list[TopK] | None]:
    """The embedding and/or logits (with the top k) that ``options.output`` asks for."""
    embedding = logits = top = None
    if options.output in ("embedding", "both"):
        embedding = np.asarray(outputs["embedding"], dtype=np.float32).tolist()
    if options.output in ("logits", "both"):
        raw = np.asarray(outputs["logits"], dtype=np.float32)
        logits = raw.tolist()
        top = _top_k(raw, options.top_k)
    return embedding, logits, top


def _response(
    job: _PreparedRequest,
    reply: dict[str, Any],
    request_id: str | None,
    embedding: list[float] | None,
    logits: list[float] | None,
    top: list[TopK] | None,
    timing: TimingInfo,
) -> PredictResponse:
    """The ``/v1/predict`` answer: model, runtime, input as sent and processed, route, outputs, costs."""
    cfg, decision, prepared = job.cfg, job.decision, job.prepared
    first_stage = cfg.input.patch_size
    tokens = (prepared.input_size[0] // first_stage) * (prepared.input_size[1] // first_stage)
    return PredictResponse(
        request_id=request_id or uuid.uuid4().hex,
        model=cfg.name,
        version=cfg.version,
        backend=str(reply.get("backend", "unknown")),
        precision=str(reply.get("precision", "fp32")),
        weights="trained" if cfg.trained else "untrained",
        weights_note="" if cfg.trained else UNTRAINED_NOTE,
        input=InputInfo(
            format=job.decoded.format,
            original=prepared.original_size,
            content=prepared.resized_size,
            processed=prepared.input_size,
            tokens=tokens,
            fit=decision.fit,
        ),
        route=decision,
        embedding=embedding,
        logits=logits,
        top_k=top,
        timing_ms=timing,
        memory=MemoryInfo(
            **{
                k: reply["memory"][k]
                for k in ("device", "peak_bytes", "allocated_bytes", "source")
                if k in reply["memory"]
            }
        ),
        batch_size=int(reply.get("batch_size", 1)),
    )


def _top_k(logits: np.ndarray, k: int) -> list[TopK]:
    if k == 0 or logits.size == 0:
        return []
    shifted = np.exp(logits - logits.max())
    probs = shifted / shifted.sum()
    order = np.argsort(-probs)[:k]
    return [TopK(index=int(i), score=float(probs[i])) for i in order]
