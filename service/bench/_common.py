"""Shared pieces of the benchmarks: host facts, timing, result files."""

from __future__ import annotations

import json
import os
import platform
import socket
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["host_facts", "median_time", "peak_and_median", "results_dir", "write_result"]


def results_dir() -> Path:
    from service.settings import ProcessSettings, load

    return load(ProcessSettings).bench_results


def host_facts() -> dict[str, Any]:
    versions = {}
    for pkg in ("torch", "timm", "onnxruntime", "onnx", "ray"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = "absent"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    gpu = None
    try:
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name()
    except ImportError:
        pass
    return {
        "host": socket.gethostname(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "gpu": gpu,
        "python": platform.python_version(),
        "versions": versions,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def median_time(fn: Callable[[], object], *, repeats: int, warmup: int = 1) -> tuple[float, list[float]]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def peak_and_median(fn: Callable[[], object], *, repeats: int) -> tuple[float, int]:
    """Median seconds of ``repeats`` calls and this process's peak resident memory above where it
    stood before them (the call's own working memory; warm up first so the model is loaded)."""
    from service.runtime.memory import current_rss_bytes, peak_rss_bytes, reset_peak_rss

    reset_peak_rss()
    before = current_rss_bytes()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), max(0, peak_rss_bytes() - before)


def write_result(name: str, payload: dict[str, Any]) -> Path:
    """Write ``payload`` as ``bench/results/<host>-<date>-<name>.json`` once it validates as the
    benchmark's model (``service.bench.results``): what the report reads is what was written."""
    from service.bench.results import model_for

    out = results_dir()
    out.mkdir(parents=True, exist_ok=True)
    payload.setdefault("benchmark", name)
    facts = payload.setdefault("host", host_facts())
    model_for(name).model_validate(payload)
    day = facts["date"][:10]
    path = out / f"{facts['host']}-{day}-{name}.json"
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    return path
