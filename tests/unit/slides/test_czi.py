"""Zeiss ``.czi`` slides written by Zeiss's libCZI (``pylibCZIrw``): OpenSlide's Zeiss reader
opens them, and Tessera opens them by path, finds them in the batch scan and runs a job on one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import openslide
import pytest

from service.serve.slides_bulk import collect_slides
from service.slides import JobManager, open_slide
from service.slides.formats import scan_folder
from service.testing import SyntheticCzi, make_synthetic_czi

from ._fakes import FakeEncoder
from .conftest import FAST


@pytest.fixture(scope="module")
def synthetic_czi(tmp_path_factory: pytest.TempPathFactory) -> SyntheticCzi:
    """A 20x (0.5 µm/px) CZI, 2048 x 1536 in 512² zstd subblocks (lossless: pixels are exact)."""
    return make_synthetic_czi(tmp_path_factory.mktemp("czi") / "slide.czi", width=2048, height=1536, mpp=0.5, seed=7)


def _tissue(pixels: np.ndarray, background: tuple[int, int, int]) -> float:
    """Fraction of pixels that differ from the background: the region compared is not blank."""
    return float((np.abs(pixels.astype(np.int16) - np.array(background)).max(axis=-1) > 30).mean())


def test_openslide_reads_the_synthetic_czi(synthetic_czi: SyntheticCzi) -> None:
    assert 0.1 < _tissue(synthetic_czi.pixels, synthetic_czi.background) < 0.9
    with openslide.OpenSlide(str(synthetic_czi.path)) as slide:
        assert slide.properties["openslide.vendor"] == "zeiss"
        assert slide.dimensions == (2048, 1536) and slide.level_count == 1
        assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(0.5)
        assert float(slide.properties["openslide.mpp-y"]) == pytest.approx(0.5)
        # across subblock boundaries (x = 512, 1024; y = 512): exactly the pixels written, in RGB order
        x, y, w, h = 300, 350, 900, 400
        got = np.asarray(slide.read_region((x, y), 0, (w, h)).convert("RGB"))
        want = synthetic_czi.pixels[y : y + h, x : x + w]
        assert _tissue(want, synthetic_czi.background) > 0.1
        np.testing.assert_array_equal(got, want)


def test_tessera_opens_a_czi_slide(synthetic_czi: SyntheticCzi) -> None:
    with open_slide(synthetic_czi.path) as slide:
        assert slide.backend == "openslide" and slide.vendor == "zeiss"
        assert slide.dimensions == (2048, 1536) and slide.level_count == 1
        assert slide.mpp == pytest.approx(0.5) and slide.mpp_source == "metadata"
        np.testing.assert_array_equal(
            slide.read_region(1000, 700, 0, 300, 300), synthetic_czi.pixels[700:1000, 1000:1300]
        )


def test_the_batch_scan_finds_the_czi(synthetic_czi: SyntheticCzi, tmp_path: Path) -> None:
    root = tmp_path / "batch"
    root.mkdir()
    (root / "case.czi").write_bytes(synthetic_czi.path.read_bytes())
    (root / "notes.txt").write_text("x")
    assert scan_folder(root) == [root / "case.czi"]
    assert collect_slides(root) == [root / "case.czi"]


def test_a_czi_job_by_path(synthetic_czi: SyntheticCzi, tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "slide.czi").write_bytes(synthetic_czi.path.read_bytes())
    manager = JobManager(tmp_path / "jobs", lambda _m: FakeEncoder(), slide_root=root, settings=FAST)
    try:
        job = manager.submit("slide.czi", options={"mpp": 1.0})
        done = manager.wait(job.id, timeout=60)
        assert done.state == "succeeded", done.error
        assert done.tiles_done > 0 and done.metadata_mpp == pytest.approx(0.5)
        report = json.loads((manager.job_dir(job.id) / "report.json").read_text())
        assert report["slide"]["vendor"] == "zeiss"
        assert report["slide"]["level_dimensions"][0] == [2048, 1536]
    finally:
        manager.shutdown()
