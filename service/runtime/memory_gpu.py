"""GPU memory of this process through NVML (works for any runtime: ORT, TensorRT, PyTorch)."""

from __future__ import annotations

import os

from service.runtime.memory import MemoryReport

__all__ = ["gpu_memory"]

_peak: dict[int, int] = {}


def gpu_memory(device: str) -> MemoryReport:
    index = int(device.split(":")[1]) if ":" in device else 0
    used = 0
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
            if proc.pid == os.getpid():
                used = int(proc.usedGpuMemory or 0)
    except Exception:  # NVML missing: fall back to PyTorch's allocator when it is loaded
        try:
            import torch

            used = int(torch.cuda.memory_allocated(index))
            _peak[index] = max(_peak.get(index, 0), int(torch.cuda.max_memory_allocated(index)))
        except Exception:
            used = 0
    _peak[index] = max(_peak.get(index, 0), used)
    return MemoryReport(device=device, peak_bytes=_peak[index], allocated_bytes=used)
