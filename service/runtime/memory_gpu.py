"""GPU memory through NVML: every runtime's allocations (ONNX Runtime, TensorRT, PyTorch).

NVML is initialised once per process. The device a replica was given is found through
``CUDA_VISIBLE_DEVICES`` (Ray sets it per replica; entries are indices or ``GPU-``/``MIG-`` UUIDs),
because NVML numbers devices physically and ignores it. This process's usage is read from the
device's process list; inside a container the PIDs there are the host's, so when the process is
not found the whole device's used memory is reported, labelled ``nvml_device``. Without NVML,
PyTorch's allocator figure is reported, labelled ``torch_allocator`` (it sees nothing ONNX Runtime
or TensorRT allocate).
"""

from __future__ import annotations

import functools
import os
import threading
from typing import Any

from service.runtime.memory import MemoryReport

__all__ = ["gpu_memory", "nvml_device_handle", "physical_device"]

_lock = threading.Lock()
_peak: dict[str, int] = {}


@functools.cache
def _nvml() -> Any | None:
    """The initialised ``pynvml`` module (from nvidia-ml-py), or None where NVML cannot load."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return None
    return pynvml


def physical_device(ordinal: int, visible: str | None = None) -> int | str:
    """NVML's name for CUDA device ``ordinal`` of this process: an index, or a UUID string."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES") if visible is None else visible
    if visible is None or not visible.strip():
        return ordinal
    entries = [e.strip() for e in visible.split(",") if e.strip()]
    if ordinal >= len(entries):
        raise ValueError(f"cuda:{ordinal} is not visible (CUDA_VISIBLE_DEVICES={visible!r})")
    entry = entries[ordinal]
    return int(entry) if entry.isdigit() else entry


def _torch_uuid(ordinal: int) -> str | None:
    """The UUID of CUDA device ``ordinal`` as NVML spells it (``GPU-...``), from PyTorch.

    Exact whatever ``CUDA_DEVICE_ORDER`` says: CUDA's default order (fastest first) and NVML's
    (PCI bus) differ on hosts with mixed GPUs, so an index is only a fallback.
    """
    try:
        import torch

        uuid = str(torch.cuda.get_device_properties(ordinal).uuid)
    except Exception:
        return None
    return uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}"


def nvml_device_handle(nvml: Any, ordinal: int) -> Any:
    uuid = _torch_uuid(ordinal)
    if uuid is not None:
        return nvml.nvmlDeviceGetHandleByUUID(uuid)
    device = physical_device(ordinal)
    if isinstance(device, int):
        return nvml.nvmlDeviceGetHandleByIndex(device)
    return nvml.nvmlDeviceGetHandleByUUID(device)


def _ordinal(device: str) -> int:
    return int(device.split(":")[1]) if ":" in device else 0


def _read(device: str) -> tuple[int, str]:
    nvml = _nvml()
    ordinal = _ordinal(device)
    if nvml is not None:
        try:
            handle = nvml_device_handle(nvml, ordinal)
            pid = os.getpid()
            for proc in nvml.nvmlDeviceGetComputeRunningProcesses(handle):
                if proc.pid == pid:
                    return int(proc.usedGpuMemory or 0), "nvml_process"
            return int(nvml.nvmlDeviceGetMemoryInfo(handle).used), "nvml_device"
        except Exception:  # a memory figure must never fail the request it describes
            pass
    try:
        import torch

        return int(torch.cuda.memory_allocated(ordinal)), "torch_allocator"
    except Exception:
        return 0, "unavailable"


def gpu_memory(device: str) -> MemoryReport:
    """Current and peak (over this process's calls) memory of ``device`` (``cuda:N``)."""
    used, source = _read(device)
    with _lock:
        _peak[device] = max(_peak.get(device, 0), used)
        peak = _peak[device]
    return MemoryReport(device=device, peak_bytes=peak, allocated_bytes=used, source=source)
