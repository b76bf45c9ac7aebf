"""``docs/performance.md`` and its plots, from the newest result of each benchmark in bench/results/.

Each DESIGN.md goal is put beside the value measured for it: *met*, *not met*, or *not measured*
with the reason (no result yet; no GPU on the host the results came from). A goal that needs a
GPU counts as measured only from a result whose host facts name a GPU.

Results are the JSON files the benchmarks write (``service.bench._common.write_result``): a
``benchmark`` name, ``host`` facts (host name, CPU, GPU, versions, date), and usually ``rows``
and ``summary``. Unknown benchmarks get a generic table of their rows.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from service.bench._common import results_dir

__all__ = ["Goal", "evaluate_goals", "load_results", "main", "make_plots", "render_markdown", "write_report"]

MET, NOT_MET = "met", "not met"
NO_GPU = "not measured: no GPU on this host"
#: Order of the benchmark sections; others follow alphabetically.
KNOWN = ("ort_vs_torch", "service_vs_raw", "peer", "slide_vs_raw", "attention_scaling", "router", "loadtest")
#: An N² attention-score term makes bytes per pixel grow with the token count: 16x from 512² to 2048².
N2_MEMORY_RATIO_LIMIT = 2.0


# -- loading --------------------------------------------------------------------------------------------
def _name_of(path: Path, payload: dict[str, Any]) -> str:
    name = payload.get("benchmark")
    if isinstance(name, str) and name:
        return name
    host = str((payload.get("host") or {}).get("host", ""))
    stem = path.stem
    if host and stem.startswith(host + "-"):
        stem = stem[len(host) + 1 :]
    parts = stem.split("-", 3)  # YYYY-MM-DD-name
    return parts[3] if len(parts) == 4 else stem


def load_results(directory: str | Path) -> dict[str, dict[str, Any]]:
    """The newest result per benchmark (by the date in its host facts, then by file time)."""
    newest: dict[str, tuple[tuple[str, float], dict[str, Any]]] = {}
    for path in sorted(Path(directory).glob("*.json")):
        try:
            payload = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if not isinstance(payload, dict):
            continue
        name = _name_of(path, payload)
        payload["_file"] = path.name
        key = (str((payload.get("host") or {}).get("date", "")), path.stat().st_mtime)
        if name not in newest or key > newest[name][0]:
            newest[name] = (key, payload)
    return {name: payload for name, (_, payload) in newest.items()}


def _host(result: dict[str, Any]) -> dict[str, Any]:
    host = result.get("host")
    return host if isinstance(host, dict) else {}


def _gpu_hosts(results: dict[str, dict[str, Any]]) -> list[str]:
    return sorted({str(_host(r)["gpu"]) for r in results.values() if _host(r).get("gpu")})


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


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return None if math.isnan(value) else float(value)


def _goal_ort(results: dict[str, dict[str, Any]]) -> Goal:
    what, goal = "ONNX Runtime (optimised) vs PyTorch eager, fp32, CPU, ViT-S/16 and Swin-T, batch 8", ">= 2x"
    result = results.get("ort_vs_torch")
    rows = [r for r in (result or {}).get("rows", []) if _num(r.get("speedup")) is not None]
    if not rows:
        return Goal(what, goal, "-", "not measured: no result", "ort_vs_torch")
    measured = ", ".join(f"{r['model']} {r['speedup']:.2f}x (batch {r.get('batch')})" for r in rows)
    ok = all(float(r["speedup"]) >= 2.0 for r in rows)
    return Goal(what, goal, measured, MET if ok else NOT_MET, "ort_vs_torch")


def _goal_service(results: dict[str, dict[str, Any]]) -> Goal:
    what = "Service throughput vs the raw backend, at saturation, REST and gRPC"
    goal = ">= 90%"
    result = results.get("service_vs_raw")
    if not result:
        return Goal(what, goal, "-", "not measured: no result", "service_vs_raw")
    summary = result.get("summary", {})
    rest, grpc = _num(summary.get("rest_oip_fp32_ratio")), _num(summary.get("grpc_oip_fp32_ratio"))
    jpeg = _num(summary.get("rest_predict_jpeg_ratio"))
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
        if name.startswith("service_vs_raw_oip"):
            more = batched.get("summary", {})
            b_rest, b_grpc = _num(more.get("rest_oip_fp32_ratio")), _num(more.get("grpc_oip_fp32_ratio"))
            measured += (
                f"; with {batched.get('oip_batch')} images per request: REST {_pct(b_rest)}, gRPC {_pct(b_grpc)}"
            )
            if b_rest is not None and b_grpc is not None:
                verdict = MET if min(b_rest, b_grpc) >= 0.9 else NOT_MET
                status += f"; {verdict} with {batched.get('oip_batch')} images per request"
    return Goal(what, goal, measured, status + _suspect(summary), "service_vs_raw")


def _goal_peer(results: dict[str, dict[str, Any]]) -> Goal:
    what = "Service vs Triton on the same ONNX file and host, one image per request, gRPC and REST binary"
    goal = ">= 1.0x Triton's img/s; 1-client p50 within 3 ms of Triton's; no-op ceiling >= Triton's"
    result = results.get("peer")
    if not result:
        return Goal(what, goal, "-", "not measured: no result (`tessera bench peer`, extra `peer`)", "peer")
    summary = result.get("summary", {})
    parts = []
    for protocol in ("grpc", "rest"):
        s = summary.get(protocol)
        if not isinstance(s, dict):
            continue
        ratio, delta, noop = _num(s.get("throughput_ratio")), _num(s.get("p50_delta_ms")), _num(s.get("noop_ratio"))
        parts.append(
            f"{'gRPC' if protocol == 'grpc' else 'REST'}: {ratio:.2f}x img/s" if ratio is not None else protocol
        )
        if delta is not None:
            parts[-1] += f", p50 {delta:+.1f} ms"
        if noop is not None:
            parts[-1] += f", no-op {noop:.2f}x"
    measured = "; ".join(parts) or "-"
    return Goal(what, goal, measured, MET if summary.get("goal_met") else NOT_MET, "peer")


def _goal_slide(results: dict[str, dict[str, Any]]) -> Goal:
    what, goal = "Slide pipeline tiles/s vs the raw backend's tiles/s at the same batch size", ">= 90%"
    result = results.get("slide_vs_raw") or {}
    ratio = _num(result.get("summary", {}).get("ratio"))
    if ratio is None:
        return Goal(what, goal, "-", "not measured: no result", "slide_vs_raw")
    pipeline, raw = result.get("pipeline", {}), result.get("raw", {})
    measured = f"{_pct(ratio)} ({pipeline.get('tiles_per_s', '-')} vs {raw.get('tiles_per_s', '-')} tiles/s)"
    return Goal(
        what, goal, measured, (MET if ratio >= 0.9 else NOT_MET) + _suspect(result.get("summary", {})), "slide_vs_raw"
    )


def _suspect(summary: dict[str, Any]) -> str:
    return " (suspect: the host was not quiet, see notes)" if summary.get("notes") else ""


def _notes(result: dict[str, Any]) -> list[str]:
    notes = (result.get("summary") or {}).get("notes") if isinstance(result.get("summary"), dict) else None
    return ["", *(f"> Note: {n}." for n in notes)] if notes else []


def _families(result: dict[str, Any]) -> dict[str, str]:
    return {r["model"]: r["family"] for r in result.get("rows", []) if r.get("family") and r.get("model")}


def _goal_linear(results: dict[str, dict[str, Any]]) -> Goal:
    what = "Windowed and neighbourhood backbones, 512² to 2048²"
    goal = "time and peak memory per pixel within 1.2x of the 512² value"
    result = results.get("attention_scaling")
    if not result:
        return Goal(what, goal, "-", "not measured: no result", "attention_scaling")
    families = _families(result)
    rows = [s for s in result.get("summary", []) if families.get(s.get("model", "")) in ("swin", "nat")]
    if not rows:
        return Goal(what, goal, "-", "not measured: no windowed/NA point at both 512² and 2048²", "attention_scaling")
    parts, ok = [], True
    for s in rows:
        t, m = _num(s.get("time_per_pixel_ratio_2048_vs_512")), _num(s.get("memory_per_pixel_ratio_2048_vs_512"))
        parts.append(f"{s['model']}/{s['backend']}: time {t:.2f}x, memory {m:.2f}x" if t and m else s["model"])
        ok = ok and t is not None and m is not None and t <= 1.2 and m <= 1.2
    return Goal(what, goal, "; ".join(parts), MET if ok else NOT_MET, "attention_scaling")


def _fused_points(results: dict[str, dict[str, Any]]) -> list[tuple[str, float]]:
    """(runtime, memory per pixel at 2048² / at 512²) for the global ViT with fused attention."""
    points = []
    scaling = results.get("attention_scaling") or {}
    families = _families(scaling)
    for s in scaling.get("summary", []):
        if families.get(s.get("model", "")) == "vit":
            m = _num(s.get("memory_per_pixel_ratio_2048_vs_512"))
            if m is not None:
                label = "PyTorch SDPA" if s.get("backend") == "torch" else str(s.get("backend"))
                points.append((f"{s['model']} ({label})", m))
    fusion = results.get("fusion") or {}
    keyed = {r.get("size"): r for r in fusion.get("rows", []) if r.get("opset") == 23 and "peak_delta_bytes" in r}
    if 512 in keyed and 2048 in keyed:
        small, large = keyed[512], keyed[2048]
        ratio = (large["peak_delta_bytes"] / 2048**2) / max(small["peak_delta_bytes"] / 512**2, 1e-9)
        points.append((f"{large.get('model')} (ONNX Runtime CPU, opset-23 Attention)", ratio))
    return points


def _goal_fused(results: dict[str, dict[str, Any]]) -> Goal:
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


_PREDICTED = ("predicted_ms", "predicted_latency_ms", "pred_ms")
_MEASURED = ("measured_ms", "measured_latency_ms", "latency_ms")


def router_errors(result: dict[str, Any]) -> list[float]:
    """Relative errors |predicted - measured| / measured of the router result's rows."""
    errors = []
    for row in result.get("rows", []):
        if not isinstance(row, dict):
            continue
        predicted = next((_num(row.get(k)) for k in _PREDICTED if _num(row.get(k)) is not None), None)
        measured = next((_num(row.get(k)) for k in _MEASURED if _num(row.get(k)) is not None), None)
        if predicted is not None and measured:
            errors.append(abs(predicted - measured) / measured)
    return errors


