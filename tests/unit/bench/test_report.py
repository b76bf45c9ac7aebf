"""docs/performance.md from fabricated result files: tables, goals beside measurements, plots."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from service.bench.report import NO_GPU, evaluate_goals, load_results, main, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _host(date: str = "2026-11-20T10:00:00+00:00", gpu: str | None = None, host: str = "ci-box") -> dict[str, Any]:
    return {
        "host": host,
        "cpu": "Test CPU @ 2.0GHz",
        "cores": 2,
        "gpu": gpu,
        "python": "3.11.7",
        "versions": {"torch": "2.14.1", "onnxruntime": "1.31.1", "ray": "2.60.0"},
        "date": date,
    }


def _write(folder: Path, name: str, payload: dict[str, Any], date: str = "2026-11-20T10:00:00+00:00") -> Path:
    payload = {"benchmark": name, **payload}
    payload.setdefault("host", _host(date))
    path = folder / f"{payload['host']['host']}-{payload['host']['date'][:10]}-{name}.json"
    path.write_text(json.dumps(payload))
    return path


def _attention_rows() -> list[dict[str, Any]]:
    rows = []
    for model, family in (("vit_small", "vit"), ("swin_tiny", "swin")):
        for backend in ("onnxruntime", "torch"):
            for size in (224, 512, 2048):
                if family == "vit" and backend == "onnxruntime" and size == 2048:
                    rows.append({"model": model, "backend": backend, "size": size, "skipped": "unfused attention"})
                    continue
                latency = 10.0 * (size / 224) ** 2 * (1.05 if size == 2048 else 1.0)
                peak = int(300 * size * size * (1.1 if size == 2048 else 1.0))
                row: dict[str, Any] = {
                    "model": model,
                    "family": family,
                    "backend": backend,
                    "size": size,
                    "latency_ms": round(latency, 2),
                    "peak_delta_bytes": peak,
                    "ms_per_mpixel": round(latency / (size * size / 1e6), 3),
                    "bytes_per_pixel": round(peak / (size * size), 2),
                }
                rows.append(row)
    return rows


@pytest.fixture
def results(tmp_path: Path) -> Path:
    folder = tmp_path / "results"
    folder.mkdir()
    # an older ort_vs_torch that must be ignored in favour of the newer one
    _write(
        folder,
        "ort_vs_torch",
        {"rows": [{"model": "vit_small", "batch": 8, "speedup": 9.9}]},
        date="2026-11-01T10:00:00+00:00",
    )
    _write(
        folder,
        "ort_vs_torch",
        {
            "goal": ">= 2x at batch 8 on CPU",
            "rounds": 7,
            "rows": [
                {
                    "model": "vit_small",
                    "batch": 8,
                    "size": 224,
                    "torch_eager_ms": 400.0,
                    "onnxruntime_ms": 180.0,
                    "speedup": 2.222,
                    "torch_img_per_s": 20.0,
                    "onnxruntime_img_per_s": 44.4,
                },
                {
                    "model": "swin_tiny",
                    "batch": 8,
                    "size": 224,
                    "torch_eager_ms": 600.0,
                    "onnxruntime_ms": 400.0,
                    "speedup": 1.5,
                    "torch_img_per_s": 13.3,
                    "onnxruntime_img_per_s": 20.0,
                },
            ],
        },
    )
    rows = _attention_rows()
    summary = [
        {
            "model": m,
            "backend": b,
            "time_per_pixel_ratio_2048_vs_512": 1.05,
            "memory_per_pixel_ratio_2048_vs_512": 1.1,
        }
        for m, b in (("swin_tiny", "onnxruntime"), ("swin_tiny", "torch"), ("vit_small", "torch"))
    ]
    _write(folder, "attention_scaling", {"rows": rows, "summary": summary, "goal": "linear"})
    _write(
        folder,
        "service_vs_raw",
        {
            "model": "vit_small",
            "size": 224,
            "max_batch_size": 8,
            "concurrency": 32,
            "duration_s": 15,
            "warmup_s": 3,
            "raw": {"before": {"img_per_s": 50.0}, "after": {"img_per_s": 48.0}, "img_per_s": 49.0},
            "rows": [
                {"path": "raw backend", "transport": "raw", "img_per_s": 49.0, "ratio": 1.0},
                {
                    "path": "REST OIP binary FP32 (1 image/request)",
                    "transport": "rest_oip_fp32",
                    "img_per_s": 46.0,
                    "ratio": 0.9388,
                    "compared": True,
                    "runs": [{"img_per_s": 46.0, "p50_ms": 600.0, "p95_ms": 900.0, "mean_batch_size": 7.6}],
                },
                {
                    "path": "gRPC OIP FP32 (1 image/request)",
                    "transport": "grpc_oip_fp32",
                    "img_per_s": 42.0,
                    "ratio": 0.8571,
                    "compared": True,
                    "runs": [{"img_per_s": 42.0}],
                },
                {
                    "path": "REST /v1/predict 224² JPEG",
                    "transport": "rest_predict_jpeg",
                    "img_per_s": 40.0,
                    "ratio": 0.8163,
                    "compared": False,
                    "runs": [{"img_per_s": 40.0}],
                },
            ],
            "summary": {
                "rest_oip_fp32_ratio": 0.9388,
                "grpc_oip_fp32_ratio": 0.8571,
                "rest_predict_jpeg_ratio": 0.8163,
                "compared": "REST OIP binary FP32 and gRPC OIP FP32",
            },
        },
    )
    _write(
        folder,
        "slide_vs_raw",
        {
            "model": "vit_small",
            "slide": {"side": 20000, "mpp": 0.5},
            "batch_size": 8,
            "workers": 2,
            "tiles": 7921,
            "raw": {"tiles_per_s": 50.0},
            "pipeline": {"tiles_per_s": 47.5, "timing_s": {"read": 3.0, "inference": 150.0, "total": 170.0}},
            "rows": [
                {"path": "raw backend (pre-generated batches)", "tiles_per_s": 50.0, "ratio": 1.0},
                {"path": "run_slide, streaming phase", "tiles_per_s": 47.5, "ratio": 0.95, "compared": True},
            ],
            "summary": {"ratio": 0.95, "goal_met": True},
        },
    )
    _write(
        folder,
        "router",
        {
            "goal": "within 25%",
            "rows": [
                {"width": 224, "height": 224, "chosen": "vit_small", "predicted_ms": 30.0, "measured_ms": 27.0},
                {"width": 2048, "height": 2048, "chosen": "swin_tiny", "predicted_ms": 2000.0, "measured_ms": 1500.0},
            ],
            "summary": {"sizes": 2, "chose_cheapest": 2},
        },
    )
    (folder / "not-json.json").write_text("{")
    return folder


def test_newest_result_per_benchmark(results: Path) -> None:
    loaded = load_results(results)
    assert set(loaded) == {"ort_vs_torch", "attention_scaling", "service_vs_raw", "slide_vs_raw", "router"}
    assert loaded["ort_vs_torch"].rows[0].speedup == 2.222


def test_goals_beside_measured_values(results: Path) -> None:
    goals = {g.source: g for g in evaluate_goals(load_results(results))}
    assert goals["ort_vs_torch"].status == "not met"  # swin_tiny at 1.5x
    assert "vit_small 2.22x" in goals["ort_vs_torch"].measured
    assert goals["service_vs_raw"].status == "not met"  # gRPC at 85.7%
    assert "REST (OIP FP32) 93.9%" in goals["service_vs_raw"].measured
    assert goals["slide_vs_raw"].status == "met"
    assert goals["router"].status == "not met"  # 2048²: 33% off
    assert "1 of 2 sizes within 25%" in goals["router"].measured
    all_goals = evaluate_goals(load_results(results))
    assert [g.status for g in all_goals[3:5]] == ["met", "met"]  # linear windowed; no N² term for SDPA
    assert goals["loadtest"].status.startswith("not measured")
    assert [g.status.startswith(NO_GPU) for g in all_goals if g.source.startswith("gpu_")] == [True, True]


def test_report_writes_tables_goals_and_plots(results: Path, tmp_path: Path) -> None:
    out = tmp_path / "docs" / "performance.md"
    img = tmp_path / "docs" / "img"
    assert write_report(results, out, img) == out
    text = out.read_text()
    assert "Measured on **ci-box** (Test CPU @ 2.0GHz; GPU: none)." in text
    assert "| what | goal | measured | status |" in text
    assert "| Slide pipeline tiles/s vs the raw backend's tiles/s at the same batch size | >= 90% |" in text
    assert text.count(NO_GPU) == 2
    for section in (
        "## ONNX Runtime vs PyTorch eager",
        "## Service vs raw backend",
        "## Slide pipeline vs raw backend",
        "## Attention scaling",
        "## Router",
        "## Hosts and versions",
    ):
        assert section in text
    assert "| vit_small | 8 | 224 | 400 | 180 | 2.22x | 20 | 44.4 |" in text
    assert "| swin_tiny | swin | torch | 2048 |" in text
    assert "unfused attention" in text
    assert "torch 2.14.1, onnxruntime 1.31.1, ray 2.60.0" in text
    for name in (
        "attention_latency",
        "attention_memory",
        "throughput_ort_vs_torch",
        "throughput_service",
        "throughput_slide",
    ):
        png = img / f"{name}.png"
        assert png.read_bytes()[:8] == PNG_MAGIC
        assert f"](img/{name}.png)" in text


def test_gpu_rows_count_only_from_a_gpu_host(results: Path, tmp_path: Path) -> None:
    payload = {
        "host": _host(date="2026-11-21T10:00:00+00:00", gpu="NVIDIA H100 80GB HBM3", host="gpu-box"),
        "summary": {"img_per_s": 13100.0, "fraction_of_matmul_rate": 0.57},
    }
    _write(results, "gpu_throughput", payload)
    goals = {g.source: g for g in evaluate_goals(load_results(results))}
    assert goals["gpu_throughput"].status == "met"
    assert "NVIDIA H100" in goals["gpu_throughput"].measured
    # the slide goal has no result from that GPU host
    assert goals["gpu_slide"].status.startswith("not measured: no result for this goal from the GPU host")


def test_empty_results_and_main(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "performance.md"
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert main(["--results", str(tmp_path / "none"), "--out", str(out), "--img-dir", str(tmp_path / "img")]) == 0
    finally:
        os.chdir(cwd)
    assert "No results yet" in out.read_text()
    printed = capsys.readouterr().out
    assert "not measured: no result" in printed and f"wrote {out}" in printed


def test_a_busy_host_marks_the_ratio_suspect(results: Path, tmp_path: Path) -> None:
    from service.bench.service_vs_raw import quiet_host_notes

    assert quiet_host_notes(50.0, 49.0, [0.93, 0.91]) == []
    notes = quiet_host_notes(40.0, 52.0, [1.4])
    assert len(notes) == 2 and "drifted" in notes[0] and "quiet host" in notes[1]

    path = next(results.glob("*service_vs_raw.json"))
    payload = json.loads(path.read_text())
    payload["summary"].update(rest_oip_fp32_ratio=1.4, grpc_oip_fp32_ratio=1.3, notes=notes)
    path.write_text(json.dumps(payload))
    goal = next(g for g in evaluate_goals(load_results(results)) if g.source == "service_vs_raw")
    assert goal.status == "met (suspect: the host was not quiet, see notes)"
    out = write_report(results, tmp_path / "performance.md", tmp_path / "img")
    assert "> Note: measured above the raw backend" in out.read_text()


def _loadtest_summary(passed: bool) -> dict[str, Any]:
    """What ``loadtest.runner.run`` keeps in summary.json, for one endpoint."""
    checks = [
        {"check": "p95_ms", "endpoint": "POST /v1/predict 224px", "target": 2000.0, "value": 700.0, "ok": True},
        {
            "check": "p99_ms",
            "endpoint": "POST /v1/predict 224px",
            "target": 3000.0,
            "value": 3100.0 if not passed else 900.0,
            "ok": passed,
        },
        {"check": "p50_ms", "endpoint": "POST /v1/predict 2048px", "target": 25000.0, "value": None, "ok": None},
    ]
    return {
        "users": 8,
        "spawn_rate": 4.0,
        "duration_s": 180,
        "pace_s": 8.0,
        "offered_rps": 1.0,
        "mix": {"predict": 6, "oip": 2},
        "sizes": {"224": 8, "2048": 1},
        "model": "vit_small",
        "oip_batch": 1,
        "report_dir": "/tmp/reports/x",
        "service": {"started": True},
        "host_facts": _host(),
        "slo": {
            "passed": passed,
            "endpoints": [
                {
                    "endpoint": "POST /v1/predict 224px",
                    "requests": 40,
                    "failures": 0,
                    "shed": 1,
                    "rps": 0.22,
                    "p50_ms": 300.0,
                    "p95_ms": 700.0,
                    "p99_ms": 900.0 if passed else 3100.0,
                }
            ],
            "totals": {"requests": 41, "errors": 0, "shed": 1, "error_rate": 0.0, "shed_share": 0.0244},
            "checks": checks,
        },
    }


@pytest.mark.parametrize("passed", [True, False])
def test_a_recorded_load_test_is_a_goal_and_a_section(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, passed: bool
) -> None:
    from loadtest.runner import record_result

    folder = tmp_path / "results"
    monkeypatch.setenv("TESSERA_BENCH_RESULTS", str(folder))
    path = record_result(_loadtest_summary(passed))
    assert path == folder / "ci-box-2026-11-20-loadtest.json"
    goal = {g.source: g for g in evaluate_goals(load_results(folder))}["loadtest"]
    assert goal.status == ("met" if passed else "not met")
    assert goal.measured.startswith(f"{2 if passed else 1}/2 checks pass at 8 users, one request each every 8 s")
    assert "(1.0 req/s offered), 180 s; users predict=6,oip=2; /v1/predict sides 224=8,2048=1" in goal.measured
    out = write_report(folder, tmp_path / "performance.md", tmp_path / "img")
    text = out.read_text()
    assert "## Load test" in text
    row = "| POST /v1/predict 224px | 40 | 0 | 1 | 0.22 | 300 | 700 / 2000 | 900 / 3000 |"
    assert (row if passed else row.replace("900 / 3000 |", "3100 / 3000 **fail** |")) in text


def test_a_batched_service_run_is_reported_beside_the_single_image_one(results: Path, tmp_path: Path) -> None:
    _write(
        results,
        "service_vs_raw_oip8",
        {
            "oip_batch": 8,
            "idle_busy_share": 0.078,
            "raw": {"img_per_s": 18.0},
            "rows": [],
            "summary": {"rest_oip_fp32_ratio": 0.91, "grpc_oip_fp32_ratio": 0.88},
        },
    )
    goal = {g.source: g for g in evaluate_goals(load_results(results))}["service_vs_raw"]
    assert "with 8 images per request: REST 91.0%, gRPC 88.0%" in goal.measured
    assert goal.status.startswith("not met; not met with 8 images per request")
    text = write_report(results, tmp_path / "performance.md", tmp_path / "img").read_text()
    single, batched = text.index("## Service vs raw backend\n"), text.index("## Service vs raw backend, 8 images")
    assert single < batched < text.index("## Slide pipeline vs raw backend")
    assert "7.8% of the host's CPU time was busy" in text


def test_the_committed_results_render_without_an_empty_section(tmp_path: Path) -> None:
    """Every section of docs/performance.md shows the newest result of its benchmark."""
    committed = Path(__file__).resolve().parents[3] / "bench" / "results"
    out = write_report(committed, out=tmp_path / "performance.md", img_dir=tmp_path / "img")
    text = out.read_text()
    assert "(no rows in this result)" not in text
    sections = text.split("\n## ")[1:]
    assert len(sections) >= len(load_results(committed))
    for section in sections:
        body = section.split("\n", 1)[1].strip()
        assert "|" in body, f"section {section.splitlines()[0]!r} has no table"


@pytest.mark.slow
def test_the_gpu_benchmark_harness_runs_and_reports(tmp_path: Path) -> None:
    """The GPU benchmark on the CPU with shallow models: every part writes a result the report renders."""
    from service.bench.gpu import run

    written = run(device="cpu", tiny=True, out=tmp_path / "results")
    assert set(written) == {"gpu_parity", "gpu_throughput", "gpu_scaling", "gpu_slide"}
    parity = json.loads(written["gpu_parity"].read_text())
    assert {r["family"] for r in parity["rows"]} == {"vit", "swin", "nat"}
    assert all(r["max_rel"] < 0.1 for r in parity["rows"])  # bf16 on the CPU against fp32
    throughput = json.loads(written["gpu_throughput"].read_text())["summary"]
    assert throughput["fraction_of_matmul_rate"] > 0 and throughput["flops_per_image"] > 1e9
    scaling = json.loads(written["gpu_scaling"].read_text())
    assert {(s["model"], s["kernel"]) for s in scaling["summary"]} == {
        ("swin_tiny", "sdpa"),
        ("nat_tiny", "tiled"),
        ("nat_tiny", "flex"),
    }
    text = write_report(tmp_path / "results", out=tmp_path / "performance.md", img_dir=tmp_path / "img").read_text()
    for title in ("GPU: fp16 parity", "GPU: ViT-B/16 throughput", "GPU: time and memory per pixel", "GPU: ViT-L/16"):
        assert title in text
    goals = {g.what: g for g in evaluate_goals(load_results(tmp_path / "results"))}
    assert all(NO_GPU in g.status for w, g in goals.items() if w.startswith("On an H100"))  # a CPU is no GPU


def test_every_committed_result_parses_into_its_model() -> None:
    """The benchmarks write, and the report reads, the models of service/bench/results.py."""
    from service.bench.results import GpuResult, model_for, parse_result

    committed = sorted((Path(__file__).resolve().parents[3] / "bench" / "results").glob("*.json"))
    assert committed
    for path in committed:
        payload = json.loads(path.read_text())
        result = parse_result(payload, path.name)
        assert type(result) is model_for(payload["benchmark"]), path.name
        # a GPU result is one that ran on a GPU (the benchmark's --device cpu check writes elsewhere)
        assert not isinstance(result, GpuResult) or (result.host.gpu and result.device.startswith("cuda")), path.name
        assert result.source_file == path.name
        # nothing dropped: the model gives back exactly what the file holds
        assert result.model_dump(mode="json", exclude_unset=True) == payload, path.name


def test_a_result_the_report_cannot_read_is_not_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    from service.bench._common import write_result

    monkeypatch.setenv("TESSERA_BENCH_RESULTS", str(tmp_path))
    good = {"host": _host(), "summary": {"ratio": 0.95, "goal_met": True}, "rows": []}
    assert write_result("slide_vs_raw", good).is_file()
    with pytest.raises(ValidationError, match="predicted_latency_ms"):  # a renamed key fails where it is written
        write_result(
            "router", {"host": _host(), "rows": [{"width": 1, "height": 1, "chosen": "a", "predicted_latency_ms": 1}]}
        )
    with pytest.raises(ValueError, match="no result model"):
        write_result("mystery", {"host": _host()})
    (tmp_path / "ci-box-2026-11-20-router.json").write_text(
        json.dumps({"benchmark": "router", "host": _host(), "rows": 3})
    )
    with pytest.raises(ValueError, match=r"router\.json: not a benchmark result"):
        load_results(tmp_path)


def test_gpu_goals_name_the_runtime_and_do_not_call_an_encoder_only_slide_met(tmp_path: Path) -> None:
    """The GPU benchmark times PyTorch and, on a bare host, the tile encoder alone: the goals say
    so, and the slide goal (end to end) is not called met on the encoder's share."""
    committed = Path(__file__).resolve().parents[3] / "bench" / "results"
    for name in ("gpu_throughput", "gpu_slide"):
        newest = sorted(committed.glob(f"*-{name}.json"))[-1]
        (tmp_path / newest.name).write_text(newest.read_text())
    goals = {g.source: g for g in evaluate_goals(load_results(tmp_path))}
    assert goals["gpu_throughput"].measured.startswith("PyTorch eager: ")
    assert goals["gpu_throughput"].status in ("met", "not met with PyTorch eager; TensorRT unverified")
    slide = goals["gpu_slide"]
    assert "tile encoder only" in slide.measured and slide.status != "met"
    payload = json.loads(newest.read_text())
    payload["summary"]["scope"] = "the whole slide: reading, tiling and encoding"
    (tmp_path / newest.name).write_text(json.dumps(payload))
    goals = {g.source: g for g in evaluate_goals(load_results(tmp_path))}
    assert goals["gpu_slide"].status == ("met" if payload["summary"]["seconds"] < 15 else "not met")


