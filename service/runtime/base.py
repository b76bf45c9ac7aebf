"""The one ``Backend`` interface: a batch of pixels in, named arrays out, with accounting."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np

from service.runtime.memory import MemoryReport, host_memory

__all__ = ["Backend", "InferenceResult"]


@dataclass
class InferenceResult:
    """Outputs of one batch and what it cost."""

    outputs: dict[str, np.ndarray]
    latency_ms: float
    memory: MemoryReport
    batch_size: int = 1
    extra: dict[str, float] = field(default_factory=dict)


class Backend(ABC):
    """A loaded model on one runtime.

    Subclasses implement ``_run``; ``infer`` times it and reads memory. Inputs are always
    float32 NCHW (the fp16 artifacts take fp32 inputs too); outputs are ``embedding`` and
    ``logits`` as float32.
    """

    #: runtime name reported to clients: onnxruntime | tensorrt | torch
    name: str = "abstract"
    #: cpu | cuda:0 ...
    device: str = "cpu"
    #: fp32 | fp16 | bf16
    precision: str = "fp32"
    output_names: tuple[str, ...] = ("embedding", "logits")
    #: faster runtimes the loader tried first and why each could not run: [(label, reason)]
    load_notes: list[tuple[str, str]] = []  # set per instance by the loader
    #: batches worth running at once (``OrtBackend``'s CPU lanes); callers allow at least this many
    lanes: int = 1

    @abstractmethod
    def _run(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        """Run one batch; ``pixels`` is contiguous float32 (N, 3, H, W)."""

    def infer(self, pixels: np.ndarray) -> InferenceResult:
        if pixels.ndim != 4 or pixels.shape[1] != 3:
            raise ValueError(f"expected (N, 3, H, W) pixels, got shape {pixels.shape}")
        pixels = np.ascontiguousarray(pixels, dtype=np.float32)
        start = time.perf_counter()
        outputs = self._run(pixels)
        latency_ms = (time.perf_counter() - start) * 1e3
        return InferenceResult(
            outputs=outputs, latency_ms=latency_ms, memory=self.memory(), batch_size=int(pixels.shape[0])
        )

    def warm_up(self, pixels: np.ndarray) -> None:
        """Run ``pixels`` once on everything that will run batches (the first run at a shape allocates)."""
        self.infer(pixels)

    def memory(self) -> MemoryReport:
        """Peak and current memory of what runs the model (the host process on CPU)."""
        return host_memory()

    def describe(self) -> dict[str, object]:
        facts: dict[str, object] = {"backend": self.name, "device": self.device, "precision": self.precision}
        if self.load_notes:
            facts["skipped_runtimes"] = [f"{label}: {reason}" for label, reason in self.load_notes]
        return facts

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release runtime resources."""
