"""Shared pieces of the benchmarks: host facts, timing, result files."""

from __future__ import annotations

import json
import os
import platform
import socket
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = [
    "CpuReading",
    "busy_share",
    "cpu_times",
    "host_facts",
    "median_time",
    "own_cpu_seconds",
    "peak_and_median",
    "results_dir",
    "steal_note",
    "tree_cpu_seconds",
    "write_result",
]


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


def cpu_times(stat: str = "/proc/stat") -> list[int] | None:
    """The host's CPU time counters (user, nice, system, idle, iowait, irq, softirq, steal, ...), or
    None where there is no ``/proc/stat``."""
    try:
        with open(stat) as f:
            first = f.readline().split()
    except OSError:
        return None
    return [int(v) for v in first[1:]] if first and first[0] == "cpu" else None


def own_cpu_seconds() -> float:
    """CPU seconds (user + system) this process has spent so far, all its threads."""
    times = os.times()
    return times.user + times.system


def _cpu_deltas(before: list[int] | None, after: list[int] | None) -> list[int] | None:
    """The first eight ``cpu_times`` counters' growth between two readings (guest time is already
    inside user and nice), or None where either reading is missing or short."""
    if before is None or after is None or len(before) < 8 or len(after) < 8:
        return None
    return [a - b for a, b in zip(after[:8], before[:8], strict=True)]


def busy_share(before: list[int] | None, after: list[int] | None) -> float | None:
    """The share of all the host's core time between two ``cpu_times`` readings that was neither
    idle nor iowait (steal counts as busy: the core was not free for this host's work)."""
    deltas = _cpu_deltas(before, after)
    if deltas is None or sum(deltas) <= 0:
        return None
    return (sum(deltas) - deltas[3] - deltas[4]) / sum(deltas)


def tree_cpu_seconds(pid: int) -> float | None:
    """CPU seconds (user + system) so far of process ``pid`` and all its descendants, the ones they
    have reaped included (a Ray worker that exited is in its raylet's children's times); None when
    ``pid`` is gone. A server's whole cost: Ray's daemons and workers, Triton's server and stubs.
    Compare two readings of one tree: a descendant reaped by a process outside it is lost."""
    import psutil

    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
        root.cpu_times()  # a root that ended (a zombie too) is no tree
    except psutil.Error:
        return None
    seconds = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.Error:  # ended between the listing and the reading
            continue
        seconds += times.user + times.system + times.children_user + times.children_system
    return seconds


@dataclass(frozen=True)
class CpuReading:
    """One moment's CPU counters: a server's process tree, this process, the host (``/proc/stat``)."""

    at: float
    tree: float | None
    own: float
    host: list[int] | None

    @classmethod
    def now(cls, pid: int) -> CpuReading:
        return cls(time.perf_counter(), tree_cpu_seconds(pid), own_cpu_seconds(), cpu_times())

    def since(self, before: CpuReading) -> dict[str, float | None]:
        """Cores busy on average between ``before`` and this reading: ``server_cpu_cores`` (the
        tree), ``client_cpu_cores`` (this process), and ``host_busy``, the share of all the host's
        core time that was busy (``busy_share``)."""
        wall = self.at - before.at
        if wall <= 0:
            return {"server_cpu_cores": None, "client_cpu_cores": None, "host_busy": None}
        server = None if self.tree is None or before.tree is None else (self.tree - before.tree) / wall
        host = busy_share(before.host, self.host)
        return {
            "server_cpu_cores": None if server is None else round(server, 4),
            "client_cpu_cores": round((self.own - before.own) / wall, 4),
            "host_busy": None if host is None else round(host, 4),
        }


def steal_note(before: list[int] | None, after: list[int] | None, threshold: float = 0.02) -> list[str]:
    """A note when the hypervisor took more than ``threshold`` of the CPU time between two
    ``cpu_times`` readings (steal time): a virtual machine whose cores are shared runs every
    server slower, and parallel runs wait for their descheduled thread."""
    deltas = _cpu_deltas(before, after)
    if deltas is None:
        return []
    total, steal = sum(deltas), deltas[7]
    if total <= 0 or steal / total <= threshold:
        return []
    return [
        f"the hypervisor took {100 * steal / total:.1f}% of this host's CPU time during the run (steal, "
        "/proc/stat): the machine's cores were shared, so compare servers only as ratios within the run"
    ]


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
