"""The synthetic slide generator: TIFF structure, both flavours, odd sizes, ground truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openslide
import pytest
import tifffile

from service.testing import SyntheticSlide, make_synthetic_slide


def test_generic_pyramid_structure(synthetic_40x: SyntheticSlide) -> None:
    with tifffile.TiffFile(synthetic_40x.path) as tif:
        pages = list(tif.pages)
        assert len(pages) == 5 and not any(p.tags.get(330) for p in pages)  # top-level chain, no SubIFDs
        assert [p.shape[:2][::-1] for p in pages] == list(synthetic_40x.level_dimensions)
        assert all(p.is_tiled and p.tilewidth == 240 for p in pages)
        assert [p.tags["NewSubfileType"].value for p in pages] == [0, 1, 1, 1, 1]
        assert all(p.tags.get("ImageDescription") is None for p in pages)  # metadata=None: no tifffile JSON
        assert pages[0].tags["ResolutionUnit"].value == 3  # centimetre
    slide = openslide.OpenSlide(str(synthetic_40x.path))
    assert slide.properties["openslide.vendor"] == "generic-tiff"
    assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(0.25)
    assert slide.level_dimensions[0] == (6001, 4003)  # odd sizes


def test_aperio_flavour(synthetic_svs: SyntheticSlide) -> None:
    with tifffile.TiffFile(synthetic_svs.path) as tif:
        first = tif.pages[0]
        descriptions = [t for t in first.tags if t.code == 270]
        assert len(descriptions) == 1  # exactly one ImageDescription
        text = descriptions[0].value
        assert text.startswith("Aperio Image Library") and "|AppMag = 40|" in text and "|MPP = 0.2500|" in text
        assert not tif.pages[1].is_tiled  # the thumbnail IFD, as scanners write it
        assert first.compression == 7  # JPEG
    slide = openslide.OpenSlide(str(synthetic_svs.path))
    assert slide.properties["openslide.vendor"] == "aperio"
    assert slide.properties["openslide.objective-power"] == "40"
    assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(0.25)
    assert "thumbnail" in slide.associated_images
    assert slide.level_count == len(synthetic_svs.level_dimensions) >= 3


def test_pixels_are_a_function_of_position(tmp_path: Path) -> None:
    slide = make_synthetic_slide(tmp_path / "a.tiff", 1000, 800, tile_size=128, compression="deflate", seed=1)
    again = make_synthetic_slide(tmp_path / "b.tiff", 1000, 800, tile_size=368, compression="none", seed=1)
    with tifffile.TiffFile(slide.path) as a, tifffile.TiffFile(again.path) as b:
        np.testing.assert_array_equal(a.pages[0].asarray(), b.pages[0].asarray())  # tile size changes nothing
        level0 = a.pages[0].asarray()
        np.testing.assert_array_equal(level0, slide.render(0, 0, 1000, 800))
        np.testing.assert_array_equal(a.pages[1].asarray(), slide.render(0, 0, 500, 400, 2.0))
    tissue = (level0 != slide.background).any(axis=2).mean()
    side = slide.tissue_fraction(0, 0, 1000, samples=200) * 1000 * 1000 / (1000 * 800)
    assert abs(tissue - side) < 0.02
    assert 0.05 < tissue < 0.6


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tile_size": 100}, "multiple of 16"),
        ({"mpp": 0.0}, "mpp"),
        ({"flavour": "hamamatsu"}, "flavour"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_synthetic_slide(tmp_path / "x.tiff", 100, 100, **kwargs)
