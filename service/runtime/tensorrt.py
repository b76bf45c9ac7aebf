"""Native TensorRT backend (GPU hosts only; unverified on the development machines).

``tensorrt_status`` says whether TensorRT can run here and, when it cannot, which piece is
missing; ``plan_mismatch`` says why a built plan cannot run on this GPU and TensorRT (another
version, another architecture), so the loader refuses it with that reason.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from service.runtime.base import Backend
from service.runtime.memory import MemoryReport

__all__ = [
    "TensorRTBackend",
    "TensorRTStatus",
    "compute_capability",
    "plan_mismatch",
    "tensorrt_available",
    "tensorrt_status",
]


@dataclass(frozen=True)
class TensorRTStatus:
    ok: bool
    reason: str = ""
    version: str = ""
    device_name: str = ""


@functools.cache
def tensorrt_status() -> TensorRTStatus:
    """Whether the ``tensorrt`` module imports (its libnvinfer loads) and a CUDA device is visible."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        return TensorRTStatus(
            False,
            f"tensorrt does not import ({exc}); on a GPU host install the gpu extra from NVIDIA's "
            "index (docs/deploying.md, 'GPU hosts')",
        )
    except OSError as exc:  # the bindings import but libnvinfer does not load
        return TensorRTStatus(False, f"tensorrt's libraries do not load: {exc}")
    version = str(getattr(trt, "__version__", "unknown"))
    import torch

    if not torch.cuda.is_available():
        return TensorRTStatus(False, f"TensorRT {version} is installed but no CUDA device is visible", version)
    return TensorRTStatus(True, "", version, torch.cuda.get_device_name())


def tensorrt_available() -> bool:
    return tensorrt_status().ok


def compute_capability() -> tuple[int, int]:
    import torch

    major, minor = torch.cuda.get_device_capability()
    return int(major), int(minor)


def plan_mismatch(record: dict[str, Any], version: str, capability: tuple[int, int]) -> str | None:
    """Why a plan built as ``record`` says cannot run under TensorRT ``version`` on ``capability``."""
    built_version = record.get("tensorrt_version")
    built_cc = tuple(record.get("compute_capability") or ())
    if not built_version:
        return "the plan's record names no TensorRT version (built by an older Tessera): rebuild it"
    if built_version != version:
        return f"plan built by TensorRT {built_version}, this host has {version}: run `tessera build --tensorrt`"
    if built_cc != capability:
        return (
            f"plan built for compute capability {built_cc}, this GPU is {capability}: "
            "run `tessera build --tensorrt` on this GPU"
        )
    return None


class TensorRTBackend(Backend):
    """Runs a serialized plan with PyTorch tensors as device buffers.

    The plan has one optimization profile per size bucket; the profile whose spatial size equals
    the input's is selected per call, and batches larger than the profile's are split.
    """

    name = "tensorrt"
    precision = "fp16"

    def __init__(self, plan_path: str | Path, device: str = "cuda:0"):
        import tensorrt as trt
        import torch

        self._torch = torch
        self.device = device
        logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(logger)
        with torch.cuda.device(device):
            self.engine = runtime.deserialize_cuda_engine(Path(plan_path).read_bytes())
            if self.engine is None:
                raise RuntimeError(f"could not deserialize TensorRT plan {plan_path}")
            self.context = self.engine.create_execution_context()
            self.stream = torch.cuda.Stream(device=device)
        # One execution context holds one set of shapes and addresses: callers on other threads
        # (a replica's concurrent batches, slide tiles beside /v1/predict) take turns.
        self._lock = threading.Lock()
        self._profiles: dict[int, tuple[int, int]] = {}  # size -> (profile index, max batch)
        for index in range(self.engine.num_optimization_profiles):
            _, opt, top = self.engine.get_tensor_profile_shape("pixels", index)
            self._profiles[int(opt[2])] = (index, int(top[0]))

    @property
    def sizes(self) -> list[int]:
        return sorted(self._profiles)

    def _run(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        size = pixels.shape[2]
        if size not in self._profiles:
            raise ValueError(f"no optimization profile for size {size}; plan has {self.sizes}")
        index, top = self._profiles[size]
        parts = [self._run_profile(pixels[i : i + top], index) for i in range(0, len(pixels), top)]
        return {name: np.concatenate([p[name] for p in parts]) for name in self.output_names}

    def _run_profile(self, pixels: np.ndarray, index: int) -> dict[str, np.ndarray]:
        torch = self._torch
        with self._lock, torch.cuda.device(self.device), torch.cuda.stream(self.stream):
            self.context.set_optimization_profile_async(index, self.stream.cuda_stream)
            inp = torch.from_numpy(pixels).to(self.device, non_blocking=True)
            self.context.set_input_shape("pixels", tuple(inp.shape))
            self.context.set_tensor_address("pixels", inp.data_ptr())
            outputs = {}
            for name in self.output_names:
                shape = tuple(self.context.get_tensor_shape(name))
                out = torch.empty(shape, dtype=torch.float32, device=self.device)
                self.context.set_tensor_address(name, out.data_ptr())
                outputs[name] = out
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError("TensorRT execution failed (see the TensorRT log)")
            self.stream.synchronize()
        return {k: v.cpu().numpy() for k, v in outputs.items()}

    def memory(self) -> MemoryReport:
        from service.runtime.memory_gpu import gpu_memory

        return gpu_memory(self.device)
