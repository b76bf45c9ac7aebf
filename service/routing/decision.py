"""What a routing decision is: the chosen model, how the image is fitted to it, and why."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

__all__ = ["Candidate", "RouteDecision"]


class Candidate(BaseModel):
    """One backbone the router considered, with its predicted cost for this input."""

    model: str
    fits: bool = Field(description="Within the memory budget and the model's allowed sizes.")
    input_size: tuple[int, int] = Field(description="(height, width) the model would run at.")
    tokens: int = Field(default=0, description="Tokens at the first stage.")
    gmacs: float = Field(default=0.0, description="Predicted GMACs for one image.")
    attention_fraction: float = Field(default=0.0, description="Share of MACs spent in attention.")
    predicted_latency_ms: float | None = Field(default=None, description="Calibrated latency prediction.")
    predicted_peak_bytes: int | None = Field(default=None, description="Predicted peak activation memory.")
    note: str = ""


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
