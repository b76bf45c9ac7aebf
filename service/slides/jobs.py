"""Slide jobs without a transport: submit, status, cancel, resume after a restart.

A job lives in ``<root_dir>/<id>/``: ``job.json`` (its state, rewritten atomically on every
transition and at most once a second while it runs), the uploaded slide if there was one, and
the results (``features.h5``, ``heatmap.png``, ``tissue_mask.png``, ``slide_embedding.npy``,
``report.json``). States: ``queued → running → succeeded | failed | cancelled``; a job
interrupted by a shutdown goes back to ``queued``. Because state and partial results are on
disk, a new process calls :meth:`JobManager.resume_incomplete` and the jobs that were queued
or running carry on from what their feature store holds.

Slides are named by a path inside ``slide_root`` (``..``, absolute paths elsewhere and symlinks
that lead out are refused) or uploaded as bytes. Both are opened at submission, so a file that
is not a slide, or has no resolution and no ``slide_mpp``, is refused then (``InvalidInput``)
rather than failing later. Jobs run on worker threads, ``max_concurrent`` at once (default 2); more
wait queued (up to ``max_queued``). While a job runs, :meth:`JobManager.partial_features` snapshots
the features committed so far.

REST routes and the CLI call this class; it knows nothing of HTTP or Ray.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

import h5py
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from service.errors import InvalidInput, NotFound, Overloaded, PayloadTooLarge, TesseraError
from service.slides.encoder import TileEncoder
from service.slides.formats import SLIDE_SUFFIXES, extract_zip
from service.slides.interchange import read_grid
from service.slides.pipeline import PipelineSettings, SlideCancelled, SlideOptions, process_slide
from service.slides.reader import open_slide
from service.slides.store import (
    FEATURES_FILE,
    HEATMAP_FILE,
    REPORT_FILE,
    SLIDE_EMBEDDING_FILE,
    TILES_GEOJSON_FILE,
    TISSUE_GEOJSON_FILE,
    TISSUE_MASK_FILE,
    FeatureStore,
    copy_committed,
    write_json_atomic,
)

__all__ = ["JOB_FILE", "RESULT_FILES", "JobManager", "JobState", "JobStatus", "SlideOptions"]

log = logging.getLogger(__name__)

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
TERMINAL_STATES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
JOB_FILE = "job.json"
RESULT_FILES = (
    FEATURES_FILE,
    HEATMAP_FILE,
    TISSUE_MASK_FILE,
    TISSUE_GEOJSON_FILE,
    TILES_GEOJSON_FILE,
    SLIDE_EMBEDDING_FILE,
    REPORT_FILE,
)
#: suffixes an upload keeps (OpenSlide recognises some formats by their extension); ``.zip`` is a
#: multi-file slide (MIRAX, a DICOM series, ...) unpacked into the job's folder
UPLOAD_SUFFIXES = SLIDE_SUFFIXES
_ID_PATTERN = re.compile(r"^[0-9a-f]{32}$")
#: where uploads staged in chunks wait for their ``submit`` (inside ``root_dir``)
_STAGING_DIR = ".uploads"
_STAGED_MAX_AGE_S = 24 * 3600.0
_PERSIST_INTERVAL_S = 1.0
_COPY_CHUNK = 1 << 20


class JobStatus(BaseModel):
    """A job as the API reports it."""

    model_config = ConfigDict(extra="ignore")

    id: str = Field(description="Job id (32 hex digits).")
    state: JobState = Field(description="queued, running, succeeded, failed or cancelled.")
    slide: str = Field(description="The slide: its path inside the slide root, or the uploaded file's name.")
    source: Literal["path", "upload"] = Field(description="How the slide was given.")
    options: SlideOptions = Field(description="The validated job options.")
    model: str | None = Field(default=None, description="Encoder that ran (known once the job has started).")
    created_at: float = Field(description="Submission time, Unix seconds.")
    started_at: float | None = Field(default=None, description="Start of the latest run, Unix seconds.")
    finished_at: float | None = Field(default=None, description="End time, Unix seconds.")
    tiles_total: int | None = Field(default=None, ge=0, description="Tissue tiles to embed (known once planned).")
    tiles_done: int = Field(default=0, ge=0, description="Tiles embedded and stored.")
    tiles_per_s: float | None = Field(default=None, ge=0, description="Throughput of the current or last run.")
    eta_s: float | None = Field(default=None, ge=0, description="Estimated seconds to completion.")
    error: str | None = Field(default=None, description="Why the job failed.")
    error_code: str | None = Field(default=None, description="Machine-readable code of the failure.")
    attempts: int = Field(default=0, ge=0, description="Runs started (more than one after a resume).")
    level0_mpp: float | None = Field(default=None, description="The level-0 µm/px the job uses.")
    mpp_source: Literal["caller", "metadata", "objective"] | None = Field(
        default=None, description="Where level0_mpp came from: the caller's slide_mpp, the metadata or the objective."
    )
    metadata_mpp: float | None = Field(
        default=None, description="The slide's own metadata µm/px (kept when slide_mpp overrides it)."
    )


@dataclass(frozen=True)
class _StagedFile:
    """An upload staged in chunks, moved (not copied) into its job's folder at submission."""

    path: Path


