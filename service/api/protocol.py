"""Request and response models of the ``/v1`` API (pydantic), shared by REST and gRPC."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.api.model_repository import ModelStatus
from service.routing.decision import RouteDecision

__all__ = ["InputInfo", "MemoryInfo", "ModelInfo", "PredictOptions", "PredictResponse", "TimingInfo", "TopK"]


class PredictOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(default=None, description="Backbone to use; the router picks when omitted.")
    output: Literal["embedding", "logits", "both"] = Field(default="embedding", description="What to return.")
    top_k: int = Field(default=5, ge=0, le=100, description="Top classes to list when logits are returned.")


class InputInfo(BaseModel):
    format: str = Field(description="Decoded format: JPEG, PNG, TIFF, WEBP.")
    original: tuple[int, int] = Field(description="(height, width) as sent.")
    content: tuple[int, int] = Field(description="(height, width) after resizing, before padding.")
    processed: tuple[int, int] = Field(description="(height, width) the model ran at.")
    tokens: int = Field(description="Tokens at the model's first stage.")
    fit: str = Field(description="letterbox | resize | pad | downscale: how the image was fitted.")


class TimingInfo(BaseModel):
    decode: float
    preprocess: float
    queue: float
    inference: float
    total: float


class MemoryInfo(BaseModel):
    device: str = Field(description="cpu, or the GPU that ran the model.")
    peak_bytes: int = Field(description="High-water mark of the replica's model memory (RSS on CPU).")
    allocated_bytes: int = Field(description="Memory in use after this request.")
    source: str = Field(
        default="rss",
        description="Which figure: rss (host process), nvml_process (this process on the GPU), nvml_device "
        "(the whole GPU, when the process cannot be matched), torch_allocator (PyTorch's tensors only).",
    )


class TopK(BaseModel):
    index: int
    score: float


class PredictResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "model": "vit_small",
                "version": 1,
                "backend": "onnxruntime",
                "precision": "fp32",
                "weights": "untrained",
                "input": {
                    "format": "JPEG",
                    "original": [224, 224],
                    "content": [224, 224],
                    "processed": [224, 224],
                    "tokens": 196,
                    "fit": "letterbox",
                },
                "embedding": [0.12, -0.4],
                "timing_ms": {"decode": 1.1, "preprocess": 0.9, "queue": 2.0, "inference": 30.5, "total": 36.0},
                "memory": {"device": "cpu", "peak_bytes": 612000000, "allocated_bytes": 598000000},
            }
        }
    )

    request_id: str = ""
    model: str
    version: int
    backend: str
    precision: str
    weights: Literal["trained", "untrained"]
    weights_note: str = Field(default="", description="Why an untrained model's numbers carry no meaning.")
    input: InputInfo
    route: RouteDecision
    embedding: list[float] | None = None
    logits: list[float] | None = None
    top_k: list[TopK] | None = None
    timing_ms: TimingInfo
    memory: MemoryInfo
    batch_size: int = Field(default=1, description="Images in the backend call that ran this one.")


class ModelInfo(BaseModel):
    name: str
    version: int
    family: str
    description: str
    weights: Literal["trained", "untrained"]
    ready: bool
    status: ModelStatus = Field(
        description="State (building, loading, ready, failed, unloaded...), reason, build phase."
    )
    input: dict[str, Any]
    output: dict[str, Any]
    arch: dict[str, Any] = Field(default_factory=dict)
    params: int | None = None
    gmacs_native: float | None = None
    backends_built: list[str] = Field(default_factory=list)
