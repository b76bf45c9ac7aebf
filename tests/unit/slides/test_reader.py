"""Slide readers: real OpenSlide reads, the MPP rule, level selection, fallback, refusals."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import tifffile
import tiffslide

from service.errors import InvalidInput
from service.slides import open_slide, resolve_mpp
from service.slides.reader import SlideReader
from service.testing import SyntheticSlide, make_synthetic_slide

from .conftest import CMU, TCGA


def test_cmu_opens_with_openslide_and_metadata_mpp(slides_dir: Path) -> None:
    with open_slide(slides_dir / CMU) as slide:
        assert slide.backend == "openslide"
        assert slide.vendor == "aperio"
        assert slide.level_count == 1
        assert slide.dimensions == (2220, 2967)
        assert slide.mpp == pytest.approx(0.499)
        assert slide.mpp_source == "metadata"
        assert slide.objective_power == 20
        region = slide.read_region(1000, 1000, 0, 64, 48)
        assert region.shape == (48, 64, 3) and region.dtype == np.uint8
        assert region.std() > 5  # real tissue, not a blank read
        info = slide.info().to_dict()
        assert info["level_dimensions"] == [[2220, 2967]] and info["mpp_source"] == "metadata"


def test_region_past_the_edge_is_white(slides_dir: Path) -> None:
    with open_slide(slides_dir / CMU) as slide:
        region = slide.read_region(2200, 2950, 0, 50, 40)
        inside = slide.read_region(2200, 2950, 0, 20, 17)
        np.testing.assert_array_equal(region[:17, :20], inside)
        assert (region[17:] == 255).all() and (region[:, 20:] == 255).all()
        assert (slide.read_region(5000, 5000, 0, 8, 8) == 255).all()


def test_tcga_without_mpp_is_refused_naming_slide_mpp(slides_dir: Path) -> None:
    with pytest.raises(InvalidInput) as err:
        open_slide(slides_dir / TCGA)
    assert err.value.param == "slide_mpp"
    assert "slide_mpp" in err.value.message and TCGA in err.value.message


def test_tcga_with_caller_mpp_reads_its_pyramid(slides_dir: Path) -> None:
    with open_slide(slides_dir / TCGA, slide_mpp=0.25) as slide:
        assert slide.metadata_mpp is None and slide.objective_power is None
        assert slide.mpp == 0.25 and slide.mpp_source == "caller"
        assert slide.level_dimensions == ((4443, 3567), (2221, 1783))
        # 0.25 µm/px at level 0, 0.50 at level 1 (downsample 2.0005, within tolerance)
        assert slide.best_level_for_mpp(0.5) == 1
        assert slide.best_level_for_mpp(0.49) == 0
        level1 = slide.read_region(2000, 1600, 1, 128, 128)  # JPEG 2000 tiles
        assert level1.shape == (128, 128, 3) and level1.std() > 5


def test_caller_mpp_overrides_metadata_which_is_kept(slides_dir: Path) -> None:
    with open_slide(slides_dir / CMU, slide_mpp=0.25) as slide:
        assert slide.mpp == 0.25 and slide.mpp_source == "caller"
        assert slide.metadata_mpp == pytest.approx(0.499)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_slide_mpp_is_refused(slides_dir: Path, bad: float) -> None:
    with pytest.raises(InvalidInput) as err:
        open_slide(slides_dir / TCGA, slide_mpp=bad)
    assert err.value.param == "slide_mpp"


def test_resolve_mpp_rule() -> None:
    assert resolve_mpp(0.3, 0.5, 20) == (0.5, "caller")
    assert resolve_mpp(0.3, None, 20) == (0.3, "metadata")
    assert resolve_mpp(None, 0.5, 20) == (0.5, "caller")
    assert resolve_mpp(None, None, 40) == (0.25, "objective")
    assert resolve_mpp(None, None, 20) == (0.5, "objective")
    assert resolve_mpp(None, None, None) == (None, None)


def test_mpp_from_objective_power(tmp_path: Path) -> None:
    slide = make_synthetic_slide(tmp_path / "mag_only.svs", 700, 500, mpp=None, app_mag=40, flavour="aperio")
    with open_slide(slide.path) as reader:
        assert reader.metadata_mpp is None and reader.objective_power == 40
        assert reader.mpp == pytest.approx(0.25) and reader.mpp_source == "objective"
    # the caller's value comes before the objective
    with open_slide(slide.path, slide_mpp=0.3) as reader:
        assert reader.mpp == 0.3 and reader.mpp_source == "caller"


def test_generic_tiff_without_resolution_needs_slide_mpp(tmp_path: Path) -> None:
    slide = make_synthetic_slide(tmp_path / "nompp.tiff", 600, 400, mpp=None)
    with pytest.raises(InvalidInput) as err:
        open_slide(slide.path)
    assert err.value.param == "slide_mpp"
    with open_slide(slide.path, require_mpp=False) as reader:
        assert reader.mpp is None
        with pytest.raises(InvalidInput):
            reader.best_level_for_mpp(0.5)


def test_level_selection_on_a_40x_pyramid(synthetic_40x: SyntheticSlide) -> None:
    with open_slide(synthetic_40x.path) as slide:
        assert slide.mpp == pytest.approx(0.25)
        assert slide.level_count == 5
        assert [slide.level_mpp(i) for i in range(5)] == pytest.approx([0.25, 0.5, 1.0, 2.0, 4.0], rel=0.005)
        assert slide.best_level_for_mpp(0.5) == 1  # the level at the target, not level 0
        assert slide.best_level_for_mpp(0.7) == 1  # finest level at or above the target: read, then shrink
        assert slide.best_level_for_mpp(1.0) == 2
        assert slide.best_level_for_mpp(0.3) == 0
        assert slide.best_level_for_mpp(0.1) == 0  # finer than the slide: level 0 is all there is
        assert slide.best_level_for_mpp(100.0) == 4


def test_synthetic_pixels_read_back(synthetic_40x: SyntheticSlide) -> None:
    with open_slide(synthetic_40x.path) as slide:
        blob = synthetic_40x.blobs[0]
        for level in range(slide.level_count):
            ds = synthetic_40x.level_downsample(level)
            x, y = int(blob.cx / ds) - 50, int(blob.cy / ds) - 40
            region = slide.read_region(round(x * ds), round(y * ds), level, 100, 80).astype(int)
            expected = synthetic_40x.render(x, y, 100, 80, ds).astype(int)
            assert (expected != 255).any(axis=2).mean() > 0.5  # mostly tissue
            if level == 0:
                np.testing.assert_array_equal(region, expected)
            else:
                # odd sizes make downsamples like 1.9994: OpenSlide reads at a sub-pixel offset and
                # interpolates, so reduced levels match closely rather than bit for bit
                assert np.abs(region - expected).mean() < 6.0
                np.testing.assert_allclose(region.mean(axis=(0, 1)), expected.mean(axis=(0, 1)), atol=1.0)


def test_tiffslide_fallback_for_a_stripped_tiff(tmp_path: Path) -> None:
    image = np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8)
    path = tmp_path / "stripped.tif"  # not tiled: OpenSlide's generic driver refuses it
    tifffile.imwrite(path, image, photometric="rgb", resolution=(2e4, 2e4), resolutionunit="CENTIMETER")
    with open_slide(path) as slide:
        assert slide.backend == "tiffslide"
        assert slide.mpp == pytest.approx(0.5)
        np.testing.assert_array_equal(slide.read_region(0, 0, 0, 400, 300), image)
        edge = slide.read_region(390, 290, 0, 20, 20)
        np.testing.assert_array_equal(edge[:10, :10], image[290:, 390:])
        assert (edge[10:] == 255).all()  # white, not tiffslide's black padding


def test_openslide_and_tiffslide_agree(synthetic_svs: SyntheticSlide) -> None:
    with open_slide(synthetic_svs.path) as ours, SlideReader(synthetic_svs.path, tiffslide) as other:
        assert ours.backend == "openslide" and ours.vendor == "aperio"
        assert other.level_dimensions == ours.level_dimensions
        assert other.metadata_mpp == pytest.approx(0.25) and other.objective_power == 40
        for level in (0, 1):
            a = ours.read_region(800, 600, level, 200, 150)
            b = other.read_region(800, 600, level, 200, 150)
            assert np.abs(a.astype(int) - b.astype(int)).mean() < 2.0  # same JPEG tiles, two decoders


@pytest.mark.parametrize("content", [b"plain text, not a slide\n" * 10, b"\x89PNG\r\n\x1a\n" + bytes(64), b""])
def test_non_slide_file_is_invalid_input(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "not_a_slide.svs"
    path.write_bytes(content)
    with pytest.raises(InvalidInput) as err:
        open_slide(path)
    assert err.value.param == "slide"
    assert "not a whole-slide image" in err.value.message


def test_missing_file_is_invalid_input(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput) as err:
        open_slide(tmp_path / "nope.svs")
    assert err.value.param == "slide" and "not found" in err.value.message


def test_one_handle_per_thread(slides_dir: Path) -> None:
    with open_slide(slides_dir / CMU) as slide:
        expected = slide.read_region(512, 512, 0, 256, 256)
        results: list[np.ndarray] = []
        lock = threading.Lock()

        def work() -> None:
            for _ in range(5):
                region = slide.read_region(512, 512, 0, 256, 256)
                with lock:
                    results.append(region)

        threads = [threading.Thread(target=work) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert slide.open_handles == 4  # the opening thread plus one per worker
        assert len(results) == 15
        for region in results:
            np.testing.assert_array_equal(region, expected)
    with pytest.raises(RuntimeError):
        slide.read_region(0, 0, 0, 4, 4)  # closed readers refuse new handles


def test_thumbnail_is_chunked_and_shaped(slides_dir: Path) -> None:
    with open_slide(slides_dir / TCGA, slide_mpp=0.25) as slide:
        thumb = slide.thumbnail(300)
        assert thumb.shape == (241, 300, 3)
        direct = slide.read_region(0, 0, 1, 2221, 1783)
        # the chunked thumbnail matches a one-shot downscale of the same level
        from PIL import Image

        reference = np.asarray(Image.fromarray(direct).resize((300, 241), Image.Resampling.BOX))
        assert np.abs(thumb.astype(int) - reference.astype(int)).mean() < 3.0
