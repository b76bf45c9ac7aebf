"""Two-dimensional neighborhood attention (NA): one module, four interchangeable kernels.

Definition (Hassani et al., "Neighborhood Attention Transformer", CVPR 2023): the query at
``(i, j)`` attends to the ``k x k`` keys nearest to it, the window clamped at the borders so that
every query sees exactly ``k**2`` keys. Per axis of length ``n`` the window is
``[s, s + k)`` with ``s = clamp(i - k // 2, 0, n - k)``. There is no relative position bias
(NATTEN >= 0.20 has none).

Feature maps smaller than the kernel: along an axis of length ``n < k`` the kernel is clamped to
``n``, so every query attends to the whole axis (``s = 0``). This is the limit of the definition
above, needs no padding tokens, and every kernel and the reference compute it.

Kernels (``backend``):

* ``"natten"``: NATTEN's fused CUDA kernels (optional extra, CUDA tensors only). Axes shorter than
  the kernel are routed to the gather kernel, because NATTEN rejects kernels larger than the input.
* ``"tiled"``: queries in ``T x T`` tiles, each tile attending to one ``(T + k - 1)**2`` halo of keys
  through ``scaled_dot_product_attention`` with the neighbourhood as a boolean mask. Memory and time
  are linear in pixels (K and V held about 3 times, 196 scores per query at ``T = 8, k = 7``, against
  ``k**2 = 49`` copies of K and V for a whole-window gather). It exports with dynamic batch,
  height and width as one ONNX ``Attention`` op per layer (opset 23), runs SDPA's fused kernels on
  CUDA, and on CPU eager it is 8-9 times faster than the gather kernel (64² and 128² maps, 2 heads
  of 32). ``"auto"`` uses it everywhere NATTEN does not apply, and always while exporting.
* ``"flex"``: :func:`torch.nn.attention.flex_attention` with a block mask of the clamped
  neighbourhood. Compiled on CUDA; runs uncompiled (dense, for tests) elsewhere.
* ``"gather"``: gathers each query's ``k x k`` keys and values with index tensors computed from the
  runtime shape (eagerly one window row at a time; whole windows, ``k**2`` times the key/value
  memory, in traced graphs). Kept as an independent formulation the others are checked against.
* ``"auto"``: NATTEN for CUDA tensors when it is installed (not while exporting), tiled otherwise.

Tiled kernel, why the halo holds every window: along an axis of length ``n >= T + k - 1`` a tile
of queries ``[a, a + T)`` has window starts ``s_i = clamp(i - k//2, 0, n - k)``, non-decreasing in
``i``. The halo starts at ``r = clamp(a - k//2, 0, n - L)`` with ``L = T + k - 1``. If ``r = a - k//2``
then ``s_a = r`` and ``s_{a+T-1} <= r + T - 1``; if ``r = 0`` then ``s_{a+T-1} <= T - 1``; if
``r = n - L`` then ``s_a > n - L`` and ``s_{a+T-1} <= n - k = r + T - 1``. In every case each window
``[s_i, s_i + k)`` lies in ``[r, r + L)``. Shorter axes use the whole axis as the halo (slots past
the end are masked). The last tile is moved back to end at the axis end, so all tiles are full.

All kernels take and return heads-last tensors ``(B, H, W, heads, head_dim)`` (NATTEN's layout).
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from types import ModuleType
from typing import Any, Literal, cast

import torch
from torch import nn

__all__ = [
    "BACKENDS",
    "Backend",
    "NeighborhoodAttention2D",
    "natten_available",
    "neighborhood_attention",
    "neighborhood_attention_macs",
    "neighborhood_attention_reference",
    "neighborhood_mask",
    "resolve_backend",
]

Backend = Literal["auto", "natten", "flex", "gather", "tiled"]
BACKENDS: tuple[str, ...] = ("auto", "natten", "flex", "gather", "tiled")


# --------------------------------------------------------------------------- neighbourhood geometry


def _is_traced() -> bool:
    """Whether this forward is being traced into a graph (ONNX export, ``torch.export``,
    ``torch.compile``, the JIT tracer) rather than run eagerly: traced graphs keep every
    shape-dependent computation in the graph."""
    return torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.compiler.is_exporting()


def _window_starts(size: int, kernel_size: int, device: torch.device | None = None) -> torch.Tensor:
    """First key index of each query's window along one static axis (NAT's clamped definition)."""
    idx = torch.arange(size, device=device)
    return (idx - kernel_size // 2).clamp(min=0, max=max(size - kernel_size, 0))


def neighborhood_mask(height: int, width: int, kernel_size: int, device: torch.device | None = None) -> torch.Tensor:
    """Dense boolean mask ``(H*W, H*W)``: ``mask[q, k]`` is True when query ``q`` attends to key ``k``.

    Tokens are numbered row-major (``q = i * W + j``). Each row has ``min(k, H) * min(k, W)`` True.
    """
    _check_kernel_size(kernel_size)
    rows = torch.arange(height, device=device)
    cols = torch.arange(width, device=device)
    row_start = _window_starts(height, kernel_size, device)
    col_start = _window_starts(width, kernel_size, device)
    # (H_query, H_key) and (W_query, W_key) per-axis membership, combined by an outer product.
    row_in = (rows[None, :] >= row_start[:, None]) & (rows[None, :] < row_start[:, None] + kernel_size)
    col_in = (cols[None, :] >= col_start[:, None]) & (cols[None, :] < col_start[:, None] + kernel_size)
    mask = row_in[:, None, :, None] & col_in[None, :, None, :]  # (Hq, Wq, Hk, Wk)
    return mask.reshape(height * width, height * width)


def neighborhood_attention_macs(height: int, width: int, dim: int, kernel_size: int) -> int:
    """Multiply-accumulates of one NA layer's two products (``q.k`` and ``p.v``) over all heads."""
    keys = min(kernel_size, height) * min(kernel_size, width)
    return 2 * height * width * keys * dim


