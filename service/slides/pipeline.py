"""The streaming slide pipeline: tiles → normalised batches → encoder → feature store.

::

    dispatcher ──batch ids──▶ N reader threads ──batches (in any order)──▶ encoder (caller's
    (≤ prefetch in flight)     (own slide handle,     reordered by index      thread)
                                read + resize +                                   │
                                normalise)                                        ▼
                                                                writer thread ──▶ features.h5

Every queue is bounded: at most ``prefetch_batches`` batches exist between the dispatcher and
the encoder, and at most two between the encoder and the writer, so memory does not depend on
the slide's size. Readers run while the encoder runs (reading overlaps inference). Batches are
cut from the planned tile list up front and handed to the encoder strictly in order, so the
output order is the grid's row-major order on every run, whatever the thread timing.

:func:`process_slide` is the whole job on one slide: open, resolve the resolution, thumbnail,
tissue mask, grid, resume from a partial store, stream, then the slide embedding, heatmap and
report. Cancellation is a ``threading.Event``; a cancelled or crashed run leaves a store that
the next run with the same options resumes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, model_validator

from service.errors import InvalidInput
from service.runtime.memory import current_rss_bytes, peak_rss_bytes
from service.slides.encoder import TileEncoder, encoder_facts
from service.slides.grid import EdgeMode, make_grid
from service.slides.interchange import ExportLayout, export_layouts, interchange_attrs, read_grid, slide_name
from service.slides.reader import SlideReader, open_slide
from service.slides.store import (
    FEATURES_FILE,
    HEATMAP_FILE,
    REPORT_FILE,
    SLIDE_EMBEDDING_FILE,
    TILES_GEOJSON_FILE,
    TISSUE_GEOJSON_FILE,
    TISSUE_MASK_FILE,
    FeatureStore,
    first_principal_component,
    render_heatmap,
    save_png,
    slide_embedding,
    write_json_atomic,
)
from service.slides.tissue import (
    TissueMask,
    TissueRule,
    detect_tissue,
    keep_tiles,
    tile_features,
    tissue_geojson,
    write_feature_collection,
)

__all__ = [
    "PipelineSettings",
    "ProgressCallback",
    "SlideCancelled",
    "SlideOptions",
    "StageTimes",
    "TileBatch",
    "TileStream",
    "process_peak_rss_bytes",
    "process_slide",
]

log = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]

_RESAMPLE: Mapping[str, Image.Resampling] = MappingProxyType(
    {
        "nearest": Image.Resampling.NEAREST,
        "bilinear": Image.Resampling.BILINEAR,
        "bicubic": Image.Resampling.BICUBIC,
    }
)
_POLL_S = 0.05


class SlideCancelled(Exception):
    """The run was cancelled through its event; what was committed stays in the store."""


class SlideOptions(BaseModel):
    """What a caller may choose for one slide (CLI flags, job options, form fields)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mpp: float = Field(
        default=0.5,
        gt=0.05,
        le=64.0,
        description="Target resolution in µm per pixel that tiles are cut at (0.5 ≈ 20x).",
    )
    slide_mpp: float | None = Field(
        default=None,
        gt=0.0,
        le=1000.0,
        description=(
            "The slide's level-0 µm per pixel. Overrides the slide's metadata (which is still recorded "
            "beside it); must lie in the plausible range 0.05-20 µm/px."
        ),
    )
    tile: int | None = Field(
        default=None, ge=16, le=4096, description="Tile side in target pixels; default: the model's input size."
    )
    overlap: int = Field(default=0, ge=0, le=4095, description="Overlap of neighbouring tiles, target pixels.")
    model: str | None = Field(
        default=None,
        pattern=r"^[a-z0-9][a-z0-9_\-]{0,62}$",
        description="Tile encoder model name; default: the service's slide model.",
    )
    tissue_threshold: float = Field(
        default=0.25,
        ge=0.0,
        le=1.0,
        description=(
            "Minimum fraction of a tile covered by tissue for it to be embedded (default 0.25: at least a "
            "quarter of the tile; TRIDENT's default is 0 with tissue_rule='trident', CLAM keeps a tile when "
            "one of four points near its centre is tissue). With tissue_rule='fraction', 0 keeps every tile."
        ),
    )
    tissue_rule: TissueRule = Field(
        default="fraction",
        description=(
            "fraction: tiles with at least tissue_threshold tissue; trident: TRIDENT's min_tissue_proportion "
            "rule (0 keeps every tile that touches tissue)."
        ),
    )
    edge: EdgeMode = Field(default="pad", description="Partial tiles at the right/bottom edge: pad or drop.")
    export: tuple[ExportLayout, ...] = Field(
        default=(),
        max_length=2,
        description=(
            "Also write TRIDENT's layout (features_<model>/<slide>.h5, patches/<slide>_patches.h5) and/or "
            "CLAM's (h5_files/<slide>.h5, pt_files/<slide>.pt) beside features.h5."
        ),
    )

    @model_validator(mode="after")
    def _overlap_below_tile(self) -> SlideOptions:
        if self.tile is not None and self.overlap >= self.tile:
            raise ValueError(f"overlap ({self.overlap}) must be smaller than tile ({self.tile})")
        return self


