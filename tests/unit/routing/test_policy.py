"""routes.yaml and the cost-model router: which model, at which size, and why."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.errors import InvalidInput, NotFound, PayloadTooLarge, TesseraError
from service.models.config import ModelConfig
from service.models.meta import ArchFacts
from service.models.repository import ModelRepository
from service.routing import CostRouter, RouteDecision, RoutesPolicy, load_policy
from service.routing.calibration import FEATURES, Calibration, CalibrationEntry, FitResiduals
from service.routing.cost import estimate_cost

VIT_S16 = ArchFacts("vit", 16, (12,), (384,), (6,), num_prefix_tokens=1, params=22_050_664)
SWIN_T = ArchFacts("swin", 4, (2, 2, 6, 2), (96, 192, 384, 768), (3, 6, 12, 24), window_size=7, params=28_288_354)
NAT_T = ArchFacts("nat", 4, (3, 4, 18, 5), (64, 128, 256, 512), (2, 4, 8, 16), mlp_ratio=3.0, kernel_size=7)
FACTS = {"vit_small": VIT_S16, "swin_tiny": SWIN_T, "nat_tiny": NAT_T}
GIB = 1 << 30


def config(
    name: str,
    family: str,
    *,
    sizes: list[int] | None = None,
    dynamic: bool = False,
    max_batch: int = 8,
    patch: int = 16,
) -> ModelConfig:
    kwargs: dict[str, Any] = {"dynamic_img_size": True} if dynamic else {}
    return ModelConfig.model_validate(
        {
            "name": name,
            "family": family,
            "architecture": {"timm_name": f"{name}_timm", "kwargs": kwargs},
            "input": {"native_size": 224, "patch_size": patch, "sizes": sizes or []},
            "output": {"embedding_dim": 384},
            "batching": {"max_batch_size": max_batch},
        }
    )


def configs(**overrides: ModelConfig) -> dict[str, ModelConfig]:
    base = {
        "vit_small": config("vit_small", "vit"),
        "swin_tiny": config("swin_tiny", "swin", patch=4, sizes=[224, 448, 896]),
    }
    return {**base, **overrides}


def policy(**raw: Any) -> RoutesPolicy:
    raw.setdefault("devices", {"cpu": {"memory_budget_bytes": 8 * GIB, "latency_target_ms": 1000}})
    return RoutesPolicy.model_validate(raw)


def entry(model: str, coefficients: list[float], device: str = "cpu") -> CalibrationEntry:
    return CalibrationEntry(
        model=model,
        backend="onnxruntime",
        device=device,
        host="box",
        date="2026-11-01T00:00:00+00:00",
        fused_attention=False,
        dtype_bytes=4,
        coefficients=dict(zip(FEATURES, coefficients, strict=True)),
        residuals=FitResiduals(n=8, rms_relative=0.02, max_relative=0.04),
    )


def by_model(decision: RouteDecision) -> dict[str, Any]:
    return {c.model: c for c in decision.candidates}


# --------------------------------------------------------------------------- the policy file


def test_the_shipped_policy_parses_and_routes_the_configured_models() -> None:
    """``model_repo/routes.yaml`` is the example: it parses and names exactly the configured models."""
    repo = ModelRepository(Path(__file__).resolve().parents[3] / "model_repo")
    configured = repo.configs()
    loaded = load_policy(repo.routes_path)
    assert set(loaded.models) == set(configured)
    assert loaded.default_model in configured
    assert loaded.device_policy(loaded.device) is not None
    assert loaded.device_policy("cuda:1").fused_attention  # exact name falls back to the kind
    assert loaded.device_policy("cuda:1").dtype_bytes == 2
    router = CostRouter(configured, {name: FACTS[name] for name in configured}, loaded)
    for width, height in ((224, 224), (640, 480), (2048, 1536)):
        decision = router.decide(width, height)
        assert decision.model in configured
        assert {c.model for c in decision.candidates} <= set(configured)


def test_every_policy_field_has_a_description() -> None:
    from service.routing.policy import DevicePolicy, ModelRoute

    for model in (RoutesPolicy, DevicePolicy, ModelRoute):
        for name, info in model.model_fields.items():
            assert info.description, f"{model.__name__}.{name} has no description"


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("oversize: shrink\n", "oversize"),
        ("fitt: pad\n", "fitt"),
        ("models:\n  vit_small: {min_side: 600, max_side: 512}\n", "min_side 600 is larger"),
        ("models:\n  vit_small: {max_side: 0}\n", "max_side"),
        ("devices:\n  cpu: {memory_budget_bytes: -1, latency_target_ms: 10}\n", "memory_budget_bytes"),
        ("device: tpu\n", "no budget for device 'tpu'"),
        ("default_model: vit_small\nmodels:\n  vit_small: {enabled: false}\n", "disabled"),
        ("- a list\n", "mapping"),
        ("models: [\n", "not valid YAML"),
    ],
)
def test_bad_policies_are_errors_naming_the_file(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=match) as info:
        load_policy(path)
    assert str(path) in str(info.value)


def test_empty_file_is_the_default_policy(tmp_path: Path) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text("")
    assert load_policy(path) == RoutesPolicy()


def test_router_rejects_inconsistent_inputs() -> None:
    with pytest.raises(ValueError, match="no config: nat_tiny"):
        CostRouter(configs(), FACTS, policy(models={"nat_tiny": {}}))
    with pytest.raises(ValueError, match="no architecture facts"):
        CostRouter(configs(), {"vit_small": VIT_S16}, policy())
    with pytest.raises(ValueError, match="family"):
        CostRouter(configs(), {"vit_small": VIT_S16, "swin_tiny": NAT_T}, policy())
    with pytest.raises(ValueError, match="enables no model"):
        CostRouter(configs(), FACTS, policy(models={"vit_small": {"enabled": False}, "swin_tiny": {"enabled": False}}))


# --------------------------------------------------------------------------- input sizes


def test_input_size_rules() -> None:
    cfgs = configs(nat_tiny=config("nat_tiny", "nat", patch=4, dynamic=True))
    router = CostRouter(cfgs, FACTS, policy())
    assert router.input_size("vit_small", 1000, 700) == (224, 224)  # fixed: native
    assert router.input_size("swin_tiny", 300, 200) == (448, 448)  # smallest bucket >= longer side
    assert router.input_size("swin_tiny", 2000, 100) == (896, 896)  # capped at the largest
    assert router.input_size("nat_tiny", 500, 300) == (320, 512)  # own size, padded to 32
    dyn = CostRouter(configs(), FACTS, policy(models={"vit_small": {"dynamic": True}}))
    assert dyn.input_size("vit_small", 500, 300) == (304, 512)  # padded to the 16-px patch


@pytest.mark.parametrize(
    ("fit", "size", "expected_fit", "content"),
    [
        ("letterbox", (100, 200), "letterbox", (112, 224)),
        ("resize", (100, 200), "resize", (224, 224)),
        ("pad", (100, 200), "pad", (100, 200)),
        ("pad", (300, 600), "letterbox", (112, 224)),  # larger than the input: cannot only pad
    ],
)
def test_fit_and_content_size(fit: str, size: tuple[int, int], expected_fit: str, content: tuple[int, int]) -> None:
    router = CostRouter(configs(), FACTS, policy(fit=fit, models={"swin_tiny": {"enabled": False}}))
    decision = router.decide(size[1], size[0])
    assert (decision.fit, decision.content_size) == (expected_fit, content)


# --------------------------------------------------------------------------- choosing


def test_cheapest_uncalibrated_is_fewest_macs_and_flagged() -> None:
    router = CostRouter(configs(), FACTS, policy())
    decision = router.decide(200, 200)
    cands = by_model(decision)
    assert set(cands) == {"vit_small", "swin_tiny"}
    assert decision.model == min(cands, key=lambda m: cands[m].gmacs) == "swin_tiny"
    assert decision.reason == "cheapest"
    for c in decision.candidates:
        assert not c.calibrated and "uncalibrated" in c.note
        assert c.predicted_latency_ms == pytest.approx(c.gmacs / 50.0 * 1e3)  # 50 GMAC/s on CPU
        assert c.predicted_peak_bytes and c.predicted_peak_bytes > 0
    assert not decision.calibrated


def test_resolution_decides_with_a_calibration() -> None:
    """Global attention wins small images, windowed attention large ones (the product's idea)."""
    cfgs = configs(
        vit_small=config("vit_small", "vit", dynamic=True), swin_tiny=config("swin_tiny", "swin", patch=4, dynamic=True)
    )
    # ViT-S runs its linears faster per MAC than Swin-T here; its attention is what grows.
    cal = Calibration(
        entries=[entry("vit_small", [1.0e-2, 1.5e-2, 0.0, 1e-3]), entry("swin_tiny", [1.6e-2, 2.0e-2, 0.0, 2e-3])]
    )
    router = CostRouter(cfgs, FACTS, policy(), cal)
    small, large = router.decide(224, 224), router.decide(1024, 1024)
    assert (small.model, small.reason, small.calibrated) == ("vit_small", "cheapest", True)
    assert large.model == "swin_tiny"
    vit = by_model(large)["vit_small"]
    assert vit.attention_fraction > 0.3
    assert by_model(large)["swin_tiny"].predicted_latency_ms < vit.predicted_latency_ms
    assert all(c.calibrated and "box" in c.latency_source for c in large.candidates)
    # the predicted latency is the calibration's formula
    est = estimate_cost(VIT_S16, 224, 224)
    expected = 1e3 * (1.0e-2 * est.other_macs / 1e9 + 1.5e-2 * est.attention_macs / 1e9 + 1e-3)
    assert small.predicted_latency_ms == pytest.approx(expected)


def test_only_fit_when_the_image_is_out_of_one_range() -> None:
    router = CostRouter(configs(), FACTS, policy(models={"vit_small": {"max_side": 512}}))
    decision = router.decide(640, 480)
    assert (decision.model, decision.reason) == ("swin_tiny", "only_fit")
    assert not by_model(decision)["vit_small"].fits
    assert "max_side 512" in by_model(decision)["vit_small"].note


def test_memory_budget_excludes_materialised_attention_but_not_fused() -> None:
    """ViT at 2048 px: a 6 GB-per-layer score matrix does not fit 8 GiB unfused; fused it does."""
    cfgs = configs(vit_small=config("vit_small", "vit", dynamic=True, max_batch=1))
    unfused = CostRouter(cfgs, FACTS, policy(models={"swin_tiny": {"enabled": False}}, oversize="refuse"))
    with pytest.raises(PayloadTooLarge, match="budget"):
        unfused.decide(2048, 2048)
    fused = CostRouter(
        cfgs,
        FACTS,
        policy(
            models={"swin_tiny": {"enabled": False}},
            devices={"cpu": {"memory_budget_bytes": 8 * GIB, "latency_target_ms": 1000, "fused_attention": True}},
        ),
    )
    decision = fused.decide(2048, 2048)
    assert decision.model == "vit_small" and decision.input_size == (2048, 2048)
    cand = by_model(decision)["vit_small"]
    assert cand.fused_attention and cand.attention_score_bytes == 0
    assert cand.predicted_peak_bytes is not None and cand.predicted_peak_bytes < 8 * GIB


def test_memory_batch_is_max_batch_size_unless_single() -> None:
    cfgs = configs(swin_tiny=config("swin_tiny", "swin", patch=4, dynamic=True, max_batch=16))
    full = by_model(CostRouter(cfgs, FACTS, policy()).decide(1024, 1024))["swin_tiny"]
    single = by_model(CostRouter(cfgs, FACTS, policy(memory_batch="single")).decide(1024, 1024))["swin_tiny"]
    assert (full.memory_batch, single.memory_batch) == (16, 1)
    weights = SWIN_T.params * 4
    assert full.predicted_peak_bytes - weights == pytest.approx(16 * (single.predicted_peak_bytes - weights))


def test_latency_target_is_soft_and_flagged() -> None:
    router = CostRouter(
        configs(),
        FACTS,
        policy(
            devices={"cpu": {"memory_budget_bytes": 8 * GIB, "latency_target_ms": 1, "fallback_gmacs_per_s": 10}},
        ),
    )
    decision = router.decide(300, 300)
    assert decision.model == "vit_small"  # 224 px beats Swin's 448 bucket
    assert all(c.fits and c.within_latency_target is False for c in decision.candidates)
    assert "over the 1 ms target" in decision.explanation
    assert decision.predicted_latency_ms == pytest.approx(by_model(decision)["vit_small"].gmacs / 10 * 1e3)


# --------------------------------------------------------------------------- requested models


def test_requested_model_is_used_when_it_fits() -> None:
    router = CostRouter(configs(), FACTS, policy())
    decision = router.decide(200, 200, model="vit_small")
    assert (decision.model, decision.reason) == ("vit_small", "requested")
    assert len(decision.candidates) == 2


@pytest.mark.parametrize(
    ("model", "pol", "error", "match"),
    [
        ("resnet", {}, NotFound, "unknown model 'resnet'"),
        ("vit_small", {"models": {"vit_small": {"enabled": False}}}, InvalidInput, "disabled"),
        ("vit_small", {"models": {"vit_small": {"max_side": 512}}}, PayloadTooLarge, "max_side 512"),
        ("vit_small", {"models": {"vit_small": {"min_side": 1000}}}, InvalidInput, "min_side 1000"),
        (
            "vit_small",
            {"devices": {"cpu": {"memory_budget_bytes": 1000, "latency_target_ms": 10}}},
            PayloadTooLarge,
            "budget",
        ),
    ],
)
def test_requested_model_that_does_not_fit(
    model: str, pol: dict[str, Any], error: type[TesseraError], match: str
) -> None:
    router = CostRouter(configs(), FACTS, policy(**pol))
    with pytest.raises(error, match=match) as info:
        router.decide(800, 600, model=model)
    assert info.value.param == "model"


@pytest.mark.parametrize(("width", "height"), [(0, 10), (10, -1), (True, 10), (10.5, 10)])
def test_bad_sizes_are_invalid_input(width: Any, height: Any) -> None:
    with pytest.raises(InvalidInput, match="positive integer"):
        CostRouter(configs(), FACTS, policy()).decide(width, height)


# --------------------------------------------------------------------------- outliers


RANGES = {"vit_small": {"max_side": 512}, "swin_tiny": {"max_side": 2048}}


def test_oversize_refuse() -> None:
    router = CostRouter(configs(), FACTS, policy(models=RANGES, oversize="refuse"))
    with pytest.raises(PayloadTooLarge, match="oversize policy: refuse") as info:
        router.decide(4000, 3000)
    assert "vit_small" in str(info.value) and "swin_tiny" in str(info.value)


def test_oversize_downscale() -> None:
    router = CostRouter(configs(), FACTS, policy(models=RANGES, oversize="downscale"))
    decision = router.decide(4000, 3000)
    assert decision.reason == "downscaled" and decision.fit == "downscale"
    assert decision.model == "vit_small"  # 224 px is cheaper than Swin's 896 bucket
    assert by_model(decision)["swin_tiny"].input_size == (896, 896)
    assert decision.content_size == (168, 224)


def test_oversize_downscale_dynamic_model_finds_the_largest_side_in_budget() -> None:
    cfgs = {"swin_tiny": config("swin_tiny", "swin", patch=4, dynamic=True, max_batch=1)}
    budget = estimate_cost(SWIN_T, 2048, 1536).peak_bytes(fused=False) + 1
    router = CostRouter(
        cfgs,
        FACTS,
        policy(
            devices={"cpu": {"memory_budget_bytes": budget, "latency_target_ms": 1000}},
        ),
    )
    decision = router.decide(8000, 6000)
    assert decision.reason == "downscaled"
    assert decision.input_size == (1536, 2048)
    assert decision.content_size == (1536, 2048)
    assert decision.predicted_peak_bytes is not None and decision.predicted_peak_bytes <= budget


def test_oversize_tile() -> None:
    cfgs = configs(swin_tiny=config("swin_tiny", "swin", patch=4, sizes=[224, 448], max_batch=8))
    router = CostRouter(
        cfgs, FACTS, policy(models={"vit_small": {"max_side": 512}, "swin_tiny": {"max_side": 448}}, oversize="tile")
    )
    decision = router.decide(2000, 1000)
    assert decision.reason == "oversize_tiled" and decision.fit == "tile"
    cands = by_model(decision)
    assert cands["swin_tiny"].tiles == 5 * 3 and cands["swin_tiny"].input_size == (448, 448)
    assert cands["vit_small"].tiles == 5 * 9
    chosen = cands[decision.model]
    assert decision.tile_grid is not None and decision.tile_grid[0] * decision.tile_grid[1] == chosen.tiles
    assert decision.model == min(cands, key=lambda m: cands[m].predicted_latency_ms)
    # 15 tiles at batch 8: one full batch and one of 7, each at the uncalibrated rate
    per_tile_ms = estimate_cost(SWIN_T, 448, 448).macs / 5e10 * 1e3
    assert cands["swin_tiny"].predicted_latency_ms == pytest.approx(15 * per_tile_ms)
    assert cands["swin_tiny"].memory_batch == 8


def test_too_small_goes_to_the_default_model_or_is_refused() -> None:
    ranges = {"vit_small": {"min_side": 64}, "swin_tiny": {"min_side": 128}}
    with pytest.raises(InvalidInput, match="smaller than every model"):
        CostRouter(configs(), FACTS, policy(models=ranges)).decide(32, 20)
    decision = CostRouter(configs(), FACTS, policy(models=ranges, default_model="vit_small")).decide(32, 20)
    assert (decision.model, decision.reason) == ("vit_small", "default_fallback")
    assert decision.input_size == (224, 224)


def test_decision_serialises_for_the_api() -> None:
    router = CostRouter(configs(), FACTS, policy(), Calibration(entries=[entry("vit_small", [1e-2, 1e-2, 0, 0])]))
    payload = router.decide(640, 480).model_dump(mode="json")
    assert payload["original_size"] == [480, 640]
    assert {c["model"]: c["calibrated"] for c in payload["candidates"]} == {"vit_small": True, "swin_tiny": False}
    assert all(np.isfinite(c["predicted_latency_ms"]) for c in payload["candidates"])