def _goal_router(results: dict[str, dict[str, Any]]) -> Goal:
    what, goal = "Router cost model", "predicted latency within 25% of measured on the calibrated host"
    name = "router" if "router" in results else next((n for n in sorted(results) if "router" in n), None)
    if name is None:
        return Goal(what, goal, "-", "not measured: no result", "router")
    result = results[name]
    errors = router_errors(result)
    summary = result.get("summary", {}) if isinstance(result.get("summary"), dict) else {}
    if errors:
        worst = max(errors)
        within = sum(e <= 0.25 for e in errors)
        measured = f"worst {_pct(worst)} off, {within} of {len(errors)} sizes within 25%"
        cheapest = _num(summary.get("chose_cheapest"))
        if cheapest is not None:
            measured += f"; chose the cheapest measured fitting model for {cheapest:.0f} of {len(errors)}"
        return Goal(what, goal, measured, MET if worst <= 0.25 else NOT_MET, name)
    for key in ("max_relative_error", "max_rel_error", "worst_relative_error"):
        worst_value = _num(summary.get(key))
        if worst_value is not None:
            return Goal(what, goal, f"worst {_pct(worst_value)} off", MET if worst_value <= 0.25 else NOT_MET, name)
    return Goal(what, goal, "see the router table", "not evaluated: no predicted/measured pairs in the result", name)


