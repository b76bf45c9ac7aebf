"""``docs/performance.md`` and its plots, from the newest result of each benchmark in bench/results/.

Each DESIGN.md goal is put beside the value measured for it: *met*, *not met*, or *not measured*
with the reason (no result yet; no GPU on the host the results came from). A goal that needs a
GPU counts as measured only from a result whose host facts name a GPU.

Results are the JSON files the benchmarks write (``service.bench._common.write_result``), read
into the same typed models the benchmarks validate them with (``service.bench.results``): a
``benchmark`` name, ``host`` facts (host name, CPU, GPU, versions, date), and the benchmark's own
fields. A file that is not a result of a known benchmark is an error naming the file.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from service.bench._common import results_dir
from service.bench.results import (
    AttentionScalingResult,
    BenchResult,
    EndpointRow,
    FirstRunResult,
    FusionResult,
    GpuResult,
    LanesResult,
    LatencyResult,
    LoadFacts,
    LoadtestResult,
    OrtVsTorchResult,
    PeerResult,
    PeerRow,
    RouterResult,
    ScalingRow,
    ServiceRow,
    ServiceVsRawResult,
    SlideRow,
    SlideVsRawResult,
    SloCheck,
    TransportRun,
    parse_result,
)

__all__ = ["Goal", "evaluate_goals", "load_results", "main", "make_plots", "render_markdown", "write_report"]

MET, NOT_MET = "met", "not met"
NO_GPU = "not measured: no GPU on this host"
#: Order of the benchmark sections; others follow alphabetically.
KNOWN = (
    "ort_vs_torch",
    "service_vs_raw",
    "peer",
    "cpu_lanes",
    "slide_vs_raw",
    "attention_scaling",
    "router",
    "loadtest",
)
#: An N² attention-score term makes bytes per pixel grow with the token count: 16x from 512² to 2048².
N2_MEMORY_RATIO_LIMIT = 2.0


# -- loading --------------------------------------------------------------------------------------------
def load_results(directory: str | Path) -> dict[str, BenchResult]:
    """The newest result per benchmark (by the date in its host facts, then by file time).

    Files that are not JSON objects are skipped; a JSON object that is not a valid result raises
    ``ValueError`` naming the file."""
    newest: dict[str, tuple[tuple[str, float], BenchResult]] = {}
    for path in sorted(Path(directory).glob("*.json")):
        try:
            payload = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if not isinstance(payload, dict):
            continue
        try:
            result = parse_result(payload, path.name)
        except ValueError as exc:  # pydantic's ValidationError is one
            raise ValueError(f"{path}: not a benchmark result: {exc}") from exc
        key = (result.host.date, path.stat().st_mtime)
        if result.benchmark not in newest or key > newest[result.benchmark][0]:
            newest[result.benchmark] = (key, result)
    return {name: result for name, (_, result) in newest.items()}


def _gpu_hosts(results: dict[str, BenchResult]) -> list[str]:
    return sorted({r.host.gpu for r in results.values() if r.host.gpu})


# -- goals ----------------------------------------------------------------------------------------------
@dataclass
class Goal:
    """One line of DESIGN.md's performance table, with what was measured for it."""

    what: str
    goal: str
    measured: str
    status: str
    source: str = ""


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _given(value: Any) -> str:
    """A value as the result file has it, ``-`` when it is missing."""
    return "-" if value is None else str(value)


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return None if math.isnan(value) else float(value)


def _goal_ort(results: dict[str, BenchResult]) -> Goal:
    what, goal = "ONNX Runtime (optimised) vs PyTorch eager, fp32, CPU, ViT-S/16 and Swin-T, batch 8", ">= 2x"
    result = results.get("ort_vs_torch")
    rows = [r for r in result.rows if r.speedup is not None] if isinstance(result, OrtVsTorchResult) else []
    if not rows:
        return Goal(what, goal, "-", "not measured: no result", "ort_vs_torch")
    measured = ", ".join(f"{r.model} {r.speedup:.2f}x (batch {r.batch})" for r in rows)
    ok = all((r.speedup or 0) >= 2.0 for r in rows)
    return Goal(what, goal, measured, MET if ok else NOT_MET, "ort_vs_torch")


def _goal_service(results: dict[str, BenchResult]) -> Goal:
    what = "Service throughput vs the raw backend, at saturation, REST and gRPC"
    goal = ">= 90%"
    result = results.get("service_vs_raw")
    if not isinstance(result, ServiceVsRawResult):
        return Goal(what, goal, "-", "not measured: no result", "service_vs_raw")
    summary = result.summary
    rest, grpc, jpeg = summary.rest_oip_fp32_ratio, summary.grpc_oip_fp32_ratio, summary.rest_predict_jpeg_ratio
    measured = f"REST (OIP FP32) {_pct(rest)}, gRPC (OIP FP32) {_pct(grpc)}"
    if jpeg is not None:
        measured += f"; REST /v1/predict JPEG {_pct(jpeg)} (includes decoding)"
    if rest is None or grpc is None:
        status = (
            NOT_MET if (rest is not None and rest < 0.9) or (grpc is not None and grpc < 0.9) else "partly measured"
        )
        return Goal(what, goal, measured, status, "service_vs_raw")
    status = MET if rest >= 0.9 and grpc >= 0.9 else NOT_MET
    for name, batched in sorted(results.items()):
        if name.startswith("service_vs_raw_oip") and isinstance(batched, ServiceVsRawResult):
            b_rest, b_grpc = batched.summary.rest_oip_fp32_ratio, batched.summary.grpc_oip_fp32_ratio
            measured += f"; with {batched.oip_batch} images per request: REST {_pct(b_rest)}, gRPC {_pct(b_grpc)}"
            if b_rest is not None and b_grpc is not None:
                verdict = MET if min(b_rest, b_grpc) >= 0.9 else NOT_MET
                status += f"; {verdict} with {batched.oip_batch} images per request"
    return Goal(what, goal, measured, status + _suspect(summary.notes), "service_vs_raw")


