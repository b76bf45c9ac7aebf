"""A slide's tiles/s with one and with two backbone replicas, through Ray Serve.

The backbone is sleep-bound (``--batch-ms`` per batch, like a GPU replica seen from the host's
CPU), so the scaling shows on a 2-core machine: the slide pipeline runs in this process with the
service's own :class:`~service.serve.slides.HandleEncoder`, which keeps ``--inflight`` batches in
flight; Ray Serve routes each to a replica with room. Writes ``bench/results/<host>-<date>-slide_replicas.json``.

    python bench/slide_replicas.py --slide ../shared/data/slides/CMU-1-Small-Region.svs
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray
from ray import serve

from service.bench._common import write_result
from service.models import ModelRepository
from service.serve.slides import HandleEncoder
from service.slides import PipelineSettings, SlideOptions, process_slide


@serve.deployment(max_ongoing_requests=1)  # one batch at a time per replica, like one device
class SleepBackbone:
    """Answers ``infer_batch`` like the real backbone, after sleeping ``batch_s`` (one batch at a time)."""

    def __init__(self, batch_s: float, dim: int):
        self.batch_s, self.dim = batch_s, dim

    def infer_batch(self, pixels: np.ndarray) -> dict[str, Any]:
        time.sleep(self.batch_s)
        embedding = pixels.mean(axis=(2, 3)) @ np.ones((3, self.dim), dtype=np.float32)
        return {"outputs": {"embedding": embedding}}


def run(slide: Path, replicas: int, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    cfg = ModelRepository(args.model_repo).config(args.model)
    app = SleepBackbone.options(num_replicas=replicas).bind(args.batch_ms / 1000.0, cfg.output.embedding_dim)
    handle = serve.run(app, name=f"sleep{replicas}", route_prefix=None)
    encoder = HandleEncoder(handle, cfg)
    settings = PipelineSettings(workers=2, inflight_batches=args.inflight, thumbnail_size=1024, heatmap_size=256)
    options = SlideOptions(mpp=args.mpp, tissue_threshold=0.0)
    report = process_slide(slide, out / f"r{replicas}", encoder, options, settings=settings)
    serve.delete(f"sleep{replicas}")
    return {"replicas": replicas, "tiles": report["tiles"], "tiles_per_s": report["tiles_per_s"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slide", type=Path, required=True)
    parser.add_argument("--model-repo", default="model_repo")
    parser.add_argument("--model", default="vit_small")
    parser.add_argument("--mpp", type=float, default=1.0)
    parser.add_argument("--batch-ms", type=float, default=100.0)
    parser.add_argument("--inflight", type=int, default=4)
    args = parser.parse_args()
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            rows = [run(args.slide, replicas, args, Path(tmp)) for replicas in (1, 2)]
    finally:
        serve.shutdown()
        ray.shutdown()
    speedup = round(rows[1]["tiles_per_s"] / rows[0]["tiles_per_s"], 3) if rows[0]["tiles_per_s"] else None
    result = {
        "benchmark": "slide_replicas",
        "goal": "a slide's tiles/s grows with backbone replicas",
        "slide": args.slide.name,
        "batch_ms": args.batch_ms,
        "inflight": args.inflight,
        "rows": rows,
        "summary": {"speedup_2_vs_1_replicas": speedup},
    }
    print(json.dumps(result, indent=2))
    print(f"wrote {write_result('slide_replicas', result)}")


if __name__ == "__main__":
    main()
