"""Many slides at once on Ray Data: ``tessera slide --batch``.

The slide paths become a dataset (``ray.data.from_items``); ``map_batches`` runs them through a
pool of actors, one slide per call (``batch_size=1``). Each actor loads the tile encoder once
(:func:`service.runtime.load_backend`) and runs the same :func:`run_slide` as the offline CLI
with its progress bar off, into ``<out_dir>/<slide stem>/``. A slide that fails becomes a report
row with its error; the others carry on. ``<out_dir>/bulk_report.json`` sums the run up.

It lives in ``service/serve/`` because it drives Ray (Ray Data), and ``service/serve/`` is the
only package that imports Ray (an import-linter contract); ``service.slides`` stays free of it.
Ray is imported only when :func:`run_bulk` runs: importing this module costs nothing. Ray starts
embedded unless it is already running in this process (then it is used as it is) or an
``address`` is given; it is shut down only if this function started it. The actors import
``service`` themselves, so on a remote cluster the package must be installed on its nodes.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from service.errors import InvalidInput, TesseraError
from service.slides.encoder import BackendEncoder
from service.slides.formats import MAIN_SUFFIXES, scan_folder
from service.slides.offline import run_slide
from service.slides.pipeline import PipelineSettings, SlideOptions
from service.slides.store import write_json_atomic

__all__ = ["BULK_REPORT_FILE", "SLIDE_SUFFIXES", "SlideWorker", "collect_slides", "plan_out_dirs", "run_bulk"]

log = logging.getLogger(__name__)

BULK_REPORT_FILE = "bulk_report.json"
#: file suffixes a folder given to ``--batch`` is scanned for (besides DICOM-series folders)
SLIDE_SUFFIXES = frozenset(MAIN_SUFFIXES)
#: the columns every worker returns, so every block has the same schema (no nulls)
#: retries of a slide whose worker process died
_CRASH_RETRIES = 1
_COLUMNS = ("index", "path", "out_dir", "ok", "tiles", "tiles_per_s", "seconds", "error", "error_code")


def collect_slides(source: str | Path) -> list[Path]:
    """The slides ``--batch`` names: the slide files in a folder, or the paths listed in a text file.

    A folder is scanned (not recursively) for files with a slide suffix (:data:`SLIDE_SUFFIXES`:
    MIRAX ``.mrxs``, CZI and the single-file formats) and sub-folders holding a DICOM series
    (:func:`service.slides.formats.scan_folder`).
    A manifest has one path per line; blank lines and ``#`` comments are skipped and relative
    paths are taken relative to the manifest's folder. Raises ``FileNotFoundError`` for a
    missing source or listed slide, ``InvalidInput`` when nothing is found.
    """
    source = Path(source)
    if source.is_dir():
        slides = scan_folder(source)
        if not slides:
            raise InvalidInput(
                f"no slides ({', '.join(sorted(SLIDE_SUFFIXES))} or DICOM series) in {source}", param="slide"
            )
        return slides
    if not source.is_file():
        raise FileNotFoundError(f"{source} is neither a folder of slides nor a manifest file")
    slides = []
    for number, raw in enumerate(source.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        path = Path(line).expanduser()
        path = path if path.is_absolute() else source.parent / path
        if not (path.is_file() or path.is_dir()):
            raise FileNotFoundError(f"{source}:{number}: slide {path} does not exist")
        slides.append(path)
    if not slides:
        raise InvalidInput(f"the manifest {source} lists no slides", param="slide")
    return slides


def plan_out_dirs(slides: Sequence[Path], out_dir: str | Path) -> list[Path]:
    """``<out_dir>/<slide stem>`` for each slide; repeated stems get ``-2``, ``-3``, ... in input order."""
    taken: set[str] = set()
    dirs = []
    for slide in slides:
        stem = Path(slide).stem or "slide"
        name, n = stem, 1
        while name.lower() in taken:
            n += 1
            name = f"{stem}-{n}"
        taken.add(name.lower())
        dirs.append(Path(out_dir) / name)
    return dirs


class SlideWorker:
    """The Ray Data callable class: one per actor, holding a loaded encoder across slides."""

    def __init__(
        self,
        model_repo: str,
        model: str,
        options: SlideOptions,
        settings: PipelineSettings | None = None,
        intra_op_threads: int = 0,
    ):
        from service.models import ModelRepository
        from service.runtime import load_backend

        repo = ModelRepository(model_repo)
        self.encoder = BackendEncoder(load_backend(repo, model, intra_op_threads=intra_op_threads), repo.config(model))
        self.options = options
        self.settings = settings

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = [
            self.process(int(index), str(path), str(out_dir))
            for index, path, out_dir in zip(batch["index"], batch["path"], batch["out_dir"], strict=True)
        ]
        return _to_columns(rows)

    def process(self, index: int, path: str, out_dir: str) -> dict[str, Any]:
        """One slide; any failure becomes the row's ``error`` instead of failing the pool."""
        started = time.perf_counter()
        row: dict[str, Any] = {"index": index, "path": path, "out_dir": out_dir}
        try:
            report = run_slide(path, out_dir, self.encoder, self.options, progress=False, settings=self.settings)
        except TesseraError as exc:
            row.update(ok=False, tiles=0, tiles_per_s=0.0, error=exc.message, error_code=exc.code)
        except Exception as exc:
            log.exception("slide %s failed", path)
            row.update(ok=False, tiles=0, tiles_per_s=0.0, error=f"{type(exc).__name__}: {exc}", error_code="internal")
        else:
            row.update(ok=True, tiles=int(report["tiles"]), tiles_per_s=float(report["tiles_per_s"]))
            row.update(error="", error_code="")
        row["seconds"] = round(time.perf_counter() - started, 3)
        return row


