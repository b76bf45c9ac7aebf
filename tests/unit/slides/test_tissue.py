"""Tissue detection: saturation, Otsu, the clean-up, per-tile fractions, skipped blank tiles."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from service.slides import SlideOptions, SyntheticSlide, detect_tissue, make_grid, open_slide, process_slide
from service.slides.tissue import MIN_SATURATION, otsu_threshold, saturation

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
