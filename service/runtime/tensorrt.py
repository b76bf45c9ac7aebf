"""Native TensorRT backend (GPU hosts only; unverified on the development machines)."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from service.runtime.base import Backend
from service.runtime.memory import MemoryReport

__all__ = ["TensorRTBackend", "tensorrt_available"]


def tensorrt_available() -> bool:
    """True when the ``tensorrt`` module imports and a CUDA device is visible."""
    try:
        import tensorrt  # noqa: F401
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


class TensorRTBackend(Backend):
    """Runs a serialized plan with PyTorch tensors as device buffers.

    The plan has one optimization profile per size bucket; the profile whose spatial size equals
    the input's is selected per call.
    """

    name = "tensorrt"
    precision = "fp16"

    def __init__(self, plan_path: str | Path):
        import tensorrt as trt
        import torch

        self._torch = torch
        logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(logger)
        self.engine = runtime.deserialize_cuda_engine(Path(plan_path).read_bytes())
        if self.engine is None:
            raise RuntimeError(f"could not deserialize TensorRT plan {plan_path}")
        self.context = self.engine.create_execution_context()
        # One execution context holds one set of shapes and addresses: callers on other threads
        # (a replica's concurrent batches, slide tiles beside /v1/predict) take turns.
        self._lock = threading.Lock()
        self.device = "cuda:0"
        self.stream = torch.cuda.Stream()
        self._profile_sizes = []
        for index in range(self.engine.num_optimization_profiles):
            _, opt, _ = self.engine.get_tensor_profile_shape("pixels", index)
            self._profile_sizes.append(int(opt[2]))

    def _run(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        torch = self._torch
        size = pixels.shape[2]
        if size not in self._profile_sizes:
            raise ValueError(f"no optimization profile for size {size}; plan has {self._profile_sizes}")
        with self._lock, torch.cuda.stream(self.stream):
            self.context.set_optimization_profile_async(self._profile_sizes.index(size), self.stream.cuda_stream)
            inp = torch.from_numpy(pixels).to("cuda", non_blocking=True)
            self.context.set_input_shape("pixels", tuple(inp.shape))
            self.context.set_tensor_address("pixels", inp.data_ptr())
            outputs = {}
            for name in self.output_names:
                shape = tuple(self.context.get_tensor_shape(name))
                out = torch.empty(shape, dtype=torch.float32, device="cuda")
                self.context.set_tensor_address(name, out.data_ptr())
                outputs[name] = out
            self.context.execute_async_v3(self.stream.cuda_stream)
            self.stream.synchronize()
        return {k: v.cpu().numpy() for k, v in outputs.items()}

    def memory(self) -> MemoryReport:
        from service.runtime.memory_gpu import gpu_memory

        return gpu_memory(self.device)
