"""The foundation's router: a size threshold (global attention small, windowed above).

Replaced by the cost-model router (``service.routing.policy``); kept as the fallback when no
routing policy is configured.
"""

from __future__ import annotations

from service.errors import InvalidInput
from service.models import ModelConfig
from service.routing.decision import Candidate, RouteDecision

__all__ = ["ThresholdRouter"]


class ThresholdRouter:
    """Images whose longer side is at most ``threshold`` go to ``small``, others to ``large``."""

    def __init__(self, configs: dict[str, ModelConfig], *, small: str, large: str, threshold: int = 512):
        missing = {small, large} - set(configs)
        if missing:
            raise ValueError(f"router names unknown models: {sorted(missing)}")
        self.configs, self.small, self.large, self.threshold = configs, small, large, threshold

    def decide(self, width: int, height: int, model: str | None = None) -> RouteDecision:
        if width <= 0 or height <= 0:
            raise InvalidInput(f"image size must be positive, got {width}x{height}", param="size")
        if model is not None:
            if model not in self.configs:
                raise InvalidInput(f"unknown model {model!r}; known: {', '.join(self.configs)}", param="model")
            chosen, reason = model, "requested"
            explanation = f"the client asked for {model}"
        elif max(width, height) <= self.threshold:
            chosen, reason = self.small, "small_image"
            explanation = f"longer side {max(width, height)} <= {self.threshold}: global attention is cheapest"
        else:
            chosen, reason = self.large, "large_image"
            explanation = f"longer side {max(width, height)} > {self.threshold}: windowed attention scales linearly"
        candidates = []
        for name, cfg in self.configs.items():
            side = cfg.input.native_size
            tokens = (side // cfg.input.patch_size) ** 2
            candidates.append(Candidate(model=name, fits=True, input_size=(side, side), tokens=tokens))
        side = self.configs[chosen].input.native_size
        return RouteDecision(
            model=chosen,
            reason=reason,
            explanation=explanation,
            fit=self.configs[chosen].input.fit,
            input_size=(side, side),
            original_size=(height, width),
            candidates=candidates,
        )