def _goal_peer(results: dict[str, BenchResult]) -> Goal:
    """Judged on the newest run that measured plain Tessera (the default ``tessera serve``) beside
    Triton: ``peer``, or a lever run (``peer_<variants>``) with Triton in it; the variants of that
    run are named with their own ratios to Triton, since a user can switch them on."""
    what = "Service vs Triton on the same ONNX file and host, one image per request, gRPC and REST binary"
    goal = ">= 1.0x Triton's img/s; 1-client p50 within 3 ms of Triton's; no-op ceiling >= Triton's"
    runs = [
        (name, r)
        for name, r in results.items()
        if isinstance(r, PeerResult) and (name == "peer" or name.startswith("peer_")) and "triton" in r.servers
    ]
    if not runs:
        return Goal(what, goal, "-", "not measured: no result (`tessera bench peer`, extra `peer`)", "peer")
    name, result = max(runs, key=lambda run: (run[1].host.date or "", run[0] == "peer"))
    parts = []
    for protocol, s in result.summary.protocols():
        part = f"{'gRPC' if protocol == 'grpc' else 'REST'}: "
        part += f"{s.throughput_ratio:.2f}x img/s" if s.throughput_ratio is not None else "img/s -"
        if s.p50_delta_ms is not None:
            part += f", p50 {s.p50_delta_ms:+.1f} ms"
        if s.noop_ratio is not None:
            part += f", no-op {s.noop_ratio:.2f}x"
        parts.append(part)
    by: dict[tuple[str, str, str, int | None], float | None] = {
        (r.server, r.role, r.protocol, r.clients): r.img_per_s for r in result.rows
    }
    for server in [s for s in result.servers if s.startswith("tessera:")]:
        ratios = []
        for protocol in ("grpc", "rest"):
            mine = by.get((server, "model", protocol, result.clients))
            triton = by.get(("triton", "model", protocol, result.clients))
            if mine is not None and triton:
                ratios.append(f"{'gRPC' if protocol == 'grpc' else 'REST'} {mine / triton:.2f}x")
        if ratios:
            parts.append(f"{server}: {', '.join(ratios)} img/s")
    status = (MET if result.summary.goal_met else NOT_MET) + _suspect(result.summary.notes)
    measured = f"`{result.source_file or name}`, plain `tessera serve`: " + "; ".join(parts) if parts else "-"
    return Goal(what, goal, measured, status, "peer")


def _goal_slide(results: dict[str, BenchResult]) -> Goal:
    what, goal = "Slide pipeline tiles/s vs the raw backend's tiles/s at the same batch size", ">= 90%"
    result = results.get("slide_vs_raw")
    ratio = result.summary.ratio if isinstance(result, SlideVsRawResult) else None
    if not isinstance(result, SlideVsRawResult) or ratio is None:
        return Goal(what, goal, "-", "not measured: no result", "slide_vs_raw")
    measured = f"{_pct(ratio)} ({_given(result.pipeline.tiles_per_s)} vs {_given(result.raw.tiles_per_s)} tiles/s)"
    status = (MET if ratio >= 0.9 else NOT_MET) + _suspect(result.summary.notes)
    return Goal(what, goal, measured, status, "slide_vs_raw")


def _suspect(notes: list[str]) -> str:
    return " (suspect: the host was not quiet, see notes)" if notes else ""


def _notes(notes: list[str]) -> list[str]:
    return ["", *(f"> Note: {n}." for n in notes)] if notes else []


def _families(result: AttentionScalingResult) -> dict[str, str]:
    return {r.model: r.family for r in result.rows if r.family}


def _goal_linear(results: dict[str, BenchResult]) -> Goal:
    what = "Windowed and neighbourhood backbones, 512² to 2048²"
    goal = "time and peak memory per pixel within 1.2x of the 512² value"
    result = results.get("attention_scaling")
    if not isinstance(result, AttentionScalingResult):
        return Goal(what, goal, "-", "not measured: no result", "attention_scaling")
    families = _families(result)
    rows = [s for s in result.summary if families.get(s.model) in ("swin", "nat")]
    if not rows:
        return Goal(what, goal, "-", "not measured: no windowed/NA point at both 512² and 2048²", "attention_scaling")
    parts = [
        f"{s.model}/{s.backend}: time {s.time_per_pixel_ratio_2048_vs_512:.2f}x, "
        f"memory {s.memory_per_pixel_ratio_2048_vs_512:.2f}x"
        for s in rows
    ]
    ok = all(s.time_per_pixel_ratio_2048_vs_512 <= 1.2 and s.memory_per_pixel_ratio_2048_vs_512 <= 1.2 for s in rows)
    return Goal(what, goal, "; ".join(parts), MET if ok else NOT_MET, "attention_scaling")


def _fused_points(results: dict[str, BenchResult]) -> list[tuple[str, float]]:
    """(runtime, memory per pixel at 2048² / at 512²) for the global ViT with fused attention."""
    points = []
    scaling = results.get("attention_scaling")
    if isinstance(scaling, AttentionScalingResult):
        families = _families(scaling)
        for s in scaling.summary:
            if families.get(s.model) == "vit":
                label = "PyTorch SDPA" if s.backend == "torch" else s.backend
                points.append((f"{s.model} ({label})", s.memory_per_pixel_ratio_2048_vs_512))
    fusion = results.get("fusion")
    if isinstance(fusion, FusionResult):
        keyed = {r.size: r for r in fusion.rows if r.opset == 23 and r.peak_delta_bytes is not None}
        if 512 in keyed and 2048 in keyed:
            small, large = keyed[512], keyed[2048]
            ratio = ((large.peak_delta_bytes or 0) / 2048**2) / max((small.peak_delta_bytes or 0) / 512**2, 1e-9)
            points.append((f"{large.model} (ONNX Runtime CPU, opset-23 Attention)", ratio))
    return points


