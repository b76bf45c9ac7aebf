"""Memory stays flat as slides grow: a 50,000 x 50,000 synthetic slide against a 16,000 x 16,000 one.

Each slide is generated and processed in its own subprocess, so each peak resident set
belongs to that one run (``VmHWM``: ``ru_maxrss`` would include pytest's own size, inherited
across fork and exec). The bigger slide has ten times the pixels and three
times the tissue tiles; once the pipeline's bounded window (prefetched batches, the writer
queue, OpenSlide's shared tile cache) is full, nothing grows, so both peaks must match.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import HERE

ROOT = HERE.parents[2]

_GENERATE = """
import json, sys, time
from service.testing import make_synthetic_slide
from service.slides.pipeline import process_peak_rss_bytes
start = time.perf_counter()
slide = make_synthetic_slide(sys.argv[1], int(sys.argv[2]), int(sys.argv[2]), tile_size=512, mpp=0.25,
                             blob_scale=float(sys.argv[3]), seed=11)
peak = process_peak_rss_bytes()
print(json.dumps({"seconds": time.perf_counter() - start, "peak_rss": peak}))
"""

_PROCESS = """
import json, sys
sys.path.insert(0, sys.argv[3])
from _fakes import FakeEncoder
from service.slides import PipelineSettings, SlideOptions, process_slide
report = process_slide(sys.argv[1], sys.argv[2], FakeEncoder(max_batch_size=16), SlideOptions(mpp=0.5, tile=224),
                       settings=PipelineSettings(workers=2, prefetch_batches=2))
report["child_peak_rss"] = report["memory"]["peak_rss_bytes"]
print(json.dumps(report))
"""


def _run(code: str, *args: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_slide_size(tmp_path: Path) -> None:
    sizes = {"small": (16_000, 0.2), "large": (50_000, 0.1)}
    made, runs = {}, {}
    for name, (side, blob_scale) in sizes.items():
        path = tmp_path / f"{name}.tiff"
        made[name] = _run(_GENERATE, str(path), str(side), str(blob_scale))
        runs[name] = _run(_PROCESS, str(path), str(tmp_path / f"out_{name}"), str(HERE))
    mib = 1 << 20
    summary = {
        name: {
            "pixels": sizes[name][0] ** 2,
            "generate_s": round(made[name]["seconds"], 1),
            "generate_peak_mib": made[name]["peak_rss"] // mib,
            "tiles": runs[name]["tiles"],
            "tiles_grid": runs[name]["tiles_grid"],
            "tiles_per_s": runs[name]["tiles_per_s"],
            "peak_rss_mib": runs[name]["child_peak_rss"] // mib,
            "rss_start_mib": runs[name]["memory"]["rss_start_bytes"] // mib,
        }
        for name in sizes
    }
    print(json.dumps(summary, indent=1))  # the numbers, for the record (pytest -s)

    small, large = runs["small"], runs["large"]
    assert large["tiles"] >= 2.5 * small["tiles"] > 0  # more work, not just more glass
    assert large["grid"]["read_level"] == small["grid"]["read_level"] == 1
    # writing 7.5 GB of pixels is streamed too
    assert made["large"]["peak_rss"] < min(256 * mib, made["small"]["peak_rss"] + 64 * mib)
    # the measure sees the pipeline's working set (it is not drowned by a baseline)...
    assert small["child_peak_rss"] - small["memory"]["rss_start_bytes"] > 64 * mib
    # ...and that working set is the same bounded window for both: at most allocator noise apart
    assert large["child_peak_rss"] <= small["child_peak_rss"] * 1.08 + 24 * mib
