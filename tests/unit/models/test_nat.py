"""Neighborhood attention kernels and the in-house NAT family."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

from service.models import create_model, facts_from_model
from service.models._factory import EmbeddingModel
from service.models.layers import (
    NeighborhoodAttention2D,
    natten_available,
    neighborhood_attention,
    neighborhood_attention_macs,
    neighborhood_attention_reference,
    neighborhood_mask,
    resolve_backend,
)
from service.models.meta import ArchFacts
from service.models.nat import NAT, NATBlock

pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")

SMALL = {"depths": (1, 1, 1, 1), "embed_dim": 32, "num_heads": (1, 2, 4, 8), "num_classes": 10}


def _natten_skip_reason() -> str | None:
    if not natten_available():
        return "NATTEN is not installed (optional extra tessera[natten], CUDA builds only)"
    if not torch.cuda.is_available():
        return "NATTEN kernels need a CUDA device"
    return None


def _qkv(shape: tuple[int, ...], device: str = "cpu", seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen).to(device) for _ in range(3)]


# --------------------------------------------------------------------------- the neighbourhood


def test_windows_are_clamped_at_borders() -> None:
    # One row of 9 tokens, kernel 7: windows start at clamp(i - 3, 0, 2).
    mask = neighborhood_mask(1, 9, 7)
    starts = [int(row.nonzero()[0]) for row in mask]
    assert starts == [0, 0, 0, 0, 1, 2, 2, 2, 2]
    assert mask.sum(dim=1).tolist() == [7] * 9


@pytest.mark.parametrize(("height", "width"), [(9, 13), (7, 7), (5, 6), (3, 11), (1, 1)])
def test_every_query_sees_min_k_h_times_min_k_w_keys(height: int, width: int) -> None:
    mask = neighborhood_mask(height, width, 7)
    expected = min(7, height) * min(7, width)
    assert (mask.sum(dim=1) == expected).all()
    # An interior query's window is centred on it: query (4, 6) of 9x13 sees rows 1..7, cols 3..9.
    if (height, width) == (9, 13):
        keys = mask[4 * width + 6].reshape(height, width).nonzero()
        assert (keys[:, 0].min(), keys[:, 0].max(), keys[:, 1].min(), keys[:, 1].max()) == (1, 7, 3, 9)


# --------------------------------------------------------------------------- kernels vs the reference


@pytest.mark.parametrize("backend", ["gather", "tiled", "flex", "natten"])
@pytest.mark.parametrize(("height", "width"), [(9, 13), (7, 7), (5, 6), (14, 14), (2, 9), (8, 8), (15, 16), (23, 17)])
@pytest.mark.parametrize("heads", [1, 3])
def test_kernel_matches_reference(backend: str, height: int, width: int, heads: int) -> None:
    device = "cpu"
    if backend == "natten":
        reason = _natten_skip_reason()
        if reason is not None:
            pytest.skip(reason)
        device = "cuda"
    q, k, v = _qkv((2, height, width, heads, 16), device, seed=height * 100 + width + heads)
    expected = neighborhood_attention_reference(q, k, v, 7)
    got = neighborhood_attention(q, k, v, 7, backend=backend)
    assert got.shape == q.shape
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", ["gather", "tiled"])
@pytest.mark.parametrize("kernel_size", [3, 5, 9])
@pytest.mark.parametrize("shape", [(1, 6, 11, 2, 8), (1, 19, 26, 2, 8)])
def test_kernels_match_reference_for_other_kernel_sizes(backend: str, kernel_size: int, shape: tuple) -> None:
    q, k, v = _qkv(shape)
    torch.testing.assert_close(
        neighborhood_attention(q, k, v, kernel_size, backend=backend),
        neighborhood_attention_reference(q, k, v, kernel_size),
        atol=1e-5,
        rtol=1e-5,
    )


def test_tiled_kernel_memory_is_linear_in_pixels() -> None:
    """The halo copies of K and V are a fixed multiple of K and V, not k**2 of them."""
    from service.models.layers.neighborhood import TILE, _tile_axis

    for size in (1, 3, 5, 7, 8, 13, 64, 65, 512):
        mask, queries, keys, out = _tile_axis(size, 7, TILE, torch.device("cpu"))
        tiles = -(-size // TILE)
        halo = TILE + 6
        assert mask.shape == (tiles, TILE, halo) and keys.shape == (tiles, halo)  # halo copies: (T+k-1)/T per axis
        assert out.shape == (size,) and int(out.max()) < tiles * TILE
        # every position's output comes from a tile query that is that position
        assert torch.equal(queries.reshape(-1)[out], torch.arange(size))
        # the query serving each position sees exactly min(k, size) distinct, in-range keys
        rows = mask.reshape(tiles * TILE, halo)[out]
        assert bool((rows.sum(-1) == min(7, size)).all()), size
        key_rows = keys.repeat_interleave(TILE, dim=0)[out]
        for position in range(size):
            seen = key_rows[position][rows[position]]
            assert len(set(seen.tolist())) == min(7, size) and int(seen.max()) < size


def test_tiled_geometry_is_computed_once_per_map_size_and_works_with_autograd_after_inference_mode() -> None:
    """Eager runs reuse one tiling per size (it was most of NAT's kernel launches on a GPU); the
    cached tensors equal a fresh computation, and first made under ``inference_mode`` they still
    serve a later run that records gradients."""
    from service.models.layers.neighborhood import _cached_tiled_geometry, _tiled_geometry

    _cached_tiled_geometry.cache_clear()
    q, k, v = _qkv((1, 13, 21, 2, 8))
    with torch.inference_mode():
        first = neighborhood_attention(q, k, v, 7, backend="tiled")
    again = neighborhood_attention(q, k, v, 7, backend="tiled")
    info = _cached_tiled_geometry.cache_info()
    assert (info.misses, info.hits) == (1, 1)
    torch.testing.assert_close(first, again)
    fresh = _tiled_geometry(13, 21, 7, torch.device("cpu"))
    cached = _cached_tiled_geometry(13, 21, 7, torch.device("cpu"))
    assert all(torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b for a, b in zip(fresh, cached, strict=True))
    q.requires_grad_(True)
    with torch.enable_grad():  # whatever an earlier test left set (a build turns it off process-wide)
        neighborhood_attention(q, k, v, 7, backend="tiled").sum().backward()
    assert q.grad is not None and bool(q.grad.abs().sum() > 0)


@pytest.mark.parametrize("rows_per_gather", [2, 3, 7])
def test_gather_chunkings_agree(rows_per_gather: int) -> None:
    # Eager runs gather one window row at a time, traced graphs whole windows (7 rows): same function.
    from service.models.layers.neighborhood import _gather_na

    for shape in [(2, 9, 13, 3, 16), (1, 5, 6, 2, 8), (1, 2, 9, 1, 8)]:
        q, k, v = _qkv(shape)
        torch.testing.assert_close(
            _gather_na(q, k, v, 7, shape[-1] ** -0.5, rows_per_gather),
            neighborhood_attention_reference(q, k, v, 7),
            atol=1e-5,
            rtol=1e-5,
        )


def test_reference_is_global_attention_when_the_map_fits_in_the_kernel() -> None:
    q, k, v = _qkv((1, 5, 6, 2, 8))
    qf, kf, vf = (t.reshape(1, 30, 2, 8).transpose(1, 2) for t in (q, k, v))
    dense = torch.nn.functional.scaled_dot_product_attention(qf, kf, vf)
    torch.testing.assert_close(
        neighborhood_attention_reference(q, k, v, 7), dense.transpose(1, 2).reshape(1, 5, 6, 2, 8)
    )


def test_module_backends_agree_and_follow_the_reference() -> None:
    torch.manual_seed(0)
    attn = NeighborhoodAttention2D(24, 3, kernel_size=7, backend="gather").eval()
    x = torch.randn(2, 9, 10, 24)
    with torch.no_grad():
        q, k, v = attn.qkv(x).reshape(2, 9, 10, 3, 3, 8).unbind(3)
        expected = attn.proj(neighborhood_attention_reference(q, k, v, 7).reshape(2, 9, 10, 24))
        for backend in ("gather", "tiled", "flex"):
            attn.set_backend(backend)
            torch.testing.assert_close(attn(x), expected, atol=1e-5, rtol=1e-5, msg=backend)


def test_auto_picks_natten_on_cuda_only_and_tiled_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    from service.models.layers import neighborhood

    cuda_like = SimpleNamespace(is_cuda=True)
    assert resolve_backend("auto", torch.zeros(1)) == "tiled"
    assert resolve_backend("flex", torch.zeros(1)) == "flex"
    monkeypatch.setattr(neighborhood, "natten_available", lambda: True)
    assert resolve_backend("auto", cuda_like) == "natten"  # type: ignore[arg-type]
    assert resolve_backend("auto", torch.zeros(1)) == "tiled"
    monkeypatch.setattr(torch.compiler, "is_exporting", lambda: True)
    assert resolve_backend("auto", cuda_like) == "tiled"  # type: ignore[arg-type]


@pytest.mark.skipif(natten_available(), reason="checks the error raised when NATTEN is missing")
def test_selecting_natten_without_natten_is_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match="NATTEN"):
        NeighborhoodAttention2D(16, 2, backend="natten")
    q, k, v = _qkv((1, 7, 7, 1, 8))
    with pytest.raises(RuntimeError, match="NATTEN"):
        neighborhood_attention(q, k, v, 7, backend="natten")


def test_invalid_arguments_raise_value_error() -> None:
    with pytest.raises(ValueError, match="backend"):
        NeighborhoodAttention2D(16, 2, backend="cuda")
    with pytest.raises(ValueError, match="divisible"):
        NeighborhoodAttention2D(18, 4)
    with pytest.raises(ValueError, match="odd"):
        NeighborhoodAttention2D(16, 2, kernel_size=6)
    with pytest.raises(ValueError, match=r"\(B, H, W, 16\)"):
        NeighborhoodAttention2D(16, 2)(torch.zeros(1, 16, 7, 7))


# --------------------------------------------------------------------------- the NAT family


def test_variants_are_registered_in_timm() -> None:
    create_model("nat_mini", **SMALL)  # imports service.models.nat through the factory
    assert {"nat_mini", "nat_tiny"} <= set(timm.list_models("nat_*"))
    cfg = timm.models.get_pretrained_cfg("nat_tiny")
    assert cfg is not None
    assert cfg.input_size == (3, 224, 224)
    assert cfg.classifier == "head.fc"


@pytest.fixture(scope="module")
def small_nat() -> NAT:
    torch.manual_seed(0)
    model = create_model("nat_mini", attn_backend="gather", **SMALL)
    assert isinstance(model, NAT)
    return model.eval()


@pytest.mark.parametrize(("size", "grid"), [((224, 224), (7, 7)), ((160, 288), (5, 9)), ((50, 70), (2, 3))])
def test_forward_shapes(small_nat: NAT, size: tuple[int, int], grid: tuple[int, int]) -> None:
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        features = small_nat.forward_features(x)
        embedding = small_nat.forward_head(features, pre_logits=True)
        logits = small_nat.forward_head(features)
        wrapped = EmbeddingModel(small_nat)(x)
    assert features.shape == (2, *grid, 256)
    assert small_nat.num_features == 256
    assert embedding.shape == (2, 256)
    assert logits.shape == (2, 10)
    assert torch.isfinite(logits).all()
    torch.testing.assert_close(embedding, features.mean(dim=(1, 2)))
    torch.testing.assert_close(wrapped[0], embedding)
    torch.testing.assert_close(wrapped[1], logits)


def test_attention_backends_give_the_same_model_output(small_nat: NAT) -> None:
    x = torch.randn(1, 3, 96, 160)
    try:
        with torch.no_grad():
            gathered = small_nat(x)
            small_nat.set_attn_backend("flex")
            flexed = small_nat(x)
    finally:
        small_nat.set_attn_backend("gather")
    torch.testing.assert_close(flexed, gathered, atol=1e-5, rtol=1e-5)


def test_reset_classifier_and_kwargs() -> None:
    model = create_model("nat_tiny", depths=(1, 1, 2, 1), kernel_size=5, mlp_ratio=2.0, num_classes=0)
    assert isinstance(model, NAT)
    assert model.num_classes == 0
    assert model.get_classifier().__class__ is torch.nn.Identity
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert model(x).shape == (1, model.num_features)
        model.reset_classifier(7)
        assert model(x).shape == (1, 7)
    assert model.num_classes == 7
    block = model.get_submodule("stages.2.blocks.1")
    assert isinstance(block, NATBlock)
    assert block.attn.kernel_size == 5
    assert block.mlp.fc1.out_features == 2 * 256
    facts = model.arch_facts()
    assert (facts.depths, facts.kernel_size, facts.mlp_ratio) == ((1, 1, 2, 1), 5, 2.0)


# --------------------------------------------------------------------------- registered sizes


@pytest.mark.slow
@pytest.mark.parametrize(("name", "params_m", "gmacs"), [("nat_mini", 20.0, 2.7), ("nat_tiny", 28.0, 4.3)])
def test_registered_variant_sizes(name: str, params_m: float, gmacs: float) -> None:
    torch.manual_seed(0)
    model = create_model(name).eval()
    assert isinstance(model, NAT)
    facts = facts_from_model(model, "nat")
    assert facts == model.arch_facts()
    assert ArchFacts.from_dict(facts.to_dict()) == facts
    assert (facts.family, facts.patch_size, facts.kernel_size) == ("nat", 4, 7)
    assert facts.dims == (64, 128, 256, 512)
    assert facts.num_heads == (2, 4, 8, 16)
    assert facts.mlp_ratio == 3.0
    assert facts.params == sum(p.numel() for p in model.parameters())
    assert abs(facts.params / 1e6 - params_m) <= 0.10 * params_m

    model.set_attn_backend("gather")  # element-wise products FlopCounterMode does not count (below)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        logits = model(torch.randn(1, 3, 224, 224))
    assert logits.shape == (1, 1000)
    # FlopCounterMode counts the convolutions and linear layers; the gather kernel's q.k and p.v
    # products are element-wise ops it does not see, so they are added from the geometry.
    attention_macs = sum(
        depth * neighborhood_attention_macs(56 >> i, 56 >> i, dim, 7)
        for i, (depth, dim) in enumerate(zip(facts.depths, facts.dims, strict=True))
    )
    measured = (counter.get_total_flops() / 2 + attention_macs) / 1e9
    assert abs(measured - gmacs) <= 0.15 * gmacs, f"{name}: {measured:.2f} GMACs"

    with torch.no_grad():
        features = model.forward_features(torch.randn(1, 3, 160, 288))
    assert features.shape == (1, 5, 9, 512)


# --------------------------------------------------------------------------- ONNX


def test_onnx_export_with_dynamic_batch_and_size(small_nat: NAT, tmp_path) -> None:
    """Exported through ``auto`` (the tiled kernel): one fused ``Attention`` op per NA block."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    small_nat.set_attn_backend("auto")
    try:
        _check_onnx_export(small_nat, tmp_path, onnx, ort)
    finally:
        small_nat.set_attn_backend("gather")


def _check_onnx_export(small_nat: NAT, tmp_path, onnx, ort) -> None:  # type: ignore[no-untyped-def]
    wrapper = EmbeddingModel(small_nat).eval()
    path = tmp_path / "nat.onnx"
    dims = {0: torch.export.Dim("batch", min=1, max=64), 2: torch.export.Dim.AUTO, 3: torch.export.Dim.AUTO}
    with torch.no_grad():
        torch.onnx.export(
            wrapper,
            (torch.randn(2, 3, 96, 128),),
            str(path),
            dynamo=True,
            input_names=["pixels"],
            output_names=["embedding", "logits"],
            dynamic_shapes=(dims,),
            opset_version=23,
            verbose=False,
        )
    graph = onnx.load(str(path)).graph
    ops = [node.op_type for node in graph.node]
    assert ops.count("Attention") == sum(small_nat.depths)
    assert "Softmax" not in ops  # no decomposed attention left
    pixel_dims = graph.input[0].type.tensor_type.shape.dim
    assert [bool(d.dim_param) for d in pixel_dims] == [True, False, True, True]

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    for shape in [(1, 3, 96, 128), (3, 3, 96, 128), (2, 3, 160, 288), (1, 3, 40, 56)]:
        x = torch.randn(shape)
        with torch.no_grad():
            expected = wrapper(x)
        got = session.run(None, {"pixels": x.numpy()})
        for name, out, ref in zip(("embedding", "logits"), got, expected, strict=True):
            np.testing.assert_allclose(out, ref.numpy(), atol=1e-4, rtol=1e-4, err_msg=f"{name} at {shape}")