@pytest.mark.slow
def test_the_gpu_benchmark_runs_the_parts_asked_for_and_reports_a_failed_part(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--parts`` in order, ``--no-flex`` named in the result, a failing part printed and the exit
    code non-zero while the other parts still run and write."""
    from service.bench import gpu

    def broken(*args: Any, **kwargs: Any) -> dict[str, Any]:
        raise RuntimeError("this part cannot run here")

    monkeypatch.setattr(gpu, "parity", broken)
    out = tmp_path / "results"
    code = gpu.main(["--device", "cpu", "--tiny", "--out", str(out), "--parts", "parity,scaling", "--no-flex"])
    assert code == 1
    written = sorted(p.name for p in out.glob("*.json"))
    assert len(written) == 1 and written[0].endswith("gpu_scaling.json")
    scaling = json.loads((out / written[0]).read_text())
    assert scaling["planned"] == ["swin_tiny:sdpa", "nat_tiny:tiled"] and scaling["complete"] is True
    text = write_report(out, out=tmp_path / "performance.md", img_dir=tmp_path / "img").read_text()
    assert "Kernels: swin_tiny:sdpa, nat_tiny:tiled." in text
    with pytest.raises(SystemExit):
        gpu.main(["--device", "cpu", "--tiny", "--parts", "nonsense"])
