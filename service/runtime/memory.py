"""Memory accounting: resident memory of this process on CPU, allocator statistics on GPU."""

from __future__ import annotations

import os
import resource
import sys
from dataclasses import asdict, dataclass

__all__ = ["MemoryReport", "current_rss_bytes", "host_memory", "peak_rss_bytes", "reset_peak_rss"]


@dataclass(frozen=True)
class MemoryReport:
    """``device`` names where the model's memory lives; ``peak_bytes`` is the high-water mark of
    that memory for the process running the model (on CPU, its peak resident set). ``source`` says
    which figure it is: ``rss`` (this process on the host), ``nvml_process`` (this process on the
    GPU, every runtime's allocations), ``nvml_device`` (the whole GPU: the process could not be
    matched, as inside a container's PID namespace), ``torch_allocator`` (PyTorch's own tensors
    only: NVML is missing)."""

    device: str
    peak_bytes: int
    allocated_bytes: int
    source: str = "rss"

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _status_bytes(*names: bytes) -> tuple[int, ...] | None:
    """The named ``/proc/self/status`` fields (kB) in bytes, from one read; None where it is missing."""
    try:
        with open("/proc/self/status", "rb") as fh:
            text = fh.read()
        found = {line[: line.find(b":")]: line for line in text.splitlines()}
        return tuple(int(found[name].split()[1]) * 1024 for name in names)
    except (OSError, ValueError, KeyError, IndexError):
        return None


def peak_rss_bytes() -> int:
    """High-water mark of this process's resident set (VmHWM; resettable with ``reset_peak_rss``)."""
    found = _status_bytes(b"VmHWM")
    if found is not None:
        return found[0]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # Linux reports KiB


def reset_peak_rss() -> bool:
    """Reset the high-water mark to the current RSS (Linux ``clear_refs``); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def current_rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as fh:
            pages = int(fh.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return peak_rss_bytes()


def host_memory() -> MemoryReport:
    """This process's peak and current resident set: one file read (every batch on CPU asks)."""
    both = _status_bytes(b"VmHWM", b"VmRSS")
    if both is None:
        return MemoryReport(device="cpu", peak_bytes=peak_rss_bytes(), allocated_bytes=current_rss_bytes())
    return MemoryReport(device="cpu", peak_bytes=both[0], allocated_bytes=both[1])
