"""Formats: DICOM WSI (the real slide converted with wsidicomizer, read by OpenSlide), a folder
or zip of a series, multi-file slides as folders and zips, the batch scan and the upload suffixes."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest

from service.errors import InvalidInput, PayloadTooLarge
from service.serve.slides_bulk import collect_slides
from service.slides import JobManager, SlideOptions, open_slide, process_slide
from service.slides.formats import extract_zip, locate_slide, scan_folder
from service.slides.jobs import UPLOAD_SUFFIXES

from ._fakes import FakeEncoder
from .conftest import CMU, FAST


@pytest.fixture(scope="module")
def dicom_series(slides_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared real slide as a DICOM WSI series (wsidicomizer, reading it through tiffslide)."""
    wsidicomizer = pytest.importorskip("wsidicomizer")
    from wsidicomizer.wsidicomizer import SourceIdentifier

    folder = tmp_path_factory.mktemp("dicom") / "CMU-1-Small-Region"
    folder.mkdir()
    wsidicomizer.WsiDicomizer.convert(
        slides_dir / CMU,
        folder,
        workers=1,
        tile_size=256,
        preferred_source=SourceIdentifier.TIFFSLIDE,
        include_label=False,
        include_overview=False,
        include_thumbnail=False,
    )
    return folder


def test_dicom_series_opens_through_openslide(dicom_series: Path) -> None:
    with open_slide(dicom_series) as slide:  # the folder: one file of the series is located
        assert slide.backend == "openslide" and slide.vendor == "dicom"
        assert slide.dimensions == (2220, 2967)
        assert slide.mpp == pytest.approx(0.499) and slide.mpp_source == "metadata"
        assert slide.path.suffix == ".dcm"


def test_dicom_embeds_like_the_svs_it_came_from(dicom_series: Path, slides_dir: Path, tmp_path: Path) -> None:
    options = SlideOptions(mpp=1.0)
    process_slide(slides_dir / CMU, tmp_path / "svs", FakeEncoder(), options, settings=FAST)
    dcm = process_slide(dicom_series, tmp_path / "dcm", FakeEncoder(), options, settings=FAST)
    assert dcm["slide"]["vendor"] == "dicom" and dcm["tiles"] > 0
    with h5py.File(tmp_path / "svs" / "features.h5") as a, h5py.File(tmp_path / "dcm" / "features.h5") as b:
        common = {tuple(c) for c in a["coords"][:]} & {tuple(c) for c in b["coords"][:]}
        assert len(common) >= 0.9 * min(len(a["coords"]), len(b["coords"]))
        index_a = {tuple(c): i for i, c in enumerate(a["coords"][:])}
        index_b = {tuple(c): i for i, c in enumerate(b["coords"][:])}
        fa = np.stack([a["features"][index_a[c]] for c in sorted(common)])
        fb = np.stack([b["features"][index_b[c]] for c in sorted(common)])
    # the same pixels, re-encoded once as JPEG: nearly the same features
    assert np.abs(fa - fb).mean() < 0.02


def test_a_zip_of_a_dicom_series_is_uploaded_as_a_job(dicom_series: Path, tmp_path: Path) -> None:
    archive = tmp_path / "series.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in dicom_series.iterdir():
            zf.write(path, f"case/{path.name}")
    manager = JobManager(tmp_path / "jobs", lambda _m: FakeEncoder(), settings=FAST)
    try:
        with archive.open("rb") as fh:
            job = manager.submit(upload=fh, filename="series.zip", options={"mpp": 2.0})
        done = manager.wait(job.id, timeout=120)
        assert done.state == "succeeded" and done.tiles_done > 0 and done.metadata_mpp == pytest.approx(0.499)
        assert not (manager.job_dir(job.id) / "slide.zip").exists()  # unpacked, not kept twice
    finally:
        manager.shutdown()


def test_a_dicom_folder_by_path_inside_the_slide_root(dicom_series: Path, tmp_path: Path) -> None:
    manager = JobManager(tmp_path / "jobs", lambda _m: FakeEncoder(), slide_root=dicom_series.parent, settings=FAST)
    try:
        job = manager.submit(dicom_series.name, options={"mpp": 2.0})
        assert manager.wait(job.id, timeout=120).state == "succeeded"
    finally:
        manager.shutdown()


def test_a_zipped_multi_file_folder_is_located(slides_dir: Path, tmp_path: Path) -> None:
    """A slide with its files in a folder, zipped (how a MIRAX .mrxs + data folder is uploaded)."""
    archive = tmp_path / "slide.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(slides_dir / CMU, f"export/{CMU}")
        zf.writestr("export/notes.txt", "scanned 2026-11")
    folder = extract_zip(archive, tmp_path / "out", max_bytes=50 << 20)
    assert locate_slide(folder) == folder / "export" / CMU


def test_unsafe_or_oversized_zips_are_refused(tmp_path: Path) -> None:
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../../etc/cron.d/x", "boom")
    with pytest.raises(InvalidInput, match="unsafe"):
        extract_zip(evil, tmp_path / "a", max_bytes=1 << 20)
    big = tmp_path / "big.zip"
    with zipfile.ZipFile(big, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("slide.svs", b"\0" * (2 << 20))
    with pytest.raises(PayloadTooLarge):
        extract_zip(big, tmp_path / "b", max_bytes=1 << 20)
    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    with pytest.raises(InvalidInput, match="not a readable zip"):
        extract_zip(tmp_path / "junk.zip", tmp_path / "c", max_bytes=1 << 20)


def test_folders_with_several_slides_or_none_are_refused(slides_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "two").mkdir()
    shutil.copy(slides_dir / CMU, tmp_path / "two" / "a.svs")
    shutil.copy(slides_dir / CMU, tmp_path / "two" / "b.svs")
    with pytest.raises(InvalidInput, match="several slides"):
        locate_slide(tmp_path / "two")
    (tmp_path / "none").mkdir()
    (tmp_path / "none" / "readme.txt").write_text("x")
    with pytest.raises(InvalidInput, match="no slide"):
        open_slide(tmp_path / "none")


def test_batch_scan_finds_every_format(dicom_series: Path, slides_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "batch"
    root.mkdir()
    shutil.copy(slides_dir / CMU, root / CMU)
    shutil.copytree(dicom_series, root / "dicom-case")
    (root / "case.mrxs").write_bytes(b"")  # a MIRAX slide: the main file, and its data folder
    (root / "case").mkdir()
    (root / "case" / "Slidedat.ini").write_text("[GENERAL]")
    (root / "scan.czi").write_bytes(b"")
    (root / "notes.txt").write_text("x")
    found = [p.name for p in collect_slides(root)]
    assert found == sorted([CMU, "case.mrxs", "dicom-case", "scan.czi"])
    assert scan_folder(dicom_series) == [dicom_series]  # a folder that is itself a series


def test_upload_suffixes_include_the_multi_file_formats() -> None:
    assert {".dcm", ".mrxs", ".czi", ".zip", ".svs", ".ndpi"} <= UPLOAD_SUFFIXES
