"""``tessera bench lanes``: one session against the CPU lanes, interleaved, written and reported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from service.bench import lanes
from service.bench.command import BENCHMARKS
from service.bench.report import write_report


def test_lanes_benchmark_writes_both_set_ups_and_the_report_shows_them(
    small_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TESSERA_BENCH_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("TESSERA_INTRA_OP_THREADS", "2")
    result = lanes.run(str(small_repo), "vit_small", batch=2, rounds=2, duration_s=0.5)
    assert result["lanes"] == 2 and len(result["rows"]) == 2
    assert all(r["one_lane_img_per_s"] > 0 and r["lanes_img_per_s"] > 0 for r in result["rows"])
    assert result["ratio"] == pytest.approx(result["lanes_img_per_s"] / result["one_lane_img_per_s"], rel=1e-2)
    assert set(result["lone_image"]) == {"one_lane_ms", "lanes_ms"}
    written = list((tmp_path / "results").glob("*-cpu_lanes.json"))
    assert len(written) == 1 and json.loads(written[0].read_text())["benchmark"] == "cpu_lanes"
    text = write_report(tmp_path / "results", tmp_path / "performance.md", tmp_path / "img").read_text()
    assert "## CPU lanes: batches side by side" in text
    assert f"({result['ratio']}x)" in text or f"({result['ratio']:.2f}x)" in text


def test_throughput_counts_every_callers_images() -> None:
    class Counting:
        def __init__(self) -> None:
            self.calls = 0

        def infer(self, batch: object) -> None:
            self.calls += 1

    import numpy as np

    backend = Counting()
    rate = lanes.throughput(backend, np.zeros((4, 3, 2, 2), np.float32), 2, 0.05)
    assert backend.calls > 0 and rate > 0


def test_registered_as_a_benchmark() -> None:
    assert BENCHMARKS["lanes"] == ("service.bench.lanes", True)
    with pytest.raises(SystemExit):
        lanes.main(["--rounds", "0"])
