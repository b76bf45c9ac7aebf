"""Analytic cost of one forward pass: tokens, MACs (attention vs the rest) and memory (torch-free).

The router predicts latency and peak memory from these numbers; the calibration
(``service.routing.calibration``) turns them into seconds for one host. Everything is computed
from :class:`~service.models.ArchFacts` and an input size, never from a PyTorch model, so the
router runs in processes that have no PyTorch.

Counting conventions (the same as ``torch.utils.flop_counter.FlopCounterMode``, MACs = FLOPs / 2):

* counted: every matrix product and convolution. Attention MACs are the two products
  ``Q K^T`` and ``P V`` (``tokens x keys x dim`` each); the rest are the ``qkv``/``proj``/MLP
  linears, the stem (patch embedding or convolutions), the downsampling layers and the head.
* not counted: softmax, normalisation, activations, residual additions, position-bias additions,
  pooling. They cost memory traffic rather than MACs; :attr:`CostEstimate.traffic_bytes` is their
  proxy for the calibrated latency model.

Token grids per family (``p`` is ``facts.patch_size``, ``H x W`` the input):

* ``vit``: one stage of ``floor(H/p) * floor(W/p)`` patch tokens plus ``num_prefix_tokens`` (class
  and register tokens); every layer attends globally, so keys per query = tokens.
* ``swin``: stage 0 runs on ``floor(H/p) x floor(W/p)``; each patch merging pads the grid to even
  and halves it. Within a stage, windows of ``M x M`` (clamped per axis to the stage's grid at
  the size the model was built for, ``facts.extra["img_size"]``, else at the input size, as timm
  does; ``facts.extra["window_sizes"]`` overrides per stage) need the
  grid padded up to a window multiple: ``qkv``, ``proj`` and attention run on the padded tokens,
  the MLP on the real ones (timm's ``SwinTransformerBlock``).
* ``nat``: a stride-``p`` stem, then each downsampler halves the grid (``ceil``, as a stride-2
  3x3 convolution with padding 1 does). Each query attends to ``min(k, h) * min(k, w)`` keys (the
  NA window clamped at the borders and to small grids, as ``service.models.layers.neighborhood``
  defines it). ``facts.extra["stem"]`` is ``"conv"`` (default: NAT's two 3x3 stride-2
  convolutions, ``3 -> dim/2 -> dim``) or ``"patch"`` (one ``p x p`` stride-``p`` convolution);
  ``facts.extra["downsample"]`` is ``"conv"`` (default: a 3x3 stride-2 convolution,
  ``dim -> next dim``) or ``"merge"`` (Swin's 2x2 patch merging linear).

Memory (inference, no autograd), for a batch ``B`` at ``bytes`` per element:

* weights: ``params * bytes`` (``facts.params``, or an analytic count when it is 0);
* activations: the largest set of tensors alive at once inside one block, which is either the
  attention phase (residual, normalised input, ``q``/``k``/``v``, the scaled query, the attention
  output and its projection: ``N*C + 6*Np*C`` elements) or the MLP phase (residual, normalised
  input, the hidden layer before and after its activation: ``2*N*C + 2*N*hidden``);
* attention scores: a materialised score matrix is ``B * heads * Np * keys`` elements per layer
  (global: ``N*N``; Swin: ``N*M^2``; NA: ``N*k^2``), and eager softmax holds its input and its
  output at once, so the peak counts it twice. Fused attention (FlashAttention, SDPA's fused
  kernels, TensorRT's fused MHA) has no such term: its memory is linear in tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from service.models.meta import ArchFacts

__all__ = [
    "FAMILIES",
    "SCORE_COPIES",
    "CostEstimate",
    "StageCost",
    "estimate_cost",
    "min_input_side",
    "size_multiple",
]

#: Families the cost model knows: global, windowed and neighbourhood attention.
FAMILIES = ("vit", "swin", "nat")

#: Copies of a materialised score matrix alive at the peak (softmax's input and output).
SCORE_COPIES = 2

_DEFAULT_NUM_CLASSES = 1000


@dataclass(frozen=True)
class StageCost:
    """One stage for one image: its token grid and what its blocks cost."""

    index: int
    #: (h, w) token grid
    grid: tuple[int, int]
    #: real tokens, prefix tokens included
    tokens: int
    #: tokens ``qkv``, ``proj`` and attention run on (window padding included)
    padded_tokens: int
    dim: int
    heads: int
    depth: int
    keys_per_query: int
    attention_macs: int
    #: the blocks' linears plus the downsampling into this stage
    other_macs: int
    #: peak live elements inside one block (score matrices excluded)
    activation_elems: int
    #: one layer's materialised score matrix, all heads
    score_elems: int
    #: elements written by the non-matmul work of the whole stage
    traffic_elems: int


@dataclass(frozen=True)
class CostEstimate:
    """The analytic cost of running ``batch`` images of ``height x width`` through one backbone.

    MAC, byte and element totals are for the whole batch; :attr:`stages` are per image.
    """

    family: str
    height: int
    width: int
    batch: int
    dtype_bytes: int
    stages: tuple[StageCost, ...]
    attention_macs: int
    other_macs: int
    weight_bytes: int
    activation_bytes: int
    score_bytes_materialized: int
    input_bytes: int
    traffic_elems: int

    @property
    def macs(self) -> int:
        return self.attention_macs + self.other_macs

    @property
    def gmacs(self) -> float:
        return self.macs / 1e9

    @property
    def attention_fraction(self) -> float:
        return self.attention_macs / self.macs if self.macs else 0.0

    @property
    def tokens(self) -> int:
        """Tokens per image at the first stage (prefix tokens included)."""
        return self.stages[0].tokens

    @property
    def stage_tokens(self) -> tuple[int, ...]:
        return tuple(stage.tokens for stage in self.stages)

    def attention_score_bytes(self, fused: bool) -> int:
        """Bytes of the largest single layer's score matrix for the batch; 0 with fused attention."""
        return 0 if fused else self.score_bytes_materialized

    def peak_bytes(self, fused: bool) -> int:
        """Predicted peak memory of one forward: weights, input, activations and (unfused) scores."""
        scores = SCORE_COPIES * self.attention_score_bytes(fused)
        return self.weight_bytes + self.input_bytes + self.activation_bytes + scores

    def traffic_bytes(self, fused: bool) -> int:
        """Bytes written by the non-matmul work (a memory-traffic proxy for the latency fit).

        Unfused attention writes and reads its score matrix (scores, then probabilities).
        """
        scores = 0 if fused else SCORE_COPIES * self.batch * sum(s.score_elems * s.depth for s in self.stages)
        return (self.traffic_elems + scores) * self.dtype_bytes

    def to_dict(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "input_size": [self.height, self.width],
            "batch": self.batch,
            "stage_tokens": list(self.stage_tokens),
            "gmacs": self.gmacs,
            "attention_gmacs": self.attention_macs / 1e9,
            "other_gmacs": self.other_macs / 1e9,
            "attention_fraction": self.attention_fraction,
            "weight_bytes": self.weight_bytes,
            "activation_bytes": self.activation_bytes,
            "attention_score_bytes_materialized": self.score_bytes_materialized,
            "peak_bytes_fused": self.peak_bytes(True),
            "peak_bytes_materialized": self.peak_bytes(False),
        }