def _goal_fused(results: dict[str, BenchResult]) -> Goal:
    what = "Global ViT with fused attention at 2048²"
    goal = "peak memory with no N² term (no materialised score matrix)"
    points = _fused_points(results)
    if not points:
        return Goal(what, goal, "-", "not measured: no ViT point at 512² and 2048²", "attention_scaling")
    parts = [f"{label}: memory per pixel {m:.2f}x the 512² value" for label, m in points]
    measured = "; ".join(parts) + f" (an N² term makes it ~16x; met below {N2_MEMORY_RATIO_LIMIT:g}x)"
    met = [m <= N2_MEMORY_RATIO_LIMIT for _, m in points]
    status = MET if all(met) else (f"met on {sum(met)} of {len(met)} runtimes" if any(met) else NOT_MET)
    return Goal(what, goal, measured, status, "attention_scaling")


def router_errors(result: RouterResult) -> list[float]:
    """Relative errors |predicted - measured| / measured of the router result's rows."""
    return [
        abs(r.predicted_ms - r.measured_ms) / r.measured_ms
        for r in result.rows
        if r.predicted_ms is not None and r.measured_ms
    ]


def _goal_router(results: dict[str, BenchResult]) -> Goal:
    what, goal = "Router cost model", "predicted latency within 25% of measured on the calibrated host"
    result = results.get("router")
    if not isinstance(result, RouterResult):
        return Goal(what, goal, "-", "not measured: no result", "router")
    errors = router_errors(result)
    if not errors:
        return Goal(what, goal, "see the router table", "not evaluated: no predicted/measured pairs", "router")
    worst = max(errors)
    within = sum(e <= 0.25 for e in errors)
    measured = f"worst {_pct(worst)} off, {within} of {len(errors)} sizes within 25%"
    if result.summary.chose_cheapest is not None:
        measured += f"; chose the cheapest measured fitting model for {result.summary.chose_cheapest} of {len(errors)}"
    return Goal(what, goal, measured, MET if worst <= 0.25 else NOT_MET, "router")


def _goal_gpu(
    results: dict[str, BenchResult],
    what: str,
    goal: str,
    names: tuple[str, ...],
    judge: Callable[[GpuResult], tuple[str, bool | str]],
) -> Goal:
    """``judge`` gives what was measured and whether it meets the goal, or a status of its own
    where the measurement covers only part of what the goal names."""
    gpus = _gpu_hosts(results)
    for name in names:
        result = results.get(name)
        if isinstance(result, GpuResult) and result.host.gpu:
            measured, ok = judge(result)
            status = ok if isinstance(ok, str) else MET if ok else NOT_MET
            return Goal(what, goal, f"{measured} on {result.host.gpu}", status, name)
    if not gpus:
        return Goal(what, goal, "-", NO_GPU + " (TensorRT and onnxruntime-gpu unverified)", names[0])
    return Goal(
        what, goal, "-", f"not measured: no result for this goal from the GPU host ({', '.join(gpus)})", names[0]
    )


def _gpu_summary(result: GpuResult) -> dict[str, Any]:
    return result.summary if isinstance(result.summary, dict) else {}


def _judge_vit_b(result: GpuResult) -> tuple[str, bool | str]:
    summary = _gpu_summary(result)
    fraction = _num(summary.get("fraction_of_matmul_rate"))
    ips = _num(summary.get("img_per_s"))
    # service/bench/gpu.py runs PyTorch (the one GPU runtime a bare host has); say so, since the
    # goal names the fastest backend and TensorRT may be faster
    measured = f"PyTorch eager: {ips:.0f} img/s" if ips is not None else "-"
    if fraction is not None:
        measured += f", {_pct(fraction)} of the bf16 matmul rate"
    met = fraction >= 0.55 if fraction is not None else ips is not None and ips >= 12500
    return measured, MET if met else "not met with PyTorch eager; TensorRT unverified"


def _judge_gpu_slide(result: GpuResult) -> tuple[str, bool | str]:
    """The bare GPU host runs the tile encoder alone (no slide reader there): that part can meet
    the goal's budget, but the goal is end to end, so such a result is not called met."""
    summary = _gpu_summary(result)
    seconds = _num(summary.get("seconds"))
    tiles = summary.get("tiles", "?")
    measured = f"{seconds:.1f} s for {tiles} tiles" if seconds is not None else "-"
    fits = seconds is not None and seconds < 15
    if "encoder only" in str(summary.get("scope", "")):
        status = "encoder within budget; end to end not measured" if fits else NOT_MET
        return f"{measured} (tile encoder only)", status
    return measured, fits


def _order(result: PeerResult) -> str:
    """How the rounds ordered the servers, when not all alike."""
    return " (even rounds in the reverse order)" if result.round_order == "alternating" else ""


def describe_load(load: LoadFacts) -> str:
    """``8 users, one request each every 8 s (1 req/s offered), 180 s, mix ..., sizes ...``."""
    pace = load.pace_s
    rate = f"one request each every {pace:g} s ({load.offered_rps} req/s offered)" if pace else "closed loop"
    kinds = ("predict", "oip", "grpc", "slide")  # the Locust file's user order (results store keys sorted)
    mix = ",".join(f"{k}={load.mix[k]}" for k in kinds if k in load.mix)
    sides = sorted(load.sizes.items(), key=lambda kv: int(kv[0]) if str(kv[0]).isdigit() else 0)
    sizes = ",".join(f"{k}={v}" for k, v in sides)
    duration = f"{load.duration_s:g}" if load.duration_s is not None else None
    return f"{load.users} users, {rate}, {duration} s; users {mix}; /v1/predict sides {sizes}"


def _goal_loadtest(results: dict[str, BenchResult]) -> Goal:
    what, goal = "Load test (`make loadtest`): every objective in `loadtest/slo.yaml`", "all pass at a stated load"
    result = results.get("loadtest")
    if not isinstance(result, LoadtestResult):
        return Goal(what, goal, "-", "not measured: no result (`tessera loadtest --start --record`)", "loadtest")
    checks, failed = result.summary.checks or 0, result.summary.failed or 0
    measured = f"{checks - failed}/{checks} checks pass at {describe_load(result.load)}"
    return Goal(what, goal, measured, MET if result.summary.passed else NOT_MET, "loadtest")


