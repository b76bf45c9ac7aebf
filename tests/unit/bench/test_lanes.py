"""``tessera bench lanes``: one session against the CPU lanes, interleaved, written and reported."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from service.bench import lanes
from service.bench.all import STEPS
from service.bench.command import BENCHMARKS
from service.bench.report import write_report
from service.runtime.ort import LANE_PART_PIXELS


def test_lanes_benchmark_writes_both_set_ups_and_the_report_shows_them(
    small_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TESSERA_BENCH_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("TESSERA_INTRA_OP_THREADS", "2")
    monkeypatch.setenv("TESSERA_CPU_LANES", "0")  # one lane per thread
    monkeypatch.delenv("TESSERA_ORT_SPIN", raising=False)
    result = lanes.run(str(small_repo), "vit_small", batch=2, rounds=2, duration_s=0.5)
    assert result["lanes"] == 2 and len(result["rows"]) == 2
    assert all(r["one_lane_img_per_s"] > 0 and r["lanes_img_per_s"] > 0 for r in result["rows"])
    assert result["ratio"] == pytest.approx(result["lanes_img_per_s"] / result["one_lane_img_per_s"], rel=1e-2)
    assert set(result["lone_image"]) == {"one_lane_ms", "lanes_ms"}
    # the lanes again with each batch whole, and every set-up's CPU per image
    assert result["lane_part_pixels"] == LANE_PART_PIXELS and result["whole_batches_img_per_s"] > 0
    assert all(r[f"{k}_cpu_ms_per_img"] > 0 for r in result["rows"] for k in ("one_lane", "lanes", "whole_batches"))
    written = list((tmp_path / "results").glob("*-cpu_lanes.json"))
    assert len(written) == 1 and json.loads(written[0].read_text())["benchmark"] == "cpu_lanes"
    text = write_report(tmp_path / "results", tmp_path / "performance.md", tmp_path / "img").read_text()
    assert "## CPU lanes: batches side by side" in text
    assert f"({result['ratio']}x)" in text or f"({result['ratio']:.2f}x)" in text
    assert "| lanes, whole batches img/s |" in text and f"parts of at most {LANE_PART_PIXELS} pixels" in text


def test_measure_raw_runs_one_caller_per_lane_and_counts_every_batch() -> None:
    from service.bench.service_vs_raw import measure_raw

    class Sleepy:
        lanes = 3

        def __init__(self) -> None:
            self.threads: set[str] = set()

        def infer(self, batch: np.ndarray) -> None:
            self.threads.add(threading.current_thread().name)
            time.sleep(0.01)

    backend = Sleepy()
    out = measure_raw(backend, np.zeros((4, 3, 2, 2), np.float32), 0.2, warmup=0)
    assert out["callers"] == 3 and len(backend.threads) == 3  # the three lanes ran at once
    assert out["img_per_s"] == pytest.approx(out["batches"] * 4 / out["seconds"], rel=0.05)
    # three callers sleeping 10 ms a batch: about three times one caller's 100 batches/s
    assert out["batches"] * 0.01 / out["seconds"] > 2.0
    assert measure_raw(backend, np.zeros((4, 3, 2, 2), np.float32), 0.05, warmup=0, callers=1)["callers"] == 1


def test_measure_raw_gives_this_processs_cpu_per_image() -> None:
    from service.bench.service_vs_raw import measure_raw

    class Burner:
        lanes = 1

        def infer(self, batch: np.ndarray) -> None:
            end = time.thread_time() + 0.005  # 5 ms of CPU for a batch of 4
            while time.thread_time() < end:
                pass

    out = measure_raw(Burner(), np.zeros((4, 3, 2, 2), np.float32), 0.3, warmup=0)
    assert 1.25 <= out["cpu_ms_per_img"] < 2.0


def test_registered_as_a_benchmark() -> None:
    assert BENCHMARKS["lanes"] == ("service.bench.lanes", True)
    with pytest.raises(SystemExit):
        lanes.main(["--rounds", "0"])
    assert "lanes" in STEPS
