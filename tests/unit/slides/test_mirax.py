"""MIRAX ``.mrxs`` slides (a main file beside a data folder), written by the synthetic generator:
OpenSlide reads them, and Tessera opens them by path, in a folder, from the batch scan and as a
zip upload."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import openslide
import pytest

from service.serve.slides_bulk import collect_slides
from service.slides import JobManager, open_slide
from service.slides.formats import extract_zip, locate_slide, scan_folder
from service.testing import SyntheticMirax, make_synthetic_mirax

from ._fakes import FakeEncoder
from .conftest import FAST

#: mean absolute error of a JPEG (quality 90) round trip on the synthetic texture, in 8-bit levels
JPEG_TOLERANCE = 3.0


def _region_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got.astype(np.int16) - want.astype(np.int16)).mean())


def _tissue(pixels: np.ndarray, background: tuple[int, int, int]) -> float:
    """Fraction of pixels that differ from the background: the region compared is not blank."""
    return float((np.abs(pixels.astype(np.int16) - np.array(background)).max(axis=-1) > 30).mean())


def _copy_slide(slide: SyntheticMirax, dest: Path) -> Path:
    """Copy the ``.mrxs`` and its data folder into ``dest``; returns the copied ``.mrxs``."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(slide.path, dest / slide.path.name)
    shutil.copytree(slide.data_dir, dest / slide.data_dir.name)
    return dest / slide.path.name


def _zip_slide(slide: SyntheticMirax, archive: Path, prefix: str = "") -> Path:
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(slide.path, f"{prefix}{slide.path.name}")
        for file in sorted(slide.data_dir.iterdir()):
            zf.write(file, f"{prefix}{slide.data_dir.name}/{file.name}")
    return archive


def test_the_generator_writes_the_mirax_layout(synthetic_mirax: SyntheticMirax) -> None:
    assert (
        synthetic_mirax.path.name == "slide.mrxs" and synthetic_mirax.data_dir == synthetic_mirax.path.parent / "slide"
    )
    assert sorted(p.name for p in synthetic_mirax.data_dir.iterdir()) == ["Data0000.dat", "Index.dat", "Slidedat.ini"]
    assert (synthetic_mirax.data_dir / "Index.dat").read_bytes().startswith(b"01.02")
    assert synthetic_mirax.pixels.shape == (1536, 2048, 3)
    assert 0.1 < _tissue(synthetic_mirax.pixels, synthetic_mirax.background) < 0.9


def test_openslide_reads_the_synthetic_mirax(synthetic_mirax: SyntheticMirax) -> None:
    with openslide.OpenSlide(str(synthetic_mirax.path)) as slide:
        assert slide.properties["openslide.vendor"] == "mirax"
        assert slide.dimensions == (2048, 1536)
        assert slide.level_dimensions == ((2048, 1536), (1024, 768), (512, 384), (256, 192))
        assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(0.5)
        assert float(slide.properties["openslide.mpp-y"]) == pytest.approx(0.5)
        assert slide.properties["openslide.objective-power"] == "20"
        assert slide.properties["mirax.GENERAL.SLIDE_ID"] == "00000000-0000-0000-0000-00000000c0de"

        # level 0, across image boundaries (x = 256, 512, 768; y = 256, 512): the pixels written
        x, y, w, h = 200, 150, 700, 500
        got = np.asarray(slide.read_region((x, y), 0, (w, h)).convert("RGB"))
        want = synthetic_mirax.pixels[y : y + h, x : x + w]
        assert _tissue(want, synthetic_mirax.background) > 0.1  # the region holds tissue, not just background
        assert _region_error(got, want) < JPEG_TOLERANCE
        # ...and not the pixels one image over (a misplaced image would match those instead)
        assert _region_error(got, synthetic_mirax.pixels[y : y + h, x + 256 : x + 256 + w]) > 4 * JPEG_TOLERANCE

        # level 2 (downsample 4): the whole level matches the source box-averaged 4 x 4
        got = np.asarray(slide.read_region((0, 0), 2, (512, 384)).convert("RGB"))
        want = synthetic_mirax.pixels.reshape(384, 4, 512, 4, 3).mean(axis=(1, 3)).round().astype(np.uint8)
        assert _region_error(got, want) < JPEG_TOLERANCE


