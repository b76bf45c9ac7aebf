"""A resolution the lab can trust: implausible MPPs are refused naming ``slide_mpp``, the caller's
value overrides the metadata (which is still recorded), and a plan's tile count is bounded."""

from __future__ import annotations

import math
from pathlib import Path

import h5py
import pytest

from service.errors import InvalidInput
from service.slides import JobManager, PipelineSettings, SlideOptions, open_slide, process_slide
from service.slides.reader import PLAUSIBLE_MPP, check_plausible_mpp
from service.testing import make_synthetic_slide

from ._fakes import FakeEncoder
from .conftest import CMU, FAST


@pytest.fixture(scope="module")
def tiff_72dpi(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generic tiled TIFF whose resolution tag says 72 dpi (352.8 µm/px), like an image editor writes."""
    path = tmp_path_factory.mktemp("dpi") / "scan_72dpi.tiff"
    return make_synthetic_slide(path, 3000, 2000, tile_size=256, mpp=25400 / 72, seed=3).path


def test_72_dpi_tiff_is_refused_naming_slide_mpp(tiff_72dpi: Path) -> None:
    with pytest.raises(InvalidInput) as err:
        open_slide(tiff_72dpi)
    assert err.value.param == "slide_mpp"
    assert "352.8" in err.value.message and "slide_mpp" in err.value.message


def test_caller_corrects_a_wrong_tag_and_the_metadata_value_is_recorded(tiff_72dpi: Path, tmp_path: Path) -> None:
    with open_slide(tiff_72dpi, slide_mpp=0.5) as reader:
        assert reader.mpp == 0.5 and reader.mpp_source == "caller"
        assert reader.metadata_mpp == pytest.approx(352.8, rel=1e-3)
    report = process_slide(
        tiff_72dpi, tmp_path / "out", FakeEncoder(), SlideOptions(mpp=1.0, slide_mpp=0.5), settings=FAST
    )
    assert report["slide"]["mpp_source"] == "caller"
    with h5py.File(tmp_path / "out" / "features.h5") as f:
        assert f.attrs["mpp_source"] == "caller" and f.attrs["level0_mpp"] == 0.5
        assert f.attrs["metadata_mpp"] == pytest.approx(352.8, rel=1e-3)
        assert f["coords"].attrs["mpp_source"] == "caller"


def test_missing_metadata_is_recorded_as_nan(slides_dir: Path, tmp_path: Path) -> None:
    process_slide(
        slides_dir / "TCGA-CR-7395-01A-01-TS1.svs",
        tmp_path,
        FakeEncoder(),
        SlideOptions(mpp=2.0, slide_mpp=0.25),
        settings=FAST,
    )
    with h5py.File(tmp_path / "features.h5") as f:
        assert math.isnan(f.attrs["metadata_mpp"]) and f.attrs["mpp_source"] == "caller"


@pytest.mark.parametrize("bad", [0.01, 25.0, 352.8])
def test_implausible_caller_mpp_is_refused(slides_dir: Path, bad: float) -> None:
    with pytest.raises(InvalidInput) as err:
        open_slide(slides_dir / CMU, slide_mpp=bad)
    assert err.value.param == "slide_mpp" and "plausible" in err.value.message


def test_plausible_range_and_physical_extent() -> None:
    low, high = PLAUSIBLE_MPP
    check_plausible_mpp(low, "metadata", (1000, 1000), "a")
    check_plausible_mpp(high, "metadata", (1000, 1000), "a")
    # 0.25 µm/px is plausible, but 600,000 pixels of it are 150 mm: no glass slide is that long
    with pytest.raises(InvalidInput) as err:
        check_plausible_mpp(0.25, "metadata", (600_000, 1000), "huge")
    assert err.value.param == "slide_mpp" and "mm" in err.value.message


def test_planned_tiles_are_bounded(slides_dir: Path, tmp_path: Path) -> None:
    settings = PipelineSettings(workers=1, thumbnail_size=512, heatmap_size=256, max_tiles=100)
    with pytest.raises(InvalidInput) as err:
        process_slide(slides_dir / CMU, tmp_path, FakeEncoder(), SlideOptions(mpp=0.5), settings=settings)
    assert "exceed the limit of 100" in err.value.message


def test_a_job_for_a_72_dpi_tiff_is_a_400_at_submission(tiff_72dpi: Path, tmp_path: Path) -> None:
    manager = JobManager(tmp_path / "jobs", lambda _m: FakeEncoder(), slide_root=tiff_72dpi.parent, settings=FAST)
    try:
        with pytest.raises(InvalidInput) as err:
            manager.submit(tiff_72dpi.name, options={"mpp": 0.5})
        assert err.value.param == "slide_mpp"
        status = manager.submit(tiff_72dpi.name, options={"mpp": 4.0, "slide_mpp": 0.5})
        assert status.mpp_source == "caller" and status.level0_mpp == 0.5
        assert status.metadata_mpp == pytest.approx(352.8, rel=1e-3)
        assert manager.wait(status.id, timeout=120).state == "succeeded"
    finally:
        manager.shutdown()
