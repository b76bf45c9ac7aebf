"""Service throughput at saturation vs the raw backend's, same host, one run.

Raw: ``load_backend(repo, model).infer`` on full batches (the model's ``max_batch_size``) of
normalised 224² tissue tiles, looped in a worker thread for a fixed time: images per second.
Service: the whole app started in this process with ``start_service`` (embedded Ray), driven by
``concurrency`` closed-loop clients (several times the batch size, so the batcher can fill its
batches) over

* REST OIP inference with one FP32 3x224x224 binary tensor per request (no decoding: the same
  work as the raw backend plus the transport, the ingress and the batcher) — **compared**;
* gRPC OIP ``ModelInfer`` with the same tensor, from ``tritonclient.grpc`` in a subprocess (it
  cannot share a process with the service's generated protobuf modules) — **compared**;
* REST ``/v1/predict`` with 224² JPEGs cut from real slides — reported beside, since it adds
  decoding and preprocessing that the raw backend does not do.

Raw is measured before the service starts and again after it stops (the mean is the reference),
so drift on a noisy machine shows and Ray's idle processes do not weigh on the raw number. Goal
(DESIGN.md): service ≥ 90% of raw over REST and gRPC.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from service.bench._common import busy_share, cpu_times, own_cpu_seconds, write_result
from service.ports import free_port

__all__ = [
    "LoadStats",
    "grpc_load",
    "load_raw_backend",
    "main",
    "measure_raw",
    "quiet_host_notes",
    "rest_load",
    "run",
    "tissue_jpegs",
]

GOAL = 0.90
SLIDES = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "slides"
HEADER_LENGTH = "Inference-Header-Content-Length"


# -- inputs -------------------------------------------------------------------------------------------
def tissue_jpegs(count: int, side: int = 224, *, seed: int = 0, slides_dir: Path = SLIDES) -> list[bytes]:
    """``count`` JPEGs of ``side``² cut with OpenSlide from the real slides (a synthetic one without them)."""
    import openslide
    from PIL import Image

    files = sorted(p for p in slides_dir.glob("*.svs")) if slides_dir.is_dir() else []
    tmp: tempfile.TemporaryDirectory[str] | None = None
    if not files:
        from service.testing.synthetic_slides import make_synthetic_slide

        tmp = tempfile.TemporaryDirectory(prefix="tessera-bench-")
        files = [make_synthetic_slide(Path(tmp.name) / "synthetic.tiff", 4096, 4096).path]
    rng = np.random.default_rng(seed)
    out = []
    try:
        for i in range(count):
            with openslide.OpenSlide(str(files[i % len(files)])) as slide:
                width, height = slide.dimensions
                region = min(side, width, height)
                x, y = int(rng.integers(0, width - region + 1)), int(rng.integers(0, height - region + 1))
                image = slide.read_region((x, y), 0, (region, region)).convert("RGB")
            if region != side:
                image = image.resize((side, side), Image.Resampling.BICUBIC)
            buf = io.BytesIO()
            image.save(buf, "JPEG", quality=90)
            out.append(buf.getvalue())
    finally:
        if tmp is not None:
            tmp.cleanup()
    return out


def normalised(jpegs: list[bytes], mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """float32 (N, 3, H, W): the JPEGs decoded and normalised as the model's config says."""
    from PIL import Image

    m = np.asarray(mean, dtype=np.float32).reshape(3, 1, 1)
    s = np.asarray(std, dtype=np.float32).reshape(3, 1, 1)
    tiles = [
        (np.asarray(Image.open(io.BytesIO(j)).convert("RGB"), dtype=np.float32).transpose(2, 0, 1) / 255.0 - m) / s
        for j in jpegs
    ]
    return np.ascontiguousarray(np.stack(tiles), dtype=np.float32)