def run_bulk(
    slides: Sequence[str | Path],
    out_dir: str | Path,
    model_repo: str | Path,
    model: str,
    options: SlideOptions | dict[str, Any] | None = None,
    *,
    concurrency: int | None = None,
    address: str | None = None,
    settings: PipelineSettings | None = None,
    on_result: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Tile and embed every slide into ``<out_dir>/<stem>/``; returns one row per slide, in input order.

    Rows: ``path``, ``out_dir``, ``ok``, ``tiles``, ``tiles_per_s``, ``seconds``, ``error`` and
    ``error_code`` (``None`` when it succeeded). ``concurrency`` actors run at once (default:
    min(number of slides, available CPUs)); the available CPUs are shared between them, as Ray
    CPUs and as ONNX Runtime threads. ``on_result(row)`` is called as each slide finishes.
    Raises before starting Ray when the model is unknown or not built, or ``options`` is invalid.
    """
    from service.models import ModelRepository

    paths = [Path(s) for s in slides]
    if not paths:
        raise InvalidInput("no slides to process", param="slide")
    if concurrency is not None and concurrency < 1:
        raise InvalidInput(f"concurrency must be at least 1, got {concurrency}", param="workers")
    opts = options if isinstance(options, SlideOptions) else SlideOptions.model_validate(options or {})
    opts = opts.model_copy(update={"model": model})
    repo = ModelRepository(model_repo)
    repo.config(model)  # NotFound for an unknown model
    repo.require_manifest(model)  # FileNotFoundError for a model that is not built
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    items = [
        {"index": i, "path": str(p.resolve()), "out_dir": str(d.resolve())}
        for i, (p, d) in enumerate(zip(paths, plan_out_dirs(paths, out), strict=True))
    ]

    import ray

    started_ray = False
    if ray.is_initialized() and address:
        log.warning("Ray is already running in this process: address %r is ignored", address)
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
        started_ray = True
    try:
        available = float(ray.available_resources().get("CPU", 0.0))
        n = concurrency or max(1, min(len(items), math.floor(available)))
        # share what is free now; nothing free (a busy shared cluster) still runs, oversubscribed
        num_cpus = math.floor(available / n * 100) / 100
        threads = max(1, math.floor(num_cpus))
        started = time.perf_counter()
        rows = _execute(items, str(repo.root), model, opts, settings, n, num_cpus, threads, on_result)
        wall = time.perf_counter() - started
    finally:
        if started_ray:
            ray.shutdown()
    rows.sort(key=lambda r: r.pop("index"))
    tiles = sum(r["tiles"] for r in rows)
    write_json_atomic(
        out / BULK_REPORT_FILE,
        {
            "model": model,
            "options": opts.model_dump(),
            "concurrency": n,
            "num_cpus_per_worker": num_cpus,
            "intra_op_threads": threads,
            "slides": len(rows),
            "succeeded": sum(1 for r in rows if r["ok"]),
            "failed": sum(1 for r in rows if not r["ok"]),
            "tiles": tiles,
            "seconds": round(wall, 3),
            "tiles_per_s": round(tiles / wall, 3) if wall > 0 else 0.0,
            "results": rows,
        },
    )
    return rows


def _execute(
    items: list[dict[str, Any]],
    model_repo: str,
    model: str,
    options: SlideOptions,
    settings: PipelineSettings | None,
    concurrency: int,
    num_cpus: float,
    threads: int,
    on_result: Callable[[dict[str, Any]], None] | None,
) -> list[dict[str, Any]]:
    import ray.data

    context = ray.data.DataContext.get_current()
    quiet = {
        "enable_progress_bars": False,
        "print_on_execution_start": False,
        "enable_auto_log_stats": False,
        # a slide whose worker process dies (a crash in a native reader) loses only its own block
        "max_errored_blocks": len(items),
    }
    saved = {name: getattr(context, name) for name in quiet if hasattr(context, name)}
    data_logger = logging.getLogger("ray.data")
    saved_level = data_logger.level
    for name in saved:
        setattr(context, name, quiet[name])
    data_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            # Ray 2.60 deprecates extra remote args without a named replacement for these two:
            # the default (restart forever, retry forever) would loop on a slide that kills its worker
            warnings.simplefilter("ignore", DeprecationWarning)
            dataset = ray.data.from_items(items).map_batches(
                SlideWorker,
                fn_constructor_kwargs={
                    "model_repo": model_repo,
                    "model": model,
                    "options": options,
                    "settings": settings,
                    "intra_op_threads": threads,
                },
                batch_size=1,
                batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=concurrency, max_tasks_in_flight_per_actor=1),
                num_cpus=num_cpus,
                max_restarts=len(items),
                max_task_retries=_CRASH_RETRIES,
            )
        rows = []
        for raw in dataset.iter_rows():
            row = _from_record(raw)
            rows.append(row)
            if on_result is not None:
                on_result({k: v for k, v in row.items() if k != "index"})
    finally:
        for name, value in saved.items():
            setattr(context, name, value)
        data_logger.setLevel(saved_level)
    done = {row["index"] for row in rows}
    for item in items:
        if item["index"] not in done:
            row = {
                **item,
                "ok": False,
                "tiles": 0,
                "tiles_per_s": 0.0,
                "seconds": 0.0,
                "error": f"the worker processing this slide died ({_CRASH_RETRIES + 1} attempts)",
                "error_code": "internal",
            }
            rows.append(row)
            if on_result is not None:
                on_result({k: v for k, v in row.items() if k != "index"})
    return rows


def _to_columns(rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    dtypes = {"index": np.int64, "ok": np.bool_, "tiles": np.int64, "tiles_per_s": np.float64, "seconds": np.float64}
    return {c: np.asarray([r[c] for r in rows], dtype=dtypes.get(c, np.str_)) for c in _COLUMNS}


def _from_record(raw: dict[str, Any]) -> dict[str, Any]:
    return {
        "index": int(raw["index"]),
        "path": str(raw["path"]),
        "out_dir": str(raw["out_dir"]),
        "ok": bool(raw["ok"]),
        "tiles": int(raw["tiles"]),
        "tiles_per_s": float(raw["tiles_per_s"]),
        "seconds": float(raw["seconds"]),
        "error": str(raw["error"]) or None,
        "error_code": str(raw["error_code"]) or None,
    }
