"""Gigapixel slides: readers, tissue detection, tile grids, the streaming pipeline, results, jobs.

Transport-free: nothing here imports Ray, FastAPI or PyTorch. The tile encoder is injected
(:class:`TileEncoder`), so the same pipeline runs under the CLI (:func:`run_slide`), the job
manager behind the REST routes (:class:`JobManager`) and the tests (with a fake encoder).
Server-side work only: the HTTP client is :mod:`service.clients.slides`, the ``tessera slide``
command :mod:`service.cli.slide`, Ray Data bulk runs :mod:`service.serve.slides_bulk` and the
synthetic test slides :mod:`service.testing`.
"""

from service.slides.encoder import BackendEncoder, TileEncoder, encoder_facts
from service.slides.grid import EdgeMode, TileGrid, make_grid
from service.slides.jobs import JobManager, JobState, JobStatus
from service.slides.offline import run_slide
from service.slides.pipeline import (
    PipelineSettings,
    SlideCancelled,
    SlideOptions,
    StageTimes,
    TileStream,
    process_slide,
)
from service.slides.reader import SlideInfo, SlideReader, open_slide, resolve_mpp
from service.slides.store import FeatureStore
from service.slides.tissue import TissueMask, detect_tissue

__all__ = [
    "BackendEncoder",
    "EdgeMode",
    "FeatureStore",
    "JobManager",
    "JobState",
    "JobStatus",
    "PipelineSettings",
    "SlideCancelled",
    "SlideInfo",
    "SlideOptions",
    "SlideReader",
    "StageTimes",
    "TileEncoder",
    "TileGrid",
    "TileStream",
    "TissueMask",
    "detect_tissue",
    "encoder_facts",
    "make_grid",
    "open_slide",
    "process_slide",
    "resolve_mpp",
    "run_slide",
]
