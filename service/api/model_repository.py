"""Triton's model repository and model configuration extensions, over the serving core.

``ModelControl`` knows each model's state (``ModelStatus``: building, loading, ready, failed,
unloaded...) and how many requests each has in flight. In one process (the CLI, the tests) a model
is ready when it is built. In the service the states come from a state book
(``service.serve.models``: the ``ModelStates`` deployment, or the one colocated ingress replica's
own), so models built while the service runs join when ready and every replica follows one
load/unload. With explicit model control
(``ServerSettings.model_control_mode = "explicit"``) ``unload`` takes a model out of service at
once, waits for its requests in flight, then for the backbones to release it; ``load`` builds the
model when it is not built and returns once it answers. Without explicit model control load and
unload are refused with 403 / PERMISSION_DENIED.

``triton_model_config`` answers ``GET /v2/models/{m}/config`` and gRPC ``ModelConfig`` in
Triton's model-configuration shape (``model_config.proto``), with Tessera's own facts (size
buckets, runtime, precision, accepted pixel datatypes) in ``parameters``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any, Literal, Protocol

from pydantic import BaseModel, Field

from service.errors import InvalidInput, NotAllowed, Unavailable
from service.models.config import ModelConfig
from service.models.manifest import Manifest

__all__ = [
    "TRITON_STATES",
    "ModelControl",
    "ModelControlMode",
    "ModelState",
    "ModelStates",
    "ModelStatus",
    "RepositoryModel",
    "TritonModelConfig",
    "triton_model_config",
]

ModelControlMode = Literal["none", "explicit"]

log = logging.getLogger(__name__)

#: Triton's ``DataType`` names for the OIP datatypes.
_TRITON_TYPES = {
    "BOOL": "TYPE_BOOL",
    "UINT8": "TYPE_UINT8",
    "FP16": "TYPE_FP16",
    "FP32": "TYPE_FP32",
    "BYTES": "TYPE_STRING",
}


# -- model repository --------------------------------------------------------------------------------
#: A model's life in the service. ``building``: its artifacts are being made (``tessera serve
#: --build``, or a load of an unbuilt model); ``loading``: built, the backbone is loading it;
#: ``ready``: answering; ``failed``: the build or the load failed (``reason`` says why);
#: ``unloading`` / ``unloaded``: taken out of service by explicit model control; ``unavailable``:
#: not built and nothing is building it.
ModelState = Literal["building", "loading", "ready", "failed", "unloading", "unloaded", "unavailable"]


class ModelStatus(BaseModel):
    """Where one model is, as the index, ``/v1/models`` and the router see it."""

    state: ModelState
    reason: str = Field(default="", description="Why the model is not ready (empty when it is).")
    phase: str = Field(default="", description="What its build is doing now (export, parity at 512², ...).")
    elapsed_s: float | None = Field(default=None, description="Seconds since its build started.")
    eta_s: float | None = Field(default=None, description="Estimated seconds until its build ends.")
    built: bool = False
    calibrating: bool = Field(
        default=False,
        description="Serving while it is timed on this host; until then the router uses its analytic cost for it.",
    )

    def describe(self) -> str:
        """One line for humans: ``building (parity at 512², 40 s, ~1 min left)``."""
        details = [d for d in (self.phase, self.reason) if d]
        if self.elapsed_s is not None:
            details.append(f"{self.elapsed_s:.0f} s")
        if self.eta_s is not None:
            details.append(f"~{self.eta_s:.0f} s left")
        return f"{self.state} ({', '.join(details)})" if details else self.state


class ModelStates(Protocol):
    """Where model states live in the service (a state book: the ``ModelStates`` deployment, or the
    one colocated ingress replica's own)."""

    async def states(self) -> dict[str, ModelStatus]: ...

    async def load(self, model: str) -> None: ...

    async def unload(self, model: str) -> None: ...


class RepositoryModel(BaseModel):
    """One entry of the repository index (Triton's ``RepositoryIndexResponse.ModelIndex``)."""

    name: str
    version: str
    state: Literal["READY", "UNAVAILABLE", "LOADING", "UNLOADING"]
    reason: str = Field(default="", description="Why the model is not READY: its state and details.")


#: Triton's index states for Tessera's.
TRITON_STATES: dict[str, Literal["READY", "UNAVAILABLE", "LOADING", "UNLOADING"]] = {
    "ready": "READY",
    "building": "LOADING",
    "loading": "LOADING",
    "unloading": "UNLOADING",
}


class ModelControl:
    """Each model's state, and its requests in flight, for one serving core.

    Without a shared ``source`` (one process, tests) a model is ready when it is built. With one
    (``tessera serve``: the state book, ``service.serve.models``) the states come from it, refreshed every
    ``refresh_s``, and load/unload go through it so that every ingress replica and every backbone
    replica follows.
    """

    def __init__(
        self,
        mode: ModelControlMode = "none",
        *,
        drain_timeout_s: float = 30.0,
        source: ModelStates | None = None,
        built: Callable[[str], bool] | None = None,
        load_timeout_s: float = 900.0,
        refresh_s: float = 0.5,
    ):
        self.mode: ModelControlMode = mode
        self.drain_timeout_s = drain_timeout_s
        self.load_timeout_s = load_timeout_s
        self.refresh_s = refresh_s
        self.source = source
        self._built = built or (lambda _model: True)
        self._status: dict[str, ModelStatus] = {}
        self._unloaded: dict[str, str] = {}  # model -> reason: this replica's own, effective at once
        self._inflight: dict[str, int] = {}
        self._idle: dict[str, asyncio.Event] = {}
        self._refresher: asyncio.Task[None] | None = None
        #: Called (no arguments) when the set of ready models changes: the core rebuilds its router.
        self.on_change: Callable[[], None] = lambda: None

    # -- state -------------------------------------------------------------------------------
    def status(self, model: str) -> ModelStatus:
        if model in self._unloaded:
            return ModelStatus(state="unloaded", reason=self._unloaded[model], built=self._built(model))
        if self.source is None:
            if self._built(model):
                return ModelStatus(state="ready", built=True)
            return ModelStatus(state="unavailable", reason=f"not built: run `tessera build --model {model}`")
        return self._status.get(model) or ModelStatus(state="loading", reason="state not known yet")

    def is_loaded(self, model: str) -> bool:
        return self.status(model).state == "ready"

    def unload_reason(self, model: str) -> str:
        """Empty when ready; else the state and why."""
        status = self.status(model)
        return "" if status.state == "ready" else status.describe()

    def require_loaded(self, model: str) -> None:
        status = self.status(model)
        if status.state != "ready":
            raise Unavailable(f"model {model!r} is not ready: {status.describe()}", param="model")

    def ready_models(self) -> frozenset[str]:
        return frozenset(m for m, s in self._status.items() if s.state == "ready" and m not in self._unloaded)

    async def refresh(self) -> None:
        """Fetch the shared states now."""
        if self.source is None:
            return
        before = self._router_inputs()
        self._status = await self.source.states()
        if self._router_inputs() != before:
            self.on_change()

    def _router_inputs(self) -> tuple[frozenset[str], frozenset[str]]:
        """What the router is built from: the ready models, and which of them are still uncalibrated."""
        return self.ready_models(), frozenset(m for m, s in self._status.items() if s.calibrating)

    def start(self) -> None:
        """Keep the shared states fresh in the background (call from the running event loop)."""
        if self.source is not None and (self._refresher is None or self._refresher.done()):
            self._refresher = asyncio.get_running_loop().create_task(self._refresh_forever())

    async def _refresh_forever(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception as exc:  # the states keep their last value; requests are not failed for it
                log.warning("model states not refreshed: %s", exc)
            await asyncio.sleep(self.refresh_s)

    # -- requests in flight --------------------------------------------------------------------
    @contextlib.contextmanager
    def using(self, model: str) -> Iterator[None]:
        """Count a request on ``model`` as in flight (``unload`` waits for these)."""
        self.require_loaded(model)
        self._inflight[model] = self._inflight.get(model, 0) + 1
        try:
            yield
        finally:
            left = self._inflight[model] = self._inflight[model] - 1
            if left == 0 and model in self._idle:
                self._idle[model].set()

    def inflight(self, model: str) -> int:
        return self._inflight.get(model, 0)

    # -- explicit model control ----------------------------------------------------------------
    def _check_allowed(self, action: str) -> None:
        if self.mode != "explicit":
            raise NotAllowed(
                f"explicit model control is disabled on this server, so models cannot be {action}; "
                "start it with TESSERA_MODEL_CONTROL_MODE=explicit (tessera serve --model-control-mode explicit)",
                param="model_control_mode",
            )

    async def load(self, model: str, parameters: dict[str, Any] | None = None) -> None:
        """Put ``model`` in service: build it first when it is not built (with a shared source), load
        it in every backbone replica, and return once it is ready (or raise why it is not)."""
        self._check_allowed("loaded")
        _check_repository_parameters(parameters or {}, allowed=())
        if self.source is None:
            if not self._built(model):
                raise InvalidInput(
                    f"model {model!r} is not built: run `tessera build --model {model}`; "
                    "a service started without shared model states does not build",
                    param="model",
                )
            self._unloaded.pop(model, None)
            return
        await self.source.load(model)
        self._unloaded.pop(model, None)
        deadline = asyncio.get_running_loop().time() + self.load_timeout_s
        while True:
            await self.refresh()
            status = self.status(model)
            if status.state == "ready":
                return
            if status.state == "failed":
                raise Unavailable(f"model {model!r} could not be loaded: {status.reason}", param="model")
            if asyncio.get_running_loop().time() > deadline:
                raise Unavailable(
                    f"model {model!r} is still {status.describe()} after {self.load_timeout_s:.0f} s; "
                    "it will be ready when that ends (see POST /v2/repository/index)",
                    param="model",
                    retry_after_s=30.0,
                )
            await asyncio.sleep(self.refresh_s)

    async def unload(self, model: str, parameters: dict[str, Any] | None = None) -> None:
        """Take ``model`` out of service, wait (up to the drain timeout) for its requests here to
        finish, then (with a shared source) for every backbone replica to release it."""
        self._check_allowed("unloaded")
        _check_repository_parameters(parameters or {}, allowed=("unload_dependents",))
        self._unloaded[model] = "unloaded by request"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.drain_timeout_s
        if self._inflight.get(model, 0):
            event = self._idle.setdefault(model, asyncio.Event())
            event.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.drain_timeout_s):
                    await event.wait()
        if self.source is None:
            return
        await self.source.unload(model)
        # The shared state says unloading from now on, for every replica: a later load through any
        # ingress replica must not find this one still holding its own override.
        await self.refresh()
        self._unloaded.pop(model, None)
        while loop.time() < deadline:
            await self.refresh()
            if self._status.get(model, ModelStatus(state="unloaded")).state in ("unloaded", "unavailable"):
                return
            await asyncio.sleep(self.refresh_s)


def _check_repository_parameters(parameters: dict[str, Any], *, allowed: tuple[str, ...]) -> None:
    for key in parameters:
        if key not in allowed:
            supported = ", ".join(allowed) or "none"
            raise InvalidInput(
                f"unsupported parameter {key!r} for this repository request (supported: {supported}); "
                "Tessera loads models from its repository, not from uploaded configs or files",
                param=key,
            )


# -- model configuration -------------------------------------------------------------------------------
class TritonTensor(BaseModel):
    name: str
    data_type: str = Field(description="Triton DataType name, e.g. TYPE_FP32.")
    dims: list[int] = Field(description="Shape without the batch dimension; -1 marks a variable size.")
    label_filename: str | None = Field(default=None, description="Outputs: the labels file, when there is one.")


class DynamicBatching(BaseModel):
    preferred_batch_size: list[int]
    max_queue_delay_microseconds: int


class InstanceGroup(BaseModel):
    name: str
    kind: Literal["KIND_CPU", "KIND_GPU"]
    count: int


class ModelParameter(BaseModel):
    string_value: str


class TritonModelConfig(BaseModel):
    """The subset of Triton's ``ModelConfig`` that describes a Tessera model, same names and JSON shape."""

    name: str
    platform: str
    backend: str
    max_batch_size: int
    input: list[TritonTensor]
    output: list[TritonTensor]
    dynamic_batching: DynamicBatching
    instance_group: list[InstanceGroup]
    parameters: dict[str, ModelParameter]


def triton_model_config(
    cfg: ModelConfig,
    manifest: Manifest | None,
    *,
    platform: str,
    pixel_datatypes: tuple[str, ...],
    labels: bool,
) -> TritonModelConfig:
    """``cfg`` (and what was built for it) in Triton's model-configuration shape; ``platform`` as
    the model metadata reports it."""
    built = set(manifest.artifacts) if manifest else set()
    backend = "tensorrt" if platform == "tensorrt_plan" else "onnxruntime" if platform else ""
    buckets = cfg.input.buckets
    side = buckets[0] if len(buckets) == 1 else -1
    outputs = [TritonTensor(name="embedding", data_type="TYPE_FP32", dims=[cfg.output.embedding_dim])]
    if cfg.output.num_classes > 0:
        outputs.append(
            TritonTensor(
                name="logits",
                data_type="TYPE_FP32",
                dims=[cfg.output.num_classes],
                label_filename="labels.txt" if labels else None,
            )
        )
    batching = cfg.batching
    facts = {
        "family": cfg.family,
        "buckets": ",".join(str(b) for b in buckets),
        "native_size": str(cfg.input.native_size),
        "patch_size": str(cfg.input.patch_size),
        "runtime": backend or "not built",
        "precision": "fp16" if "onnx_fp16" in built and "onnx" not in built else "fp32",
        "artifacts": ",".join(sorted(built)),
        "pixel_datatypes": ",".join(pixel_datatypes),
        "weights": "trained" if cfg.trained else "untrained",
        "max_concurrent_batches": str(batching.max_concurrent_batches),
        "alternative_inputs": "send exactly one of pixels or image",
    }
    return TritonModelConfig(
        name=cfg.name,
        platform=platform,
        backend=backend,
        max_batch_size=batching.max_batch_size,
        input=[
            TritonTensor(name="pixels", data_type=_TRITON_TYPES[pixel_datatypes[0]], dims=[3, side, side]),
            TritonTensor(name="image", data_type="TYPE_STRING", dims=[1]),
        ],
        output=outputs,
        dynamic_batching=DynamicBatching(
            preferred_batch_size=[batching.max_batch_size],
            max_queue_delay_microseconds=round(batching.batch_wait_timeout_s * 1e6),
        ),
        instance_group=[
            InstanceGroup(
                name=f"backbone_{cfg.name}",
                kind="KIND_GPU" if batching.num_gpus > 0 else "KIND_CPU",
                count=batching.num_replicas,
            )
        ],
        parameters={key: ModelParameter(string_value=value) for key, value in facts.items()},
    )