def size_multiple(facts: ArchFacts) -> int:
    """Pixel multiple an input side should have so that no stage needs padding of its grid.

    ViT: the patch. Swin and NAT: the stride of the last stage (``patch * 2**(stages-1)``), so that
    every downsampling is exact; Swin's window padding inside a stage is cheaper than padding the
    image to whole last-stage windows, so it is left to the model (and counted here).
    """
    _check_facts(facts)
    if facts.family == "vit":
        return facts.patch_size
    return facts.patch_size * 2 ** (len(facts.depths) - 1)


def min_input_side(facts: ArchFacts) -> int:
    """Smallest input side the family runs at: one token at the last stage."""
    return size_multiple(facts)


def estimate_cost(
    facts: ArchFacts,
    height: int,
    width: int,
    batch: int = 1,
    *,
    dtype_bytes: int = 4,
    num_classes: int | None = None,
) -> CostEstimate:
    """Tokens, MACs and memory of ``batch`` images of ``height x width`` (pixels, as fed)."""
    _check_facts(facts)
    for name, value in (("height", height), ("width", width), ("batch", batch), ("dtype_bytes", dtype_bytes)):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if num_classes is None:
        num_classes = int(facts.extra.get("num_classes", _DEFAULT_NUM_CLASSES))
    if num_classes < 0:
        raise ValueError(f"num_classes must be >= 0, got {num_classes}")

    if facts.family == "vit":
        stages, stem_macs = _vit_stages(facts, height, width)
    elif facts.family == "swin":
        stages, stem_macs = _swin_stages(facts, height, width)
    else:
        stages, stem_macs = _nat_stages(facts, height, width)
    head_macs = facts.dims[-1] * num_classes

    attention = sum(s.attention_macs for s in stages)
    other = stem_macs + head_macs + sum(s.other_macs for s in stages)
    activation = max(s.activation_elems for s in stages)
    score = max(s.score_elems for s in stages)
    traffic = sum(s.traffic_elems for s in stages)
    params = facts.params or _analytic_params(facts, num_classes)
    return CostEstimate(
        family=facts.family,
        height=height,
        width=width,
        batch=batch,
        dtype_bytes=dtype_bytes,
        stages=tuple(stages),
        attention_macs=batch * attention,
        other_macs=batch * other,
        weight_bytes=params * dtype_bytes,
        activation_bytes=batch * activation * dtype_bytes,
        score_bytes_materialized=batch * score * dtype_bytes,
        input_bytes=batch * 3 * height * width * dtype_bytes,
        traffic_elems=batch * traffic,
    )


