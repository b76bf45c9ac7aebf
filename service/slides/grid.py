"""Tile grids: square tiles of ``tile`` target pixels at a target resolution, in level-0 pixels.

A tile of ``tile`` pixels at ``target_mpp`` covers ``tile * target_mpp / level0_mpp`` level-0
pixels (``patch_size_level0``, rounded to whole pixels so that every coordinate is exact). The
stride is ``tile - overlap`` target pixels, also rounded once in level-0 pixels, so the grid does
not drift across a slide. Tiles run row-major (y, then x): the order of ``coords`` in the
results is this order.

At the right and bottom edges a partial tile is either kept (``pad``: the part past the slide
reads as white background) or left out (``drop``: only tiles fully inside the slide).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

__all__ = ["EdgeMode", "TileGrid", "make_grid"]

EdgeMode = Literal["pad", "drop"]


@dataclass(frozen=True)
class TileGrid:
    """A row-major grid of square tiles over level 0."""

    level0_width: int
    level0_height: int
    tile: int
    overlap: int
    target_mpp: float
    level0_mpp: float
    patch_size_level0: int
    stride_level0: int
    edge: EdgeMode
    columns: int
    rows: int

    @property
    def size(self) -> int:
        return self.columns * self.rows

    def coords(self) -> np.ndarray:
        """(N, 2) int64 level-0 (x, y) of each tile's top-left corner, row-major."""
        xs = np.arange(self.columns, dtype=np.int64) * self.stride_level0
        ys = np.arange(self.rows, dtype=np.int64) * self.stride_level0
        gx, gy = np.meshgrid(xs, ys)  # (rows, columns): row-major flattening is y-major
        return np.stack([gx.ravel(), gy.ravel()], axis=1)


def make_grid(
    level0_width: int,
    level0_height: int,
    *,
    level0_mpp: float,
    target_mpp: float,
    tile: int,
    overlap: int = 0,
    edge: EdgeMode = "pad",
) -> TileGrid:
    """The grid of ``tile``-pixel tiles at ``target_mpp`` over a level-0 image."""
    if level0_width <= 0 or level0_height <= 0:
        raise ValueError(f"slide size must be positive, got {level0_width}x{level0_height}")
    if not (level0_mpp > 0 and target_mpp > 0):
        raise ValueError(f"resolutions must be positive, got level0 {level0_mpp}, target {target_mpp}")
    if tile <= 0 or not 0 <= overlap < tile:
        raise ValueError(f"need tile > 0 and 0 <= overlap < tile, got tile={tile} overlap={overlap}")
    if edge not in ("pad", "drop"):
        raise ValueError(f"edge must be 'pad' or 'drop', got {edge!r}")
    scale = target_mpp / level0_mpp  # level-0 pixels per target pixel
    patch = max(1, round(tile * scale))
    stride = max(1, round((tile - overlap) * scale))
    return TileGrid(
        level0_width=level0_width,
        level0_height=level0_height,
        tile=tile,
        overlap=overlap,
        target_mpp=target_mpp,
        level0_mpp=level0_mpp,
        patch_size_level0=patch,
        stride_level0=stride,
        edge=edge,
        columns=_count(level0_width, patch, stride, edge),
        rows=_count(level0_height, patch, stride, edge),
    )


def _count(extent: int, patch: int, stride: int, edge: EdgeMode) -> int:
    """Tiles along one axis.

    ``drop``: tiles entirely inside (start + patch <= extent). ``pad``: as few tiles as cover the
    extent ((n - 1) * stride + patch >= extent), always at least one.
    """
    if edge == "drop":
        return 0 if extent < patch else (extent - patch) // stride + 1
    if extent <= patch:
        return 1
    return math.ceil((extent - patch) / stride) + 1