def _goal_gpu(results: dict[str, dict[str, Any]], what: str, goal: str, names: tuple[str, ...], judge: Any) -> Goal:
    gpus = _gpu_hosts(results)
    for name in names:
        result = results.get(name)
        if result and _host(result).get("gpu"):
            measured, ok = judge(result)
            return Goal(what, goal, f"{measured} on {_host(result)['gpu']}", MET if ok else NOT_MET, name)
    if not gpus:
        return Goal(what, goal, "-", NO_GPU + " (TensorRT and onnxruntime-gpu unverified)", names[0])
    return Goal(
        what, goal, "-", f"not measured: no result for this goal from the GPU host ({', '.join(gpus)})", names[0]
    )


def _judge_vit_b(result: dict[str, Any]) -> tuple[str, bool]:
    summary = result.get("summary", {})
    fraction = _num(summary.get("fraction_of_matmul_rate"))
    ips = _num(summary.get("img_per_s"))
    measured = f"{ips:.0f} img/s" if ips is not None else "-"
    if fraction is not None:
        measured += f", {_pct(fraction)} of the bf16 matmul rate"
        return measured, fraction >= 0.55
    return measured, ips is not None and ips >= 12500


def _judge_gpu_slide(result: dict[str, Any]) -> tuple[str, bool]:
    seconds = _num(result.get("summary", {}).get("seconds"))
    tiles = result.get("summary", {}).get("tiles", "?")
    return (f"{seconds:.1f} s for {tiles} tiles" if seconds is not None else "-"), seconds is not None and seconds < 15