# --------------------------------------------------------------------------- families


def _check_facts(facts: ArchFacts) -> None:
    if facts.family not in FAMILIES:
        raise ValueError(f"no cost model for family {facts.family!r}; known: {', '.join(FAMILIES)}")
    stages = len(facts.depths)
    if stages == 0 or len(facts.dims) != stages or len(facts.num_heads) != stages:
        raise ValueError(
            f"depths {facts.depths}, dims {facts.dims} and num_heads {facts.num_heads} need one entry per stage"
        )
    if facts.family == "vit" and stages != 1:
        raise ValueError(f"a ViT has one stage, got depths {facts.depths}")
    if facts.patch_size <= 0 or any(d <= 0 for d in facts.dims) or any(h <= 0 for h in facts.num_heads):
        raise ValueError(f"patch size, dims and heads must be positive: {facts}")
    if facts.family == "swin" and not facts.window_size:
        raise ValueError("a swin model needs facts.window_size")
    if facts.family == "nat" and not facts.kernel_size:
        raise ValueError("a nat model needs facts.kernel_size")


def _block(
    index: int,
    facts: ArchFacts,
    grid: tuple[int, int],
    padded_grid: tuple[int, int],
    keys: int,
    extra_tokens: int = 0,
    downsample_macs: int = 0,
) -> StageCost:
    """The blocks of one stage: ``qkv``/``proj``/attention on padded tokens, the MLP on real ones."""
    dim, heads, depth = facts.dims[index], facts.num_heads[index], facts.depths[index]
    hidden = int(dim * facts.mlp_ratio)
    tokens = grid[0] * grid[1] + extra_tokens
    padded = padded_grid[0] * padded_grid[1] + extra_tokens
    attention = 2 * padded * keys * dim  # Q K^T and P V over all heads
    linears = padded * dim * 3 * dim + padded * dim * dim + 2 * tokens * dim * hidden
    attn_phase = tokens * dim + 6 * padded * dim
    mlp_phase = 2 * tokens * dim + 2 * tokens * hidden
    # Written per block: norms, q/k/v, attention output, projection, two residuals, hidden x2.
    traffic = 9 * padded * dim + 3 * tokens * dim + 2 * tokens * hidden
    return StageCost(
        index=index,
        grid=grid,
        tokens=tokens,
        padded_tokens=padded,
        dim=dim,
        heads=heads,
        depth=depth,
        keys_per_query=keys,
        attention_macs=depth * attention,
        other_macs=depth * linears + downsample_macs,
        activation_elems=max(attn_phase, mlp_phase),
        score_elems=heads * padded * keys,
        traffic_elems=depth * traffic,
    )


