"""The analytic cost model against published numbers, hand counts and PyTorch's FLOP counter."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from service.models.meta import ArchFacts
from service.routing.cost import SCORE_COPIES, estimate_cost, min_input_side, size_multiple

VIT_B16 = ArchFacts("vit", 16, (12,), (768,), (12,), num_prefix_tokens=1)
VIT_S16 = ArchFacts("vit", 16, (12,), (384,), (6,), num_prefix_tokens=1)
SWIN_T = ArchFacts("swin", 4, (2, 2, 6, 2), (96, 192, 384, 768), (3, 6, 12, 24), window_size=7)
NAT_MINI = ArchFacts("nat", 4, (3, 4, 6, 5), (64, 128, 256, 512), (2, 4, 8, 16), mlp_ratio=3.0, kernel_size=7)
NAT_TINY = dataclasses.replace(NAT_MINI, depths=(3, 4, 18, 5))


# --------------------------------------------------------------------------- published numbers


@pytest.mark.parametrize(
    ("facts", "gmacs"),
    [(VIT_B16, 17.58), (VIT_S16, 4.61), (SWIN_T, 4.51), (NAT_MINI, 2.7), (NAT_TINY, 4.3)],
    ids=["vit_b16", "vit_s16", "swin_t", "nat_mini", "nat_tiny"],
)
def test_gmacs_at_224_match_published(facts: ArchFacts, gmacs: float) -> None:
    assert estimate_cost(facts, 224, 224).gmacs == pytest.approx(gmacs, rel=0.01)


@pytest.mark.parametrize(
    ("side", "tokens", "attention_share", "score_mb"),
    [(224, 197, 0.04, None), (512, 1025, 0.18, None), (1024, 4097, 0.47, 403), (2048, 16385, 0.78, 6443)],
)
def test_vit_b16_matches_the_design_table(side: int, tokens: int, attention_share: float, score_mb: int | None) -> None:
    """DESIGN.md: tokens, attention share of FLOPs and the fp16 score matrix per image per layer."""
    est = estimate_cost(VIT_B16, side, side, dtype_bytes=2)
    assert est.tokens == tokens
    assert est.attention_fraction == pytest.approx(attention_share, abs=0.006)
    assert est.score_bytes_materialized == 12 * tokens * tokens * 2
    if score_mb is not None:
        assert est.score_bytes_materialized / 1e6 == pytest.approx(score_mb, rel=0.001)


# --------------------------------------------------------------------------- hand counts


def test_vit_hand_count() -> None:
    facts = ArchFacts("vit", 16, (2,), (64,), (4,), mlp_ratio=2.0, num_prefix_tokens=2)
    est = estimate_cost(facts, 32, 48, batch=3, num_classes=10)
    n = 2 * 3 + 2  # 2x3 patches + 2 prefix tokens
    per_layer_other = n * 64 * 192 + n * 64 * 64 + 2 * n * 64 * 128
    assert est.stage_tokens == (n,)
    assert est.attention_macs == 3 * 2 * (2 * n * n * 64)
    assert est.other_macs == 3 * (2 * per_layer_other + 6 * 64 * 3 * 256 + 64 * 10)


def test_swin_pads_windows_per_stage() -> None:
    """A 100x100 input: stage grids 25, 13, 7, 4, padded to 28, 14, 7 and the 4x4 window."""
    facts = ArchFacts("swin", 4, (1, 1, 1, 1), (8, 16, 32, 64), (1, 2, 4, 8), mlp_ratio=4.0, window_size=7)
    est = estimate_cost(facts, 100, 100, num_classes=0)
    assert [s.grid for s in est.stages] == [(25, 25), (13, 13), (7, 7), (4, 4)]
    assert [s.padded_tokens for s in est.stages] == [28 * 28, 14 * 14, 49, 16]
    assert [s.keys_per_query for s in est.stages] == [49, 49, 49, 16]
    stage0 = est.stages[0]
    assert stage0.attention_macs == 2 * 784 * 49 * 8
    # qkv and proj on padded tokens, MLP on real ones
    assert stage0.other_macs == 784 * 8 * 24 + 784 * 8 * 8 + 2 * 625 * 8 * 32
    # patch merging into stage 1: 13x13 tokens, Linear(4*8 -> 16)
    assert est.stages[1].other_macs - (196 * 16 * 48 + 196 * 16 * 16 + 2 * 169 * 16 * 64) == 169 * 32 * 16


def test_nat_hand_count() -> None:
    """NAT: two 3x3 stride-2 convolutions, NA with k^2 keys (clamped on small maps), conv downsampling."""
    facts = ArchFacts("nat", 4, (1, 2), (16, 32), (2, 4), mlp_ratio=3.0, kernel_size=7)
    est = estimate_cost(facts, 64, 40, num_classes=5)
    # stem: 3 -> 8 at 32x20, then 8 -> 16 at 16x10
    stem = 32 * 20 * 8 * 27 + 16 * 10 * 16 * 8 * 9
    # stage 0: 16x10 grid, 7x7 keys; stage 1: 8x5 grid, 7x5 keys (the kernel clamped to the 5-wide axis)
    s0 = 160 * 16 * 48 + 160 * 16 * 16 + 2 * 160 * 16 * 48
    s1 = 2 * (40 * 32 * 96 + 40 * 32 * 32 + 2 * 40 * 32 * 96) + 40 * 9 * 16 * 32
    assert [s.grid for s in est.stages] == [(16, 10), (8, 5)]
    assert [s.keys_per_query for s in est.stages] == [49, 35]
    assert est.attention_macs == 2 * 160 * 49 * 16 + 2 * (2 * 40 * 35 * 32)
    assert est.other_macs == stem + s0 + s1 + 32 * 5


def test_nat_patch_stem_and_merge_downsampling() -> None:
    facts = ArchFacts(
        "nat",
        4,
        (1, 1),
        (16, 32),
        (2, 4),
        mlp_ratio=3.0,
        kernel_size=3,
        extra={"stem": "patch", "downsample": "merge"},
    )
    est = estimate_cost(facts, 32, 32, num_classes=0)
    blocks = 64 * 16 * 48 + 64 * 16 * 16 + 2 * 64 * 16 * 48 + 16 * 32 * 96 + 16 * 32 * 32 + 2 * 16 * 32 * 96
    assert est.other_macs == 64 * 16 * 48 + blocks + 16 * 64 * 32


# --------------------------------------------------------------------------- memory


def test_fused_attention_has_no_quadratic_term() -> None:
    sizes = (512, 1024, 2048)
    fused = [estimate_cost(VIT_B16, s, s, dtype_bytes=2).peak_bytes(fused=True) for s in sizes]
    unfused = [estimate_cost(VIT_B16, s, s, dtype_bytes=2).peak_bytes(fused=False) for s in sizes]
    weights = estimate_cost(VIT_B16, 224, 224, dtype_bytes=2).weight_bytes
    # activations above the weights grow ~4x per doubling of the side when fused (linear in tokens) ...
    assert (fused[2] - weights) / (fused[1] - weights) == pytest.approx(4.0, rel=0.02)
    # ... and ~16x when the score matrix is materialised
    assert (unfused[2] - weights) / (unfused[1] - weights) > 12
    est = estimate_cost(VIT_B16, 2048, 2048, dtype_bytes=2)
    assert est.attention_score_bytes(fused=True) == 0
    assert unfused[2] - fused[2] == SCORE_COPIES * est.score_bytes_materialized


@pytest.mark.parametrize("facts", [SWIN_T, NAT_TINY], ids=["swin", "nat"])
def test_windowed_and_neighbourhood_memory_is_linear_in_pixels(facts: ArchFacts) -> None:
    """DESIGN goal: per-pixel memory within 1.2x of the 512 value up to 2048, even unfused."""

    def per_pixel(side: int) -> float:
        est = estimate_cost(facts, side, side)
        return (est.peak_bytes(fused=False) - est.weight_bytes) / side**2

    for side in (1024, 1536, 2048):
        assert per_pixel(side) / per_pixel(512) == pytest.approx(1.0, abs=0.2)
    est = estimate_cost(facts, 2048, 2048)
    assert est.attention_fraction < 0.1


def test_memory_and_macs_scale_with_batch() -> None:
    one, four = estimate_cost(SWIN_T, 448, 448), estimate_cost(SWIN_T, 448, 448, batch=4)
    assert four.macs == 4 * one.macs
    assert four.activation_bytes == 4 * one.activation_bytes
    assert four.weight_bytes == one.weight_bytes
    assert four.traffic_bytes(fused=False) == 4 * one.traffic_bytes(fused=False)
    assert one.traffic_bytes(fused=False) > one.traffic_bytes(fused=True)


def test_weights_use_recorded_params_else_an_analytic_count() -> None:
    assert estimate_cost(dataclasses.replace(VIT_S16, params=1000), 224, 224).weight_bytes == 4000
    # ViT-S/16 has 22.05M parameters; the analytic count ignores norms and biases
    assert estimate_cost(VIT_S16, 224, 224).weight_bytes / 4 == pytest.approx(22.05e6, rel=0.01)


# --------------------------------------------------------------------------- helpers and errors


def test_size_multiples() -> None:
    assert size_multiple(VIT_S16) == 16
    assert size_multiple(SWIN_T) == 32
    assert size_multiple(NAT_TINY) == 32
    assert min_input_side(SWIN_T) == 32


@pytest.mark.parametrize(
    ("facts", "size", "match"),
    [
        (dataclasses.replace(VIT_S16, family="mamba"), (224, 224), "no cost model"),
        (dataclasses.replace(VIT_S16, depths=(12, 12)), (224, 224), "one entry per stage"),
        (dataclasses.replace(SWIN_T, window_size=None), (224, 224), "window_size"),
        (dataclasses.replace(NAT_TINY, kernel_size=None), (224, 224), "kernel_size"),
        (VIT_S16, (8, 224), "smaller than one 16-px patch"),
        (VIT_S16, (0, 224), "positive integer"),
    ],
)
def test_bad_inputs_raise(facts: ArchFacts, size: tuple[int, int], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        estimate_cost(facts, *size)


def test_module_does_not_import_torch() -> None:
    code = "import sys, service.routing; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------- PyTorch's FLOP counter


def _counted_macs(model: object, height: int, width: int) -> tuple[float, float]:
    """(total, attention) MACs FlopCounterMode sees for one image; attention = bmm and SDPA."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.empty(1, 3, height, width, device="meta"))  # type: ignore[operator]
    counts = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    attention = sum(n for op, n in counts.items() if op == "aten.bmm" or "attention" in op)
    return counter.get_total_flops() / 2, attention / 2