def describe_load(load: dict[str, Any]) -> str:
    """``8 users, one request each every 8 s (1 req/s offered), 180 s, mix ..., sizes ...``."""
    users, pace = load.get("users"), _num(load.get("pace_s"))
    rate = f"one request each every {pace:g} s ({load.get('offered_rps')} req/s offered)" if pace else "closed loop"
    weights = load.get("mix") or {}
    kinds = ("predict", "oip", "grpc", "slide")  # the Locust file's user order (results store keys sorted)
    mix = ",".join(f"{k}={weights[k]}" for k in kinds if k in weights)
    sides = sorted((load.get("sizes") or {}).items(), key=lambda kv: int(kv[0]) if str(kv[0]).isdigit() else 0)
    sizes = ",".join(f"{k}={v}" for k, v in sides)
    return f"{users} users, {rate}, {load.get('duration_s')} s; users {mix}; /v1/predict sides {sizes}"


def _goal_loadtest(results: dict[str, dict[str, Any]]) -> Goal:
    what, goal = "Load test (`make loadtest`): every objective in `loadtest/slo.yaml`", "all pass at a stated load"
    result = results.get("loadtest")
    if not result:
        return Goal(what, goal, "-", "not measured: no result (`tessera loadtest --start --record`)", "loadtest")
    summary = result.get("summary", {})
    checks, failed = int(summary.get("checks") or 0), int(summary.get("failed") or 0)
    measured = f"{checks - failed}/{checks} checks pass at {describe_load(result.get('load') or {})}"
    return Goal(what, goal, measured, MET if summary.get("passed") else NOT_MET, "loadtest")


def evaluate_goals(results: dict[str, dict[str, Any]]) -> list[Goal]:
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
def make_plots(results: dict[str, dict[str, Any]], img_dir: str | Path) -> dict[str, Path]:
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
    points = [r for r in (scaling or {}).get("rows", []) if "latency_ms" in r]
    if points:
        series: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for row in points:
            series.setdefault((row["model"], row["backend"]), []).append(row)
        for name, key, label, scale in (
            ("attention_latency", "latency_ms", "latency per image (ms)", 1.0),
            ("attention_memory", "peak_delta_bytes", "peak memory of the forward (MiB)", 1 / 2**20),
        ):
            fig, ax = plt.subplots(figsize=(7, 4.5))
            for (model, backend), rows in sorted(series.items()):
                rows = sorted(rows, key=lambda r: r["size"])
                ax.plot(
                    [r["size"] for r in rows],
                    [max(float(r[key]) * scale, 1e-3) for r in rows],
                    marker="o",
                    label=f"{model} / {backend}",
                )
            ax.set_xscale("log", base=2)
            sides = sorted({int(r["size"]) for r in points})
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
    if ort and ort.get("rows"):
        rows = ort["rows"]
        fig, ax = plt.subplots(figsize=(7, 4))
        xs = range(len(rows))
        width = 0.38
        ax.bar([x - width / 2 for x in xs], [r["torch_img_per_s"] for r in rows], width, label="PyTorch eager")
        ax.bar([x + width / 2 for x in xs], [r["onnxruntime_img_per_s"] for r in rows], width, label="ONNX Runtime")
        ax.set_xticks(list(xs), [f"{r['model']}\n{r['speedup']:.2f}x" for r in rows])
        ax.set_ylabel("images/s")
        ax.set_title(f"ONNX Runtime vs PyTorch eager, fp32, batch {rows[0].get('batch', '?')}")
        ax.legend()
        save(fig, "throughput_ort_vs_torch")

    for bench, unit, title in (
        ("service_vs_raw", "img_per_s", "Service vs raw backend at saturation"),
        ("slide_vs_raw", "tiles_per_s", "Slide pipeline vs raw backend, same batch size"),
    ):
        result = results.get(bench)
        rows = [r for r in (result or {}).get("rows", []) if _num(r.get(unit)) is not None]
        if not rows:
            continue
        fig, ax = plt.subplots(figsize=(8, 0.6 * len(rows) + 1.6))
        labels = [r["path"] for r in rows]
        values = [float(r[unit]) for r in rows]
        colours = ["#888888" if i == 0 else ("#2a7ab9" if r.get("compared") else "#9cc3e4") for i, r in enumerate(rows)]
        ax.barh(labels, values, color=colours)
        raw = values[0]
        ax.axvline(0.9 * raw, color="#c0392b", linestyle="--", linewidth=1, label="goal: 90% of raw")
        for y, (value, row) in enumerate(zip(values, rows, strict=True)):
            ratio = _num(row.get("ratio"))
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