def _vit_stages(facts: ArchFacts, height: int, width: int) -> tuple[list[StageCost], int]:
    p = facts.patch_size
    grid = (height // p, width // p)
    if min(grid) < 1:
        raise ValueError(f"a {height}x{width} input is smaller than one {p}-px patch")
    tokens = grid[0] * grid[1] + facts.num_prefix_tokens
    stem = grid[0] * grid[1] * facts.dims[0] * 3 * p * p
    return [_block(0, facts, grid, grid, tokens, extra_tokens=facts.num_prefix_tokens)], stem


def _swin_stages(facts: ArchFacts, height: int, width: int) -> tuple[list[StageCost], int]:
    p = facts.patch_size
    window = int(facts.window_size or 0)
    overrides = facts.extra.get("window_sizes")
    built_grids = _swin_built_grids(facts)
    grid = (height // p, width // p)
    if min(grid) < 1:
        raise ValueError(f"a {height}x{width} input is smaller than one {p}-px patch")
    stem = grid[0] * grid[1] * facts.dims[0] * 3 * p * p
    stages = []
    for i in range(len(facts.depths)):
        downsample = 0
        if i > 0:
            grid = (math.ceil(grid[0] / 2), math.ceil(grid[1] / 2))
            downsample = grid[0] * grid[1] * 4 * facts.dims[i - 1] * facts.dims[i]
        if overrides is not None:
            win_h, win_w = _pair(overrides[i])
        else:
            built = built_grids[i] if built_grids else grid
            win_h, win_w = min(window, built[0]), min(window, built[1])
        padded = (math.ceil(grid[0] / win_h) * win_h, math.ceil(grid[1] / win_w) * win_w)
        stages.append(_block(i, facts, grid, padded, win_h * win_w, downsample_macs=downsample))
    return stages, stem


def _nat_stages(facts: ArchFacts, height: int, width: int) -> tuple[list[StageCost], int]:
    p, k = facts.patch_size, int(facts.kernel_size or 0)
    stem_kind = facts.extra.get("stem", "conv")
    down_kind = facts.extra.get("downsample", "conv")
    if stem_kind not in ("conv", "patch") or down_kind not in ("conv", "merge"):
        raise ValueError(f"unknown NAT stem {stem_kind!r} or downsample {down_kind!r}")
    c0 = facts.dims[0]
    if stem_kind == "conv":
        if p != 4:
            raise ValueError(f"NAT's convolutional stem has stride 4, facts say patch_size {p}")
        half = (math.ceil(height / 2), math.ceil(width / 2))
        grid = (math.ceil(half[0] / 2), math.ceil(half[1] / 2))
        stem = half[0] * half[1] * (c0 // 2) * 3 * 9 + grid[0] * grid[1] * c0 * (c0 // 2) * 9
    else:
        grid = (height // p, width // p)
        stem = grid[0] * grid[1] * c0 * 3 * p * p
    if min(grid) < 1:
        raise ValueError(f"a {height}x{width} input is smaller than one {p}-px patch")
    stages = []
    for i in range(len(facts.depths)):
        downsample = 0
        if i > 0:
            grid = (math.ceil(grid[0] / 2), math.ceil(grid[1] / 2))
            per_token = 9 * facts.dims[i - 1] if down_kind == "conv" else 4 * facts.dims[i - 1]
            downsample = grid[0] * grid[1] * per_token * facts.dims[i]
        keys = min(k, grid[0]) * min(k, grid[1])
        stages.append(_block(i, facts, grid, grid, keys, downsample_macs=downsample))
    return stages, stem


def _swin_built_grids(facts: ArchFacts) -> list[tuple[int, int]] | None:
    """Stage grids at the size the model was built for (``extra["img_size"]``), if recorded.

    timm clamps each stage's window to the grid of the size the model was *built* at, and a
    model accepting dynamic sizes keeps those windows whatever it is fed.
    """
    built = facts.extra.get("img_size")
    if built is None:
        return None
    h, w = _pair(built)
    grid = (h // facts.patch_size, w // facts.patch_size)
    grids = [grid]
    for _ in facts.depths[1:]:
        grid = (math.ceil(grid[0] / 2), math.ceil(grid[1] / 2))
        grids.append(grid)
    return grids


def _pair(value: Any) -> tuple[int, int]:
    if isinstance(value, list | tuple):
        return int(value[0]), int(value[1])
    return int(value), int(value)


def _analytic_params(facts: ArchFacts, num_classes: int) -> int:
    """Weights of the linears, the stem, the downsampling and the head (norms and biases ignored)."""
    total = 0
    for i, (depth, dim) in enumerate(zip(facts.depths, facts.dims, strict=True)):
        total += depth * (4 * dim * dim + 2 * dim * int(dim * facts.mlp_ratio))
        if i > 0:
            total += (9 if facts.family == "nat" else 4) * facts.dims[i - 1] * dim
    p = facts.patch_size
    total += 3 * p * p * facts.dims[0]
    if facts.family == "vit":
        total += (facts.num_prefix_tokens + 196) * facts.dims[0]  # position embedding at 224 px
    return total + facts.dims[-1] * num_classes