# -- measuring ---------------------------------------------------------------------------------------------
@dataclass
class LoadStats:
    """Completions inside the measuring window of a closed-loop load."""

    window_s: float
    ok: int = 0
    images: int = 0
    shed: int = 0
    errors: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=list)
    first_error: str | None = None

    def record(self, ok: bool, status: str, latency_ms: float, images: int, batch: int | None) -> None:
        if ok:
            self.ok += 1
            self.images += images
            self.latencies_ms.append(latency_ms)
            if batch:
                self.batch_sizes.append(batch)
        elif status in ("503", "RESOURCE_EXHAUSTED"):
            self.shed += 1
        else:
            self.errors += 1
            self.first_error = self.first_error or status

    def to_dict(self) -> dict[str, Any]:
        lat = sorted(self.latencies_ms)

        def pct(q: float) -> float | None:
            return round(lat[min(len(lat) - 1, int(q * len(lat)))], 2) if lat else None

        return {
            "img_per_s": round(self.images / self.window_s, 3),
            "requests_ok": self.ok,
            "shed": self.shed,
            "errors": self.errors,
            "first_error": self.first_error,
            "window_s": self.window_s,
            "p50_ms": pct(0.50),
            "p95_ms": pct(0.95),
            "p99_ms": pct(0.99),
            "mean_batch_size": round(statistics.fmean(self.batch_sizes), 3) if self.batch_sizes else None,
        }


def quiet_host_notes(raw_before: float, raw_after: float, ratios: list[float]) -> list[str]:
    """Signs that the host was not quiet, which make the ratio unreliable (empty when none)."""
    notes = []
    if min(raw_before, raw_after) > 0 and max(raw_before, raw_after) / min(raw_before, raw_after) > 1.15:
        notes.append(
            f"raw throughput drifted from {raw_before:g} to {raw_after:g} during the run: other load on the host"
        )
    if any(r > 1.05 for r in ratios):
        notes.append(
            "measured above the raw backend: the host was busy with other work, where several service "
            "processes win more CPU than one raw loop; rerun on a quiet host"
        )
    return notes


def measure_raw(
    backend: Any, batch: np.ndarray, duration_s: float, warmup: int = 2, callers: int | None = None
) -> dict[str, Any]:
    """Images per second of ``backend.infer(batch)`` looped for ``duration_s`` by ``callers`` worker
    threads at once (default: the backend's CPU lanes, as many batches as a replica runs at once
    under load; each runs at least once), and this process's CPU time per image meanwhile."""
    callers = callers or int(getattr(backend, "lanes", 1))
    for _ in range(warmup):
        backend.infer(batch)
    cpu_before = own_cpu_seconds()
    start = time.perf_counter()

    def loop() -> list[float]:
        times: list[float] = []
        while not times or time.perf_counter() - start < duration_s:
            t = time.perf_counter()
            backend.infer(batch)
            times.append(time.perf_counter() - t)
        return times

    with ThreadPoolExecutor(callers, thread_name_prefix="tessera-raw") as pool:
        times = [t for each in pool.map(lambda _: loop(), range(callers)) for t in each]
    elapsed = time.perf_counter() - start
    cpu_s = own_cpu_seconds() - cpu_before
    images = len(times) * batch.shape[0]
    return {
        "img_per_s": round(images / elapsed, 3),
        "cpu_ms_per_img": round(1e3 * cpu_s / images, 3) if images else None,
        "batches": len(times),
        "batch_size": int(batch.shape[0]),
        "callers": callers,
        "median_batch_ms": round(statistics.median(times) * 1e3, 2),
        "seconds": round(elapsed, 2),
    }


async def _rest_load_async(
    url: str,
    body: bytes,
    headers: dict[str, str],
    concurrency: int,
    duration_s: float,
    warmup_s: float,
    parse: Callable[[Any], tuple[int, int | None]],
) -> LoadStats:
    import httpx

    stats = LoadStats(window_s=duration_s)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=120.0) as client:
        begin = time.perf_counter() + warmup_s
        end = begin + duration_s

        async def worker() -> None:
            while time.perf_counter() < end:
                start = time.perf_counter()
                try:
                    response = await client.post(url, content=body, headers=headers)
                    status = str(response.status_code)
                    ok = response.status_code == 200
                    images, batch = parse(response) if ok else (0, None)
                except httpx.HTTPError as exc:
                    ok, status, images, batch = False, type(exc).__name__, 0, None
                except (ValueError, KeyError) as exc:
                    ok, status, images, batch = False, f"malformed answer: {exc}", 0, None
                done = time.perf_counter()
                if begin <= done <= end:
                    stats.record(ok, status, (done - start) * 1e3, images, batch)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return stats