def _section_ort(result: dict[str, Any]) -> list[str]:
    rows = result.get("rows", [])
    out = [f"Interleaved rounds ({result.get('rounds', '?')}), median of each; goal: {result.get('goal', '')}.", ""]
    out += _table(
        ["model", "batch", "size", "PyTorch eager ms", "ONNX Runtime ms", "speed-up", "PyTorch img/s", "ORT img/s"],
        [
            [
                r.get("model"),
                r.get("batch"),
                r.get("size"),
                r.get("torch_eager_ms"),
                r.get("onnxruntime_ms"),
                f"{r['speedup']:.2f}x" if _num(r.get("speedup")) else "-",
                r.get("torch_img_per_s"),
                r.get("onnxruntime_img_per_s"),
            ]
            for r in rows
        ],
    )
    return out


def _section_service(result: dict[str, Any]) -> list[str]:
    raw = result.get("raw", {})
    out = [
        f"Model {result.get('model')} at {result.get('size')}², raw batch {result.get('max_batch_size')}, "
        f"{result.get('oip_batch', 1)} image(s) per OIP request, "
        f"{result.get('concurrency')} closed-loop clients per transport, {result.get('duration_s')} s measured after "
        f"{result.get('warmup_s')} s of warm-up. Raw backend before the service started: "
        f"{raw.get('before', {}).get('img_per_s', '-')} img/s, after it stopped: "
        f"{raw.get('after', {}).get('img_per_s', '-')} img/s (their mean is 100%). Compared with the goal: "
        f"{result.get('summary', {}).get('compared', 'REST and gRPC OIP FP32')}; `/v1/predict` with JPEGs also "
        "decodes and preprocesses, which the raw backend does not.",
        "",
    ]
    idle = _num(result.get("idle_busy_share"))
    if idle is not None:
        out[0] += (
            f" With the service started and idle, {_pct(idle)} of the host's CPU time was busy (Ray's daemons, "
            "proxy and controller): on a small host that share is out of reach of the service before any request."
        )
    table = []
    for r in result.get("rows", []):
        run = (r.get("runs") or [{}])[0]
        table.append(
            [
                r.get("path"),
                r.get("img_per_s"),
                _pct(_num(r.get("ratio"))),
                "yes" if r.get("compared") else ("reference" if r.get("transport") == "raw" else "no"),
                run.get("p50_ms"),
                run.get("p95_ms"),
                run.get("mean_batch_size"),
                run.get("shed"),
                run.get("errors"),
            ]
        )
    out += _table(["path", "img/s", "of raw", "compared", "p50 ms", "p95 ms", "mean batch", "shed", "errors"], table)
    return out + _notes(result)


