"""PyTorch backend: eager or compiled, fp32/fp16/bf16, SDPA (FlashAttention on GPUs).

Used where a kernel exists only in PyTorch (NATTEN, compiled flex attention), for GPU runs
without TensorRT, and as the baseline the ONNX Runtime speed-up is measured against.
"""

from __future__ import annotations

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
        if not isinstance(model, EmbeddingModel):
            model = EmbeddingModel(model)  # type: ignore[arg-type]
        self._torch = torch
        self.dtype = getattr(torch, _DTYPES[precision])
        self.device = device
        self.precision = precision
        self.model = model.to(device=device, dtype=self.dtype).eval()
        self._forward = torch.compile(self.model) if compile else self.model

    @classmethod
    def from_repository(cls, repo: ModelRepository, name: str, **kwargs: object) -> TorchBackend:
        from service.models._factory import build_from_config

        cfg = repo.config(name)
        return cls(build_from_config(cfg, repo.model_dir(name)), **kwargs)  # type: ignore[arg-type]

    def _run(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        torch = self._torch
        with torch.inference_mode():
            inp = torch.from_numpy(pixels).to(self.device, dtype=self.dtype)
            embedding, logits = self._forward(inp)
            if self.device.startswith("cuda"):
                torch.cuda.synchronize()
            return {"embedding": embedding.float().cpu().numpy(), "logits": logits.float().cpu().numpy()}

    def memory(self) -> MemoryReport:
        if self.device.startswith("cuda"):
            torch = self._torch
            return MemoryReport(
                device=self.device,
                peak_bytes=int(torch.cuda.max_memory_allocated()),
                allocated_bytes=int(torch.cuda.memory_allocated()),
            )
        return host_memory()
