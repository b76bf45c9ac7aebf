"""CPU lanes: one ONNX Runtime session with every thread against ``lanes`` batches side by side.

The same model, batch and host, in one run; rounds interleave the two set-ups so that drift on a
noisy machine hits both alike:

- ``one lane``: the backend loaded with ``lanes=1`` (one session, every thread), one batch at a time;
- ``lanes``: the backend as a replica loads it (``TESSERA_CPU_LANES``), one caller per lane, so
  that batches run side by side on one thread each (``OrtBackend._session_for``), each batch in
  parts of ``LANE_PART_PIXELS``;
- ``whole batches``: the same lanes, each batch run whole (``lane_part_pixels = 0``).

Each set-up's CPU time per image (this process's) is reported beside its images/s.

Also the latency of one image alone on each (the laned backend runs it on the wide session, so it
should match). Results: ``bench/results/<host>-<date>-cpu_lanes.json``; the report's "CPU lanes".
"""

from __future__ import annotations

import argparse
import functools
import statistics
from typing import Any

import numpy as np

from service.bench._common import median_time, write_result
from service.models import ModelRepository

__all__ = ["main", "run"]


def run(
    repo_path: str = "model_repo",
    model: str = "vit_small",
    batch: int | None = None,
    rounds: int = 3,
    duration_s: float = 8.0,
) -> dict[str, Any]:
    from service.bench.service_vs_raw import measure_raw
    from service.runtime import load_backend
    from service.runtime.ort import OrtBackend
    from service.settings import ServerSettings

    settings = ServerSettings.from_env()
    repo = ModelRepository(repo_path)
    cfg = repo.config(model)
    size = cfg.input.native_size
    batch = batch or cfg.batching.max_batch_size
    threads, spin = settings.intra_op_threads, settings.ort_spin
    one = load_backend(repo, model, prefer="onnxruntime", providers="cpu", intra_op_threads=threads, spin=spin, lanes=1)
    laned = load_backend(
        repo,
        model,
        prefer="onnxruntime",
        providers="cpu",
        intra_op_threads=threads,
        spin=spin,
        lanes=settings.cpu_lanes,
    )
    if not isinstance(laned, OrtBackend):
        raise SystemExit(f"{model}: CPU lanes are ONNX Runtime's; this host loaded {laned.describe()}")
    parts = laned.lane_part_pixels
    rng = np.random.default_rng(0)
    pixels = rng.standard_normal((batch, 3, size, size)).astype(np.float32)
    image = pixels[:1].copy()
    laned.warm_up(pixels)
    one.warm_up(pixels)
    rows = []
    for index in range(rounds):
        row: dict[str, Any] = {"round": index + 1}
        for label, backend, part_pixels in (
            ("one_lane", one, parts),
            ("lanes", laned, parts),
            ("whole_batches", laned, 0),
        ):
            laned.lane_part_pixels = part_pixels  # the lanes' batches in parts, as served, or whole
            measured = measure_raw(backend, pixels, duration_s, warmup=0)  # one caller per lane
            row[f"{label}_img_per_s"] = measured["img_per_s"]
            row[f"{label}_cpu_ms_per_img"] = measured["cpu_ms_per_img"]
        laned.lane_part_pixels = parts
        rows.append(row)
        print(
            f"round {index + 1}: one lane {row['one_lane_img_per_s']:.2f} img/s, {laned.lanes} lanes "
            f"{row['lanes_img_per_s']:.2f} img/s (whole batches {row['whole_batches_img_per_s']:.2f}); CPU per "
            f"image {row['one_lane_cpu_ms_per_img']}, {row['lanes_cpu_ms_per_img']}, "
            f"{row['whole_batches_cpu_ms_per_img']} ms",
            flush=True,
        )
    lone = {}  # one image alone: median ms of 15 runs on each
    for label, backend in (("one_lane", one), ("lanes", laned)):
        seconds, _ = median_time(functools.partial(backend.infer, image), repeats=15, warmup=0)
        lone[f"{label}_ms"] = round(seconds * 1e3, 2)
    one_rate = statistics.median(r["one_lane_img_per_s"] for r in rows)
    lanes_rate = statistics.median(r["lanes_img_per_s"] for r in rows)
    whole_rate = statistics.median(r["whole_batches_img_per_s"] for r in rows)
    result = {
        "benchmark": "cpu_lanes",
        "goal": "lanes serve more images/s than one session under load, at the same single-image latency",
        "model": model,
        "size": size,
        "batch": batch,
        "lanes": laned.lanes,
        "intra_op_threads": settings.intra_op_threads,
        "ort_spin": settings.ort_spin,
        "duration_s": duration_s,
        "rows": rows,
        "one_lane_img_per_s": round(one_rate, 3),
        "lanes_img_per_s": round(lanes_rate, 3),
        "ratio": round(lanes_rate / one_rate, 3) if one_rate else None,
        "whole_batches_img_per_s": round(whole_rate, 3),
        "lane_part_pixels": parts,
        "lone_image": lone,
    }
    print(
        f"{model} batch {batch}: {laned.lanes} lanes {lanes_rate:.2f} img/s against one lane {one_rate:.2f} "
        f"({result['ratio']}x); one image alone {lone['lanes_ms']} ms against {lone['one_lane_ms']} ms"
    )
    print(f"wrote {write_result('cpu_lanes', result)}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tessera bench lanes", description=__doc__)
    parser.add_argument("--model-repo", default="model_repo")
    parser.add_argument("--model", default="vit_small")
    parser.add_argument("--batch", type=int, default=None, help="images per batch (default: the model's max)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per set-up per round")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.duration <= 0:
        parser.error("--rounds must be >= 1 and --duration > 0")
    run(args.model_repo, args.model, args.batch, args.rounds, args.duration)
    return 0
