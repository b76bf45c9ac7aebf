"""ONNX Runtime backend: CPU here; CUDA and TensorRT execution providers where installed."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from service.runtime.base import Backend
from service.runtime.memory import MemoryReport, host_memory

__all__ = ["OrtBackend", "available_providers", "choose_providers"]

log = logging.getLogger(__name__)

# Fastest first. TensorRT's EP builds its own engine from the ONNX graph on first run.
_PREFERENCE = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def available_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def choose_providers(prefer: str = "auto", available: Sequence[str] | None = None) -> list[str]:
    """Providers in the order ORT should try them.

    ``prefer``: ``auto`` (fastest available), ``cpu``, ``cuda`` or ``tensorrt``. Asking for a
    provider that is not installed raises, so a misconfigured GPU host fails loudly instead of
    silently running on the CPU.
    """
    available = list(available if available is not None else available_providers())
    if prefer == "auto":
        chosen = [p for p in _PREFERENCE if p in available]
    else:
        wanted = {
            "cpu": "CPUExecutionProvider",
            "cuda": "CUDAExecutionProvider",
            "tensorrt": "TensorrtExecutionProvider",
        }.get(prefer)
        if wanted is None:
            raise ValueError(f"unknown provider preference {prefer!r}")
        if wanted not in available:
            raise RuntimeError(f"{wanted} requested but onnxruntime offers only {available}")
        chosen = [p for p in _PREFERENCE[_PREFERENCE.index(wanted) :] if p in available]
    return chosen or ["CPUExecutionProvider"]


class OrtBackend(Backend):
    name = "onnxruntime"

    def __init__(
        self,
        model_path: str | Path,
        *,
        providers: Sequence[str] | None = None,
        precision: str = "fp32",
        intra_op_threads: int = 0,
        spin: bool = False,
    ):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        # The artifact was optimised at build time; ENABLE_ALL adds the provider-specific fusions.
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = intra_op_threads
        # A spinning pool keeps its cores busy between ops: fastest alone, but on a host whose cores
        # several replicas share it slows every neighbour (measured: docs/performance.md).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "1" if spin else "0")
        opts.log_severity_level = 3
        self.providers = list(providers or choose_providers())
        self.session = ort.InferenceSession(str(model_path), sess_options=opts, providers=self.providers)
        self.providers = list(self.session.get_providers())
        self.device = "cuda:0" if self.providers[0] in ("CUDAExecutionProvider", "TensorrtExecutionProvider") else "cpu"
        self.precision = precision
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = tuple(o.name for o in self.session.get_outputs())
        log.info("onnxruntime session for %s on %s", model_path, self.providers)

    def _run(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        values = self.session.run(list(self.output_names), {self.input_name: pixels})
        return {name: np.asarray(v, dtype=np.float32) for name, v in zip(self.output_names, values, strict=True)}

    def memory(self) -> MemoryReport:
        if self.device.startswith("cuda"):
            from service.runtime.memory_gpu import gpu_memory

            return gpu_memory(self.device)
        return host_memory()

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "providers": self.providers}