def _check_kernel_size(kernel_size: int) -> None:
    if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size!r}")


def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    if q.dim() != 5:
        raise ValueError(f"expected (B, H, W, heads, head_dim) tensors, got query of shape {tuple(q.shape)}")
    if k.shape != q.shape or v.shape[:4] != q.shape[:4]:
        raise ValueError(f"query {tuple(q.shape)}, key {tuple(k.shape)} and value {tuple(v.shape)} do not match")


# --------------------------------------------------------------------------- reference


def neighborhood_attention_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel_size: int, scale: float | None = None
) -> torch.Tensor:
    """Naive NA: dense attention over all tokens with a boolean neighbourhood mask.

    O(N**2) memory; for tests. Tensors are ``(B, H, W, heads, head_dim)``.
    """
    _check_qkv(q, k, v)
    _check_kernel_size(kernel_size)
    batch, height, width, heads, head_dim = q.shape
    scale = head_dim**-0.5 if scale is None else scale
    qf = q.reshape(batch, height * width, heads, head_dim).transpose(1, 2)
    kf = k.reshape(batch, height * width, heads, head_dim).transpose(1, 2)
    vf = v.reshape(batch, height * width, heads, v.shape[-1]).transpose(1, 2)
    scores = (qf @ kf.transpose(-1, -2)) * scale  # (B, heads, N, N)
    mask = neighborhood_mask(height, width, kernel_size, q.device)
    scores = scores.masked_fill(~mask, float("-inf"))
    out = scores.softmax(dim=-1) @ vf
    return out.transpose(1, 2).reshape(batch, height, width, heads, v.shape[-1])


# --------------------------------------------------------------------------- gather kernel


