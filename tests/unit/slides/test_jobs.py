"""Slide jobs: submission rules, path escapes, states on disk, cancel, restart and resume."""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest

from service.errors import InvalidInput, NotFound, PayloadTooLarge
from service.slides import JobManager, PipelineSettings, SlideOptions, process_slide
from service.testing import SyntheticSlide

from ._fakes import FakeEncoder
from .conftest import CMU, FAST, TCGA

TIMEOUT = 60


@pytest.fixture
def slide_root(tmp_path: Path, synthetic_40x: SyntheticSlide) -> Path:
    root = tmp_path / "slides"
    (root / "cases").mkdir(parents=True)
    shutil.copy(synthetic_40x.path, root / "cases" / "synthetic.tiff")
    return root


@pytest.fixture
def manager(tmp_path: Path, slide_root: Path) -> Iterator[JobManager]:
    jobs = JobManager(tmp_path / "jobs", lambda model: FakeEncoder(max_batch_size=4), slide_root, settings=FAST)
    yield jobs
    jobs.shutdown()


def test_job_runs_to_success_and_exposes_results(manager: JobManager) -> None:
    tiles: list[int] = []
    manager._on_tiles = lambda model, n: tiles.append(n)
    submitted = manager.submit("cases/synthetic.tiff", options={"mpp": 0.5, "tissue_threshold": 0.25})
    assert submitted.state == "queued" and submitted.slide == "cases/synthetic.tiff" and submitted.source == "path"
    assert len(submitted.id) == 32
    done = manager.wait(submitted.id, timeout=TIMEOUT)
    assert done.state == "succeeded", done.error
    assert done.tiles_total == done.tiles_done > 0 and done.tiles_per_s and done.tiles_per_s > 0
    assert done.eta_s == 0.0 and done.error is None and done.attempts == 1 and done.model == "fake-vit"
    assert sum(tiles) == done.tiles_done
    features = manager.result_path(done.id, "features.h5")
    with h5py.File(features) as f:
        assert f["features"].shape[0] == done.tiles_done
    assert manager.result_path(done.id, "heatmap.png").is_file()
    on_disk = json.loads((manager.job_dir(done.id) / "job.json").read_text())
    assert on_disk["state"] == "succeeded" and on_disk["tiles_done"] == done.tiles_done
    assert "slide_path" not in done.model_dump()  # the host's paths stay out of the API
    assert manager.state_counts()["succeeded"] == 1
    with pytest.raises(NotFound):
        manager.result_path(done.id, "../job.json")


def test_options_are_validated(manager: JobManager) -> None:
    for bad, param in [
        ({"mpp": 0}, "mpp"),
        ({"mpp": 1000}, "mpp"),
        ({"tile": 8}, "tile"),
        ({"tissue_threshold": 2}, "tissue_threshold"),
        ({"tile": 224, "overlap": 224}, None),
        ({"tile_size": 224}, "tile_size"),
        ({"model": "../etc"}, "model"),
    ]:
        with pytest.raises(InvalidInput) as err:
            manager.submit("cases/synthetic.tiff", options=bad)
        if param:
            assert err.value.param == param, bad
    assert manager.jobs() == []
    fields = SlideOptions.model_fields
    assert all(f.description for f in fields.values())
    assert SlideOptions().mpp == 0.5


def test_path_escapes_are_refused(
    manager: JobManager, slide_root: Path, tmp_path: Path, synthetic_40x: SyntheticSlide
) -> None:
    outside = tmp_path / "outside.tiff"
    shutil.copy(synthetic_40x.path, outside)
    (slide_root / "leak.tiff").symlink_to(outside)  # a link inside the root that leads out
    (slide_root / "cases" / "inner.tiff").symlink_to(slide_root / "cases" / "synthetic.tiff")
    for path in [
        "../outside.tiff",
        "cases/../../outside.tiff",
        str(outside),
        "leak.tiff",
        "/etc/passwd",
        "",
        "cases/\x00.tiff",
    ]:
        with pytest.raises(InvalidInput) as err:
            manager.submit(path)
        assert err.value.param == "path", path
    with pytest.raises(InvalidInput, match="no slide"):
        manager.submit("cases/missing.tiff")
    # inside the root: relative, absolute, or through a link that stays inside
    for path in ["cases/synthetic.tiff", str(slide_root / "cases" / "synthetic.tiff"), "cases/inner.tiff"]:
        job = manager.submit(path)
        manager.cancel(job.id)
    assert len(manager.jobs()) == 3
    assert len(list((tmp_path / "jobs").iterdir())) == 3  # refused submissions leave nothing behind