class PipelineSettings(BaseModel):
    """How the pipeline runs on this host (operators' settings, not per-request options)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    workers: int = Field(default=2, ge=1, le=64, description="Reader threads, each with its own slide handle.")
    prefetch_batches: int | None = Field(
        default=None,
        ge=1,
        le=256,
        description="Batches read ahead of the encoder (bounds memory); default: workers + 2.",
    )
    batch_size: int | None = Field(
        default=None, ge=1, le=4096, description="Tiles per encoder call; default: the encoder's max_batch_size."
    )
    thumbnail_size: int = Field(
        default=2048, ge=256, le=8192, description="Longest side of the image tissue is detected on."
    )
    heatmap_size: int = Field(default=1024, ge=128, le=8192, description="Longest side of heatmap.png.")
    inflight_batches: int = Field(
        default=1,
        ge=1,
        le=64,
        description=(
            "Batches encoding at once. Above 1, batches go out through the encoder's encode_async (a Ray "
            "handle spreads them over the backbone's replicas) or a thread pool; results are written in order."
        ),
    )
    max_tiles: int = Field(
        default=2_000_000,
        ge=1,
        le=1 << 31,
        description=(
            "Most tiles one slide may plan. A whole 75 x 50 mm slide at 0.25 µm/px in 224-px tiles is about "
            "1.2 million; more means a wrong resolution or an absurd target."
        ),
    )


@dataclass
class StageTimes:
    """Seconds per stage. Reader stages are summed over the reader threads."""

    open: float = 0.0
    thumbnail: float = 0.0
    tissue: float = 0.0
    read: float = 0.0
    preprocess: float = 0.0
    wait_for_tiles: float = 0.0
    inference: float = 0.0
    wait_for_writer: float = 0.0
    write: float = 0.0
    stream: float = 0.0
    finalize: float = 0.0
    total: float = 0.0

    def to_dict(self) -> dict[str, float]:
        return {key: round(value, 6) for key, value in self.__dict__.items()}


@dataclass
class TileBatch:
    """One batch in grid order: ``index`` (0, 1, ...), level-0 ``coords`` and ``pixels``."""

    index: int
    coords: np.ndarray
    pixels: np.ndarray


@dataclass
class _ReaderTimes:
    read: float = 0.0
    preprocess: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, read: float, preprocess: float) -> None:
        with self.lock:
            self.read += read
            self.preprocess += preprocess


class TileStream:
    """Reads, resizes and normalises tiles on ``workers`` threads; iterates batches in order.

    ``coords`` are level-0 top-left corners; each tile is read as ``region_size`` pixels of
    ``level`` and resized to ``out_size``. Use as a context manager (or call :meth:`close`) so
    the threads stop when the consumer stops early.
    """

    def __init__(
        self,
        reader: SlideReader,
        coords: np.ndarray,
        *,
        level: int,
        region_size: int,
        out_size: int,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        batch_size: int,
        workers: int = 2,
        prefetch_batches: int | None = None,
        interpolation: str = "bicubic",
        cancel: threading.Event | None = None,
    ):
        if batch_size < 1 or workers < 1:
            raise ValueError("batch_size and workers must be at least 1")
        if interpolation not in _RESAMPLE:
            raise ValueError(f"unknown interpolation {interpolation!r}")
        self.reader = reader
        self.coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
        self.level, self.region_size, self.out_size = level, region_size, out_size
        std_arr = np.asarray(std, dtype=np.float32)
        # (x / 255 - mean) / std == x * scale + offset
        self._scale = (1.0 / (255.0 * std_arr)).astype(np.float32)
        self._offset = (-np.asarray(mean, dtype=np.float32) / std_arr).astype(np.float32)
        self._resample = _RESAMPLE[interpolation]
        self.batch_size = batch_size
        self.workers = workers
        self.prefetch = prefetch_batches or workers + 2
        self.cancel = cancel or threading.Event()
        self.times = _ReaderTimes()
        self.num_batches = math.ceil(len(self.coords) / batch_size)
        self._stop = threading.Event()
        self._slots = threading.Semaphore(self.prefetch)
        self._work: queue.Queue[int | None] = queue.Queue()
        self._done: dict[int, np.ndarray] = {}
        self._cond = threading.Condition()
        self._error: BaseException | None = None
        self._threads: list[threading.Thread] = []
        self._started = False

    # -- threads -----------------------------------------------------------------------------
    def _start(self) -> None:
        self._started = True
        dispatcher = threading.Thread(target=self._dispatch, name="tessera-slide-dispatch", daemon=True)
        self._threads.append(dispatcher)
        for i in range(min(self.workers, max(1, self.num_batches))):
            self._threads.append(threading.Thread(target=self._work_loop, name=f"tessera-slide-read-{i}", daemon=True))
        for thread in self._threads:
            thread.start()

    def _halted(self) -> bool:
        return self._stop.is_set() or self.cancel.is_set()

    def _dispatch(self) -> None:
        try:
            for index in range(self.num_batches):
                while not self._slots.acquire(timeout=_POLL_S):
                    if self._halted():
                        return
                if self._halted():
                    return
                self._work.put(index)
        finally:
            for _ in range(self.workers):
                self._work.put(None)

    def _work_loop(self) -> None:
        try:
            while True:
                index = self._work.get()
                if index is None or self._halted():
                    return
                pixels = self._read_batch(index)
                if pixels is None:
                    return
                with self._cond:
                    self._done[index] = pixels
                    self._cond.notify_all()
        except BaseException as exc:
            with self._cond:
                if self._error is None:
                    self._error = exc
                self._stop.set()
                self._cond.notify_all()

    def _read_batch(self, index: int) -> np.ndarray | None:
        start = index * self.batch_size
        coords = self.coords[start : start + self.batch_size]
        size = self.out_size
        batch = np.empty((len(coords), 3, size, size), dtype=np.float32)
        read_s = pre_s = 0.0
        for i, (x, y) in enumerate(coords):
            if self._halted():
                return None
            t0 = time.perf_counter()
            try:
                region = self.reader.read_region(int(x), int(y), self.level, self.region_size, self.region_size)
            except Exception as exc:
                raise RuntimeError(f"reading the tile at level-0 ({x}, {y}) failed: {exc}") from exc
            t1 = time.perf_counter()
            if self.region_size != size:
                region = np.asarray(Image.fromarray(region).resize((size, size), self._resample))
            tile = region.astype(np.float32)
            tile *= self._scale
            tile += self._offset
            batch[i] = tile.transpose(2, 0, 1)
            t2 = time.perf_counter()
            read_s += t1 - t0
            pre_s += t2 - t1
        self.times.add(read_s, pre_s)
        return batch

    # -- consumer ----------------------------------------------------------------------------
    def __iter__(self) -> Iterator[TileBatch]:
        if self._started:
            raise RuntimeError("a TileStream is iterated once")
        if self.num_batches == 0:
            return
        self._start()
        for index in range(self.num_batches):
            with self._cond:
                while index not in self._done:
                    if self._error is not None:
                        raise self._error
                    if self.cancel.is_set():
                        raise SlideCancelled("cancelled")
                    self._cond.wait(timeout=_POLL_S)
                pixels = self._done.pop(index)
            start = index * self.batch_size
            batch = TileBatch(index=index, coords=self.coords[start : start + len(pixels)], pixels=pixels)
            self._slots.release()
            yield batch

    def close(self) -> None:
        self._stop.set()
        with self._cond:
            self._done.clear()
            self._cond.notify_all()
        for thread in self._threads:
            thread.join()
        self._threads.clear()

    def __enter__(self) -> TileStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Encoding:
    """Batches in flight to the encoder, collected in submission order.

    With ``inflight`` above 1 several batches are encoding at once: through the encoder's own
    ``encode_async(pixels)`` when it has one (an object with ``result()``, e.g. a Ray Serve
    response, so the batches spread over every replica of the backbone), else on a small thread
    pool calling ``encode``. Features are still written in grid order.
    """

    def __init__(self, encoder: TileEncoder, inflight: int, model: str):
        self.encoder, self.inflight, self.model = encoder, max(1, inflight), model
        self._queue: deque[tuple[TileBatch, Any, float]] = deque()
        self._async = getattr(encoder, "encode_async", None)
        self._pool: ThreadPoolExecutor | None = None
        if self.inflight > 1 and self._async is None:
            self._pool = ThreadPoolExecutor(max_workers=self.inflight, thread_name_prefix="tessera-slide-encode")

    def submit(self, batch: TileBatch) -> None:
        t0 = time.perf_counter()
        if self._async is not None:
            handle: Any = self._async(batch.pixels)
        elif self._pool is not None:
            handle = self._pool.submit(self.encoder.encode, batch.pixels)
        else:
            handle = _Done(self.encoder.encode(batch.pixels))
        self._queue.append((batch, handle, t0))

    def full(self) -> bool:
        return len(self._queue) >= self.inflight

    def pending(self) -> bool:
        return bool(self._queue)

    def collect(self, times: StageTimes) -> tuple[np.ndarray, np.ndarray]:
        """The oldest batch's coords and features (waits for it)."""
        batch, handle, submitted = self._queue.popleft()
        t0 = time.perf_counter()
        features = np.asarray(handle.result(), dtype=np.float32)
        # with one batch in flight this is the encoder's time; with several, the wait for results
        times.inference += time.perf_counter() - (submitted if self.inflight == 1 else t0)
        if features.ndim != 2 or features.shape[0] != len(batch.coords):
            raise RuntimeError(
                f"encoder {self.model} returned {features.shape} for {len(batch.coords)} tiles; expected (N, D)"
            )
        return batch.coords, features

    def close(self) -> None:
        self._queue.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