def _neighbour_index(size: Any, kernel_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Key indices ``(size, k)`` of each query's window along one axis, and which of them exist.

    Branch-free so that ``size`` may be symbolic during export: along an axis shorter than the
    kernel the window starts at 0 and the offsets past the end are marked invalid (and point at 0).
    """
    pos = torch.arange(size, device=device)
    start = (pos - kernel_size // 2).clamp(min=0)
    overflow = (start + kernel_size - size).clamp(min=0)
    start = (start - overflow).clamp(min=0)
    idx = start[:, None] + torch.arange(kernel_size, device=device)[None, :]
    valid = idx < size
    return torch.where(valid, idx, torch.zeros_like(idx)), valid


def _gather_na(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kernel_size: int,
    scale: float,
    rows_per_gather: int | None = None,
) -> torch.Tensor:
    """NA by gathering every query's window with index tensors, ``rows_per_gather`` window rows at a time.

    Each gather materialises ``rows_per_gather * k`` times the key (and value) tensor. Traced graphs
    (ONNX export, ``torch.compile``) gather whole windows by default: a dozen plain operators per
    layer, which exports about three times faster with dynamic shapes than the row-at-a-time form.
    Eager execution gathers one window row at a time: ``k`` rather than ``k**2`` times the memory,
    and faster on CPU because the pieces stay in cache.
    """
    batch, height, width, heads, _ = q.shape
    ks = kernel_size
    if rows_per_gather is None:
        rows_per_gather = ks if _is_traced() else 1
    n = height * width
    rows, row_valid = _neighbour_index(height, ks, q.device)  # (H, k)
    cols, col_valid = _neighbour_index(width, ks, q.device)  # (W, k)
    # Row-major token index of each query's window, (H * W, kh, kw).
    index = (rows[:, None, :, None] * width + cols[None, :, None, :]).reshape(n, ks, ks)
    # Keys past the end of an axis shorter than the kernel get -inf: (H * W, k * k, 1).
    valid = row_valid[:, None, :, None] & col_valid[None, :, None, :]
    bias = torch.where(valid, 0.0, float("-inf")).to(q.dtype).reshape(n, ks * ks, 1)
    chunks = [(a, min(a + rows_per_gather, ks)) for a in range(0, ks, rows_per_gather)]
    chunk_index = [index[:, a0:a1].reshape(-1) for a0, a1 in chunks]

    def windows(t: torch.Tensor, c: int) -> torch.Tensor:  # (B, N, heads, d) -> (B, N, rows * kw, heads, d)
        a0, a1 = chunks[c]
        return t.index_select(1, chunk_index[c]).reshape(batch, n, (a1 - a0) * ks, heads, t.shape[-1])

    k = k.reshape(batch, n, heads, k.shape[-1])
    v = v.reshape(batch, n, heads, v.shape[-1])
    q = (q * scale).reshape(batch, n, 1, heads, q.shape[-1])
    scores = [(q * windows(k, c)).sum(-1) for c in range(len(chunks))]  # (B, N, rows * kw, heads) each
    probs = ((scores[0] if len(scores) == 1 else torch.cat(scores, dim=2)) + bias).softmax(dim=2)
    probs = probs.unsqueeze(-1)  # (B, N, k * k, heads, 1)
    parts = [(probs[:, :, a0 * ks : a1 * ks] * windows(v, c)).sum(2) for c, (a0, a1) in enumerate(chunks)]
    out = sum(parts[1:], parts[0])  # (B, N, heads, d)
    return out.reshape(batch, height, width, heads, out.shape[-1])


# --------------------------------------------------------------------------- tiled kernel

#: Query tile side of the ``tiled`` kernel. A ``T x T`` tile of queries attends to one
#: ``(T + k - 1)**2`` halo of keys: K and V are held ``((T + k - 1) / T)**2`` times (3x at T=8,
#: k=7) instead of ``k**2`` times, and each query scores ``(T + k - 1)**2`` keys (196 at T=8, k=7) of
#: which its ``k**2`` neighbours are unmasked.
TILE = 8


def _tile_axis(
    size: Any, kernel_size: int, tile: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One axis of the tiling, branch-free so that ``size`` may be symbolic during export.

    Returns ``mask (tiles, tile, halo)`` (query attends to halo slot), ``queries (tiles, tile)`` and
    ``keys (tiles, halo)`` (absolute indices, clamped into range where the axis is shorter than a
    tile or a halo; such key slots are masked, such queries discarded) and ``out (size,)``: where
    each position's output sits in the flattened ``tiles * tile`` axis.
    """
    halo = tile + kernel_size - 1
    starts = torch.arange(0, size, tile, device=device)  # (tiles,)
    # The last tile is moved back to end at the axis end (overlapping its neighbour), so every tile
    # is full; an axis shorter than a tile keeps start 0.
    starts = (starts - (starts + tile - size).clamp(min=0)).clamp(min=0)
    queries = starts[:, None] + torch.arange(tile, device=device)[None, :]
    # Each query's window by NAT's clamped definition (an axis shorter than the kernel: all of it).
    first = (queries - kernel_size // 2).clamp(min=0)
    first = (first - (first + kernel_size - size).clamp(min=0)).clamp(min=0)
    # The halo: ``halo`` keys from the tile's first window start, clamped into the axis the same
    # way. It holds every window of the tile: see "Tiled kernel" in the module docstring.
    base = (starts - kernel_size // 2).clamp(min=0)
    base = (base - (base + halo - size).clamp(min=0)).clamp(min=0)
    keys = base[:, None] + torch.arange(halo, device=device)[None, :]
    exists = keys < size
    mask = (keys[:, None, :] >= first[:, :, None]) & (keys[:, None, :] < first[:, :, None] + kernel_size)
    mask = mask & exists[:, None, :]
    keys = torch.where(exists, keys, torch.zeros_like(keys))
    queries = torch.where(queries < size, queries, torch.zeros_like(queries))
    pos = torch.arange(size, device=device)
    tile_of = (pos // tile).clamp(max=starts.shape[0] - 1)
    out = tile_of * tile + pos - starts.index_select(0, tile_of)
    return mask, queries, keys, out


def _tiled_geometry(height: Any, width: Any, kernel_size: int, device: torch.device) -> tuple[Any, ...]:
    """The tiling of an ``height x width`` map: ``mask (tiles, 1, tile*tile, halo*halo)`` (broadcast
    over batch and heads), the flat query and key indices, and where each row and column's output
    sits (see :func:`_tile_axis`), and the number of tiles down and across. Depends on the sizes
    alone, not on the data."""
    tile = TILE
    halo = tile + kernel_size - 1
    row_mask, row_q, row_k, row_out = _tile_axis(height, kernel_size, tile, device)
    col_mask, col_q, col_k, col_out = _tile_axis(width, kernel_size, tile, device)
    tiles_h, tiles_w = row_mask.shape[0], col_mask.shape[0]
    tiles = tiles_h * tiles_w
    mask = (row_mask[:, None, :, None, :, None] & col_mask[None, :, None, :, None, :]).reshape(
        tiles, 1, tile * tile, halo * halo
    )
    q_index = (row_q[:, None, :, None] * width + col_q[None, :, None, :]).reshape(-1)
    k_index = (row_k[:, None, :, None] * width + col_k[None, :, None, :]).reshape(-1)
    return mask, q_index, k_index, row_out, col_out, tiles_h, tiles_w


@functools.lru_cache(maxsize=32)
def _cached_tiled_geometry(height: int, width: int, kernel_size: int, device: torch.device) -> tuple[Any, ...]:
    """:func:`_tiled_geometry` once per map size, for eager runs: every layer of a stage shares it.
    Computed per layer it was ~60 small kernels, and on a GPU a NAT-T forward was launch-bound:
    3,111 launches whatever the size (bench/gpu/NOTES.md, an H200). The tensors are ordinary ones
    even when first made under ``inference_mode``, so a later run with autograd on can use them.
    They stay for the life of the process (32 sizes at most; about 80 MB for a 2048² image)."""
    with torch.inference_mode(False):
        return _tiled_geometry(height, width, kernel_size, device)


def _tiled_na(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel_size: int, scale: float) -> torch.Tensor:
    """NA as one fused attention over query tiles and their key halos, the neighbourhood as a mask.

    Memory is linear in pixels. Traced, each layer is one ``scaled_dot_product_attention``, which the
    ONNX exporter writes as one ``Attention`` op (opset 23) with a boolean mask; on CUDA it runs
    SDPA's memory-efficient kernel.
    """
    batch, height, width, heads, _ = q.shape
    tile = TILE
    halo = tile + kernel_size - 1
    if _is_traced() or not (isinstance(height, int) and isinstance(width, int)):
        geometry = _tiled_geometry(height, width, kernel_size, q.device)  # symbolic sizes: in the graph
    else:
        geometry = _cached_tiled_geometry(height, width, kernel_size, q.device)
    mask, q_index, k_index, row_out, col_out, tiles_h, tiles_w = geometry
    tiles = tiles_h * tiles_w

    def gather(t: torch.Tensor, index: torch.Tensor, side: int) -> torch.Tensor:
        # (B, H, W, heads, d) -> (tiles, B * heads, side * side, d)
        dim = t.shape[-1]
        flat = t.reshape(batch, height * width, heads, dim).index_select(1, index)
        flat = flat.reshape(batch, tiles, side * side, heads, dim).permute(1, 0, 3, 2, 4)
        return flat.reshape(tiles, batch * heads, side * side, dim)

    out = torch.nn.functional.scaled_dot_product_attention(
        gather(q, q_index, tile), gather(k, k_index, halo), gather(v, k_index, halo), attn_mask=mask, scale=scale
    )  # (tiles, B * heads, tile * tile, d)
    dim = out.shape[-1]
    out = out.reshape(tiles_h, tiles_w, batch, heads, tile, tile, dim).permute(2, 0, 4, 1, 5, 3, 6)
    out = out.reshape(batch, tiles_h * tile, tiles_w * tile, heads, dim)
    return out.index_select(1, row_out).index_select(2, col_out)


# --------------------------------------------------------------------------- flex kernel


@functools.lru_cache(maxsize=64)
def _flex_block_mask(height: int, width: int, kernel_size: int, device: str) -> Any:
    from torch.nn.attention.flex_attention import create_block_mask

    half = kernel_size // 2
    max_row = max(height - kernel_size, 0)
    max_col = max(width - kernel_size, 0)

    def mask_mod(b: Any, h: Any, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        qi, qj = q_idx // width, q_idx % width
        ki, kj = kv_idx // width, kv_idx % width
        si = (qi - half).clamp(0, max_row)
        sj = (qj - half).clamp(0, max_col)
        return (ki >= si) & (ki < si + kernel_size) & (kj >= sj) & (kj < sj + kernel_size)

    n = height * width
    # Compiled mask construction never materialises the N x N mask; needed for large maps on GPU.
    return create_block_mask(
        mask_mod, B=None, H=None, Q_LEN=n, KV_LEN=n, device=device, _compile=device.startswith("cuda")
    )


@functools.cache
def _compiled_flex() -> Callable[..., torch.Tensor]:
    from torch.nn.attention.flex_attention import flex_attention

    compiled: Callable[..., torch.Tensor] = torch.compile(flex_attention, dynamic=False)
    return compiled


def _flex_na(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel_size: int, scale: float) -> torch.Tensor:
    from torch.nn.attention.flex_attention import flex_attention

    batch, height, width, heads, _ = q.shape
    block_mask = _flex_block_mask(height, width, kernel_size, str(q.device))

    def flat(t: torch.Tensor) -> torch.Tensor:  # (B, H, W, heads, d) -> (B, heads, H*W, d)
        return t.reshape(batch, height * width, heads, t.shape[-1]).transpose(1, 2)

    eager = cast(Callable[..., Any], flex_attention)
    attend = _compiled_flex() if q.is_cuda and not torch.compiler.is_compiling() else eager
    out = cast(torch.Tensor, attend(flat(q), flat(k), flat(v), block_mask=block_mask, scale=scale))
    return out.transpose(1, 2).reshape(batch, height, width, heads, v.shape[-1])


# --------------------------------------------------------------------------- natten kernel


@functools.cache
def _natten() -> ModuleType | None:
    try:
        return importlib.import_module("natten")
    except (ImportError, OSError):  # not installed, or built against another torch/CUDA
        return None


def natten_available() -> bool:
    """Whether the optional NATTEN package imports (it only helps with CUDA tensors)."""
    return _natten() is not None


def _require_natten() -> ModuleType:
    module = _natten()
    if module is None:
        raise RuntimeError(
            "backend='natten' needs the optional NATTEN package (pip install 'tessera[natten]', CUDA "
            "builds only); use backend='flex' or 'gather', or 'auto' to pick what is available"
        )
    return module


def _natten_na(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel_size: int, scale: float) -> torch.Tensor:
    module = _require_natten()
    if not q.is_cuda:
        raise ValueError("backend='natten' runs on CUDA tensors only; use 'gather' or 'flex' on CPU")
    if q.shape[1] < kernel_size or q.shape[2] < kernel_size:
        # NATTEN rejects kernels larger than the input; such maps are tiny, so gather is cheap.
        return _gather_na(q, k, v, kernel_size, scale)
    na2d = getattr(module, "na2d", None) or module.functional.na2d  # >=0.20 top level, older in functional
    out: torch.Tensor = na2d(q.contiguous(), k.contiguous(), v.contiguous(), kernel_size=kernel_size, scale=scale)
    return out


# --------------------------------------------------------------------------- dispatch


_KERNELS: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int, float], torch.Tensor]] = {
    "natten": _natten_na,
    "flex": _flex_na,
    "gather": _gather_na,
    "tiled": _tiled_na,
}


def resolve_backend(backend: str, tensor: torch.Tensor) -> str:
    """The concrete kernel ``backend`` means for ``tensor`` (``"auto"`` decided here)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown neighborhood-attention backend {backend!r}; expected one of {BACKENDS}")
    if backend != "auto":
        return backend
    if tensor.is_cuda and natten_available() and not torch.compiler.is_exporting():
        return "natten"
    return "tiled"


def neighborhood_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kernel_size: int,
    *,
    backend: str = "auto",
    scale: float | None = None,
) -> torch.Tensor:
    """NA over heads-last tensors ``(B, H, W, heads, head_dim)``, with the kernel ``backend`` names."""
    _check_qkv(q, k, v)
    _check_kernel_size(kernel_size)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return _KERNELS[resolve_backend(backend, q)](q, k, v, kernel_size, scale)


class NeighborhoodAttention2D(nn.Module):
    """Multi-head neighborhood attention over channels-last maps ``(B, H, W, C) -> (B, H, W, C)``."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        kernel_size: int = 7,
        qkv_bias: bool = True,
        backend: str = "auto",
    ):
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        _check_kernel_size(kernel_size)
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.kernel_size = kernel_size
        self.scale = self.head_dim**-0.5
        self.backend = backend
        self.set_backend(backend)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def set_backend(self, backend: str) -> None:
        """Switch kernels (weights unchanged); ``"natten"`` fails here when NATTEN is missing."""
        if backend not in BACKENDS:
            raise ValueError(f"unknown neighborhood-attention backend {backend!r}; expected one of {BACKENDS}")
        if backend == "natten":
            _require_natten()
        self.backend = backend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[-1] != self.dim:
            raise ValueError(f"expected (B, H, W, {self.dim}) input, got {tuple(x.shape)}")
        batch, height, width, _ = x.shape
        qkv = self.qkv(x).reshape(batch, height, width, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.unbind(3)
        out = neighborhood_attention(q, k, v, self.kernel_size, backend=self.backend, scale=self.scale)
        return self.proj(out.reshape(batch, height, width, self.dim))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, kernel_size={self.kernel_size}, backend={self.backend!r}"