def test_non_slide_and_missing_mpp_are_refused_at_submission(
    manager: JobManager, slide_root: Path, slides_dir: Path
) -> None:
    (slide_root / "notes.svs").write_text("not a slide")
    with pytest.raises(InvalidInput) as err:
        manager.submit("notes.svs")
    assert err.value.param == "slide"
    shutil.copy(slides_dir / TCGA, slide_root / TCGA)
    with pytest.raises(InvalidInput) as err:
        manager.submit(TCGA)
    assert err.value.param == "slide_mpp"
    job = manager.submit(TCGA, options={"slide_mpp": 0.25})
    assert manager.wait(job.id, timeout=TIMEOUT).state == "succeeded"


def test_upload(manager: JobManager, slides_dir: Path) -> None:
    data = (slides_dir / CMU).read_bytes()
    job = manager.submit(upload=data, filename="../../evil/CMU-1.svs")
    assert job.source == "upload" and job.slide == "CMU-1.svs"
    stored = list(manager.job_dir(job.id).glob("slide.*"))
    assert [p.name for p in stored] == ["slide.svs"]  # saved in the job's folder, under a fixed name
    with open(slides_dir / CMU, "rb") as stream:  # a file-like body is streamed, not read whole
        streamed = manager.submit(upload=stream, filename="cmu.svs")
    assert manager.wait(job.id, timeout=TIMEOUT).state == "succeeded"
    assert manager.wait(streamed.id, timeout=TIMEOUT).state == "succeeded"
    with pytest.raises(InvalidInput):
        manager.submit(upload=b"definitely not a slide", filename="x.svs")
    with pytest.raises(InvalidInput):
        manager.submit(upload=b"", filename="x.svs")
    with pytest.raises(InvalidInput):
        manager.submit("cases/synthetic.tiff", upload=data)
    manager.max_upload_bytes = 1000
    with pytest.raises(PayloadTooLarge):
        manager.submit(upload=data, filename="big.svs")
    assert len(manager.jobs()) == 2


def test_unknown_ids_are_not_found(manager: JobManager) -> None:
    for job_id in ["0" * 32, "nope", "../../etc/passwd", ""]:
        with pytest.raises(NotFound):
            manager.status(job_id)
        with pytest.raises(NotFound):
            manager.cancel(job_id)


class _Gate:
    """An encoder hook that blocks after ``at`` batches until released."""

    def __init__(self, at: int):
        self.at, self.reached, self.release = at, threading.Event(), threading.Event()

    def __call__(self, count: int) -> None:
        if count == self.at:
            self.reached.set()
            self.release.wait(TIMEOUT)


def test_cancel_queued_and_running(tmp_path: Path, slide_root: Path) -> None:
    gate = _Gate(at=2)
    jobs = JobManager(
        tmp_path / "jobs",
        lambda model: FakeEncoder(max_batch_size=4, after_batch=gate),
        slide_root,
        settings=FAST,
        max_concurrent=1,
    )
    try:
        running = jobs.submit("cases/synthetic.tiff")
        queued = jobs.submit("cases/synthetic.tiff")  # one job at a time: this one waits
        assert gate.reached.wait(TIMEOUT)
        assert jobs.status(running.id).state == "running" and jobs.status(queued.id).state == "queued"
        assert jobs.cancel(queued.id).state == "cancelled"
        threading.Timer(0.2, gate.release.set).start()
        cancelled = jobs.cancel(running.id, wait_s=TIMEOUT)
        assert cancelled.state == "cancelled" and cancelled.finished_at is not None
        assert 0 < cancelled.tiles_done < (cancelled.tiles_total or 0)
        assert jobs.cancel(running.id).state == "cancelled"  # idempotent
        with pytest.raises(NotFound):
            jobs.result_path(running.id, "features.h5")
        assert jobs.state_counts()["cancelled"] == 2
    finally:
        gate.release.set()
        jobs.shutdown()


def test_failed_job_reports_its_error(tmp_path: Path, slide_root: Path) -> None:
    def broken(count: int) -> None:
        raise ValueError("the model fell over")

    jobs = JobManager(tmp_path / "jobs", lambda model: FakeEncoder(after_batch=broken), slide_root, settings=FAST)
    try:
        job = jobs.wait(jobs.submit("cases/synthetic.tiff").id, timeout=TIMEOUT)
        assert job.state == "failed" and job.error is not None and "the model fell over" in job.error
        assert job.error_code == "internal"

        def unknown(model: str | None) -> FakeEncoder:
            raise NotFound(f"no model {model}", param="model")

        jobs.encoder_factory = unknown
        job = jobs.wait(jobs.submit("cases/synthetic.tiff", options={"model": "ghost"}).id, timeout=TIMEOUT)
        assert job.state == "failed" and job.error_code == "not_found"
    finally:
        jobs.shutdown()