def _timm_on_meta(name: str, **kwargs: object) -> object:
    """A timm model built on the meta device: shapes only, so counting a 1024-px forward is instant."""
    timm = pytest.importorskip("timm")
    import torch

    with torch.device("meta"):
        return timm.create_model(name, pretrained=False, **kwargs).eval()


@pytest.mark.parametrize(
    ("name", "facts", "kwargs", "size"),
    [
        ("vit_base_patch16_224", VIT_B16, {}, (224, 224)),
        ("vit_small_patch16_224", VIT_S16, {}, (224, 224)),
        ("vit_small_patch16_224", VIT_S16, {"dynamic_img_size": True}, (384, 384)),
        ("vit_small_patch16_224", VIT_S16, {"dynamic_img_size": True}, (512, 512)),
        ("vit_small_patch16_224", VIT_S16, {"dynamic_img_size": True}, (384, 640)),
        ("swin_tiny_patch4_window7_224", SWIN_T, {}, (224, 224)),
        ("swin_tiny_patch4_window7_224", SWIN_T, {"img_size": 448}, (448, 448)),
        ("swin_tiny_patch4_window7_224", SWIN_T, {"img_size": 480}, (480, 480)),  # window padding
        ("swin_tiny_patch4_window7_224", SWIN_T, {"img_size": (512, 384)}, (512, 384)),
    ],
    ids=lambda v: str(v) if isinstance(v, tuple) else None,
)
def test_matches_flop_counter_on_timm_models(
    name: str, facts: ArchFacts, kwargs: dict[str, object], size: tuple[int, int]
) -> None:
    total, attention = _counted_macs(_timm_on_meta(name, **kwargs), *size)
    est = estimate_cost(facts, *size)
    assert est.macs == pytest.approx(total, rel=0.03)
    assert est.attention_macs == pytest.approx(attention, rel=0.03)


