"""What accelerators this process sees (through PyTorch's CUDA build, which Tessera pins)."""

from __future__ import annotations

import functools

__all__ = ["gpu_count", "replica_device"]


@functools.cache
def gpu_count() -> int:
    """CUDA devices visible to this process (Ray narrows ``CUDA_VISIBLE_DEVICES`` per replica)."""
    try:
        import torch

        return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0
    except Exception:  # a broken driver is "no usable GPU"; `tessera doctor` says why
        return 0


def replica_device() -> str:
    """The device a replica runs on: its first visible GPU, else the CPU."""
    return "cuda:0" if gpu_count() > 0 else "cpu"
