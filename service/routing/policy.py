"""The routing policy (``model_repo/routes.yaml``) and the cost-model router (torch-free).

For every enabled model the router works out the input the image would run at, predicts its
latency (calibrated, or the analytic fallback) and its peak memory, checks it against the policy,
and picks the cheapest model that fits. Every answer lists every candidate with its costs and says
why the winner won.

Input size rule, per model, for an ``H x W`` image with longer side ``L``:

1. *Dynamic* models (``routes.yaml`` ``dynamic: true``, or ``architecture.kwargs.dynamic_img_size``
   in the model's config when unset) run at the image's own size, each side padded up to the
   family's multiple (:func:`~service.routing.cost.size_multiple`: the patch for ViT, the last
   stage's stride for Swin and NAT); fit ``pad``.
2. Other models run at a square bucket: the smallest of ``input.sizes`` that is ``>= L``, capped
   at the largest; with no ``sizes``, ``input.native_size``. The image is fitted by the model's
   ``fit`` in routes.yaml, else the policy's ``fit``: ``letterbox`` (keep aspect, scale the longer
   side to the bucket, pad), ``resize`` (stretch to the square), ``pad`` (no scaling; an image
   larger than the bucket is letterboxed instead).

A candidate *fits* when ``min_side <= L <= max_side`` (the model's range in routes.yaml) and its
predicted peak memory for the memory batch (the model's ``batching.max_batch_size``, or 1 with
``memory_batch: single``) is within the device's ``memory_budget_bytes``. The latency target is
soft: candidates over it still fit, and are flagged.

Choice: the cheapest predicted latency among fitting candidates (``cheapest``; ``only_fit`` when
one of several fits). A requested model is used if it fits (``requested``), else the request is
refused: ``PayloadTooLarge`` when the image is over its ``max_side`` or its memory budget,
``InvalidInput`` when under its ``min_side`` or disabled; an unknown model is ``NotFound``.

When nothing fits because the image is too large (over every ``max_side``, or over every memory
budget), ``oversize`` decides: ``downscale`` shrinks the image (aspect kept) to the largest side
each model allows and fits in memory, and picks the cheapest (``downscaled``); ``tile`` cuts it,
unscaled, into tiles of the largest input each model allows and fits in memory, predicted as
batches of ``max_batch_size`` (``oversize_tiled``); ``refuse`` raises ``PayloadTooLarge``. When
nothing fits because the image is smaller than every ``min_side``, ``default_model`` (if set)
takes it anyway (``default_fallback``), else ``InvalidInput``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from service.errors import InvalidInput, NotFound, PayloadTooLarge
from service.models.config import ModelConfig
from service.models.meta import ArchFacts
from service.routing.calibration import Calibration, LatencyPrediction, predict_latency
from service.routing.cost import CostEstimate, estimate_cost, size_multiple
from service.routing.decision import Candidate, RouteDecision
from service.settings import load_yaml

__all__ = [
    "CostRouter",
    "DevicePolicy",
    "ModelRoute",
    "RoutesPolicy",
    "load_policy",
]

Fit = Literal["letterbox", "resize", "pad"]
#: How an image is fitted: a policy fit, or one of the oversize treatments.
FitKind = Literal["letterbox", "resize", "pad", "downscale", "tile"]

_GIB = 1 << 30
_MAX_SIDE = 1 << 20


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DevicePolicy(_Strict):
    """Budgets and runtime assumptions for one device kind (``cpu``, ``cuda``) or device (``cuda:1``)."""

    memory_budget_bytes: int = Field(
        gt=0, le=1 << 50, description="Peak memory one backbone's forward may use (weights, activations, scores)."
    )
    latency_target_ms: float = Field(
        gt=0, le=3.6e6, description="Soft latency target per image; candidates over it are flagged, not dropped."
    )
    precision: Literal["fp32", "fp16", "bf16"] = Field(
        default="fp32", description="Activation precision of the runtime: sets bytes per element."
    )
    fused_attention: bool = Field(
        default=False, description="The runtime fuses attention (no materialised score matrix in memory)."
    )
    fallback_gmacs_per_s: float | None = Field(
        default=None, gt=0, le=1e7, description="Assumed GMAC/s for uncalibrated models; unset: built-in default."
    )

    @property
    def dtype_bytes(self) -> int:
        return 4 if self.precision == "fp32" else 2


class ModelRoute(_Strict):
    """What the policy allows for one model."""

    enabled: bool = Field(default=True, description="Whether the router may choose (or be asked for) this model.")
    min_side: int = Field(default=1, ge=1, le=_MAX_SIDE, description="Smallest image longer side routed here.")
    max_side: int = Field(
        default=65536, ge=1, le=_MAX_SIDE, description="Largest image longer side routed here (else oversize)."
    )
    fit: Fit | None = Field(default=None, description="Fit for this model's fixed-size inputs; unset: the policy's.")
    dynamic: bool | None = Field(
        default=None,
        description="Run at the image's own (padded) size; unset: the config's architecture.kwargs.dynamic_img_size.",
    )

    @model_validator(mode="after")
    def _range(self) -> ModelRoute:
        if self.min_side > self.max_side:
            raise ValueError(f"min_side {self.min_side} is larger than max_side {self.max_side}")
        return self


def _default_devices() -> dict[str, DevicePolicy]:
    return {
        "cpu": DevicePolicy(memory_budget_bytes=8 * _GIB, latency_target_ms=1000.0),
        "cuda": DevicePolicy(
            memory_budget_bytes=40 * _GIB, latency_target_ms=100.0, precision="fp16", fused_attention=True
        ),
    }


class RoutesPolicy(_Strict):
    """``model_repo/routes.yaml``: budgets per device, allowed sizes per model, what to do with outliers."""

    version: Literal[1] = Field(default=1, description="Schema version of routes.yaml.")
    device: str = Field(
        default="cpu", pattern=r"^[a-z]+(:\d+)?$", description="Device the router plans for unless told otherwise."
    )
    devices: dict[str, DevicePolicy] = Field(
        default_factory=_default_devices,
        description="Budgets by device kind (cpu, cuda) or exact device (cuda:1); exact names win.",
    )
    memory_batch: Literal["max_batch", "single"] = Field(
        default="max_batch",
        description="Check memory for a full batch (the model's max_batch_size) or for one image.",
    )
    models: dict[str, ModelRoute] = Field(
        default_factory=dict, description="Per-model switches and size ranges; unlisted models get the defaults."
    )
    oversize: Literal["downscale", "tile", "refuse"] = Field(
        default="downscale", description="What to do with an image too large for every model (size or memory)."
    )
    fit: Fit = Field(default="letterbox", description="Default fit of an image to a fixed-size (square) input.")
    default_model: str | None = Field(
        default=None, description="Takes images smaller than every model's min_side; unset: such images are refused."
    )

    @model_validator(mode="after")
    def _consistent(self) -> RoutesPolicy:
        self.device_policy(self.device)
        if self.default_model is not None and not self.route_for(self.default_model).enabled:
            raise ValueError(f"default_model {self.default_model!r} is disabled")
        return self

    def device_policy(self, device: str) -> DevicePolicy:
        """The budget for ``device``: its exact entry, else its kind's (``cuda:1`` -> ``cuda``)."""
        policy = self.devices.get(device) or self.devices.get(device.split(":", 1)[0])
        if policy is None:
            raise ValueError(f"routes.yaml has no budget for device {device!r} (devices: {', '.join(self.devices)})")
        return policy

    def route_for(self, model: str) -> ModelRoute:
        route = self.models.get(model)
        return ModelRoute() if route is None else route