def _section_peer(result: dict[str, Any]) -> list[str]:
    raw = result.get("raw", {})
    versions = ", ".join(f"{k} {v}" for k, v in (result.get("versions") or {}).items())
    backend = result.get("backend") or {}
    runtime = f"{backend.get('backend', '?')} on {backend.get('device', '?')}, {backend.get('precision', '?')}"
    if "triton" not in (result.get("servers") or []):
        versions += "; Triton was not in this run, which compares variants of Tessera"
    out = [
        f"Tessera (`tessera serve`) and Triton ({versions}; the model's inference function runs the same "
        f"ONNX Runtime backend Tessera loads: {runtime}, intra-op threads "
        f"{result.get('intra_op_threads')} (0 = all cores), spinning {'on' if result.get('ort_spin') else 'off'}) "
        f"serve model {result.get('model')} at {result.get('size')}², dynamic batching up to "
        f"{result.get('max_batch_size')} with {_cell(1e3 * float(result.get('batch_wait_timeout_s') or 0))} ms wait "
        "on both; one FP32 image per request from `tritonclient` (gRPC, and REST with binary tensors) in a "
        f"separate process, closed loop, {result.get('clients')} clients and 1 client, {result.get('duration_s')} s "
        f"per point after {result.get('warmup_s')} s of warm-up, the servers one after the other "
        f"({', '.join(result.get('servers') or [])}). The no-op model ({result.get('noop_model') or '-'}, one "
        "16-wide block, served the same way on both) measures the front end's ceiling in requests/s. Raw ONNX "
        f"Runtime at batch {result.get('max_batch_size')}, no server: {raw.get('img_per_s', '-')} img/s (before "
        f"{raw.get('before', {}).get('img_per_s', '-')}, after {raw.get('after', {}).get('img_per_s', '-')}).",
        "",
    ]
    rows = result.get("rows", [])
    out += _table(
        ["server", "model", "protocol", "clients", "img/s", "p50 ms", "p95 ms", "errors", "note"],
        [
            [
                r.get("server"),
                r.get("model"),
                r.get("protocol"),
                r.get("clients"),
                r.get("img_per_s"),
                r.get("p50_ms"),
                r.get("p95_ms"),
                r.get("errors"),
                r.get("skipped") or r.get("first_error") or "",
            ]
            for r in rows
        ],
    )
    if "triton" not in (result.get("servers") or []):
        return out + _peer_variants(result) + _notes(result)
    summary = result.get("summary", {})
    table = []
    for protocol in ("grpc", "rest"):
        s = summary.get(protocol)
        if isinstance(s, dict):
            table.append(
                [
                    protocol,
                    s.get("tessera_img_per_s"),
                    s.get("triton_img_per_s"),
                    s.get("throughput_ratio"),
                    s.get("tessera_p50_1_client_ms"),
                    s.get("triton_p50_1_client_ms"),
                    s.get("p50_delta_ms"),
                    s.get("tessera_noop_req_per_s"),
                    s.get("triton_noop_req_per_s"),
                    s.get("noop_ratio"),
                ]
            )
    if table:
        out += ["", f"Tessera against Triton ({result.get('clients')} clients for img/s and the no-op ceiling):", ""]
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
            ],
            table,
        )
    return out + _notes(result)


def _peer_variants(result: dict[str, Any]) -> list[str]:
    """Each Tessera variant against plain Tessera of the same run (a lever's before/after)."""
    clients = result.get("clients")
    by = {(r.get("server"), r.get("role"), r.get("protocol"), r.get("clients")): r for r in result.get("rows", [])}

    def value(server: str, role: str, protocol: str, n: Any, key: str) -> float | None:
        return _num((by.get((server, role, protocol, n)) or {}).get(key))

    def ratio(a: float | None, b: float | None) -> str:
        return f"{a / b:.2f}x" if a is not None and b else "-"

    table = []
    for server in [s for s in result.get("servers") or [] if str(s).startswith("tessera:")]:
        for protocol in ("grpc", "rest"):
            p50, base = value(server, "model", protocol, 1, "p50_ms"), value("tessera", "model", protocol, 1, "p50_ms")
            table.append(
                [
                    server,
                    protocol,
                    ratio(
                        value(server, "model", protocol, clients, "img_per_s"),
                        value("tessera", "model", protocol, clients, "img_per_s"),
                    ),
                    "-" if p50 is None or base is None else f"{p50 - base:+.1f}",
                    ratio(
                        value(server, "noop", protocol, clients, "img_per_s"),
                        value("tessera", "noop", protocol, clients, "img_per_s"),
                    ),
                ]
            )
    if not table:
        return []
    return [
        "",
        f"Each variant against plain Tessera in the same run ({clients} clients for img/s and the no-op ceiling):",
        "",
        *_table(["variant", "protocol", "img/s", "p50 1 client, ms", "no-op req/s"], table),
    ]