def rest_load(
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    concurrency: int,
    duration_s: float,
    warmup_s: float,
    parse: Callable[[Any], tuple[int, int | None]],
) -> LoadStats:
    """A closed loop of ``concurrency`` clients posting ``body`` to ``url``; counts the window only."""
    return asyncio.run(_rest_load_async(url, body, headers, concurrency, duration_s, warmup_s, parse))


def _parse_oip(response: Any) -> tuple[int, int | None]:
    from tritonclient.http import InferenceServerClient

    header_length = response.headers.get(HEADER_LENGTH)
    answer = InferenceServerClient.parse_response_body(
        response.content, header_length=int(header_length) if header_length is not None else None
    ).get_response()
    return int(answer["outputs"][0]["shape"][0]), int((answer.get("parameters") or {}).get("batch_size") or 0) or None


def _parse_predict(response: Any) -> tuple[int, int | None]:
    body = response.json()
    if not body.get("embedding"):
        raise ValueError("no embedding in the answer")
    return 1, None


def grpc_load(
    target: str, model: str, pixels: np.ndarray, *, concurrency: int, duration_s: float, warmup_s: float
) -> LoadStats:
    """The gRPC closed loop, run in this process: import ``tritonclient.grpc`` (call it in a subprocess)."""
    import tritonclient.grpc as tg
    from tritonclient.utils import InferenceServerException

    stats = LoadStats(window_s=duration_s)
    lock = threading.Lock()
    begin = time.perf_counter() + warmup_s
    end = begin + duration_s

    def worker() -> None:
        client = tg.InferenceServerClient(target)
        inputs = [tg.InferInput("pixels", list(pixels.shape), "FP32")]
        inputs[0].set_data_from_numpy(pixels)
        outputs = [tg.InferRequestedOutput("embedding")]
        try:
            while time.perf_counter() < end:
                start = time.perf_counter()
                ok, status, images = True, "OK", 0
                try:
                    result = client.infer(model, inputs, outputs=outputs, client_timeout=120)
                    embedding = result.as_numpy("embedding")
                    images = 0 if embedding is None else int(embedding.shape[0])
                    ok = images == pixels.shape[0]
                    status = "OK" if ok else "WRONG_SHAPE"
                except InferenceServerException as exc:
                    ok, status = False, str(exc.status()).replace("StatusCode.", "")
                done = time.perf_counter()
                if begin <= done <= end:
                    with lock:
                        stats.record(ok, status, (done - start) * 1e3, images, None)
        finally:
            client.close()

    threads = [threading.Thread(target=worker, name=f"grpc-client-{i}") for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return stats


def _grpc_subprocess(
    target: str, model: str, pixels: np.ndarray, concurrency: int, duration_s: float, warmup_s: float
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="tessera-bench-") as tmp:
        path = Path(tmp) / "pixels.npy"
        np.save(path, pixels)
        command = [
            sys.executable,
            "-m",
            "service.bench.service_vs_raw",
            "--grpc-client",
            target,
            "--model",
            model,
            "--pixels",
            str(path),
            "--concurrency",
            str(concurrency),
            "--duration",
            str(duration_s),
            "--warmup",
            str(warmup_s),
        ]
        out = subprocess.run(command, capture_output=True, text=True, timeout=duration_s + warmup_s + 180)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return dict(json.loads(line[7:]))
    tail = (out.stderr or out.stdout).strip().splitlines()[-3:]
    return {"img_per_s": 0.0, "skipped": f"gRPC client failed (exit {out.returncode}): {' | '.join(tail)[:400]}"}


# -- the benchmark ------------------------------------------------------------------------------------------
def host_busy_share(seconds: float) -> float:
    """The share of all cores' time that was busy over ``seconds`` (``/proc/stat``; 0.0 without it)."""
    before = cpu_times()
    time.sleep(seconds)
    return busy_share(before, cpu_times()) or 0.0


def result_name(oip_batch: int) -> str:
    """``service_vs_raw`` for one image per OIP request, ``service_vs_raw_oip8`` for 8, ..."""
    return "service_vs_raw" if oip_batch == 1 else f"service_vs_raw_oip{oip_batch}"


@dataclass(frozen=True)
class _Inputs:
    """What the benchmark sends: tissue JPEGs, the raw backend's full batch, one OIP request's tensor."""

    side: int
    max_batch: int
    jpegs: list[bytes]
    raw_batch: np.ndarray
    single: np.ndarray


@dataclass(frozen=True)
class _Load:
    """The closed loop every transport is measured under."""

    concurrency: int
    duration_s: float
    warmup_s: float
    rounds: int


def _prepare_inputs(cfg: Any, oip_batch: int) -> _Inputs:
    """Tissue JPEGs at the model's native size, normalised as its config says."""
    side = cfg.input.native_size
    max_batch = cfg.batching.max_batch_size
    jpegs = tissue_jpegs(max(max_batch, oip_batch, 8), side)
    tiles = normalised(jpegs, cfg.input.mean, cfg.input.std)
    raw_batch = np.ascontiguousarray(tiles[:max_batch])
    single = np.ascontiguousarray(tiles[:oip_batch])  # what one OIP request carries
    return _Inputs(side, max_batch, jpegs, raw_batch, single)


def load_raw_backend(repo: Any, model: str, settings: Any) -> Any:
    """The raw backend exactly as the service's replica loads it (runtime, providers, threads, spinning,
    CPU lanes: ``measure_raw`` runs as many batches at once as it has lanes)."""
    from service.runtime import load_backend

    return load_backend(
        repo,
        model,
        prefer=settings.runtime,
        providers=settings.providers,
        intra_op_threads=settings.intra_op_threads,
        spin=settings.ort_spin,
        lanes=settings.cpu_lanes,
    )


def _measure_service(
    settings: Any, model: str, inputs: _Inputs, transports: tuple[str, ...], load: _Load
) -> tuple[dict[str, list[dict[str, Any]]], float, float, Any]:
    """Start the service, measure each transport ``load.rounds`` times, stop it: (statistics per
    transport, seconds to ready, the host's busy share with the service idle, the settings it ran)."""
    from service.clients.oip import oip_binary_body
    from service.serve.runner import start_service, stop_service

    base = f"http://127.0.0.1:{settings.http_port}"
    target = f"127.0.0.1:{settings.grpc_port}"
    body, header_len = oip_binary_body(inputs.single)
    oip_headers = {"content-type": "application/octet-stream", HEADER_LENGTH: str(header_len)}
    measured: dict[str, list[dict[str, Any]]] = {t: [] for t in transports}
    started = time.perf_counter()
    settings = start_service(settings)  # "auto" resolved: the set-up measured
    ready_s = round(time.perf_counter() - started, 2)
    print(f"service ready in {ready_s} s at {base} and grpc://{target}; concurrency {load.concurrency}", flush=True)
    idle_share = host_busy_share(5.0)
    print(f"  host busy with the service idle: {100 * idle_share:.1f}% (Ray's daemons and controller)", flush=True)
    try:
        for _ in range(load.rounds):
            for transport in transports:
                stats = _measure_transport(transport, base, target, model, inputs, (body, oip_headers), load)
                measured[transport].append(stats)
                print(f"  {transport:<18} {stats.get('img_per_s', 0):8.1f} img/s  {_brief(stats)}", flush=True)
    finally:
        stop_service()
    return measured, ready_s, idle_share, settings


def _measure_transport(
    transport: str,
    base: str,
    target: str,
    model: str,
    inputs: _Inputs,
    oip: tuple[bytes, dict[str, str]],
    load: _Load,
) -> dict[str, Any]:
    """One closed-loop measurement of ``transport`` against the running service (``oip``: body, headers)."""
    if transport == "rest_oip_fp32":
        return rest_load(
            f"{base}/v2/models/{model}/infer",
            *oip,
            concurrency=load.concurrency,
            duration_s=load.duration_s,
            warmup_s=load.warmup_s,
            parse=_parse_oip,
        ).to_dict()
    if transport == "rest_predict_jpeg":
        return _predict_round(base, model, inputs.jpegs, load.concurrency, load.duration_s, load.warmup_s)
    if transport == "grpc_oip_fp32":
        return _grpc_subprocess(target, model, inputs.single, load.concurrency, load.duration_s, load.warmup_s)
    raise ValueError(f"unknown transport {transport!r}")


def _summarise(
    measured: dict[str, list[dict[str, Any]]], raw_before: dict[str, Any], raw_after: dict[str, Any], oip_batch: int
) -> tuple[float, list[dict[str, Any]], dict[str, Any]]:
    """(raw reference, rows, summary): the raw reference is the mean of before and after; a row per
    transport has its median rate over the rounds and its ratio to raw; the summary judges the goal."""
    raw_ips = (raw_before["img_per_s"] + raw_after["img_per_s"]) / 2
    rows = [{"path": "raw backend", "transport": "raw", "img_per_s": round(raw_ips, 3), "ratio": 1.0}]
    summary: dict[str, Any] = {"raw_img_per_s": round(raw_ips, 3)}
    for transport, runs in measured.items():
        rates = [r.get("img_per_s", 0.0) for r in runs]
        ips = statistics.median(rates) if rates else 0.0
        ratio = round(ips / raw_ips, 4) if raw_ips else None
        rows.append(
            {
                "path": _LABELS[transport].replace(
                    "1 image/request", f"{oip_batch} image{'s' * (oip_batch > 1)}/request"
                ),
                "transport": transport,
                "img_per_s": round(ips, 3),
                "ratio": ratio,
                "compared": transport in _COMPARED,
                "runs": runs,
            }
        )
        summary[f"{transport}_ratio"] = ratio
    compared = [r["ratio"] for r in rows if r.get("compared") and r["ratio"] is not None]
    summary["goal_met"] = bool(compared) and all(r >= GOAL for r in compared)
    summary["compared"] = "REST OIP binary FP32 and gRPC OIP FP32 (no decoding, the raw backend's work)"
    summary["notes"] = quiet_host_notes(raw_before["img_per_s"], raw_after["img_per_s"], compared)
    return raw_ips, rows, summary


def run(
    repo_path: str = "model_repo",
    model: str = "vit_small",
    *,
    concurrency: int = 32,
    duration_s: float = 15.0,
    warmup_s: float = 3.0,
    raw_duration_s: float = 10.0,
    rounds: int = 1,
    oip_batch: int = 1,
    transports: tuple[str, ...] = ("rest_oip_fp32", "grpc_oip_fp32", "rest_predict_jpeg"),
) -> dict[str, Any]:
    """Raw before, the service over each transport, raw after; the result written and returned."""
    from service.models import ModelRepository
    from service.settings import ServerSettings

    repo = ModelRepository(repo_path)
    inputs = _prepare_inputs(repo.config(model), oip_batch)
    settings = ServerSettings.from_env(
        model_repo=repo_path, host="127.0.0.1", http_port=free_port(), grpc_port=free_port(), metrics_port=free_port()
    )
    backend = load_raw_backend(repo, model, settings)
    print(
        f"raw {model} ({backend.describe()}) batch {inputs.max_batch}: measuring {raw_duration_s:.0f} s ...", flush=True
    )
    raw_before = measure_raw(backend, inputs.raw_batch, raw_duration_s)
    print(f"  raw before: {raw_before['img_per_s']:.1f} img/s", flush=True)

    load = _Load(concurrency, duration_s, warmup_s, rounds)
    measured, ready_s, idle_share, served = _measure_service(settings, model, inputs, transports, load)

    raw_after = measure_raw(backend, inputs.raw_batch, raw_duration_s)
    print(f"  raw after:  {raw_after['img_per_s']:.1f} img/s", flush=True)
    raw_ips, rows, summary = _summarise(measured, raw_before, raw_after, oip_batch)
    result = {
        "benchmark": result_name(oip_batch),
        "goal": ">= 90% of the raw backend's throughput at saturation, REST and gRPC",
        "model": model,
        "size": inputs.side,
        "max_batch_size": inputs.max_batch,
        "concurrency": concurrency,
        "duration_s": duration_s,
        "warmup_s": warmup_s,
        "raw_duration_s": raw_duration_s,
        "rounds": rounds,
        "oip_batch": oip_batch,
        "front_end": served.front_end,
        "topology": served.topology,
        "service_ready_s": ready_s,
        "idle_busy_share": round(idle_share, 4),
        "backend": backend.describe(),
        "intra_op_threads": settings.intra_op_threads,
        "ort_spin": settings.ort_spin,
        "raw": {"before": raw_before, "after": raw_after, "img_per_s": round(raw_ips, 3)},
        "rows": rows,
        "summary": summary,
    }
    for row in rows[1:]:
        print(f"{row['path']:<34} {row['img_per_s']:8.1f} img/s  {100 * (row['ratio'] or 0):5.1f}% of raw")
    print(f"wrote {write_result(result_name(oip_batch), result)}")
    return result


_LABELS = {
    "rest_oip_fp32": "REST OIP binary FP32 (1 image/request)",
    "grpc_oip_fp32": "gRPC OIP FP32 (1 image/request)",
    "rest_predict_jpeg": "REST /v1/predict 224² JPEG",
}
_COMPARED = ("rest_oip_fp32", "grpc_oip_fp32")


def _predict_round(
    base: str, model: str, jpegs: list[bytes], concurrency: int, duration_s: float, warmup_s: float
) -> dict[str, Any]:
    # one JPEG per worker would need a body per request; the same tissue crop is representative
    return rest_load(
        f"{base}/v1/predict?model={model}",
        jpegs[0],
        {"content-type": "image/jpeg"},
        concurrency=concurrency,
        duration_s=duration_s,
        warmup_s=warmup_s,
        parse=_parse_predict,
    ).to_dict()


def _brief(stats: dict[str, Any]) -> str:
    if "skipped" in stats:
        return str(stats["skipped"])
    return (
        f"p50 {stats.get('p50_ms')} ms, shed {stats.get('shed')}, errors {stats.get('errors')}, "
        f"mean batch {stats.get('mean_batch_size')}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="tessera bench service", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-repo", default="model_repo")
    parser.add_argument("--model", default="vit_small")
    parser.add_argument("--concurrency", type=int, default=32, help="closed-loop clients per transport")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds measured per transport")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of load before measuring")
    parser.add_argument("--raw-duration", type=float, default=10.0, help="seconds of raw inference, before and after")
    parser.add_argument("--rounds", type=int, default=1, help="measurements per transport (median taken)")
    parser.add_argument(
        "--oip-batch", type=int, default=1, help="images per OIP request (REST and gRPC); the batcher fills batches"
    )
    parser.add_argument(
        "--transport",
        action="append",
        choices=list(_LABELS),
        help="measure only these (default: all three)",
    )
    # internal: the gRPC client, run in a subprocess
    parser.add_argument("--grpc-client", metavar="TARGET", help=argparse.SUPPRESS)
    parser.add_argument("--pixels", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not 1 <= args.concurrency <= 512 or not 0 < args.duration <= 600 or args.rounds < 1:
        parser.error("concurrency must be 1..512, duration in (0, 600] s and rounds >= 1")
    if not 1 <= args.oip_batch <= 64:
        parser.error("--oip-batch must be 1..64")
    if args.grpc_client:
        pixels = np.load(args.pixels)
        stats = grpc_load(
            args.grpc_client,
            args.model,
            pixels,
            concurrency=args.concurrency,
            duration_s=args.duration,
            warmup_s=args.warmup,
        )
        print("RESULT " + json.dumps(stats.to_dict()), flush=True)
        return 0
    run(
        args.model_repo,
        args.model,
        concurrency=args.concurrency,
        duration_s=args.duration,
        warmup_s=args.warmup,
        raw_duration_s=args.raw_duration,
        rounds=args.rounds,
        oip_batch=args.oip_batch,
        transports=tuple(args.transport or _LABELS),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
