"""Triton's model repository and model configuration extensions, over the serving core.

``ModelControl`` keeps which models are loaded (available to the router, ``/v1/models``, OIP
readiness and inference) and how many requests each has in flight. Tessera deploys a backbone
for every built model when the service starts (``service.serve.app.build_app``); with explicit
model control (``ServerSettings.model_control_mode = "explicit"``) ``unload`` takes a model out
of service (new requests are refused with 503 / UNAVAILABLE, the router routes around it) and
waits for its in-flight requests to finish; ``load`` puts a deployed model back. A model that is
not built cannot be loaded (400: build it with ``tessera build``): loading never builds, and the
backbone deployment's replicas stay up while the model is unloaded. Without explicit model
control load and unload are refused with 403 / PERMISSION_DENIED.

``triton_model_config`` answers ``GET /v2/models/{m}/config`` and gRPC ``ModelConfig`` in
Triton's model-configuration shape (``model_config.proto``), with Tessera's own facts (size
buckets, runtime, precision, accepted pixel datatypes) in ``parameters``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any, Literal

from pydantic import BaseModel, Field

from service.errors import InvalidInput, NotAllowed, Unavailable
from service.models.config import ModelConfig
from service.models.manifest import Manifest

__all__ = [
    "ModelControl",
    "ModelControlMode",
    "RepositoryModel",
    "TritonModelConfig",
    "triton_model_config",
]

ModelControlMode = Literal["none", "explicit"]

#: Triton's ``DataType`` names for the OIP datatypes.
_TRITON_TYPES = {
    "BOOL": "TYPE_BOOL",
    "UINT8": "TYPE_UINT8",
    "FP16": "TYPE_FP16",
    "FP32": "TYPE_FP32",
    "BYTES": "TYPE_STRING",
}


# -- model repository --------------------------------------------------------------------------------
class RepositoryModel(BaseModel):
    """One entry of the repository index (Triton's ``RepositoryIndexResponse.ModelIndex``)."""

    name: str
    version: str
    state: Literal["READY", "UNAVAILABLE"]
    reason: str = Field(default="", description="Why the model is not READY.")


class ModelControl:
    """Loaded models and in-flight requests per model, for one serving core."""

    def __init__(self, mode: ModelControlMode = "none", *, drain_timeout_s: float = 30.0):
        self.mode: ModelControlMode = mode
        self.drain_timeout_s = drain_timeout_s
        self._unloaded: dict[str, str] = {}  # model -> reason
        self._inflight: dict[str, int] = {}
        self._idle: dict[str, asyncio.Event] = {}

    def is_loaded(self, model: str) -> bool:
        return model not in self._unloaded

    def unload_reason(self, model: str) -> str:
        return self._unloaded.get(model, "")

    def require_loaded(self, model: str) -> None:
        if model in self._unloaded:
            raise Unavailable(f"model {model!r} is not loaded ({self._unloaded[model]})", param="model")

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

    def _check_allowed(self, action: str) -> None:
        if self.mode != "explicit":
            raise NotAllowed(
                f"explicit model control is disabled on this server, so models cannot be {action}; "
                "start it with TESSERA_MODEL_CONTROL_MODE=explicit (tessera serve --model-control-mode explicit)",
                param="model_control_mode",
            )

    def load(self, model: str, built: bool, parameters: dict[str, Any] | None = None) -> None:
        """Put ``model`` (deployed by the app) back in service."""
        self._check_allowed("loaded")
        _check_repository_parameters(parameters or {}, allowed=())
        if not built:
            raise InvalidInput(
                f"model {model!r} is not built: run `tessera build --model {model}` and restart the service; "
                "load does not build models",
                param="model",
            )
        self._unloaded.pop(model, None)

    async def unload(self, model: str, parameters: dict[str, Any] | None = None) -> None:
        """Take ``model`` out of service, then wait (up to the drain timeout) for its requests to finish."""
        self._check_allowed("unloaded")
        _check_repository_parameters(parameters or {}, allowed=("unload_dependents",))
        self._unloaded[model] = "unloaded by request"
        if self._inflight.get(model, 0) == 0:
            return
        event = self._idle.setdefault(model, asyncio.Event())
        event.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.drain_timeout_s):
                await event.wait()


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
