"""What a routing decision is (the chosen model, how the image is fitted to it, and why) and who makes one."""

from __future__ import annotations

from typing import Literal, Protocol

from pydantic import BaseModel, Field

__all__ = ["Candidate", "RouteDecision", "Router"]


class Candidate(BaseModel):
    """One backbone the router considered, with its predicted cost for this input."""

    model: str
    fits: bool = Field(description="Within the memory budget and the model's allowed sizes.")
    input_size: tuple[int, int] = Field(description="(height, width) the model would run at.")
    tokens: int = Field(default=0, description="Tokens at the first stage.")
    gmacs: float = Field(default=0.0, description="Predicted GMACs for one image.")
    attention_fraction: float = Field(default=0.0, description="Share of MACs spent in attention.")
    predicted_latency_ms: float | None = Field(
        default=None, description="Predicted latency for one image (calibrated or the analytic fallback)."
    )
    predicted_peak_bytes: int | None = Field(
        default=None, description="Predicted peak memory (weights, activations, unfused scores) for memory_batch."
    )
    note: str = ""
    fit: str | None = Field(default=None, description="How the image would be fitted to this model's input.")
    stage_tokens: list[int] = Field(default_factory=list, description="Tokens per image at each stage.")
    attention_gmacs: float = Field(default=0.0, description="Predicted attention GMACs (QK^T and AV) per image.")
    calibrated: bool = Field(
        default=False, description="Latency from a host calibration; False: the analytic fallback (MACs / rate)."
    )
    latency_source: str = Field(default="", description="Where the latency prediction comes from.")
    within_latency_target: bool | None = Field(
        default=None, description="Predicted latency at or under the device's latency target."
    )
    fused_attention: bool = Field(default=False, description="Whether the memory prediction assumes fused attention.")
    attention_score_bytes: int = Field(
        default=0, description="One layer's materialised attention scores for the memory batch; 0 when fused."
    )
    memory_batch: int = Field(default=1, description="Batch size the peak-memory prediction is for.")
    tiles: int = Field(default=1, description="Tiles the image is cut into (1 unless tiled).")


class RouteDecision(BaseModel):
    model: str = Field(description="The chosen backbone.")
    reason: str = Field(description="Short machine-friendly reason, also the metrics label.")
    explanation: str = Field(description="One sentence for humans.")
    fit: Literal["letterbox", "resize", "pad", "downscale", "tile"] = Field(
        description="How the image is fitted to the model's input."
    )
    input_size: tuple[int, int] = Field(description="(height, width) the model runs at.")
    original_size: tuple[int, int] = Field(description="(height, width) of the image as sent.")
    candidates: list[Candidate] = Field(default_factory=list)
    content_size: tuple[int, int] | None = Field(
        default=None,
        description="(height, width) the image occupies inside input_size once fitted (None: not computed).",
    )
    tile_grid: tuple[int, int] | None = Field(
        default=None, description="(rows, cols) of input_size tiles when fit is 'tile', edge tiles padded."
    )
    predicted_latency_ms: float | None = Field(default=None, description="The chosen candidate's latency.")
    predicted_peak_bytes: int | None = Field(default=None, description="The chosen candidate's peak memory.")
    calibrated: bool = Field(default=False, description="Whether the chosen latency comes from a calibration.")
    device: str | None = Field(default=None, description="Device the costs were predicted for.")
    not_ready: dict[str, str] = Field(
        default_factory=dict,
        description="Models left out of this decision because they are not ready, with their state "
        "(building, failed, unloaded...): the router chooses only among ready models.",
    )


class Router(Protocol):
    """What the serving core asks of a router (``CostRouter``, ``ThresholdRouter``)."""

    def decide(self, width: int, height: int, model: str | None = None) -> RouteDecision: ...
