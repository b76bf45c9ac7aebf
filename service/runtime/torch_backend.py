"""PyTorch backend: CPU or CUDA, fp32/fp16/bf16, optionally compiled.

On CUDA it is a first-class runtime: weights and activations in fp16 (or bf16), attention through
``scaled_dot_product_attention`` (FlashAttention / memory-efficient kernels; every timm block is
switched to it by ``use_fused_attention`` at build), neighbourhood attention through NATTEN when
installed and otherwise the tiled kernel (one SDPA per layer), and ``torch.compile`` on request.
Also the baseline the ONNX Runtime speed-up is measured against on CPU.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from service.models import ModelRepository
from service.runtime.base import Backend
from service.runtime.memory import MemoryReport, host_memory

__all__ = ["TorchBackend"]

_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, model: object, *, device: str = "cpu", precision: str = "fp32", compile: bool = False):
        import torch

        from service.models._factory import EmbeddingModel

        if precision not in _DTYPES:
            raise ValueError(f"precision must be one of {sorted(_DTYPES)}")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError(f"device {device!r} asked for, but PyTorch sees no CUDA device")
        if device == "cpu" and precision == "fp16":
            raise ValueError("fp16 on the CPU is slower than fp32 in PyTorch; use fp32 or bf16 there")
        if not isinstance(model, EmbeddingModel):
            model = EmbeddingModel(model)  # type: ignore[arg-type]
        self._torch = torch
        self.dtype = getattr(torch, _DTYPES[precision])
        self.device = device
        self.precision = precision
        self.model = model.to(device=device, dtype=self.dtype).eval()
        self._forward: Any = torch.compile(self.model, dynamic=True) if compile else self.model
        # CUDA work of concurrent batches is ordered on one stream; keep their host copies apart.
        self._lock = threading.Lock() if device.startswith("cuda") else None
        # Pixels reach the GPU through one page-locked buffer, grown to the largest batch seen and
        # held until close(): a copy from pageable memory goes through the driver's bounce buffers
        # at a fraction of the bus's rate (docs/performance.md, "GPU: ViT-B/16 throughput").
        self._staging: Any = None

    @classmethod
    def from_repository(cls, repo: ModelRepository, name: str, **kwargs: Any) -> TorchBackend:
        from service.models._factory import build_from_config

        cfg = repo.config(name)
        return cls(build_from_config(cfg, repo.model_dir(name)), **kwargs)

    def _run(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        if self._lock is None:
            return self._forward_numpy(pixels)
        with self._lock:
            return self._forward_numpy(pixels)

    def _forward_numpy(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        torch = self._torch
        with torch.inference_mode():
            embedding, logits = self._forward(self._to_device(pixels))
            # .cpu() waits for the stream, so the staging buffer is free again when this returns
            return {"embedding": embedding.float().cpu().numpy(), "logits": logits.float().cpu().numpy()}

    def _to_device(self, pixels: np.ndarray) -> Any:
        torch = self._torch
        host = torch.from_numpy(np.ascontiguousarray(pixels))
        if not self.device.startswith("cuda"):  # nothing to copy
            return host.to(self.dtype)
        staging = self._staging
        if staging is None or staging.dtype != host.dtype or staging.numel() < host.numel():
            staging = self._staging = torch.empty(host.numel(), dtype=host.dtype, pin_memory=True)
        staged = staging[: host.numel()].view(host.shape)
        staged.copy_(host)
        return staged.to(self.device, non_blocking=True).to(self.dtype)

    def close(self) -> None:
        """Let go of the page-locked staging buffer (a run in progress keeps its own reference)."""
        self._staging = None

    def memory(self) -> MemoryReport:
        if self.device.startswith("cuda"):
            from service.runtime.memory_gpu import gpu_memory

            return gpu_memory(self.device)
        return host_memory()