def _section_slide(result: dict[str, Any]) -> list[str]:
    slide = result.get("slide", {})
    pipeline = result.get("pipeline", {})
    out = [
        f"Synthetic slide {slide.get('side')}² px at {slide.get('mpp')} µm/px, tissue everywhere, "
        f"{result.get('tiles')} tiles of {result.get('model')}, batch {result.get('batch_size')}, "
        f"{result.get('workers')} reader threads; peak RSS {_cell(_mib(pipeline.get('peak_rss_bytes')))} MiB.",
        "",
    ]
    out += _table(
        ["path", "tiles/s", "of raw", "compared"],
        [
            [r.get("path"), r.get("tiles_per_s"), _pct(_num(r.get("ratio"))), r.get("compared", "reference")]
            for r in result.get("rows", [])
        ],
    )
    timing = pipeline.get("timing_s", {})
    if timing:
        out += ["", "Pipeline stages (seconds; reader stages summed over threads):", ""]
        out += _table(list(timing), [list(timing.values())])
    return out + _notes(result)


def _section_attention(result: dict[str, Any]) -> list[str]:
    out = [f"Batch 1, one subprocess per point (peak memory is that point's own). Goal: {result.get('goal', '')}.", ""]
    out += _table(
        ["model", "family", "backend", "size", "latency ms", "ms/Mpx", "peak MiB", "bytes/px", "note"],
        [
            [
                r.get("model"),
                r.get("family"),
                r.get("backend"),
                r.get("size"),
                r.get("latency_ms"),
                r.get("ms_per_mpixel"),
                _mib(r.get("peak_delta_bytes")),
                r.get("bytes_per_pixel"),
                r.get("skipped", ""),
            ]
            for r in result.get("rows", [])
        ],
    )
    summary = result.get("summary", [])
    if summary:
        out += ["", "Per-pixel cost at 2048² relative to 512²:", ""]
        out += _table(
            ["model", "backend", "time per pixel", "memory per pixel"],
            [
                [
                    s.get("model"),
                    s.get("backend"),
                    s.get("time_per_pixel_ratio_2048_vs_512"),
                    s.get("memory_per_pixel_ratio_2048_vs_512"),
                ]
                for s in summary
            ],
        )
    return out


def _section_generic(result: dict[str, Any]) -> list[str]:
    out: list[str] = []
    if result.get("goal"):
        out += [f"Goal: {result['goal']}.", ""]
    rows = [r for r in result.get("rows", []) if isinstance(r, dict)]
    if rows:
        columns: list[str] = []
        for row in rows:
            for key, value in row.items():
                if key not in columns and not isinstance(value, dict | list):
                    columns.append(key)
        columns = columns[:10]
        out += _table(columns, [[row.get(c) for c in columns] for row in rows])
    summary = result.get("summary")
    if isinstance(summary, dict) and summary:
        out += ["", *_table(["summary", "value"], [[k, v] for k, v in summary.items()])]
    if not out:
        out = ["(no rows in this result)"]
    return out


def _section_latency(result: dict[str, Any]) -> list[str]:
    """Single-request latency: one row per path (the result keeps each path as its own object)."""
    paths = {k: v for k, v in result.items() if isinstance(v, dict) and "median_ms" in v}
    out = [f"Sequential single requests against `tessera serve`, model `{result.get('model', '-')}`.", ""]
    out += _table(
        ["path", "requests", "median ms", "p90 ms"],
        [[name, v.get("n"), v.get("median_ms"), v.get("p90_ms")] for name, v in sorted(paths.items())],
    )
    timing = result.get("server_timing_ms")
    if isinstance(timing, dict) and timing:
        out += ["", "Server-side `timing_ms` of `/v1/predict` (medians):", ""]
        out += _table(["stage", "ms"], [[k, v] for k, v in timing.items()])
    return out


def _section_gpu_scaling(result: dict[str, Any]) -> list[str]:
    out = [f"PyTorch on `{result.get('device', '-')}`, batch 1, peak memory above the weights.", ""]
    out += _section_generic({"rows": result.get("rows", [])})
    summary = [s for s in result.get("summary", []) if isinstance(s, dict)]
    if summary:
        keys = [k for k in summary[0] if k.endswith("_ratio") or "_ratio_" in k]
        out += ["", "Per-pixel cost at the largest size relative to the smallest:", ""]
        out += _table(
            ["model", "kernel", *keys], [[s.get("model"), s.get("kernel"), *(s.get(k) for k in keys)] for s in summary]
        )
    return out


