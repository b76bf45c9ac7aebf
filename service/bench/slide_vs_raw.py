"""Slide pipeline tiles/s vs the raw backend's tiles/s at the same batch size, same host, one run.

Pipeline: :func:`service.slides.run_slide` on a synthetic pyramidal slide (``side``² level-0
pixels at 0.5 µm/px, tissue everywhere, every tile kept) with a real ONNX Runtime
:class:`~service.slides.BackendEncoder`: reading, JPEG decoding, normalising, inference and the
HDF5 writer all run. Its report's ``tiles_per_s`` (tiles over the streaming phase) is compared;
the end-to-end rate (opening, thumbnail, tissue mask and the heatmap included) is reported beside.

Raw: ``backend.infer`` looped on pre-generated normalised batches of the same size (tiles cut
from the same slide), measured before and after the pipeline (the mean is the reference).
Goal (DESIGN.md): pipeline ≥ 90% of raw, i.e. reading and decoding keep the model fed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from service.bench._common import write_result
from service.bench.service_vs_raw import measure_raw, quiet_host_notes

__all__ = ["main", "run", "synthetic_slide"]

GOAL = 0.90
CACHE = Path(".tessera") / "bench"


def synthetic_slide(side: int, cache_dir: Path = CACHE, mpp: float = 0.5) -> Path:
    """A ``side``² synthetic slide covered with tissue, written once into ``cache_dir``."""
    from service.testing.synthetic_slides import make_synthetic_slide

    path = cache_dir / f"synthetic-full-{side}-{mpp:g}.tiff"
    if path.exists() and path.stat().st_size > 0:
        return path
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    # two blobs centred on the slide whose inner radius (wobble included) exceeds the half-diagonal
    make_synthetic_slide(partial, side, side, mpp=mpp, n_blobs=2, blob_scale=3.0)
    partial.replace(path)
    return path


def _tile_batches(slide_path: Path, encoder: Any, batch_size: int, batches: int) -> list[np.ndarray]:
    """``batches`` normalised batches of tiles read from the slide (the raw backend's input)."""
    import openslide

    side = int(encoder.tile_size)
    mean = np.asarray(encoder.mean, dtype=np.float32).reshape(3, 1, 1)
    std = np.asarray(encoder.std, dtype=np.float32).reshape(3, 1, 1)
    rng = np.random.default_rng(0)
    out = []
    with openslide.OpenSlide(str(slide_path)) as slide:
        width, height = slide.dimensions
        for _ in range(batches):
            tiles = []
            for _ in range(batch_size):
                x, y = int(rng.integers(0, width - side)), int(rng.integers(0, height - side))
                rgb = np.asarray(slide.read_region((x, y), 0, (side, side)).convert("RGB"), dtype=np.float32)
                tiles.append((rgb.transpose(2, 0, 1) / 255.0 - mean) / std)
            out.append(np.ascontiguousarray(np.stack(tiles), dtype=np.float32))
    return out


class _Cycle:
    """Feeds ``measure_raw`` a different pre-generated batch on every call."""

    def __init__(self, backend: Any, batches: list[np.ndarray]):
        self.backend, self.batches, self.i = backend, batches, 0

    def infer(self, _: np.ndarray) -> Any:
        self.i = (self.i + 1) % len(self.batches)
        return self.backend.infer(self.batches[self.i])


def _prepare_slide(side: int, cache_dir: Path) -> Path:
    """The synthetic slide (written once into ``cache_dir``), with how long it took to be ready."""
    t = time.perf_counter()
    slide_path = synthetic_slide(side, cache_dir)
    slide_s = round(time.perf_counter() - t, 2)
    print(f"slide {slide_path} ({side}x{side}, ready in {slide_s} s)", flush=True)
    return slide_path


def _load_raw(repo: Any, model: str, cfg: Any, slide_path: Path) -> tuple[bool, Any, Any, list[np.ndarray]]:
    """(spin, backend, its encoder, pre-generated batches of the slide's tiles): the raw side, loaded
    with the runtime as configured (``TESSERA_ORT_SPIN``)."""
    from service.runtime import load_backend
    from service.settings import ServerSettings
    from service.slides import BackendEncoder

    spin = ServerSettings.from_env().ort_spin
    backend = load_backend(repo, model, spin=spin)
    encoder = BackendEncoder(backend, cfg)
    batches = _tile_batches(slide_path, encoder, encoder.max_batch_size, batches=8)
    return spin, backend, encoder, batches


def _run_pipeline(slide_path: Path, encoder: Any, workers: int, batch_size: int) -> dict[str, Any]:
    """``run_slide`` on the slide into a throw-away folder, every tile kept: its report."""
    from service.slides import PipelineSettings, run_slide

    options = {"mpp": 0.5, "tissue_threshold": 0.0}
    with tempfile.TemporaryDirectory(prefix="tessera-bench-slide-") as out_dir:
        return run_slide(
            slide_path,
            out_dir,
            encoder,
            options,
            progress=False,
            settings=PipelineSettings(workers=workers, batch_size=batch_size),
        )


def _compare(report: dict[str, Any], raw_tps: float) -> tuple[float, float, float | None, list[dict[str, Any]]]:
    """(streaming tiles/s, end-to-end tiles/s, the streaming ratio to raw, rows): the pipeline's
    report against the raw reference; the streaming rate is the one compared."""
    timing = report["timing_s"]
    stream_tps = float(report["tiles_per_s"])
    total_tps = int(report["tiles_processed"]) / timing["total"] if timing["total"] else 0.0
    ratio = round(stream_tps / raw_tps, 4) if raw_tps else None
    rows = [
        {"path": "raw backend (pre-generated batches)", "tiles_per_s": round(raw_tps, 3), "ratio": 1.0},
        {"path": "run_slide, streaming phase", "tiles_per_s": round(stream_tps, 3), "ratio": ratio, "compared": True},
        {
            "path": "run_slide, end to end",
            "tiles_per_s": round(total_tps, 3),
            "ratio": round(total_tps / raw_tps, 4) if raw_tps else None,
            "compared": False,
        },
    ]
    return stream_tps, total_tps, ratio, rows


def run(
    repo_path: str = "model_repo",
    model: str = "vit_small",
    *,
    side: int = 20000,
    raw_duration_s: float = 10.0,
    workers: int = 2,
    cache_dir: Path = CACHE,
) -> dict[str, Any]:
    """Raw before, the slide pipeline, raw after, at the same batch size; the result written and returned."""
    from service.models import ModelRepository

    repo = ModelRepository(repo_path)
    cfg = repo.config(model)
    slide_path = _prepare_slide(side, cache_dir)
    spin, backend, encoder, batches = _load_raw(repo, model, cfg, slide_path)
    batch_size = encoder.max_batch_size
    feeder = _Cycle(backend, batches)
    raw_before = measure_raw(feeder, batches[0], raw_duration_s)
    print(f"raw {model} batch {batch_size}: {raw_before['img_per_s']:.1f} tiles/s (before)", flush=True)

    report = _run_pipeline(slide_path, encoder, workers, batch_size)

    raw_after = measure_raw(feeder, batches[0], raw_duration_s)
    print(f"raw {model} batch {batch_size}: {raw_after['img_per_s']:.1f} tiles/s (after)", flush=True)
    raw_tps = (raw_before["img_per_s"] + raw_after["img_per_s"]) / 2
    stream_tps, total_tps, ratio, rows = _compare(report, raw_tps)
    processed = int(report["tiles_processed"])
    result = {
        "benchmark": "slide_vs_raw",
        "goal": ">= 90% of the raw backend's tiles/s at the same batch size",
        "model": model,
        "slide": {"side": side, "mpp": 0.5, "file_bytes": slide_path.stat().st_size, "tissue": "everywhere"},
        "batch_size": batch_size,
        "workers": workers,
        "ort_spin": spin,
        "tiles": processed,
        "backend": backend.describe(),
        "raw": {"before": raw_before, "after": raw_after, "tiles_per_s": round(raw_tps, 3)},
        "pipeline": {
            "tiles_per_s": stream_tps,
            "end_to_end_tiles_per_s": round(total_tps, 3),
            "timing_s": report["timing_s"],
            "peak_rss_bytes": report["memory"]["peak_rss_bytes"],
        },
        "rows": rows,
        "summary": {
            "ratio": ratio,
            "goal_met": ratio is not None and ratio >= GOAL,
            "notes": quiet_host_notes(raw_before["img_per_s"], raw_after["img_per_s"], [ratio or 0.0]),
        },
    }
    print(
        f"pipeline {stream_tps:.1f} tiles/s streaming ({processed} tiles), {total_tps:.1f} end to end; "
        f"raw {raw_tps:.1f}: {100 * (ratio or 0):.1f}% of raw"
    )
    print(f"wrote {write_result('slide_vs_raw', result)}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="tessera bench slide", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-repo", default="model_repo")
    parser.add_argument("--model", default="vit_small")
    parser.add_argument("--side", type=int, default=20000, help="synthetic slide side in level-0 pixels")
    parser.add_argument("--raw-duration", type=float, default=10.0, help="seconds of raw inference, before and after")
    parser.add_argument("--workers", type=int, default=2, help="pipeline reader threads")
    parser.add_argument("--cache-dir", default=str(CACHE), help="where the synthetic slide is kept")
    args = parser.parse_args(argv)
    if not 1024 <= args.side <= 100000:
        parser.error("--side must be 1024..100000")
    run(
        args.model_repo,
        args.model,
        side=args.side,
        raw_duration_s=args.raw_duration,
        workers=args.workers,
        cache_dir=Path(args.cache_dir),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
