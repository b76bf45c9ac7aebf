"""What accelerators this process sees (through PyTorch's CUDA build, which Tessera pins), and
whether the host has GPUs that this process cannot use.

``gpu_count`` is what PyTorch sees. A host can have NVIDIA devices that PyTorch does not see: a
driver too old for the CUDA 13 build, a broken install, or a Ray replica given no GPU (Ray then
sets ``CUDA_VISIBLE_DEVICES`` to the empty string). The first two are faults the loader refuses
to paper over by running on the CPU (:func:`unusable_gpu_reason`); the last is a configuration
(``batching.num_gpus: 0``), which is logged.
"""

from __future__ import annotations

import functools
import glob
import os

__all__ = ["gpu_count", "host_gpu_devices", "replica_device", "unusable_gpu_reason"]


@functools.cache
def gpu_count() -> int:
    """CUDA devices visible to this process (Ray narrows ``CUDA_VISIBLE_DEVICES`` per replica)."""
    try:
        import torch

        return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0
    except Exception:  # a broken driver is "no usable GPU"; unusable_gpu_reason says why
        return 0


def host_gpu_devices(dev: str = "/dev") -> int:
    """NVIDIA device nodes on this host (``/dev/nvidia0``...), whatever this process may use."""
    return len(glob.glob(os.path.join(dev, "nvidia[0-9]*")))


def unusable_gpu_reason(dev: str = "/dev", visible: str | None = None) -> str | None:
    """Why this host's GPUs are not usable here when they should be, or None.

    None when PyTorch sees a GPU, when the host has none, or when this process was deliberately
    given none (``CUDA_VISIBLE_DEVICES=""``, as Ray does for a replica with ``num_gpus: 0``).
    """
    if gpu_count() > 0:
        return None
    devices = host_gpu_devices(dev)
    if devices == 0:
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES") if visible is None else visible
    if visible is not None and not visible.strip():
        return None
    import torch

    try:
        torch.cuda.init()
    except Exception as exc:
        detail = str(exc).splitlines()[0][:300]
    else:
        detail = "torch.cuda.is_available() is False"
    return (
        f"this host has {devices} NVIDIA device(s) but PyTorch {torch.__version__} (CUDA {torch.version.cuda}) "
        f"cannot use them: {detail}. Check the driver supports CUDA {torch.version.cuda} (nvidia-smi) "
        "or set TESSERA_PROVIDERS=cpu to run on the CPU on purpose"
    )


def replica_device() -> str:
    """The device a replica runs on: its first visible GPU, else the CPU."""
    return "cuda:0" if gpu_count() > 0 else "cpu"