def _section_loadtest(result: dict[str, Any]) -> list[str]:
    totals = result.get("totals", {})
    out = [
        f"Locust against `tessera serve` on loopback: {describe_load(result.get('load') or {})}. "
        f"{totals.get('requests', '-')} requests, error rate {_pct(_num(totals.get('error_rate')))}, "
        f"shed {_pct(_num(totals.get('shed_share')))}. Percentiles are Locust's (2 significant digits); "
        "in a row with fewer than 20 requests the p95 and p99 are its slowest request.",
        "",
    ]
    targets: dict[str, dict[str, Any]] = {}
    for check in result.get("checks", []):
        targets.setdefault(check.get("endpoint", ""), {})[check.get("check", "")] = check
    rows = []
    for e in result.get("endpoints", []):
        mine = targets.get(e.get("endpoint", ""), {})

        def cell(name: str, e: dict[str, Any] = e, mine: dict[str, Any] = mine) -> str:
            value, check = e.get(name), mine.get(name)
            if check is None:
                return _cell(value)
            return f"{_cell(value)} / {_cell(check.get('target'))}" + (
                "" if check.get("ok") is not False else " **fail**"
            )

        rows.append(
            [
                e.get("endpoint"),
                e.get("requests"),
                e.get("failures"),
                e.get("shed"),
                e.get("rps"),
                cell("p50_ms"),
                cell("p95_ms"),
                cell("p99_ms"),
            ]
        )
    out += _table(["endpoint", "requests", "failures", "shed", "req/s", "p50 ms / target", "p95", "p99"], rows)
    return out


_SECTIONS = {
    "loadtest": ("Load test", _section_loadtest, []),
    "latency": ("Latency", _section_latency, []),
    "gpu_scaling": ("GPU: time and memory per pixel", _section_gpu_scaling, []),
    "gpu_parity": ("GPU: fp16 parity against CPU fp32", _section_generic, []),
    "gpu_throughput": ("GPU: ViT-B/16 throughput", _section_generic, []),
    "gpu_slide": ("GPU: ViT-L/16 tile encoder", _section_generic, []),
    "ort_vs_torch": ("ONNX Runtime vs PyTorch eager", _section_ort, ["throughput_ort_vs_torch"]),
    "service_vs_raw": ("Service vs raw backend", _section_service, ["throughput_service"]),
    "peer": ("Service vs Triton (same ONNX file, same host)", _section_peer, []),
    "slide_vs_raw": ("Slide pipeline vs raw backend", _section_slide, ["throughput_slide"]),
    "attention_scaling": (
        "Attention scaling, 224² to 2048²",
        _section_attention,
        ["attention_latency", "attention_memory"],
    ),
}


def render_markdown(
    results: dict[str, dict[str, Any]], goals: list[Goal], images: dict[str, Path], md_dir: Path
) -> str:
    hosts = {(_host(r).get("host"), _host(r).get("cpu"), _host(r).get("gpu")) for r in results.values()}
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
                    _host(r).get("host"),
                    _host(r).get("date"),
                    _host(r).get("cpu"),
                    _host(r).get("cores"),
                    _host(r).get("gpu") or "none",
                    _host(r).get("python"),
                    ", ".join(f"{k} {v}" for k, v in (_host(r).get("versions") or {}).items()),
                    r.get("_file"),
                ]
                for name, r in _ordered(results)
            ],
        )
    for name, result in _ordered(results):
        title, section, plots = _SECTIONS.get(name, (name.replace("_", " ").capitalize(), _section_generic, []))
        if name.startswith("peer_"):
            variants = ", ".join(f"`{k}`: {_cell(v)}" for k, v in (result.get("variants") or {}).items())
            title, section, plots = (f"Service vs Triton, levers ({variants})", _section_peer, [])
        if name.startswith("service_vs_raw_oip"):
            title, section, plots = (
                f"Service vs raw backend, {result.get('oip_batch')} images per request",
                _section_service,
                [],
            )
        lines += ["", f"## {title}", "", f"`{result.get('_file', name)}`, {_host(result).get('date', '')}.", ""]
        lines += section(result)
        for plot in plots:
            if plot in images:
                rel = Path(_relpath(images[plot], md_dir))
                lines += ["", f"![{plot.replace('_', ' ')}]({rel.as_posix()})"]
    lines.append("")
    return "\n".join(lines)


def _ordered(results: dict[str, dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
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