def load_policy(path: str | Path) -> RoutesPolicy:
    """Read and validate ``routes.yaml``; errors name the file and the bad field."""
    return load_yaml(path, RoutesPolicy)


# --------------------------------------------------------------------------- the router


@dataclass
class _Plan:
    """One model's way of running one image, and its predicted cost."""

    model: str
    input_size: tuple[int, int]
    content_size: tuple[int, int]
    fit: FitKind
    estimate: CostEstimate
    latency: LatencyPrediction
    peak_bytes: int
    score_bytes: int
    memory_batch: int
    tile_grid: tuple[int, int] | None = None
    #: why it does not fit, per check: "too_small", "too_large", "memory"
    problems: dict[str, str] = field(default_factory=dict)

    @property
    def fits(self) -> bool:
        return not self.problems

    @property
    def latency_ms(self) -> float:
        return 1e3 * self.latency.seconds

    @property
    def tiles(self) -> int:
        return self.tile_grid[0] * self.tile_grid[1] if self.tile_grid else 1


class CostRouter:
    """Routes an image to the backbone with the cheapest predicted latency that fits the policy.

    ``configs`` and ``facts`` are keyed by model name; every enabled model needs both. ``device``
    (default: the policy's) selects the budget and the calibration entries; ``backend`` narrows
    the calibration lookup to one runtime (default: the newest entry for the device).
    """

    def __init__(
        self,
        configs: dict[str, ModelConfig],
        facts: dict[str, ArchFacts],
        policy: RoutesPolicy,
        calibration: Calibration | None = None,
        *,
        device: str | None = None,
        backend: str | None = None,
    ):
        unknown = sorted(set(policy.models) - set(configs))
        if unknown:
            raise ValueError(f"routes.yaml names models with no config: {', '.join(unknown)}")
        self.configs = dict(configs)
        self.policy = policy
        self.calibration = calibration
        self.device = device or policy.device
        self.device_policy = policy.device_policy(self.device)
        self.backend = backend
        self.enabled = [name for name in self.configs if policy.route_for(name).enabled]
        if not self.enabled:
            raise ValueError("routes.yaml enables no model")
        missing = [name for name in self.enabled if name not in facts]
        if missing:
            raise ValueError(f"no architecture facts for enabled models: {', '.join(missing)} (are they built?)")
        for name in self.enabled:
            if facts[name].family != self.configs[name].family:
                raise ValueError(
                    f"{name}: config says family {self.configs[name].family!r}, facts say {facts[name].family!r}"
                )
        self.facts = {name: facts[name] for name in self.enabled}
        if policy.default_model is not None and policy.default_model not in self.configs:
            raise ValueError(f"default_model {policy.default_model!r} has no config")

    # ------------------------------------------------------------------ public

    def decide(self, width: int, height: int, model: str | None = None) -> RouteDecision:
        """The routing decision for a ``width x height`` image, optionally for a requested model."""
        for name, value in (("width", width), ("height", height)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise InvalidInput(f"image {name} must be a positive integer, got {value!r}", param="size")
        size = (height, width)
        if model is not None:
            return self._requested(model, size)

        plans = [self._plan(name, size) for name in self.enabled]
        fitting = [p for p in plans if p.fits]
        if fitting:
            chosen = min(fitting, key=lambda p: (p.latency.seconds, p.model))
            reason = "only_fit" if len(fitting) == 1 and len(plans) > 1 else "cheapest"
            return self._decision(chosen, plans, size, reason, self._why(chosen, plans, reason))

        too_large = any("too_large" in p.problems or "memory" in p.problems for p in plans)
        if not too_large:
            return self._too_small(plans, size)
        if self.policy.oversize == "refuse":
            raise PayloadTooLarge(
                f"image {width}x{height} fits no model (oversize policy: refuse): {self._problems(plans)}",
                param="size",
            )
        if self.policy.oversize == "downscale":
            rescue = [self._downscaled(name, size) for name in self.enabled]
            reason = "downscaled"
        else:
            rescue = [self._tiled(name, size) for name in self.enabled]
            reason = "oversize_tiled"
        fitting = [p for p in rescue if p.fits]
        if not fitting:
            raise PayloadTooLarge(
                f"image {width}x{height} fits no model even with oversize policy "
                f"{self.policy.oversize!r}: {self._problems(rescue)}",
                param="size",
            )
        chosen = min(fitting, key=lambda p: (p.latency.seconds, p.model))
        return self._decision(chosen, rescue, size, reason, self._why(chosen, rescue, reason))

    def input_size(self, model: str, width: int, height: int) -> tuple[int, int]:
        """(height, width) ``model`` would run this image at (before any oversize handling)."""
        if model not in self.facts:
            raise NotFound(f"unknown or disabled model {model!r}", param="model")
        return self._sizing(model, (height, width))[0]

    # ------------------------------------------------------------------ requested model

    def _requested(self, model: str, size: tuple[int, int]) -> RouteDecision:
        if model not in self.configs:
            raise NotFound(f"unknown model {model!r}; known: {', '.join(self.configs)}", param="model")
        if model not in self.enabled:
            raise InvalidInput(f"model {model!r} is disabled in routes.yaml", param="model")
        plans = [self._plan(name, size) for name in self.enabled]
        plan = next(p for p in plans if p.model == model)
        if plan.fits:
            explanation = (
                f"the client asked for {model}: {plan.latency_ms:.1f} ms at {plan.input_size[0]}x{plan.input_size[1]}"
            )
            return self._decision(plan, plans, size, "requested", explanation)
        message = f"model {model!r} cannot take a {size[1]}x{size[0]} image: {'; '.join(plan.problems.values())}"
        if "too_large" in plan.problems or "memory" in plan.problems:
            raise PayloadTooLarge(message, param="model")
        raise InvalidInput(message, param="model")

    # ------------------------------------------------------------------ fallbacks

    def _too_small(self, plans: list[_Plan], size: tuple[int, int]) -> RouteDecision:
        name = self.policy.default_model
        if name is None or name not in self.facts:
            raise InvalidInput(
                f"image {size[1]}x{size[0]} is smaller than every model accepts: {self._problems(plans)}",
                param="size",
            )
        plan = self._plan(name, size, check_range=False)
        if not plan.fits:
            raise InvalidInput(f"default model {name!r} cannot take the image: {self._problems([plan])}", param="size")
        plans = [plan if p.model == name else p for p in plans]
        explanation = f"longer side {max(size)} is under every model's min_side; the default model {name} takes it"
        return self._decision(plan, plans, size, "default_fallback", explanation)

    def _downscaled(self, name: str, size: tuple[int, int]) -> _Plan:
        """The image shrunk (aspect kept) to the largest longer side the model allows and fits in memory."""
        route = self.policy.route_for(name)
        cap = min(route.max_side, max(size))
        if cap < route.min_side:
            plan = self._plan(name, size)
            plan.problems = {"too_small": f"longer side {max(size)} < min_side {route.min_side}"}
            return plan
        if self._dynamic(name):
            m = size_multiple(self.facts[name])
            sides = [cap, *(k * m for k in range(cap // m, 0, -1) if route.min_side <= k * m < cap)]
        else:
            buckets = self.configs[name].input.buckets
            sides = [cap, *(b for b in reversed(buckets) if route.min_side <= b < cap)]
        plan = self._largest_fitting(sides, lambda side: self._plan(name, _scale(size, side)))
        if plan.fits:
            plan.fit = "downscale"
        else:
            plan.problems.setdefault("memory", "over the memory budget at every allowed size")
        return plan

    def _tiled(self, name: str, size: tuple[int, int]) -> _Plan:
        """The image cut, unscaled, into tiles of the largest input the model allows and fits in memory.

        Fixed-size models tile at their buckets (largest first); dynamic models at any multiple of
        their size multiple, each tile no larger than the image. Tiles run in batches of
        ``max_batch_size``; edge tiles are padded.
        """
        route = self.policy.route_for(name)
        if self._dynamic(name):
            m = size_multiple(self.facts[name])
            top = min(route.max_side, max(size))
            sides = [k * m for k in range(top // m, 0, -1) if k * m >= route.min_side]
        else:
            sides = [b for b in reversed(self.configs[name].input.buckets) if route.min_side <= b <= route.max_side]
        if not sides:
            plan = self._plan(name, size)
            plan.problems = {"too_large": f"no tile size within [{route.min_side}, {route.max_side}]"}
            return plan

        def tile_plan(side: int) -> _Plan:
            tile = (min(side, size[0]), min(side, size[1])) if self._dynamic(name) else (side, side)
            grid = (math.ceil(size[0] / side), math.ceil(size[1] / side))
            plan = self._plan(name, tile, tiles=grid[0] * grid[1])
            plan.tile_grid, plan.fit = grid, "tile"
            return plan

        return self._largest_fitting(sides, tile_plan)

    @staticmethod
    def _largest_fitting(sides: list[int], make: Callable[[int], _Plan]) -> _Plan:
        """The plan for the first (largest) side in ``sides`` (descending) that fits, by bisection.

        Memory grows with the side, so the fitting sides are a suffix of ``sides``; without any,
        the plan for the smallest side says why.
        """
        first = make(sides[0])
        if first.fits or len(sides) == 1:
            return first
        last = make(sides[-1])
        if not last.fits:
            return last
        lo, hi, best = 0, len(sides) - 1, last  # sides[hi] fits, sides[lo] does not
        while hi - lo > 1:
            mid = (lo + hi) // 2
            plan = make(sides[mid])
            if plan.fits:
                hi, best = mid, plan
            else:
                lo = mid
        return best

    # ------------------------------------------------------------------ planning

    def _dynamic(self, name: str) -> bool:
        route = self.policy.route_for(name)
        if route.dynamic is not None:
            return route.dynamic
        return bool(self.configs[name].architecture.kwargs.get("dynamic_img_size", False))

    def _sizing(self, name: str, size: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int], FitKind]:
        """(input size, content size, fit) for an image of ``size`` on ``name``, no oversize handling."""
        h, w = size
        if self._dynamic(name):
            m = size_multiple(self.facts[name])
            return (max(m, math.ceil(h / m) * m), max(m, math.ceil(w / m) * m)), size, "pad"
        buckets = self.configs[name].input.buckets
        longer = max(h, w)
        side = next((b for b in buckets if b >= longer), buckets[-1])
        fit: FitKind = self.policy.route_for(name).fit or self.policy.fit
        if fit == "pad" and longer > side:
            fit = "letterbox"
        if fit == "resize":
            content = (side, side)
        elif fit == "pad":
            content = size
        else:
            content = _scale(size, side)
        return (side, side), content, fit

    def _plan(self, name: str, size: tuple[int, int], *, tiles: int = 1, check_range: bool = True) -> _Plan:
        cfg, facts, device = self.configs[name], self.facts[name], self.device_policy
        (ih, iw), content, fit = self._sizing(name, size)
        classes = cfg.output.num_classes
        max_batch = cfg.batching.max_batch_size
        estimate = estimate_cost(facts, ih, iw, 1, dtype_bytes=device.dtype_bytes, num_classes=classes)
        memory_batch = 1 if self.policy.memory_batch == "single" else max_batch
        memory_batch = min(memory_batch, tiles) if tiles > 1 else memory_batch
        mem = estimate_cost(facts, ih, iw, memory_batch, dtype_bytes=device.dtype_bytes, num_classes=classes)
        rate = device.fallback_gmacs_per_s * 1e9 if device.fallback_gmacs_per_s else None

        def latency(batch: int) -> LatencyPrediction:
            return predict_latency(
                self.calibration,
                name,
                facts,
                ih,
                iw,
                batch,
                device=self.device,
                backend=self.backend,
                estimate=estimate_cost(facts, ih, iw, batch, dtype_bytes=device.dtype_bytes, num_classes=classes),
                fallback_macs_per_s=rate,
            )

        if tiles > 1:
            full, rest = divmod(tiles, max_batch)
            parts = [(full, latency(max_batch))] if full else []
            if rest:
                parts.append((1, latency(rest)))
            pred = LatencyPrediction(
                seconds=sum(n * p.seconds for n, p in parts),
                calibrated=all(p.calibrated for _, p in parts),
                source=parts[0][1].source,
            )
        else:
            pred = latency(1)
        plan = _Plan(
            model=name,
            input_size=(ih, iw),
            content_size=content,
            fit=fit,
            estimate=estimate,
            latency=pred,
            peak_bytes=mem.peak_bytes(device.fused_attention),
            score_bytes=mem.attention_score_bytes(device.fused_attention),
            memory_batch=memory_batch,
        )
        route = self.policy.route_for(name)
        longer = max(size)
        if check_range and longer < route.min_side:
            plan.problems["too_small"] = f"longer side {longer} < min_side {route.min_side}"
        if check_range and longer > route.max_side:
            plan.problems["too_large"] = f"longer side {longer} > max_side {route.max_side}"
        if plan.peak_bytes > device.memory_budget_bytes:
            plan.problems["memory"] = (
                f"predicted peak {_gib(plan.peak_bytes)} at {ih}x{iw} batch {memory_batch} "
                f"> budget {_gib(device.memory_budget_bytes)} on {self.device}"
            )
        return plan

    # ------------------------------------------------------------------ answers

    def _candidate(self, plan: _Plan) -> Candidate:
        est = plan.estimate
        target = self.device_policy.latency_target_ms
        notes = list(plan.problems.values())
        if plan.latency_ms > target:
            notes.append(f"over the {target:g} ms latency target")
        if not plan.latency.calibrated:
            notes.append("uncalibrated")
        return Candidate(
            model=plan.model,
            fits=plan.fits,
            input_size=plan.input_size,
            tokens=est.tokens,
            gmacs=est.gmacs,
            attention_fraction=est.attention_fraction,
            predicted_latency_ms=plan.latency_ms,
            predicted_peak_bytes=plan.peak_bytes,
            note="; ".join(notes),
            fit=plan.fit,
            stage_tokens=list(est.stage_tokens),
            attention_gmacs=est.attention_macs / 1e9,
            calibrated=plan.latency.calibrated,
            latency_source=plan.latency.source,
            within_latency_target=plan.latency_ms <= target,
            fused_attention=self.device_policy.fused_attention,
            attention_score_bytes=plan.score_bytes,
            memory_batch=plan.memory_batch,
            tiles=plan.tiles,
        )

    def _decision(
        self, chosen: _Plan, plans: list[_Plan], size: tuple[int, int], reason: str, explanation: str
    ) -> RouteDecision:
        target = self.device_policy.latency_target_ms
        if chosen.latency_ms > target:
            explanation += f" (predicted {chosen.latency_ms:.1f} ms is over the {target:g} ms target)"
        return RouteDecision(
            model=chosen.model,
            reason=reason,
            explanation=explanation,
            fit=chosen.fit,
            input_size=chosen.input_size,
            original_size=size,
            candidates=[self._candidate(p) for p in plans],
            content_size=chosen.content_size,
            tile_grid=chosen.tile_grid,
            predicted_latency_ms=chosen.latency_ms,
            predicted_peak_bytes=chosen.peak_bytes,
            calibrated=chosen.latency.calibrated,
            device=self.device,
        )

    def _why(self, chosen: _Plan, plans: list[_Plan], reason: str) -> str:
        cost = f"{chosen.latency_ms:.1f} ms{'' if chosen.latency.calibrated else ' (uncalibrated)'}"
        at = f"{chosen.input_size[0]}x{chosen.input_size[1]}"
        others = [p for p in plans if p.model != chosen.model and p.fits]
        if reason == "downscaled":
            return f"too large for every model as sent; downscaled for {chosen.model}, cheapest at {at}: {cost}"
        if reason == "oversize_tiled":
            rows, cols = chosen.tile_grid or (1, 1)
            return f"too large for every model as sent; {rows}x{cols} tiles of {at} through {chosen.model}: {cost}"
        if reason == "only_fit":
            return f"{chosen.model} is the only model that fits ({self._problems(plans, skip=chosen.model)}): {cost}"
        if not others:
            return f"{chosen.model} is the only enabled model: {cost} at {at}"
        runner_up = min(others, key=lambda p: p.latency.seconds)
        return (
            f"{chosen.model} is cheapest at {at}: {cost} vs {runner_up.model} {runner_up.latency_ms:.1f} ms "
            f"({len(others) + 1} of {len(plans)} models fit)"
        )

    @staticmethod
    def _problems(plans: list[_Plan], skip: str | None = None) -> str:
        return "; ".join(
            f"{p.model}: {', '.join(p.problems.values())}" for p in plans if p.problems and p.model != skip
        )


def _scale(size: tuple[int, int], longer: int) -> tuple[int, int]:
    """``size`` scaled (aspect kept) so that its longer side is ``longer``."""
    h, w = size
    factor = longer / max(h, w)
    return max(1, round(h * factor)), max(1, round(w * factor))


def _gib(n: int) -> str:
    return f"{n / _GIB:.2f} GiB"
