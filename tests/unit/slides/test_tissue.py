"""Tissue detection: saturation, Otsu, the clean-up, per-tile fractions, skipped blank tiles."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.slides import SlideOptions, detect_tissue, make_grid, open_slide, process_slide
from service.slides.tissue import MIN_SATURATION, keep_tiles, otsu_threshold, saturation, tiles_geojson, tissue_geojson
from service.testing import SyntheticSlide

from ._fakes import FakeEncoder
from .conftest import CMU, FAST


def test_saturation_of_grey_is_zero_and_of_pure_colour_is_full() -> None:
    rgb = np.array([[[200, 200, 200], [0, 0, 0], [255, 0, 0], [230, 150, 190]]], dtype=np.uint8)
    assert saturation(rgb).tolist() == [[0, 0, 255, 89]]


def test_otsu_splits_two_modes() -> None:
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(20, 5, 5000), rng.normal(120, 10, 2000)]).clip(0, 255).astype(np.uint8)
    threshold = otsu_threshold(values)
    assert 40 < threshold < 100
    assert otsu_threshold(np.zeros(0, dtype=np.uint8)) == 0.0


def test_mask_matches_the_synthetic_ground_truth(synthetic_40x: SyntheticSlide) -> None:
    with open_slide(synthetic_40x.path) as slide:
        thumb = slide.thumbnail(512)
    tissue = detect_tissue(thumb, synthetic_40x.width, synthetic_40x.height, level0_mpp=0.25)
    truth = synthetic_40x.tissue_fraction(0, 0, max(synthetic_40x.width, synthetic_40x.height), samples=256)
    # the ground-truth square is the slide padded to a square; rescale to the slide's area
    side = max(synthetic_40x.width, synthetic_40x.height)
    truth *= side * side / (synthetic_40x.width * synthetic_40x.height)
    assert abs(tissue.tissue_fraction - truth) < 0.03
    assert tissue.threshold >= MIN_SATURATION

    grid = make_grid(synthetic_40x.width, synthetic_40x.height, level0_mpp=0.25, target_mpp=0.5, tile=224)
    coords = grid.coords()
    fractions = tissue.tile_fractions(coords, grid.patch_size_level0)
    expected = np.array([synthetic_40x.tissue_fraction(x, y, grid.patch_size_level0) for x, y in coords])
    assert fractions.dtype == np.float32 and fractions.shape == (grid.size,)
    assert np.abs(fractions - expected).max() < 0.2
    assert np.abs(fractions - expected).mean() < 0.03
    assert (fractions[expected == 0] < 0.05).all()  # blank tiles read as blank
    assert (fractions[expected == 1] > 0.9).all()


def test_blank_slide_has_no_tissue() -> None:
    rng = np.random.default_rng(1)
    blank = np.clip(rng.normal(240, 3, (400, 600, 3)), 0, 255).astype(np.uint8)  # glass with sensor noise
    tissue = detect_tissue(blank, 12_000, 8_000, level0_mpp=0.25)
    assert tissue.tissue_fraction == 0.0
    coords = make_grid(12_000, 8_000, level0_mpp=0.25, target_mpp=0.5, tile=224).coords()
    assert (tissue.tile_fractions(coords, 448) == 0).all()


def test_specks_are_removed_and_a_fixed_threshold_is_honoured() -> None:
    image = np.full((300, 300, 3), 242, dtype=np.uint8)
    image[100:200, 100:200] = (200, 120, 170)  # a tissue block
    image[20, 20] = (200, 0, 0)  # a one-pixel speck
    tissue = detect_tissue(image, 3000, 3000)
    assert tissue.mask[150, 150] and not tissue.mask[20, 20]
    assert abs(tissue.tissue_fraction - 100 * 100 / 300**2) < 0.01
    none = detect_tissue(image, 3000, 3000, saturation_threshold=250)
    assert none.tissue_fraction == 0.0


def test_pipeline_skips_blank_tiles(tmp_path: Path, synthetic_40x: SyntheticSlide) -> None:
    encoder = FakeEncoder()
    report = process_slide(
        synthetic_40x.path, tmp_path / "out", encoder, SlideOptions(tissue_threshold=0.5), settings=FAST
    )
    import h5py

    with h5py.File(tmp_path / "out" / "features.h5") as f:
        coords = f["coords"][:]
        patch = int(f.attrs["patch_size_level0"])
    truth = np.array([synthetic_40x.tissue_fraction(x, y, patch) for x, y in coords])
    assert len(coords) == report["tiles"] == encoder.tiles
    assert report["tiles_background"] == report["tiles_grid"] - report["tiles"] > 0
    assert (truth > 0.3).all()  # nothing kept is mostly glass
    grid = make_grid(synthetic_40x.width, synthetic_40x.height, level0_mpp=0.25, target_mpp=0.5, tile=224)
    all_truth = np.array([synthetic_40x.tissue_fraction(x, y, patch) for x, y in grid.coords()])
    kept = {tuple(c) for c in coords.tolist()}
    full = [tuple(c) for c, t in zip(grid.coords().tolist(), all_truth, strict=True) if t > 0.7]
    assert full and all(c in kept for c in full)  # every tile that is mostly tissue is kept
    blank = [tuple(c) for c, t in zip(grid.coords().tolist(), all_truth, strict=True) if t == 0]
    assert blank and not any(c in kept for c in blank)

    mask = np.asarray(Image.open(tmp_path / "out" / "tissue_mask.png"))
    assert mask.dtype == np.uint8 and set(np.unique(mask).tolist()) <= {0, 255}
    assert 0.05 < (mask == 255).mean() < 0.8

    # threshold 0 keeps every tile of the grid
    everything = process_slide(
        synthetic_40x.path, tmp_path / "all", FakeEncoder(), SlideOptions(tissue_threshold=0.0), settings=FAST
    )
    assert everything["tiles"] == everything["tiles_grid"] == grid.size


def test_real_slide_mask(tmp_path: Path, slides_dir: Path) -> None:
    with open_slide(slides_dir / CMU) as slide:
        thumb = slide.thumbnail(512)
    tissue = detect_tissue(thumb, *slide.dimensions, level0_mpp=slide.mpp)
    # CMU-1-Small-Region: a strip of tissue down the middle, glass on both sides
    assert 0.15 < tissue.tissue_fraction < 0.6
    h, w = tissue.mask.shape
    assert tissue.mask[:, : w // 10].mean() < 0.05  # left margin is glass
    assert tissue.mask[h // 3 : 2 * h // 3, w // 2 - 20 : w // 2 + 20].mean() > 0.5


# -- real-slide robustness: dark pixels, pen, physical-scale clean-up, GeoJSON -----------------

GLASS = (242, 241, 239)
HE = (200, 120, 170)


def _canvas(h: int = 300, w: int = 300) -> np.ndarray:
    return np.full((h, w, 3), GLASS, dtype=np.uint8)


def test_dark_pixels_and_pen_ink_are_not_tissue() -> None:
    image = _canvas()
    image[100:200, 100:200] = HE  # tissue
    image[:, :12] = (8, 6, 10)  # the slide's black edge: near-black with high saturation
    image[250:262, 20:280] = (25, 20, 30)  # black pen
    image[20:40, 150:290] = (40, 70, 170)  # blue pen
    image[60:75, 150:290] = (40, 150, 70)  # green pen
    tissue = detect_tissue(image, 30_000, 30_000, level0_mpp=1.0)  # 100 µm per mask pixel
    assert tissue.mask[150, 150]
    assert not tissue.mask[:, :12].any() and not tissue.mask[250:262].any()
    assert not tissue.mask[20:40].any() and not tissue.mask[60:75].any()
    assert abs(tissue.tissue_fraction - 100 * 100 / 300**2) < 0.01
    assert tissue.excluded_fraction > 0.05
    # without the filters the edge and ink count as tissue (what the old detector did)
    naive = detect_tissue(image, 30_000, 30_000, level0_mpp=1.0, remove_dark=False, remove_pen=False)
    assert naive.mask[:, :12].any() and naive.mask[20:40].any()


def test_coarse_mask_still_removes_specks_and_small_pieces() -> None:
    """At ~12 µm per mask pixel the 16 µm opening used to round to 0 pixels."""
    image = _canvas()
    image[100:200, 100:200] = HE
    image[30, 30] = HE  # a one-pixel speck
    image[30:34, 250:254] = HE  # 4x4 px at 12 µm = 0.0023 mm²: debris below the area filter
    tissue = detect_tissue(image, 3600, 3600, level0_mpp=1.0)  # 12 µm per mask pixel
    assert tissue.mask_mpp == 12.0
    assert tissue.mask[150, 150] and not tissue.mask[30, 30] and not tissue.mask[30:34, 250:254].any()


def test_small_holes_are_filled_and_large_ones_kept() -> None:
    image = _canvas()
    image[50:250, 50:250] = HE
    image[80:84, 80:84] = GLASS  # 4x4 px at 12 µm: 0.0023 mm² lumen → filled
    image[120:200, 120:200] = GLASS  # 0.92 mm²: a real hole → kept
    tissue = detect_tissue(image, 3600, 3600, level0_mpp=1.0)
    assert tissue.mask[81, 81] and not tissue.mask[160, 160] and tissue.mask[60, 60]


def test_trident_rule_keeps_tiles_touching_tissue() -> None:
    fractions = np.array([0.0, 0.01, 0.2, 0.3, 1.0], dtype=np.float32)
    assert keep_tiles(fractions, 0.25).tolist() == [False, False, False, True, True]
    assert keep_tiles(fractions, 0.0).tolist() == [True] * 5
    assert keep_tiles(fractions, 0.0, "trident").tolist() == [False, True, True, True, True]
    assert keep_tiles(fractions, 0.25, "trident").tolist() == [False, False, False, True, True]


def test_tissue_geojson_has_holes_in_level0_pixels() -> None:
    image = _canvas()
    image[50:250, 50:250] = HE
    image[120:200, 120:200] = GLASS
    tissue = detect_tissue(image, 3000, 3000, level0_mpp=4.0)  # 10 level-0 px per mask px
    collection = tissue_geojson(tissue)
    assert collection["type"] == "FeatureCollection" and len(collection["features"]) == 1
    feature = collection["features"][0]
    assert feature["properties"]["objectType"] == "annotation"
    assert feature["properties"]["classification"]["name"] == "Tissue"
    outer, hole = feature["geometry"]["coordinates"]
    assert outer[0] == outer[-1] and hole[0] == hole[-1]
    xs = [p[0] for p in outer]
    assert min(xs) == pytest.approx(505, abs=15) and max(xs) == pytest.approx(2495, abs=15)
    hx = [p[0] for p in hole]
    assert min(hx) == pytest.approx(1195, abs=15) and max(hx) == pytest.approx(1995, abs=15)
    json.dumps(collection)  # plain JSON


def test_tiles_geojson_is_one_square_per_tile_in_order() -> None:
    coords = np.array([[0, 0], [448, 0], [0, 448]])
    collection = tiles_geojson(coords, 448)
    rings = [f["geometry"]["coordinates"][0] for f in collection["features"]]
    assert rings[1] == [[448, 0], [896, 0], [896, 448], [448, 448], [448, 0]]
    assert [f["properties"]["measurements"]["index"] for f in collection["features"]] == [0, 1, 2]
    assert {f["properties"]["objectType"] for f in collection["features"]} == {"tile"}


def test_real_slide_writes_geojson_that_matches_the_features(tmp_path: Path, slides_dir: Path) -> None:
    import h5py

    process_slide(slides_dir / CMU, tmp_path, FakeEncoder(), SlideOptions(mpp=1.0), settings=FAST)
    tiles = json.loads((tmp_path / "tiles.geojson").read_text())
    tissue = json.loads((tmp_path / "tissue.geojson").read_text())
    with h5py.File(tmp_path / "features.h5") as f:
        coords = f["coords"][:]
        size = int(f.attrs["patch_size_level0"])
    assert len(tiles["features"]) == len(coords) > 0
    assert tiles["features"][5]["geometry"]["coordinates"][0][0] == coords[5].tolist()
    assert tiles["features"][5]["geometry"]["coordinates"][0][2] == (coords[5] + size).tolist()
    assert tissue["features"] and all(f["geometry"]["type"] == "Polygon" for f in tissue["features"])
    report = json.loads((tmp_path / "report.json").read_text())
    assert 0.05 < report["tissue"]["tissue_fraction"] < 0.95
