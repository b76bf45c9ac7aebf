"""Fixtures for the slide tests: the real slides, small synthetic slides, a fake encoder."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from service.slides import PipelineSettings
from service.testing import SyntheticMirax, SyntheticSlide, make_synthetic_mirax, make_synthetic_slide

HERE = Path(__file__).resolve().parent
# tests/unit/slides/conftest.py → project root is parents[3]; the workspace's shared data is beside it
SLIDES_DIR = Path(__file__).resolve().parents[3].parent / "shared/data/slides"
CMU = "CMU-1-Small-Region.svs"
TCGA = "TCGA-CR-7395-01A-01-TS1.svs"

# the fakes module is imported by name here and by the subprocesses some tests start
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

#: small thumbnails keep the tests fast; the defaults are for real slides
FAST = PipelineSettings(workers=2, thumbnail_size=768, heatmap_size=256)


@pytest.fixture(scope="session")
def slides_dir() -> Path:
    if not (SLIDES_DIR / CMU).is_file() or not (SLIDES_DIR / TCGA).is_file():
        pytest.skip(f"real test slides not found in {SLIDES_DIR} (a checkout outside the workspace)")
    return SLIDES_DIR


@pytest.fixture(scope="session")
def synthetic_40x(tmp_path_factory: pytest.TempPathFactory) -> SyntheticSlide:
    """A 40x (0.25 µm/px) generic pyramid, odd size and odd tile size, lossless so pixels are exact."""
    path = tmp_path_factory.mktemp("synthetic") / "synthetic_40x.tiff"
    return make_synthetic_slide(
        path, 6001, 4003, tile_size=240, mpp=0.25, compression="deflate", n_blobs=4, blob_scale=0.22, seed=4
    )


@pytest.fixture(scope="session")
def synthetic_svs(tmp_path_factory: pytest.TempPathFactory) -> SyntheticSlide:
    """An Aperio-flavoured 40x slide with JPEG tiles."""
    path = tmp_path_factory.mktemp("synthetic") / "synthetic_40x.svs"
    return make_synthetic_slide(path, 3000, 2200, tile_size=256, mpp=0.25, flavour="aperio", seed=5)


@pytest.fixture(scope="session")
def synthetic_mirax(tmp_path_factory: pytest.TempPathFactory) -> SyntheticMirax:
    """A 20x (0.5 µm/px) MIRAX slide: ``slide.mrxs`` beside its data folder ``slide/``, 8 x 6 JPEG
    images of 256² (at 0.25 µm/px its blobs would be smaller than the tissue detector's minimum)."""
    return make_synthetic_mirax(tmp_path_factory.mktemp("mirax") / "slide", width=2048, height=1536, mpp=0.5, seed=7)