def test_check_model_refuses_at_submission(tmp_path: Path, slide_root: Path) -> None:
    def check(model: str | None) -> None:
        if model not in (None, "vit-s"):
            raise NotFound(f"unknown model {model}", param="model")

    jobs = JobManager(tmp_path / "jobs", lambda m: FakeEncoder(), slide_root, settings=FAST, check_model=check)
    try:
        with pytest.raises(NotFound):
            jobs.submit("cases/synthetic.tiff", options={"model": "ghost"})
        assert jobs.jobs() == []
    finally:
        jobs.shutdown()


def _features(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with h5py.File(path) as f:
        return f["coords"][:], f["features"][:]


@pytest.mark.parametrize("crash_state", ["queued", "running"])
def test_jobs_survive_a_restart_and_resume(tmp_path: Path, slide_root: Path, crash_state: str) -> None:
    reference = tmp_path / "reference"
    process_slide(
        slide_root / "cases" / "synthetic.tiff",
        reference,
        FakeEncoder(max_batch_size=4),
        SlideOptions(tissue_threshold=0.1),
        settings=FAST,
    )
    ref_coords, ref_features = _features(reference / "features.h5")

    gate = _Gate(at=3)
    first = JobManager(
        tmp_path / "jobs", lambda m: FakeEncoder(max_batch_size=4, after_batch=gate), slide_root, settings=FAST
    )
    job = first.submit("cases/synthetic.tiff", options={"tissue_threshold": 0.1})
    assert gate.reached.wait(TIMEOUT)
    stopper = threading.Thread(target=first.shutdown)  # a process going down mid-job
    stopper.start()
    gate.release.set()
    stopper.join(TIMEOUT)
    job_file = tmp_path / "jobs" / job.id / "job.json"
    record = json.loads(job_file.read_text())
    assert record["state"] == "queued" and 0 < record["tiles_done"] < len(ref_coords)
    if crash_state == "running":  # a hard crash leaves the job marked running
        record["state"] = "running"
        job_file.write_text(json.dumps(record))

    encoders: list[FakeEncoder] = []

    def factory(model: str | None) -> FakeEncoder:
        encoders.append(FakeEncoder(max_batch_size=4))
        return encoders[-1]

    second = JobManager(tmp_path / "jobs", factory, slide_root, settings=FAST)
    try:
        assert second.status(job.id).state == crash_state  # known from disk before anything runs
        assert second.resume_incomplete() == [job.id]
        done = second.wait(job.id, timeout=TIMEOUT)
        assert done.state == "succeeded" and done.attempts == 2
        assert encoders[0].tiles == len(ref_coords) - record["tiles_done"]  # only the rest
        coords, features = _features(second.result_path(job.id, "features.h5"))
        np.testing.assert_array_equal(coords, ref_coords)
        np.testing.assert_array_equal(features, ref_features)
        assert second.resume_incomplete() == []
    finally:
        second.shutdown()


def test_finished_jobs_are_listed_after_a_restart(tmp_path: Path, manager: JobManager, slide_root: Path) -> None:
    job = manager.wait(manager.submit("cases/synthetic.tiff").id, timeout=TIMEOUT)
    manager.shutdown()
    (tmp_path / "jobs" / "not-a-job").mkdir()
    (tmp_path / "jobs" / ("f" * 32)).mkdir()
    (tmp_path / "jobs" / ("f" * 32) / "job.json").write_text("{broken")
    again = JobManager(tmp_path / "jobs", lambda m: FakeEncoder(), slide_root, settings=FAST)
    try:
        assert [j.id for j in again.jobs()] == [job.id]
        assert again.status(job.id).state == "succeeded"
        assert again.result_path(job.id, "report.json").is_file()
        assert again.resume_incomplete() == []
    finally:
        again.shutdown()


def test_without_a_slide_root_only_uploads_are_accepted(tmp_path: Path, slides_dir: Path) -> None:
    jobs = JobManager(tmp_path / "jobs", lambda m: FakeEncoder(), None, settings=PipelineSettings(workers=1))
    try:
        with pytest.raises(InvalidInput, match="upload"):
            jobs.submit(str(slides_dir / CMU))
        assert os.listdir(tmp_path / "jobs") == []
    finally:
        jobs.shutdown()