def _goal_first_run(results: dict[str, BenchResult]) -> Goal:
    what = "A newcomer's first `make serve` from a clean clone, install included"
    goal = "ready line within 180 s; every model later"
    result = results.get("first_run")
    if not isinstance(result, FirstRunResult) or result.ready_s is None:
        return Goal(what, goal, "-", "not measured: no result (`python bench/first_run.py`)", "first_run")
    measured = f"install {_given(result.install_s)} s, ready line {result.ready_s} s"
    measured += f", all models {_given(result.all_settled_s)} s"
    return Goal(what, goal, measured, (MET if result.ready_s <= 180 else NOT_MET) + _suspect(result.notes), "first_run")


def _section_first_run(result: FirstRunResult) -> list[str]:
    out = [
        f"`{result.command}` at commit `{result.commit[:10]}`, seconds from the clone: the install's stamp at "
        f"{_given(result.install_s)} s, the ready line at {_given(result.ready_s)} s, every model settled at "
        f"{_given(result.all_settled_s)} s.",
        "",
    ]
    out += _table(
        ["step", "seconds from the clone"],
        [
            ["install done", _given(result.install_s)],
            ["the ready line", _given(result.ready_s)],
            ["every model settled", _given(result.all_settled_s)],
        ],
    )
    out += ["", "What the terminal showed after the install (`tessera serve --build`):", "", "```"]
    after = [t for t in result.transcript if result.install_s is None or t.t_s >= result.install_s]
    out += [f"{t.t_s:8.1f}  {t.line}" for t in after if t.line.strip()][-60:]
    return [*out, "```", *_notes(result.notes)]


def evaluate_goals(results: dict[str, BenchResult]) -> list[Goal]:
    """DESIGN.md's performance table, in its order, each goal with its measured value and status."""
    return [
        _goal_ort(results),
        _goal_service(results),
        _goal_slide(results),
        _goal_linear(results),
        _goal_fused(results),
        _goal_router(results),
        _goal_loadtest(results),
        _goal_peer(results),
        _goal_first_run(results),
        _goal_gpu(
            results,
            "On an H100: ViT-B/16 fp16 at batch 256 through the fastest backend",
            ">= 55% of the measured bf16 matmul rate in model FLOPs (~12,500 img/s)",
            ("gpu_throughput",),
            _judge_vit_b,
        ),
        _goal_gpu(
            results,
            "On an H100: one 15,000-tile slide with a ViT-L/16 tile encoder",
            "under 15 s end to end",
            ("gpu_slide",),
            _judge_gpu_slide,
        ),
    ]