def test_swin_built_at_one_size_and_fed_another() -> None:
    """A dynamic Swin keeps the windows of the size it was built at: record it in facts.extra."""
    model = _timm_on_meta("swin_tiny_patch4_window7_224", dynamic_img_size=True)
    facts = dataclasses.replace(SWIN_T, extra={"img_size": 224})
    for side in (96, 160, 320):
        total, _ = _counted_macs(model, side, side)
        assert estimate_cost(facts, side, side).macs == pytest.approx(total, rel=0.03)


def test_meta_device_counts_equal_real_counts() -> None:
    """The meta-device shortcut counts what a real forward counts.

    On CPU the forward runs SDPA's math kernel: FlopCounterMode has no formula for the fused
    ``_scaled_dot_product_flash_attention_for_cpu`` and would miss the attention products.
    """
    timm = pytest.importorskip("timm")
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    real = timm.create_model("vit_small_patch16_224", depth=1, dynamic_img_size=True).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        real(torch.randn(1, 3, 256, 192))
    meta_total, _ = _counted_macs(real.to("meta"), 256, 192)
    assert counter.get_total_flops() / 2 == meta_total
    assert estimate_cost(dataclasses.replace(VIT_S16, depths=(1,)), 256, 192).macs == pytest.approx(meta_total)


@pytest.mark.slow
@pytest.mark.parametrize("size", [(224, 224), (256, 320), (100, 60)])
def test_matches_in_house_nat(size: tuple[int, int]) -> None:
    """The in-house NAT: FlopCounter sees the convolutions and linears (its gather NA kernel is
    elementwise, so the attention products are checked against the layer's own MAC formula)."""
    pytest.importorskip("timm")
    nat = pytest.importorskip("service.models.nat")
    from service.models.layers.neighborhood import neighborhood_attention_macs

    model = nat.nat_mini(depths=(1, 1, 2, 1), attn_backend="gather").eval()
    facts = model.arch_facts()
    assert facts.family == "nat" and facts.kernel_size == 7
    est = estimate_cost(facts, *size)
    total, _ = _counted_macs(model.to("meta"), *size)
    assert est.other_macs == pytest.approx(total, rel=0.03)
    expected_attention = sum(
        stage.depth * neighborhood_attention_macs(*stage.grid, stage.dim, 7) for stage in est.stages
    )
    assert est.attention_macs == expected_attention