def test_the_generator_refuses_a_size_that_is_not_whole_images(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="multiple of tile"):
        make_synthetic_mirax(tmp_path / "odd", width=1000, height=512)
    assert not (tmp_path / "odd.mrxs").exists()


def test_tessera_opens_a_mirax_slide_by_its_file_and_by_its_folder(
    synthetic_mirax: SyntheticMirax, tmp_path: Path
) -> None:
    with open_slide(synthetic_mirax.path) as slide:
        assert slide.backend == "openslide" and slide.vendor == "mirax"
        assert slide.dimensions == (2048, 1536) and slide.level_count == 4
        assert slide.mpp == pytest.approx(0.5) and slide.mpp_source == "metadata"
        assert slide.objective_power == pytest.approx(20)
        got = slide.read_region(1000, 700, 0, 300, 300)
        assert _region_error(got, synthetic_mirax.pixels[700:1000, 1000:1300]) < JPEG_TOLERANCE
        # past the right edge: white padding, not an error
        assert (slide.read_region(2000, 0, 0, 100, 10)[:, 48:] == 255).all()
    folder = tmp_path / "case"
    main = _copy_slide(synthetic_mirax, folder)
    assert locate_slide(folder) == main  # the .mrxs, not a file of its data folder
    with open_slide(folder) as slide:
        assert slide.path == main and slide.vendor == "mirax" and slide.mpp == pytest.approx(0.5)


def test_the_batch_scan_finds_the_mrxs_and_not_its_data_folder(synthetic_mirax: SyntheticMirax, tmp_path: Path) -> None:
    root = tmp_path / "batch"
    _copy_slide(synthetic_mirax, root)
    (root / "notes.txt").write_text("x")
    assert scan_folder(root) == [root / "slide.mrxs"]
    assert collect_slides(root) == [root / "slide.mrxs"]


def test_a_zipped_mirax_slide_unpacks_and_opens(synthetic_mirax: SyntheticMirax, tmp_path: Path) -> None:
    archive = _zip_slide(synthetic_mirax, tmp_path / "slide.zip", prefix="export/")
    folder = extract_zip(archive, tmp_path / "out", max_bytes=50 << 20)
    assert locate_slide(folder) == folder / "export" / "slide.mrxs"
    with open_slide(folder) as slide:
        assert slide.vendor == "mirax" and slide.dimensions == (2048, 1536)
        got = slide.read_region(0, 0, 0, 512, 512)
        assert _region_error(got, synthetic_mirax.pixels[:512, :512]) < JPEG_TOLERANCE


def test_mirax_jobs_by_path_and_by_zip_upload(synthetic_mirax: SyntheticMirax, tmp_path: Path) -> None:
    root = tmp_path / "root"
    _copy_slide(synthetic_mirax, root)
    archive = _zip_slide(synthetic_mirax, tmp_path / "upload.zip")  # the .mrxs and its folder at the top
    manager = JobManager(tmp_path / "jobs", lambda _m: FakeEncoder(), slide_root=root, settings=FAST)
    try:
        by_path = manager.submit("slide.mrxs", options={"mpp": 1.0})
        with archive.open("rb") as fh:
            by_upload = manager.submit(upload=fh, filename="slide.zip", options={"mpp": 1.0})
        for job in (by_path, by_upload):
            done = manager.wait(job.id, timeout=60)
            assert done.state == "succeeded", done.error
            assert done.tiles_done > 0 and done.metadata_mpp == pytest.approx(0.5)
            report = json.loads((manager.job_dir(job.id) / "report.json").read_text())
            assert report["slide"]["vendor"] == "mirax"
            assert report["slide"]["level_dimensions"][0] == [2048, 1536]
        assert not (manager.job_dir(by_upload.id) / "slide.zip").exists()  # unpacked, not kept twice
    finally:
        manager.shutdown()
