"""Tile grids: level-0 geometry, overlap, row-major order, pad and drop at the edges."""

from __future__ import annotations

import numpy as np
import pytest

from service.slides import make_grid


def test_target_mpp_sets_the_level0_patch() -> None:
    grid = make_grid(10_000, 8_000, level0_mpp=0.25, target_mpp=0.5, tile=224)
    assert grid.patch_size_level0 == 448 and grid.stride_level0 == 448
    same = make_grid(10_000, 8_000, level0_mpp=0.5, target_mpp=0.5, tile=224)
    assert same.patch_size_level0 == 224
    # non-integer ratios round once, so coordinates never drift
    odd = make_grid(10_000, 8_000, level0_mpp=0.499, target_mpp=0.5, tile=224)
    assert odd.patch_size_level0 == 224
    assert odd.coords()[-1, 0] == (odd.columns - 1) * odd.stride_level0


def test_pad_covers_the_slide_and_drop_stays_inside() -> None:
    pad = make_grid(1000, 700, level0_mpp=0.5, target_mpp=0.5, tile=224, edge="pad")
    drop = make_grid(1000, 700, level0_mpp=0.5, target_mpp=0.5, tile=224, edge="drop")
    assert (pad.columns, pad.rows) == (5, 4)  # 5 * 224 = 1120 >= 1000; 4 * 224 = 896 >= 700
    assert (drop.columns, drop.rows) == (4, 3)  # 4 * 224 = 896 <= 1000; 3 * 224 = 672 <= 700
    pc, dc = pad.coords(), drop.coords()
    assert (pc[:, 0].max() + 224 >= 1000) and (pc[:, 1].max() + 224 >= 700)
    assert (pc[:, 0].max() < 1000) and (pc[:, 1].max() < 700)  # no tile starts past the edge
    assert (dc[:, 0] + 224 <= 1000).all() and (dc[:, 1] + 224 <= 700).all()
    # exact fit: pad adds nothing
    exact = make_grid(896, 672, level0_mpp=0.5, target_mpp=0.5, tile=224, edge="pad")
    assert (exact.columns, exact.rows) == (4, 3)


def test_slide_smaller_than_a_tile() -> None:
    assert make_grid(100, 50, level0_mpp=0.5, target_mpp=0.5, tile=224, edge="pad").size == 1
    assert make_grid(100, 50, level0_mpp=0.5, target_mpp=0.5, tile=224, edge="drop").size == 0
    assert make_grid(100, 50, level0_mpp=0.5, target_mpp=0.5, tile=224, edge="drop").coords().shape == (0, 2)


def test_overlap_shortens_the_stride() -> None:
    grid = make_grid(1000, 500, level0_mpp=0.25, target_mpp=0.5, tile=224, overlap=32)
    assert grid.patch_size_level0 == 448 and grid.stride_level0 == 384
    coords = grid.coords()
    # two tiles reach 384 + 448 = 832 < 1000, so a third is needed; rows: 384 + 448 >= 500
    assert np.unique(coords[:, 0]).tolist() == [0, 384, 768]
    assert np.unique(coords[:, 1]).tolist() == [0, 384]
    drop = make_grid(1000, 500, level0_mpp=0.25, target_mpp=0.5, tile=224, overlap=32, edge="drop")
    assert (drop.columns, drop.rows) == (2, 1)


def test_coords_are_row_major_int64() -> None:
    grid = make_grid(1000, 700, level0_mpp=0.5, target_mpp=0.5, tile=200, edge="pad")
    coords = grid.coords()
    assert coords.dtype == np.int64 and coords.shape == (grid.size, 2)
    order = np.lexsort((coords[:, 0], coords[:, 1]))  # by y, then x
    np.testing.assert_array_equal(order, np.arange(grid.size))
    assert coords[:3].tolist() == [[0, 0], [200, 0], [400, 0]]
    assert coords[grid.columns].tolist() == [0, 200]
    assert len({tuple(c) for c in coords.tolist()}) == grid.size


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tile": 0}, "tile"),
        ({"tile": 224, "overlap": 224}, "overlap"),
        ({"tile": 224, "overlap": -1}, "overlap"),
        ({"tile": 224, "edge": "wrap"}, "edge"),
        ({"tile": 224, "target_mpp": 0.0}, "resolutions"),
    ],
)
def test_bad_arguments(kwargs: dict, message: str) -> None:
    args = {"level0_mpp": 0.5, "target_mpp": 0.5, **kwargs}
    with pytest.raises(ValueError, match=message):
        make_grid(1000, 1000, **args)