# -- plots ----------------------------------------------------------------------------------------------
def make_plots(results: dict[str, BenchResult], img_dir: str | Path) -> dict[str, Path]:
    """PNG plots of the results into ``img_dir``; returns {plot name: path}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img_dir = Path(img_dir)
    img_dir.mkdir(parents=True, exist_ok=True)
    made: dict[str, Path] = {}

    def save(fig: Any, name: str) -> None:
        path = img_dir / f"{name}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110, metadata={"Software": None})
        plt.close(fig)
        made[name] = path

    scaling = results.get("attention_scaling")
    points = [
        r for r in (scaling.rows if isinstance(scaling, AttentionScalingResult) else []) if r.latency_ms is not None
    ]
    if points:
        series: dict[tuple[str, str], list[ScalingRow]] = {}
        for row in points:
            series.setdefault((row.model, row.backend), []).append(row)
        for name, key, label, scale in (
            ("attention_latency", "latency_ms", "latency per image (ms)", 1.0),
            ("attention_memory", "peak_delta_bytes", "peak memory of the forward (MiB)", 1 / 2**20),
        ):
            fig, ax = plt.subplots(figsize=(7, 4.5))
            for (model, backend), rows in sorted(series.items()):
                rows = sorted(rows, key=lambda r: r.size)
                ax.plot(
                    [r.size for r in rows],
                    [max(float(getattr(r, key) or 0) * scale, 1e-3) for r in rows],
                    marker="o",
                    label=f"{model} / {backend}",
                )
            ax.set_xscale("log", base=2)
            sides = sorted({r.size for r in points})
            ax.set_xticks(sides, [str(s) for s in sides])
            ax.minorticks_off()
            ax.set_yscale("log")
            ax.set_xlabel("image side (px)")
            ax.set_ylabel(label)
            ax.set_title(f"{label.split(' (')[0].capitalize()} vs image size, batch 1")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
            save(fig, name)

    ort = results.get("ort_vs_torch")
    if isinstance(ort, OrtVsTorchResult) and ort.rows:
        bars = ort.rows
        fig, ax = plt.subplots(figsize=(7, 4))
        xs = range(len(bars))
        width = 0.38
        ax.bar([x - width / 2 for x in xs], [r.torch_img_per_s or 0 for r in bars], width, label="PyTorch eager")
        ax.bar([x + width / 2 for x in xs], [r.onnxruntime_img_per_s or 0 for r in bars], width, label="ONNX Runtime")
        ax.set_xticks(list(xs), [f"{r.model}\n{r.speedup or 0:.2f}x" for r in bars])
        ax.set_ylabel("images/s")
        ax.set_title(f"ONNX Runtime vs PyTorch eager, fp32, batch {bars[0].batch or '?'}")
        ax.legend()
        save(fig, "throughput_ort_vs_torch")

    for bench, unit, title in (
        ("service_vs_raw", "img_per_s", "Service vs raw backend at saturation"),
        ("slide_vs_raw", "tiles_per_s", "Slide pipeline vs raw backend, same batch size"),
    ):
        result = results.get(bench)
        found: list[ServiceRow] | list[SlideRow] = (
            result.rows if isinstance(result, ServiceVsRawResult | SlideVsRawResult) else []
        )
        bars_of = [r for r in found if getattr(r, unit) is not None]
        if not bars_of:
            continue
        fig, ax = plt.subplots(figsize=(8, 0.6 * len(bars_of) + 1.6))
        labels = [r.path for r in bars_of]
        values = [float(getattr(r, unit)) for r in bars_of]
        colours = ["#888888" if i == 0 else ("#2a7ab9" if r.compared else "#9cc3e4") for i, r in enumerate(bars_of)]
        ax.barh(labels, values, color=colours)
        raw = values[0]
        ax.axvline(0.9 * raw, color="#c0392b", linestyle="--", linewidth=1, label="goal: 90% of raw")
        for y, (value, bar) in enumerate(zip(values, bars_of, strict=True)):
            ratio = bar.ratio
            ax.text(value, y, f" {value:.1f}" + (f" ({_pct(ratio)})" if ratio is not None and y else ""), va="center")
        ax.invert_yaxis()
        ax.set_xlabel(unit.replace("_per_s", "/s").replace("img", "images"))
        ax.set_title(title)
        ax.set_xlim(0, max(values) * 1.3)
        ax.legend(loc="lower right", fontsize=8)
        save(fig, f"throughput_{bench.replace('_vs_raw', '')}")
    return made


# -- markdown -------------------------------------------------------------------------------------------
def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    if isinstance(value, dict | list):
        text = json.dumps(value, separators=(",", ":"))
        return text if len(text) <= 60 else text[:57] + "..."
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(headers: list[str], rows: Iterable[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join("---" for _ in headers) + " |"]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return lines


def _mib(value: Any) -> float | None:
    number = _num(value)
    return None if number is None else round(number / 2**20, 1)


def _section_lanes(result: LanesResult) -> list[str]:
    lone = result.lone_image
    out = [
        f"{result.model} at {_given(result.size)}², batch {_given(result.batch)}, ONNX Runtime on the CPU "
        f"(intra-op threads {_given(result.intra_op_threads)}, 0 = all cores): one session with every thread, "
        f"one batch at a time, against the backend as a replica loads it with {_given(result.lanes)} lanes, "
        f"that many batches at a time; {len(result.rows)} interleaved rounds of {_given(result.duration_s)} s, "
        f"medians. Goal: {result.goal}.",
        "",
    ]
    whole = result.whole_batches_img_per_s is not None
    headers = ["round", "one lane img/s", "lanes img/s"]
    if whole:
        headers += ["lanes, whole batches img/s", "one lane CPU ms/img", "lanes CPU ms/img", "whole batches CPU ms/img"]
    cpu = ["whole_batches_img_per_s", "one_lane_cpu_ms_per_img", "lanes_cpu_ms_per_img", "whole_batches_cpu_ms_per_img"]
    out += _table(
        headers,
        [
            [r.round, r.one_lane_img_per_s, r.lanes_img_per_s, *([getattr(r, k) for k in cpu] if whole else [])]
            for r in result.rows
        ],
    )
    out += [
        "",
        f"Median: {_cell(result.lanes_img_per_s)} against {_cell(result.one_lane_img_per_s)} img/s "
        f"({_cell(result.ratio)}x). One image alone: {_cell(lone.get('lanes_ms'))} ms with lanes, "
        f"{_cell(lone.get('one_lane_ms'))} ms with one session (a batch alone runs on the session with every thread).",
    ]
    if whole:
        out[-1] += (
            f" The lanes run each batch in parts of at most {_cell(result.lane_part_pixels)} pixels; running "
            f"them whole gave {_cell(result.whole_batches_img_per_s)} img/s (CPU ms/img: this process's CPU time "
            "per image)."
        )
    return out


def _section_ort(result: OrtVsTorchResult) -> list[str]:
    out = [f"Interleaved rounds ({result.rounds or '?'}), median of each; goal: {result.goal}.", ""]
    out += _table(
        ["model", "batch", "size", "PyTorch eager ms", "ONNX Runtime ms", "speed-up", "PyTorch img/s", "ORT img/s"],
        [
            [
                r.model,
                r.batch,
                r.size,
                r.torch_eager_ms,
                r.onnxruntime_ms,
                f"{r.speedup:.2f}x" if r.speedup else "-",
                r.torch_img_per_s,
                r.onnxruntime_img_per_s,
            ]
            for r in result.rows
        ],
    )
    return out


def _section_service(result: ServiceVsRawResult) -> list[str]:
    raw = result.raw
    out = [
        f"Model {result.model} at {result.size}², raw batch {result.max_batch_size}, "
        f"{result.oip_batch} image(s) per OIP request, "
        f"{result.concurrency} closed-loop clients per transport, {result.duration_s} s measured after "
        f"{result.warmup_s} s of warm-up. Raw backend before the service started: "
        f"{_given(raw.before.img_per_s)} img/s, after it stopped: "
        f"{_given(raw.after.img_per_s)} img/s (their mean is 100%). Compared with the goal: "
        f"{result.summary.compared or 'REST and gRPC OIP FP32'}; `/v1/predict` with JPEGs also "
        "decodes and preprocesses, which the raw backend does not.",
        "",
    ]
    if result.idle_busy_share is not None:
        out[0] += (
            f" With the service started and idle, {_pct(result.idle_busy_share)} of the host's CPU time was busy "
            "(Ray's daemons, proxy and controller): on a small host that share is out of reach of the service "
            "before any request."
        )
    if result.front_end:
        out[0] += f" The service ran with front end `{result.front_end}` and topology `{result.topology}`."
    table = []
    for r in result.rows:
        run = r.runs[0] if r.runs else TransportRun()
        table.append(
            [
                r.path,
                r.img_per_s,
                _pct(r.ratio),
                "yes" if r.compared else ("reference" if r.transport == "raw" else "no"),
                run.p50_ms,
                run.p95_ms,
                run.mean_batch_size,
                run.shed,
                run.errors,
            ]
        )
    out += _table(["path", "img/s", "of raw", "compared", "p50 ms", "p95 ms", "mean batch", "shed", "errors"], table)
    return out + _notes(result.summary.notes)


def _section_peer(result: PeerResult) -> list[str]:
    raw = result.raw
    versions = ", ".join(f"{k} {v}" for k, v in result.versions.items())
    backend = result.backend
    runtime = f"{backend.get('backend', '?')} on {backend.get('device', '?')}, {backend.get('precision', '?')}"
    with_triton = "triton" in result.servers
    if not with_triton:
        versions += "; Triton was not in this run, which compares variants of Tessera"
    out = [
        f"Tessera (`tessera serve`) and Triton ({versions}; the model's inference function runs the same "
        f"ONNX Runtime backend Tessera loads: {runtime}, intra-op threads "
        f"{_given(result.intra_op_threads)} (0 = all cores), spinning {'on' if result.ort_spin else 'off'}"
        + (f", Tessera's CPU lanes {result.cpu_lanes}" if result.cpu_lanes is not None else "")
        + (
            "; "
            + ", ".join(
                f"`{k}` runs {n} model instances sharing the backend" for k, n in result.triton_instances.items()
            )
            if result.triton_instances
            else ""
        )
        + ") "
        f"serve model {result.model} at {_given(result.size)}², dynamic batching up to "
        f"{_given(result.max_batch_size)} with {_cell(1e3 * (result.batch_wait_timeout_s or 0.0))} ms wait "
        "on both; one FP32 image per request from `tritonclient` (gRPC, and REST with binary tensors) in a "
        f"separate process, closed loop, {_given(result.clients)} clients and 1 client, "
        f"{_given(result.duration_s)} s per point after {_given(result.warmup_s)} s of warm-up, the servers one "
        f"after the other ({', '.join(result.servers)})"
        + (
            f", {result.rounds} rounds in turn{_order(result)}, each point the median of its rounds (each round's "
            "img/s in the note)"
            if result.rounds > 1
            else ""
        )
        + f". The no-op model ({result.noop_model or '-'}, one "
        "16-wide block, served the same way on both) measures the front end's ceiling in requests/s. Raw ONNX "
        f"Runtime at batch {_given(result.max_batch_size)}, no server: {_given(raw.img_per_s)} img/s (before "
        f"{_given(raw.before.img_per_s)}, after {_given(raw.after.img_per_s)}).",
        "",
    ]
    with_cpu = any(r.cpu_ms_per_img is not None for r in result.rows)
    cpu_headers = ["server CPU ms/img", "server cores", "host busy"] if with_cpu else []

    def row(r: PeerRow) -> list[object]:
        cells: list[object] = [r.server, r.model, r.protocol, r.clients, r.img_per_s, r.p50_ms, r.p95_ms]
        if with_cpu:
            busy = f"{100 * r.host_busy:.0f}%" if r.host_busy is not None else None
            cells += [r.cpu_ms_per_img, r.server_cpu_cores, busy]
        return [*cells, r.errors, _peer_note(r)]

    out += _table(
        ["server", "model", "protocol", "clients", "img/s", "p50 ms", "p95 ms", *cpu_headers, "errors", "note"],
        [row(r) for r in result.rows],
    )
    if with_cpu:
        out += [
            "",
            "Server CPU ms/img: the CPU time all of the server's processes spent in the window (Tessera: "
            "`tessera serve`, Ray's daemons and workers; Triton: the pytriton process, `tritonserver` and its "
            "stubs) per image answered, per request on the no-op model; server cores: that CPU over the "
            "window's length; host busy: the share of all the host's core time that was not idle, the load "
            "generator's included. With every core busy, CPU per image is what decides img/s.",
        ]
    if not with_triton:
        return out + _peer_variants(result) + _notes([*result.summary.remarks, *result.summary.notes])
    table = [
        [
            protocol,
            s.tessera_img_per_s,
            s.triton_img_per_s,
            s.throughput_ratio,
            s.tessera_p50_1_client_ms,
            s.triton_p50_1_client_ms,
            s.p50_delta_ms,
            s.tessera_noop_req_per_s,
            s.triton_noop_req_per_s,
            s.noop_ratio,
            *([s.tessera_cpu_ms_per_img, s.triton_cpu_ms_per_img, s.cpu_ratio] if with_cpu else []),
        ]
        for protocol, s in result.summary.protocols()
    ]
    if table:
        out += ["", f"Tessera against Triton ({_given(result.clients)} clients for img/s and the no-op ceiling):", ""]
        out += _table(
            [
                "protocol",
                "Tessera img/s",
                "Triton img/s",
                "ratio",
                "Tessera p50 1 client",
                "Triton p50 1 client",
                "p50 delta ms",
                "Tessera no-op req/s",
                "Triton no-op req/s",
                "no-op ratio",
                *(["Tessera CPU ms/img", "Triton CPU ms/img", "CPU ratio"] if with_cpu else []),
            ],
            table,
        )
    return out + _peer_variants(result) + _notes([*result.summary.remarks, *result.summary.notes])


def _peer_note(row: PeerRow) -> str:
    note = row.skipped or row.first_error or ""
    if row.img_per_s_rounds and len(row.img_per_s_rounds) > 1:
        each = ", ".join(_cell(v) for v in row.img_per_s_rounds)
        note = f"rounds: {each} img/s" + (f"; {note}" if note else "")
    return note


def _peer_variants(result: PeerResult) -> list[str]:
    """Each Tessera variant against plain Tessera of the same run (a lever's before/after), and
    against Triton when Triton ran too."""
    clients = result.clients
    by: dict[tuple[str, str, str, int | None], PeerRow] = {
        (r.server, r.role, r.protocol, r.clients): r for r in result.rows
    }
    peers = ["tessera", *[s for s in result.servers if s == "triton" or s.startswith("triton:")]]

    def value(server: str, role: str, protocol: str, n: int | None, key: str) -> float | None:
        row = by.get((server, role, protocol, n))
        return None if row is None else _num(getattr(row, key))

    def ratio(a: float | None, b: float | None) -> str:
        return f"{a / b:.2f}x" if a is not None and b else "-"

    def delta(a: float | None, b: float | None) -> str:
        return "-" if a is None or b is None else f"{a - b:+.1f}"

    table = []
    for server in [s for s in result.servers if s.startswith("tessera:")]:
        for protocol in ("grpc", "rest"):
            row: list[object] = [server, protocol]
            for role, n, key, compare in (
                ("model", clients, "img_per_s", ratio),
                ("model", 1, "p50_ms", delta),
                ("noop", clients, "img_per_s", ratio),
            ):
                mine = value(server, role, protocol, n, key)
                row += [compare(mine, value(peer, role, protocol, n, key)) for peer in peers]
            table.append(row)
    if not table:
        return []
    against = " and against Triton" if len(peers) > 1 else ""
    headers = ["variant", "protocol"]
    for what in ("img/s", "p50 1 client, ms", "no-op req/s"):
        headers += [f"{what} vs {peer.capitalize()}" for peer in peers]
    return [
        "",
        f"Each variant against plain Tessera{against} in the same run ({_given(clients)} clients for img/s "
        "and the no-op ceiling):",
        "",
        *_table(headers, table),
    ]


def _section_slide(result: SlideVsRawResult) -> list[str]:
    slide, pipeline = result.slide, result.pipeline
    out = [
        f"Synthetic slide {slide.side}² px at {slide.mpp} µm/px, tissue everywhere, "
        f"{result.tiles} tiles of {result.model}, batch {result.batch_size}, "
        f"{result.workers} reader threads; peak RSS {_cell(_mib(pipeline.peak_rss_bytes))} MiB.",
        "",
    ]
    out += _table(
        ["path", "tiles/s", "of raw", "compared"],
        [
            [r.path, r.tiles_per_s, _pct(r.ratio), "reference" if r.compared is None else r.compared]
            for r in result.rows
        ],
    )
    if pipeline.timing_s:
        out += ["", "Pipeline stages (seconds; reader stages summed over threads):", ""]
        out += _table(list(pipeline.timing_s), [list(pipeline.timing_s.values())])
    return out + _notes(result.summary.notes)


def _section_attention(result: AttentionScalingResult) -> list[str]:
    out = [f"Batch 1, one subprocess per point (peak memory is that point's own). Goal: {result.goal}.", ""]
    out += _table(
        ["model", "family", "backend", "size", "latency ms", "ms/Mpx", "peak MiB", "bytes/px", "note"],
        [
            [
                r.model,
                r.family,
                r.backend,
                r.size,
                r.latency_ms,
                r.ms_per_mpixel,
                _mib(r.peak_delta_bytes),
                r.bytes_per_pixel,
                r.skipped or "",
            ]
            for r in result.rows
        ],
    )
    if result.summary:
        out += ["", "Per-pixel cost at 2048² relative to 512²:", ""]
        out += _table(
            ["model", "backend", "time per pixel", "memory per pixel"],
            [
                [s.model, s.backend, s.time_per_pixel_ratio_2048_vs_512, s.memory_per_pixel_ratio_2048_vs_512]
                for s in result.summary
            ],
        )
    return out


def _as_dict(value: Any) -> Any:
    """A row or summary as the benchmark wrote it: the keys it set, sorted as the result file has them."""
    return dict(sorted(value.model_dump(exclude_unset=True).items())) if isinstance(value, BaseModel) else value


def _section_generic(result: BenchResult) -> list[str]:
    out: list[str] = []
    if result.goal:
        out += [f"Goal: {result.goal}.", ""]
    rows = [_as_dict(r) for r in getattr(result, "rows", [])]
    rows = [r for r in rows if isinstance(r, dict)]
    if rows:
        columns: list[str] = []
        for row in rows:
            for key, value in row.items():
                if key not in columns and not isinstance(value, dict | list):
                    columns.append(key)
        columns = columns[:10]
        out += _table(columns, [[row.get(c) for c in columns] for row in rows])
    summary = _as_dict(getattr(result, "summary", None))
    if isinstance(summary, dict) and summary:
        out += ["", *_table(["summary", "value"], [[k, v] for k, v in summary.items()])]
    if not out:
        out = ["(no rows in this result)"]
    return out


def _section_latency(result: LatencyResult) -> list[str]:
    """Single-request latency: one row per path (the result keeps each path as its own object)."""
    out = [f"Sequential single requests against `tessera serve`, model `{result.model or '-'}`.", ""]
    out += _table(
        ["path", "requests", "median ms", "p90 ms"],
        [[name, v.n, v.median_ms, v.p90_ms] for name, v in sorted(result.paths().items())],
    )
    if result.server_timing_ms:
        out += ["", "Server-side `timing_ms` of `/v1/predict` (medians):", ""]
        out += _table(["stage", "ms"], [[k, v] for k, v in result.server_timing_ms.items()])
    return out


def _section_gpu_scaling(result: GpuResult) -> list[str]:
    out = [f"PyTorch on `{result.device or '-'}`, batch 1, peak memory above the weights.", ""]
    if result.complete is False:
        ran = {f"{r.get('model')}:{r.get('kernel')}" for r in result.rows}
        missing = [k for k in result.planned if k not in ran]
        out[0] += f" **Partial**: stopped before {', '.join(missing) or 'the end'} ran."
    elif result.planned:
        out[0] += f" Kernels: {', '.join(result.planned)}."
    out += _section_generic(GpuResult(benchmark=result.benchmark, host=result.host, rows=result.rows))
    summary = [s for s in result.summary if isinstance(s, dict)] if isinstance(result.summary, list) else []
    if summary:
        keys = [k for k in summary[0] if k.endswith("_ratio") or "_ratio_" in k]
        out += ["", "Per-pixel cost at the largest size relative to the smallest:", ""]
        out += _table(
            ["model", "kernel", *keys], [[s.get("model"), s.get("kernel"), *(s.get(k) for k in keys)] for s in summary]
        )
    return out


def _section_loadtest(result: LoadtestResult) -> list[str]:
    totals = result.totals
    out = [
        f"Locust against `tessera serve` on loopback: {describe_load(result.load)}. "
        f"{_cell(totals.requests)} requests, error rate {_pct(totals.error_rate)}, "
        f"shed {_pct(totals.shed_share)}. Percentiles are Locust's (2 significant digits); "
        "in a row with fewer than 20 requests the p95 and p99 are its slowest request.",
        "",
    ]
    targets: dict[str, dict[str, SloCheck]] = {}
    for check in result.checks:
        targets.setdefault(check.endpoint, {})[check.check] = check
    rows = []
    for e in result.endpoints:
        mine = targets.get(e.endpoint, {})

        def cell(name: str, e: EndpointRow = e, mine: dict[str, SloCheck] = mine) -> str:
            value, check = getattr(e, name), mine.get(name)
            if check is None:
                return _cell(value)
            return f"{_cell(value)} / {_cell(check.target)}" + ("" if check.ok is not False else " **fail**")

        rows.append([e.endpoint, e.requests, e.failures, e.shed, e.rps, cell("p50_ms"), cell("p95_ms"), cell("p99_ms")])
    out += _table(["endpoint", "requests", "failures", "shed", "req/s", "p50 ms / target", "p95", "p99"], rows)
    return out


_SECTIONS: dict[str, tuple[str, Callable[[Any], list[str]], list[str]]] = {
    "loadtest": ("Load test", _section_loadtest, []),
    "latency": ("Latency", _section_latency, []),
    "gpu_scaling": ("GPU: time and memory per pixel", _section_gpu_scaling, []),
    "gpu_parity": ("GPU: fp16 parity against CPU fp32", _section_generic, []),
    "gpu_throughput": ("GPU: ViT-B/16 throughput", _section_generic, []),
    "gpu_slide": ("GPU: ViT-L/16 tile encoder", _section_generic, []),
    "ort_vs_torch": ("ONNX Runtime vs PyTorch eager", _section_ort, ["throughput_ort_vs_torch"]),
    "service_vs_raw": ("Service vs raw backend", _section_service, ["throughput_service"]),
    "peer": ("Service vs Triton (same ONNX file, same host)", _section_peer, []),
    "cpu_lanes": ("CPU lanes: batches side by side", _section_lanes, []),
    "first_run": ("First run (`make serve` from a clean clone)", _section_first_run, []),
    "slide_vs_raw": ("Slide pipeline vs raw backend", _section_slide, ["throughput_slide"]),
    "attention_scaling": (
        "Attention scaling, 224² to 2048²",
        _section_attention,
        ["attention_latency", "attention_memory"],
    ),
}


def render_markdown(results: dict[str, BenchResult], goals: list[Goal], images: dict[str, Path], md_dir: Path) -> str:
    hosts = {(r.host.host, r.host.cpu, r.host.gpu) for r in results.values()}
    lines = [
        "# Performance",
        "",
        "Generated by `tessera bench report` from the newest result of each benchmark in `bench/results/`; "
        "do not edit by hand. Benchmarks measure ratios within one run (these machines are noisy) and report; "
        "they never assert. Regenerate everything with `tessera bench all`.",
        "",
    ]
    if not results:
        lines += ["No results yet: run `tessera bench all`.", ""]
    else:
        if len(hosts) == 1:
            host, cpu, gpu = next(iter(hosts))
            lines.append(f"Measured on **{host}** ({cpu}; GPU: {gpu or 'none'}).")
        else:
            lines.append(f"Measured on {len(hosts)} hosts (see each benchmark).")
        lines += ["", "## Goals (DESIGN.md)", ""]
        lines += _table(["what", "goal", "measured", "status"], [[g.what, g.goal, g.measured, g.status] for g in goals])
        lines += ["", "## Hosts and versions", ""]
        lines += _table(
            ["benchmark", "host", "date", "CPU", "cores", "GPU", "python", "versions", "file"],
            [
                [
                    name,
                    r.host.host,
                    r.host.date,
                    r.host.cpu,
                    r.host.cores,
                    r.host.gpu or "none",
                    r.host.python,
                    ", ".join(f"{k} {v}" for k, v in r.host.versions.items()),
                    r.source_file,
                ]
                for name, r in _ordered(results)
            ],
        )
    for name, result in _ordered(results):
        title, section, plots = _SECTIONS.get(name, (name.replace("_", " ").capitalize(), _section_generic, []))
        if isinstance(result, PeerResult) and name.startswith("peer_"):
            variants = ", ".join(f"`{k}`: {_cell(v)}" for k, v in result.variants.items())
            title, section, plots = (f"Service vs Triton, levers ({variants})", _section_peer, [])
        if isinstance(result, ServiceVsRawResult) and name.startswith("service_vs_raw_oip"):
            title = f"Service vs raw backend, {result.oip_batch} images per request"
            section, plots = _section_service, []
        lines += ["", f"## {title}", "", f"`{result.source_file or name}`, {result.host.date}.", ""]
        lines += section(result)
        for plot in plots:
            if plot in images:
                rel = Path(_relpath(images[plot], md_dir))
                lines += ["", f"![{plot.replace('_', ' ')}]({rel.as_posix()})"]
    lines.append("")
    return "\n".join(lines)


def _ordered(results: dict[str, BenchResult]) -> list[tuple[str, BenchResult]]:
    known = [n for n in KNOWN if n in results]
    variants = sorted(n for n in results if n.startswith("service_vs_raw_oip"))  # beside service_vs_raw
    if "service_vs_raw" in known:
        at = known.index("service_vs_raw") + 1
        known[at:at] = variants
    else:
        known += variants
    return [(n, results[n]) for n in known + sorted(set(results) - set(known))]


def _relpath(path: Path, start: Path) -> str:
    import os

    return os.path.relpath(path.resolve(), start.resolve())


def write_report(
    results: str | Path | None = None, out: str | Path = "docs/performance.md", img_dir: str | Path = "docs/img"
) -> Path:
    """Read the results, write the plots and the markdown; returns the markdown's path."""
    loaded = load_results(results or results_dir())
    goals = evaluate_goals(loaded)
    images = make_plots(loaded, img_dir)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_markdown(loaded, goals, images, out.parent))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="tessera bench report", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--results", default=None, help="results folder (default $TESSERA_BENCH_RESULTS or bench/results)"
    )
    parser.add_argument("--out", default="docs/performance.md")
    parser.add_argument("--img-dir", default="docs/img")
    args = parser.parse_args(argv)
    path = write_report(args.results, args.out, args.img_dir)
    goals = evaluate_goals(load_results(args.results or results_dir()))
    for goal in goals:
        print(f"{goal.status:<40} {goal.what}: {goal.measured}")
    print(f"wrote {path} ({datetime.now(UTC).isoformat(timespec='seconds')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