class _JobRecord(JobStatus):
    """What ``job.json`` holds: the status plus the slide's location on this host."""

    slide_path: str
    coords_path: str | None = None


class JobManager:
    """Runs slide jobs on worker threads and keeps their state in ``root_dir``.

    ``encoder_factory(model_name_or_None)`` returns the :class:`TileEncoder` a job runs with;
    ``check_model`` (optional) is called at submission so an unknown model is refused then
    (raise ``NotFound``). ``on_tiles(model, n)`` and ``on_state(job_id, state)`` are hooks for
    metrics. Paths given to :meth:`submit` must lie inside ``slide_root``; with
    ``slide_root=None`` only uploads are accepted.
    """

    def __init__(
        self,
        root_dir: str | Path,
        encoder_factory: Callable[[str | None], TileEncoder],
        slide_root: str | Path | None = None,
        *,
        settings: PipelineSettings | None = None,
        max_concurrent: int = 2,
        max_queued: int = 1000,
        max_upload_bytes: int = 20 << 30,
        check_model: Callable[[str | None], None] | None = None,
        on_tiles: Callable[[str, int], None] | None = None,
        on_state: Callable[[str, JobState], None] | None = None,
    ):
        if max_concurrent < 1:
            raise ValueError("max_concurrent must be at least 1")
        self.root_dir = Path(root_dir).resolve()
        self.root_dir.mkdir(parents=True, exist_ok=True)
        self.slide_root = Path(slide_root).resolve() if slide_root is not None else None
        self.encoder_factory = encoder_factory
        self.settings = settings or PipelineSettings()
        self.max_queued = max_queued
        self.max_upload_bytes = max_upload_bytes
        self._check_model = check_model
        self._on_tiles = on_tiles
        self._on_state = on_state
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._jobs: dict[str, _JobRecord] = {}
        self._cancels: dict[str, threading.Event] = {}
        self._stores: dict[str, FeatureStore] = {}
        self._interrupted: set[str] = set()
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._closing = False
        self._load_from_disk()
        self._workers = [
            threading.Thread(target=self._worker, name=f"tessera-slide-job-{i}", daemon=True)
            for i in range(max_concurrent)
        ]
        for worker in self._workers:
            worker.start()

    # -- submission --------------------------------------------------------------------------
    def submit(
        self,
        path: str | None = None,
        *,
        upload: bytes | BinaryIO | None = None,
        filename: str | None = None,
        options: SlideOptions | Mapping[str, Any] | None = None,
        coords: bytes | None = None,
        coords_path: str | None = None,
        upload_id: str | None = None,
    ) -> JobStatus:
        """Queue a job for a slide inside ``slide_root`` (``path``) or uploaded bytes (``upload``).

        ``coords`` (bytes of a TRIDENT or CLAM coordinates file) or ``coords_path`` (such a file
        inside ``slide_root``) makes the job embed that grid instead of its own; the file is
        checked against the slide at submission. ``upload_id`` names an upload staged in chunks
        with :meth:`begin_upload` and :meth:`append_upload` (how a transport that cannot pass a
        file forwards one without holding it whole).

        Raises ``InvalidInput`` for bad options, a path outside the slide root, or a file that is
        not a readable slide with a resolution; ``PayloadTooLarge`` for an upload over the limit;
        ``Overloaded`` when the queue is full or the manager is shutting down.
        """
        given: bytes | BinaryIO | _StagedFile | None = upload
        if upload_id is not None:
            if upload is not None:
                raise InvalidInput("give an upload or an upload_id, not both", param="slide")
            given = self._staged(upload_id)
        if (path is None) == (given is None):
            raise InvalidInput("give either a slide path or an uploaded slide, not both or neither", param="slide")
        opts = _validate_options(options)
        if self._check_model is not None:
            self._check_model(opts.model)
        with self._lock:
            if self._closing:
                raise Overloaded("the slide job manager is shutting down", retry_after_s=5.0)
            waiting = sum(1 for r in self._jobs.values() if r.state == "queued")
            if waiting >= self.max_queued:
                raise Overloaded(f"{waiting} slide jobs are already queued", retry_after_s=30.0)
        job_id = uuid.uuid4().hex
        job_dir = self.root_dir / job_id
        job_dir.mkdir(parents=True)
        try:
            source: Literal["path", "upload"]
            if given is None:
                slide_path = self._resolve_slide_path(path or "", allow_dir=True)
                shown = str(slide_path.relative_to(self.slide_root)) if self.slide_root else slide_path.name
                source = "path"
            else:
                slide_path = self._save_upload(job_dir, given, filename)
                shown, source = Path(filename).name if filename else slide_path.name, "upload"
            grid_file = self._save_coords(job_dir, coords, coords_path)
            with open_slide(slide_path, opts.slide_mpp) as reader:  # readable, plausible resolution, or 400 now
                level0_mpp, mpp_source, metadata_mpp = reader.mpp, reader.mpp_source, reader.metadata_mpp
                if grid_file is not None:
                    read_grid(
                        grid_file,
                        level0_width=reader.dimensions[0],
                        level0_height=reader.dimensions[1],
                        level_downsamples=reader.level_downsamples,
                        max_tiles=self.settings.max_tiles,
                    )
            record = _JobRecord(
                id=job_id,
                state="queued",
                slide=shown,
                source=source,
                options=opts,
                created_at=time.time(),
                slide_path=str(slide_path),
                level0_mpp=level0_mpp,
                mpp_source=mpp_source,
                metadata_mpp=metadata_mpp,
                coords_path=str(grid_file) if grid_file is not None else None,
            )
            with self._lock:
                self._jobs[job_id] = record
                self._persist(record)
        except BaseException:
            shutil.rmtree(job_dir, ignore_errors=True)
            raise
        self._notify_state(job_id, "queued")
        self._queue.put(job_id)
        return self._public(record)

    def _resolve_slide_path(self, path: str, *, param: str = "path", allow_dir: bool = False) -> Path:
        if self.slide_root is None:
            raise InvalidInput(
                "slides by path are disabled here (no slide root configured): upload the slide", param=param
            )
        if not path or "\x00" in path:
            raise InvalidInput(f"{param} is empty or malformed", param=param)
        given = Path(path)
        if ".." in given.parts:
            raise InvalidInput(f"{param} must not contain '..'", param=param)
        candidate = given if given.is_absolute() else self.slide_root / given
        try:
            resolved = candidate.resolve()  # follows symlinks: a link that leads out is caught below
            if not resolved.is_relative_to(self.slide_root):
                raise InvalidInput(f"{param} must lie inside the configured slide root", param=param)
            if not (resolved.is_file() or (allow_dir and resolved.is_dir())):
                raise InvalidInput(f"no {'slide' if param == 'path' else 'file'} at {given}", param=param)
        except OSError as exc:  # too long, a loop of links, ...: the client's path, not our fault
            raise InvalidInput(f"{param} is not usable: {exc.strerror or exc}", param=param) from None
        return resolved

    # -- uploads staged in chunks ------------------------------------------------------------
    def begin_upload(self) -> str:
        """Start a staged upload; returns its id (for :meth:`append_upload` and ``submit``)."""
        staging = self.root_dir / _STAGING_DIR
        staging.mkdir(exist_ok=True)
        cutoff = time.time() - _STAGED_MAX_AGE_S
        for stale in staging.iterdir():  # uploads abandoned by a crashed client or ingress
            with contextlib.suppress(OSError):
                if stale.stat().st_mtime < cutoff:
                    stale.unlink()
        upload_id = uuid.uuid4().hex
        (staging / upload_id).touch()
        return upload_id

    def append_upload(self, upload_id: str, chunk: bytes) -> int:
        """Append a chunk to a staged upload; returns its size so far (``PayloadTooLarge`` past
        the limit, which also discards it)."""
        path = self._staged_path(upload_id)
        size = path.stat().st_size + len(chunk)
        if size > self.max_upload_bytes:
            path.unlink(missing_ok=True)
            raise PayloadTooLarge(f"slide upload exceeds the limit of {self.max_upload_bytes} bytes", param="slide")
        with open(path, "ab") as fh:
            fh.write(chunk)
        return size

    def _staged_path(self, upload_id: str) -> Path:
        if not isinstance(upload_id, str) or not _ID_PATTERN.match(upload_id):
            raise InvalidInput("malformed upload id", param="upload_id")
        path = self.root_dir / _STAGING_DIR / upload_id
        if not path.is_file():
            raise NotFound(f"no staged upload {upload_id}", param="upload_id")
        return path

    def _staged(self, upload_id: str) -> _StagedFile:
        return _StagedFile(self._staged_path(upload_id))

    def _save_coords(self, job_dir: Path, coords: bytes | None, coords_path: str | None) -> Path | None:
        if coords is not None and coords_path is not None:
            raise InvalidInput("give coords or coords_path, not both", param="coords")
        if coords_path is not None:
            return self._resolve_slide_path(coords_path, param="coords_path")
        if coords is None:
            return None
        if not coords:
            raise InvalidInput("the uploaded coordinates file is empty", param="coords")
        dest = job_dir / "coords.h5"
        dest.write_bytes(coords)
        return dest

    def _save_upload(self, job_dir: Path, upload: bytes | BinaryIO | _StagedFile, filename: str | None) -> Path:
        suffix = Path(filename).suffix.lower() if filename else ""
        dest = job_dir / f"slide{suffix if suffix in UPLOAD_SUFFIXES else '.tiff'}"
        if isinstance(upload, _StagedFile):
            if upload.path.stat().st_size == 0:
                upload.path.unlink()
                raise InvalidInput("the uploaded slide is empty", param="slide")
            os.replace(upload.path, dest)  # same file system: no copy
            return self._unpack(job_dir, dest)
        written = 0
        with open(dest, "wb") as fh:
            if isinstance(upload, (bytes, bytearray, memoryview)):
                written = len(upload)
                if written > self.max_upload_bytes:
                    raise PayloadTooLarge(
                        f"slide upload is {written} bytes; the limit is {self.max_upload_bytes}", param="slide"
                    )
                fh.write(upload)
            else:
                while chunk := upload.read(_COPY_CHUNK):
                    written += len(chunk)
                    if written > self.max_upload_bytes:
                        raise PayloadTooLarge(
                            f"slide upload exceeds the limit of {self.max_upload_bytes} bytes", param="slide"
                        )
                    fh.write(chunk)
        if written == 0:
            raise InvalidInput("the uploaded slide is empty", param="slide")
        return self._unpack(job_dir, dest)

    def _unpack(self, job_dir: Path, saved: Path) -> Path:
        """A zip upload becomes a folder (its slide is located when opened); anything else stays."""
        if saved.suffix.lower() != ".zip":
            return saved
        try:
            return extract_zip(saved, job_dir / "slide", self.max_upload_bytes)
        finally:
            saved.unlink(missing_ok=True)

    # -- queries -----------------------------------------------------------------------------
    def status(self, job_id: str) -> JobStatus:
        with self._lock:
            return self._public(self._get(job_id))

    def jobs(self) -> list[JobStatus]:
        """Every known job, oldest first."""
        with self._lock:
            return [self._public(r) for r in sorted(self._jobs.values(), key=lambda r: r.created_at)]

    def state_counts(self) -> dict[str, int]:
        """Jobs per state (for the ``tessera_slide_jobs{state}`` gauge)."""
        counts = dict.fromkeys(("queued", "running", "succeeded", "failed", "cancelled"), 0)
        with self._lock:
            for record in self._jobs.values():
                counts[record.state] += 1
        return counts

    def job_dir(self, job_id: str) -> Path:
        with self._lock:
            return self.root_dir / self._get(job_id).id

    def result_path(self, job_id: str, name: str) -> Path:
        """Path of one result file of a succeeded job (``features.h5``, ``heatmap.png``, ...)."""
        if name not in RESULT_FILES:
            raise NotFound(f"no result named {name!r}; results are {', '.join(RESULT_FILES)}", param="name")
        with self._lock:
            record = self._get(job_id)
            if record.state != "succeeded":
                raise NotFound(f"job {job_id} is {record.state}; results exist once it has succeeded", param="id")
        path = self.root_dir / job_id / name
        if not path.is_file():
            raise NotFound(f"job {job_id} has no {name}", param="name")
        return path

    def partial_features(self, job_id: str) -> Path:
        """A snapshot of the features committed so far, as a complete HDF5 file (attribute
        ``partial`` true until the job has finished), readable while the job runs.

        The caller owns the returned file (a fresh name per call) and should delete it.
        """
        with self._lock:
            record = self._get(job_id)
            store = self._stores.get(job_id)
        dest = self.root_dir / job_id / f".partial-{uuid.uuid4().hex}.h5"
        if store is not None:
            try:
                store.snapshot(dest)
                return dest
            except (ValueError, RuntimeError, OSError):  # closed just now: read the file instead
                log.debug("snapshot of a closing store failed; reading the file", exc_info=True)
        source = self.root_dir / job_id / FEATURES_FILE
        if not source.is_file():
            raise NotFound(f"job {job_id} is {record.state} and has no features yet", param="id")
        with self._lock:
            if job_id in self._stores:  # it reopened: try again through the store
                return self.partial_features(job_id)
            try:
                with h5py.File(source, "r") as src:
                    copy_committed(src, dest)
            except OSError as exc:
                raise NotFound(f"job {job_id} has no readable features yet ({exc})", param="id") from None
        return dest

    def wait(self, job_id: str, timeout: float | None = None) -> JobStatus:
        """Block until the job is in a final state (or ``timeout`` seconds pass)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            while self._get(job_id).state not in TERMINAL_STATES:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                self._changed.wait(timeout=remaining)
            return self._public(self._get(job_id))

    # -- control -----------------------------------------------------------------------------
    def cancel(self, job_id: str, wait_s: float = 5.0) -> JobStatus:
        """Cancel a queued or running job; a finished job is left as it is.

        A running job stops at its next batch; this waits up to ``wait_s`` for that.
        """
        with self._lock:
            record = self._get(job_id)
            if record.state == "queued":
                self._finish(record, "cancelled")
            elif record.state == "running":
                event = self._cancels.get(job_id)
                if event is not None:
                    event.set()
        if record.state == "running" and wait_s > 0:
            return self.wait(job_id, timeout=wait_s)
        return self.status(job_id)

    def resume_incomplete(self) -> list[str]:
        """Queue again every job that ``job.json`` shows queued or running (after a restart).

        Each continues from what its feature store holds. Returns their ids, oldest first.
        """
        resumed = []
        with self._lock:
            candidates = sorted(self._jobs.values(), key=lambda r: r.created_at)
            for record in candidates:
                if record.state in ("queued", "running") and record.id not in self._cancels:
                    record.state = "queued"
                    self._persist(record)
                    resumed.append(record.id)
        for job_id in resumed:
            self._queue.put(job_id)
        return resumed

    def shutdown(self, wait: bool = True, timeout: float | None = None) -> None:
        """Stop: running jobs are interrupted and left ``queued`` on disk for a later resume."""
        with self._lock:
            self._closing = True
            for job_id, event in self._cancels.items():
                self._interrupted.add(job_id)
                event.set()
        for _ in self._workers:
            self._queue.put(None)
        if wait:
            for worker in self._workers:
                worker.join(timeout)

    # -- running -----------------------------------------------------------------------------
    def _worker(self) -> None:
        while True:
            job_id = self._queue.get()
            if job_id is None:
                return
            try:
                self._run(job_id)
            except Exception:  # never let one job take the worker down
                log.exception("slide job %s crashed its worker", job_id)

    def _run(self, job_id: str) -> None:
        with self._lock:
            record = self._jobs.get(job_id)
            if record is None or record.state != "queued" or self._closing or job_id in self._cancels:
                return
            cancel = threading.Event()
            self._cancels[job_id] = cancel
            record.state = "running"
            record.started_at = time.time()
            record.finished_at = None
            record.attempts += 1
            record.error = record.error_code = None
            record.tiles_per_s = record.eta_s = None
            self._persist(record)
            options, slide_path = record.options, Path(record.slide_path)
            coords_file = Path(record.coords_path) if record.coords_path else None
        self._notify_state(job_id, "running")
        progress = _Progress(self, record)
        try:
            encoder = self.encoder_factory(options.model)
            with self._lock:
                record.model = str(encoder.name)
            report = process_slide(
                slide_path,
                self.root_dir / job_id,
                encoder,
                options,
                settings=self.settings,
                progress=progress,
                cancel=cancel,
                coords_file=coords_file,
                on_store=lambda store: self._track_store(job_id, store),
            )
        except SlideCancelled:
            with self._lock:
                if job_id in self._interrupted:
                    record.state = "queued"
                    record.eta_s = None
                    self._persist(record)
                    log.info("slide job %s interrupted at %s tiles; it resumes on restart", job_id, record.tiles_done)
                    new_state: JobState = "queued"
                else:
                    self._finish(record, "cancelled")
                    new_state = "cancelled"
            self._notify_state(job_id, new_state)
        except TesseraError as exc:
            self._fail(record, exc.message, exc.code)
        except Exception as exc:
            log.exception("slide job %s failed", job_id)
            self._fail(record, f"{type(exc).__name__}: {exc}", "internal")
        else:
            with self._lock:
                record.tiles_total = int(report["tiles"])
                record.tiles_done = int(report["tiles"])
                record.tiles_per_s = float(report["tiles_per_s"])
                record.eta_s = 0.0
                self._finish(record, "succeeded")
            self._notify_state(job_id, "succeeded")
        finally:
            with self._lock:
                self._cancels.pop(job_id, None)
                self._interrupted.discard(job_id)
                self._changed.notify_all()

    def _track_store(self, job_id: str, store: FeatureStore | None) -> None:
        with self._lock:
            if store is None:
                self._stores.pop(job_id, None)
            else:
                self._stores[job_id] = store

    def _fail(self, record: _JobRecord, message: str, code: str) -> None:
        with self._lock:
            record.error, record.error_code = message, code
            self._finish(record, "failed")
        self._notify_state(record.id, "failed")

    def _finish(self, record: _JobRecord, state: JobState) -> None:
        record.state = state
        record.finished_at = time.time()
        if state != "succeeded":
            record.eta_s = None
        self._persist(record)
        self._changed.notify_all()

    def _progress(self, record: _JobRecord, done: int, total: int, rate: float | None, force: bool) -> None:
        with self._lock:
            previous = record.tiles_done
            record.tiles_total, record.tiles_done = total, done
            record.tiles_per_s = rate
            record.eta_s = (total - done) / rate if rate else None
            if force:
                self._persist(record)
            model = record.model or "unknown"
        if self._on_tiles is not None and done > previous:
            self._on_tiles(model, done - previous)

    # -- persistence -------------------------------------------------------------------------
    def _persist(self, record: _JobRecord) -> None:
        write_json_atomic(self.root_dir / record.id / JOB_FILE, record.model_dump(mode="json"))

    def _load_from_disk(self) -> None:
        for path in sorted(self.root_dir.glob(f"*/{JOB_FILE}")):
            if not _ID_PATTERN.match(path.parent.name):
                continue
            try:
                record = _JobRecord.model_validate(json.loads(path.read_text()))
            except (OSError, ValueError, ValidationError) as exc:
                log.warning("skipping unreadable job file %s: %s", path, exc)
                continue
            if record.id == path.parent.name:
                self._jobs[record.id] = record

    def _get(self, job_id: str) -> _JobRecord:
        record = self._jobs.get(job_id) if isinstance(job_id, str) and _ID_PATTERN.match(job_id) else None
        if record is None:
            raise NotFound(f"no slide job {job_id!r}", param="id")
        return record

    def _notify_state(self, job_id: str, state: JobState) -> None:
        if self._on_state is not None:
            try:
                self._on_state(job_id, state)
            except Exception:
                log.exception("on_state hook failed")

    @staticmethod
    def _public(record: _JobRecord) -> JobStatus:
        return JobStatus.model_validate(record.model_dump(exclude={"slide_path", "coords_path"}))


class _Progress:
    """The pipeline's progress callback for one run: rate, ETA, throttled persistence."""

    def __init__(self, manager: JobManager, record: _JobRecord):
        self.manager, self.record = manager, record
        self.start_time: float | None = None
        self.start_done = 0
        self.last_persist = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if self.start_time is None:
            self.start_time, self.start_done = now, done
        elapsed = now - self.start_time
        rate = (done - self.start_done) / elapsed if elapsed > 0 and done > self.start_done else None
        force = now - self.last_persist >= _PERSIST_INTERVAL_S or done >= total
        if force:
            self.last_persist = now
        self.manager._progress(self.record, done, total, rate, force)


def _validate_options(options: SlideOptions | Mapping[str, Any] | None) -> SlideOptions:
    if isinstance(options, SlideOptions):
        return options
    try:
        return SlideOptions.model_validate(dict(options or {}))
    except ValidationError as exc:
        raise InvalidInput.from_validation(exc.errors(), "slide job option") from exc