@dataclass
class _Done:
    """A result that is already there (the synchronous encoder)."""

    value: np.ndarray

    def result(self) -> np.ndarray:
        return self.value


class _Writer:
    """Commits (coords, features) batches to the store on its own thread, in order."""

    def __init__(self, store: FeatureStore, total: int, progress: ProgressCallback | None):
        self.store, self.total, self.progress = store, total, progress
        self.queue: queue.Queue[tuple[np.ndarray, np.ndarray] | None] = queue.Queue(maxsize=2)
        self.error: BaseException | None = None
        self.write_s = 0.0
        self.rss_max = current_rss_bytes()
        self.thread = threading.Thread(target=self._run, name="tessera-slide-write", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            if self.error is not None:
                continue  # drain so the producer never blocks on a dead writer
            try:
                t0 = time.perf_counter()
                self.store.append(*item)
                self.write_s += time.perf_counter() - t0
                self.rss_max = max(self.rss_max, current_rss_bytes())
                if self.progress is not None:
                    self.progress(self.store.count, self.total)
            except BaseException as exc:
                self.error = exc

    def put(self, coords: np.ndarray, features: np.ndarray) -> float:
        """Queue one batch; returns the seconds spent waiting for room."""
        t0 = time.perf_counter()
        while True:
            if self.error is not None:
                raise self.error
            try:
                self.queue.put((coords, features), timeout=_POLL_S)
                return time.perf_counter() - t0
            except queue.Full:
                continue

    def finish(self) -> None:
        self.queue.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error


def process_slide(
    slide_path: str | Path,
    out_dir: str | Path,
    encoder: TileEncoder,
    options: SlideOptions | None = None,
    *,
    settings: PipelineSettings | None = None,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    coords_file: str | Path | None = None,
    on_store: Callable[[FeatureStore | None], None] | None = None,
) -> dict[str, Any]:
    """Tile, embed and store one slide into ``out_dir``; returns the report (also report.json).

    ``coords_file``: a TRIDENT patches file or CLAM coordinates file whose grid is embedded as it
    is (no tissue filter) instead of a grid of our own (see :mod:`service.slides.interchange`).
    ``options.export`` adds TRIDENT's and/or CLAM's layouts beside ``features.h5``.
    ``on_store(store)`` is called once the feature store is open (so that partial results can be
    read while the slide runs, :meth:`FeatureStore.snapshot`) and ``on_store(None)`` before it closes.

    Resumes from a partial ``features.h5`` written with the same slide, options, model and
    batch size. ``progress(tiles_done, tiles_total)`` is called once tiles are planned and after
    every committed batch. Raises :class:`SlideCancelled` when ``cancel`` is set, and
    ``InvalidInput`` for a file that is not a slide or has no resolution.
    """
    options = options or SlideOptions()
    settings = settings or PipelineSettings()
    cancel = cancel or threading.Event()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    times = StageTimes()
    rss_start = current_rss_bytes()
    started = time.perf_counter()

    reader = open_slide(slide_path, options.slide_mpp)
    times.open = time.perf_counter() - started
    try:
        tiles = _plan_tiles(reader, encoder, options, settings, coords_file, out_dir, times)
        facts = encoder_facts(encoder)
        batch_size = int(settings.batch_size or encoder.max_batch_size)
        fingerprint = _fingerprint(
            slide_path, reader, options, facts, batch_size, settings, len(tiles.planned), tiles.plan.coords_sha256
        )
        store = FeatureStore.open(
            out_dir / FEATURES_FILE,
            attrs=_store_attrs(slide_path, reader, tiles, options, facts, out_dir),
            fingerprint=fingerprint,
            planned_coords=tiles.planned,
            embedding_dim=getattr(encoder, "embedding_dim", None),
        )
        if on_store is not None:
            on_store(store)
        try:
            resumed = store.resumed
            if progress is not None:
                progress(resumed, len(tiles.planned))
            rss_max = _encode_tiles(
                reader, tiles, store, encoder, facts, batch_size, settings, progress, cancel, times, resumed
            )
            t0 = time.perf_counter()
            dim = _write_results(store, encoder, tiles, settings, out_dir)
            written = store.count
        finally:
            if on_store is not None:
                on_store(None)
            with store.lock:
                store.close()
        exported = export_layouts(
            out_dir / FEATURES_FILE,
            out_dir,
            options.export,
            name=slide_name(slide_path),
            model=str(facts["model"]),
            level_dimensions=reader.level_dimensions,
            level_downsamples=reader.level_downsamples,
            read_level=tiles.plan.level,
        )
        times.finalize = time.perf_counter() - t0
        times.total = time.perf_counter() - started
        report = _report(
            reader,
            tiles,
            options,
            settings,
            encoder,
            facts,
            times,
            written=written,
            resumed=resumed,
            dim=dim,
            batch_size=batch_size,
            rss_start=rss_start,
            rss_max=rss_max,
            exported=[str(path.relative_to(out_dir)) for path in exported],
        )
        write_json_atomic(out_dir / REPORT_FILE, report)
        return report
    finally:
        reader.close()


@dataclass
class _PlannedTiles:
    """What :func:`_plan_tiles` decided: the grid, the tiles kept, and what was seen on the way."""

    plan: _GridPlan
    planned: np.ndarray
    tissue: TissueMask
    thumbnail: np.ndarray
    mpp0: float
    width: int
    height: int
    warnings: list[str]


def _plan_tiles(
    reader: SlideReader,
    encoder: TileEncoder,
    options: SlideOptions,
    settings: PipelineSettings,
    coords_file: str | Path | None,
    out_dir: Path,
    times: StageTimes,
) -> _PlannedTiles:
    """Phase 1: the grid at the target resolution, the thumbnail and the tissue mask, the tiles kept."""
    warnings: list[str] = []
    mpp0 = reader.require_mpp()
    width, height = reader.dimensions
    plan = _plan_grid(reader, encoder, options, settings, coords_file)
    if reader.level_mpp(0) > plan.target_mpp * 1.01:
        warnings.append(f"target {plan.target_mpp:.4g} µm/px is finer than the slide's {mpp0:.4g}: tiles are upsampled")

    t0 = time.perf_counter()
    thumbnail = reader.thumbnail(settings.thumbnail_size)
    times.thumbnail = time.perf_counter() - t0
    t0 = time.perf_counter()
    tissue = detect_tissue(thumbnail, width, height, level0_mpp=mpp0)
    all_coords = plan.coords
    if plan.source != "tessera":
        planned = all_coords  # the lab's own segmentation and patching, used as they are
    elif options.tissue_threshold > 0 or options.tissue_rule != "fraction":
        fractions = tissue.tile_fractions(all_coords, plan.patch_size_level0)
        planned = all_coords[keep_tiles(fractions, options.tissue_threshold, options.tissue_rule)]
    else:
        planned = all_coords
    tissue.save_png(out_dir / TISSUE_MASK_FILE)
    write_json_atomic(out_dir / TISSUE_GEOJSON_FILE, tissue_geojson(tissue))
    times.tissue = time.perf_counter() - t0
    if len(planned) == 0:
        warnings.append("no tile has enough tissue: the slide looks empty at this tissue_threshold")
    return _PlannedTiles(plan, planned, tissue, thumbnail, mpp0, width, height, warnings)


def _store_attrs(
    slide_path: str | Path,
    reader: SlideReader,
    tiles: _PlannedTiles,
    options: SlideOptions,
    facts: dict[str, Any],
    out_dir: Path,
) -> dict[str, Any]:
    """The attributes of ``features.h5``: CLAM's and TRIDENT's, and Tessera's own."""
    plan, level = tiles.plan, tiles.plan.level
    return {
        "patch_size": plan.tile,
        "patch_size_level0": plan.patch_size_level0,
        "target_mpp": float(plan.target_mpp),
        "level0_mpp": float(tiles.mpp0),
        "level0_width": tiles.width,
        "level0_height": tiles.height,
        "model": facts["model"],
        "model_version": facts["model_version"],
        "weights": facts["weights"],
        "overlap": plan.overlap,
        "stride_level0": plan.stride_level0,
        "edge": options.edge,
        "read_level": level,
        "tissue_threshold": float(options.tissue_threshold),
        "tissue_rule": options.tissue_rule,
        "tiles_total": len(tiles.planned),
        "mpp_source": reader.mpp_source or "none",
        # NaN when the slide's metadata has no resolution
        "metadata_mpp": float(reader.metadata_mpp) if reader.metadata_mpp is not None else float("nan"),
        "grid_source": plan.source,
        **interchange_attrs(
            name=slide_name(slide_path),
            tile=plan.tile,
            overlap=plan.overlap,
            patch_size_level0=plan.patch_size_level0,
            level0_mpp=tiles.mpp0,
            target_mpp=plan.target_mpp,
            objective_power=reader.objective_power,
            level_downsample=reader.level_downsamples[level],
            patch_level=level,
            savetodir=str(out_dir),
        ),
    }


def _encode_tiles(
    reader: SlideReader,
    tiles: _PlannedTiles,
    store: FeatureStore,
    encoder: TileEncoder,
    facts: dict[str, Any],
    batch_size: int,
    settings: PipelineSettings,
    progress: ProgressCallback | None,
    cancel: threading.Event,
    times: StageTimes,
    resumed: int,
) -> int:
    """Phase 2: read, encode and store the tiles not stored yet; returns the highest RSS the writer saw."""
    t0 = time.perf_counter()
    stream = TileStream(
        reader,
        tiles.planned[resumed:],
        level=tiles.plan.level,
        region_size=tiles.plan.region_size,
        out_size=int(encoder.tile_size),
        mean=encoder.mean,
        std=encoder.std,
        batch_size=batch_size,
        workers=settings.workers,
        prefetch_batches=settings.prefetch_batches,
        interpolation=facts["interpolation"],
        cancel=cancel,
    )
    writer = _Writer(store, len(tiles.planned), progress)
    encoding = _Encoding(encoder, settings.inflight_batches, str(facts["model"]))
    try:
        with stream:
            wait_start = time.perf_counter()
            for batch in stream:
                times.wait_for_tiles += time.perf_counter() - wait_start
                encoding.submit(batch)
                while encoding.full():
                    times.wait_for_writer += writer.put(*encoding.collect(times))
                if cancel.is_set():
                    raise SlideCancelled("cancelled")
                wait_start = time.perf_counter()
            while encoding.pending():
                times.wait_for_writer += writer.put(*encoding.collect(times))
    finally:
        encoding.close()
        writer.finish()
    times.stream = time.perf_counter() - t0
    times.read, times.preprocess = stream.times.read, stream.times.preprocess
    times.write = writer.write_s
    return writer.rss_max


def _write_results(
    store: FeatureStore, encoder: TileEncoder, tiles: _PlannedTiles, settings: PipelineSettings, out_dir: Path
) -> int | None:
    """Phase 3: close the feature file, then the slide embedding, heatmap and tile GeoJSON; returns D."""
    store.finish({"complete_at": time.time()})
    dim = store.embedding_dim or getattr(encoder, "embedding_dim", None)
    np.save(out_dir / SLIDE_EMBEDDING_FILE, slide_embedding(store.iter_features(), dim))
    values = first_principal_component(store.iter_features)
    heat_thumb = _shrink(tiles.thumbnail, settings.heatmap_size)
    save_png(
        render_heatmap(
            heat_thumb,
            store.coords(),
            values,
            patch_size_level0=tiles.plan.patch_size_level0,
            level0_width=tiles.width,
            level0_height=tiles.height,
        ),
        out_dir / HEATMAP_FILE,
    )
    tiles_geojson = tile_features(store.coords(), tiles.plan.patch_size_level0)
    write_feature_collection(out_dir / TILES_GEOJSON_FILE, tiles_geojson)
    return dim


def _report(
    reader: SlideReader,
    tiles: _PlannedTiles,
    options: SlideOptions,
    settings: PipelineSettings,
    encoder: TileEncoder,
    facts: dict[str, Any],
    times: StageTimes,
    *,
    written: int,
    resumed: int,
    dim: int | None,
    batch_size: int,
    rss_start: int,
    rss_max: int,
    exported: list[str],
) -> dict[str, Any]:
    """Phase 4: ``report.json``: counts, timings, memory, the slide, the grid, tissue, model and outputs."""
    plan, level, tissue = tiles.plan, tiles.plan.level, tiles.tissue
    processed = written - resumed
    return {
        "tiles": written,
        "tiles_processed": processed,
        "tiles_resumed": resumed,
        "tiles_grid": plan.grid_size,
        "tiles_background": plan.grid_size - len(tiles.planned),
        "tiles_per_s": round(processed / times.stream, 3) if times.stream > 0 and processed else 0.0,
        "timing_s": times.to_dict(),
        "memory": {
            "peak_rss_bytes": process_peak_rss_bytes(),
            "rss_start_bytes": rss_start,
            "rss_max_sampled_bytes": max(rss_max, current_rss_bytes()),
            "rss_end_bytes": current_rss_bytes(),
        },
        "slide": {**reader.info().to_dict(), "file_bytes": reader.path.stat().st_size},
        "grid": {
            "source": plan.source,
            "tile": plan.tile,
            "overlap": plan.overlap,
            "edge": options.edge,
            "target_mpp": plan.target_mpp,
            "patch_size_level0": plan.patch_size_level0,
            "stride_level0": plan.stride_level0,
            "columns": plan.columns,
            "rows": plan.rows,
            "read_level": level,
            "read_level_mpp": reader.level_mpp(level),
            "read_size": plan.region_size,
            "encoder_size": int(encoder.tile_size),
        },
        "tissue": {
            "tissue_threshold": options.tissue_threshold,
            "tissue_rule": options.tissue_rule,
            "saturation_threshold": tissue.threshold,
            "mask_mpp": tissue.mask_mpp,
            "excluded_dark_or_pen_fraction": round(tissue.excluded_fraction, 6),
            "tissue_fraction": round(tissue.tissue_fraction, 6),
            "mask_size": list(tissue.mask.shape[::-1]),
        },
        "model": facts,
        "embedding_dim": dim or 0,
        "options": options.model_dump(),
        "settings": {
            "workers": settings.workers,
            "batch_size": batch_size,
            "prefetch_batches": settings.prefetch_batches or settings.workers + 2,
        },
        "outputs": [
            FEATURES_FILE,
            HEATMAP_FILE,
            TISSUE_MASK_FILE,
            TISSUE_GEOJSON_FILE,
            TILES_GEOJSON_FILE,
            SLIDE_EMBEDDING_FILE,
            REPORT_FILE,
            *exported,
        ],
        "warnings": tiles.warnings,
    }


@dataclass(frozen=True)
class _GridPlan:
    """Where the tiles are: our grid at the target resolution, or a TRIDENT/CLAM grid file."""

    coords: np.ndarray
    tile: int
    target_mpp: float
    patch_size_level0: int
    stride_level0: int
    overlap: int
    columns: int
    rows: int
    grid_size: int
    level: int
    region_size: int
    source: str
    coords_sha256: str | None


def _plan_grid(
    reader: SlideReader,
    encoder: TileEncoder,
    options: SlideOptions,
    settings: PipelineSettings,
    coords_file: str | Path | None,
) -> _GridPlan:
    mpp0 = reader.require_mpp()
    width, height = reader.dimensions
    tile = options.tile or int(encoder.tile_size)
    if coords_file is not None:
        external = read_grid(
            coords_file,
            level0_width=width,
            level0_height=height,
            level_downsamples=reader.level_downsamples,
            max_tiles=settings.max_tiles,
        )
        patch0 = external.patch_size_level0
        target_mpp = patch0 * mpp0 / tile
        level = reader.best_level_for_mpp(target_mpp)
        overlap = int(external.attrs.get("overlap", 0) or 0)
        return _GridPlan(
            coords=external.coords,
            tile=tile,
            target_mpp=target_mpp,
            patch_size_level0=patch0,
            stride_level0=max(1, patch0 - round(overlap * patch0 / tile)),
            overlap=overlap if overlap < tile else 0,
            columns=0,
            rows=0,
            grid_size=len(external.coords),
            level=level,
            region_size=max(1, round(patch0 / reader.level_downsamples[level])),
            source=external.layout,
            coords_sha256=external.sha256,
        )
    if options.overlap >= tile:
        raise InvalidInput(f"overlap ({options.overlap}) must be smaller than tile ({tile})", param="overlap")
    grid = make_grid(
        width, height, level0_mpp=mpp0, target_mpp=options.mpp, tile=tile, overlap=options.overlap, edge=options.edge
    )
    _check_tile_budget(grid.size, grid.patch_size_level0, mpp0, reader, settings.max_tiles)
    level = reader.best_level_for_mpp(options.mpp)
    return _GridPlan(
        coords=grid.coords(),
        tile=tile,
        target_mpp=options.mpp,
        patch_size_level0=grid.patch_size_level0,
        stride_level0=grid.stride_level0,
        overlap=options.overlap,
        columns=grid.columns,
        rows=grid.rows,
        grid_size=grid.size,
        level=level,
        region_size=max(1, round(grid.patch_size_level0 / reader.level_downsamples[level])),
        source="tessera",
        coords_sha256=None,
    )


def _check_tile_budget(tiles: int, patch_level0: int, mpp0: float, reader: SlideReader, max_tiles: int) -> None:
    """Refuse a plan with more tiles than ``max_tiles``, naming the physical sizes involved."""
    if tiles <= max_tiles:
        return
    width_mm, height_mm = (side * mpp0 / 1000 for side in reader.dimensions)
    raise InvalidInput(
        f"{tiles} tiles of {patch_level0 * mpp0:.4g} µm over a {width_mm:.1f} x {height_mm:.1f} mm "
        f"slide exceed the limit of {max_tiles}: check slide_mpp ({mpp0:.4g} µm/px, from "
        f"{reader.mpp_source or 'nowhere'}), mpp and tile",
        param="slide_mpp" if reader.mpp_source != "caller" else "mpp",
    )


def process_peak_rss_bytes() -> int:
    """This process's peak resident set (``VmHWM``), falling back to ``ru_maxrss``.

    ``ru_maxrss`` survives ``fork`` + ``exec``: a child started by a big parent reports at least
    the parent's size at the fork. ``VmHWM`` belongs to the process's own address space.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return peak_rss_bytes()


def _shrink(image: np.ndarray, max_size: int) -> np.ndarray:
    h, w = image.shape[:2]
    scale = max(h, w) / max_size
    if scale <= 1.0:
        return image
    size = (max(1, round(w / scale)), max(1, round(h / scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BOX))


def _fingerprint(
    slide_path: str | Path,
    reader: SlideReader,
    options: SlideOptions,
    facts: dict[str, Any],
    batch_size: int,
    settings: PipelineSettings,
    planned: int,
    coords_sha256: str | None = None,
) -> str:
    """What must match for a partial store to be resumed: same slide, options, model, batching."""
    payload = {
        "slide_bytes": reader.path.stat().st_size,
        "dimensions": reader.level_dimensions,
        "mpp": reader.mpp,
        "options": options.model_dump(exclude={"model"}),
        "model": facts,
        "batch_size": batch_size,
        "thumbnail_size": settings.thumbnail_size,
        "planned": planned,
        "coords_sha256": coords_sha256,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()
