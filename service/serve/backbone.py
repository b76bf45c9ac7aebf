"""One Ray Serve deployment per backbone: dynamic batching over one runtime ``Backend``."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import numpy as np
from ray import serve

from service.models import ModelRepository
from service.runtime import load_backend
from service.runtime.batching import run_batch
from service.runtime.loader import RuntimePreference
from service.serve.metrics import BackboneMetrics

__all__ = ["Backbone", "set_max_concurrent_batches"]

log = logging.getLogger(__name__)


def set_max_concurrent_batches(batched: Any, n: int) -> None:
    """Let a ``@serve.batch`` method run ``n`` batches at once, before its first call.

    Ray fixes ``max_concurrent_batches`` at decoration time and has no setter for it (unlike the
    batch size and wait); the decorator keeps it on the lazy queue wrapper that its public setters
    are bound to, read when the queue is first made. The tests check the effect on the pinned Ray.
    """
    wrapper = getattr(getattr(batched, "set_max_batch_size", None), "__self__", None)
    if wrapper is None or not hasattr(wrapper, "max_concurrent_batches"):
        raise RuntimeError("this Ray Serve's @serve.batch keeps no max_concurrent_batches to set")
    if getattr(wrapper, "_queue", None) is not None:
        raise RuntimeError("max_concurrent_batches must be set before the first batched call")
    wrapper.max_concurrent_batches = n


@serve.deployment(graceful_shutdown_wait_loop_s=0.5, graceful_shutdown_timeout_s=30)
class Backbone:
    def __init__(
        self,
        model_repo: str,
        model: str,
        runtime: RuntimePreference = "auto",
        providers: str = "auto",
        intra_op_threads: int = 0,
        ort_spin: bool = False,
        trt_cache_dir: str = ".tessera/trt-cache",
    ):
        repo = ModelRepository(model_repo)
        self.cfg = repo.config(model)
        # Raises RuntimeUnavailable (the replica fails to start, with the reason) when no runtime
        # the settings allow can run here: never a silent fallback from a GPU to the CPU.
        self.backend = load_backend(
            repo,
            model,
            prefer=runtime,
            providers=providers,
            intra_op_threads=intra_op_threads,
            spin=ort_spin,
            cache_dir=trt_cache_dir,
        )
        batched: Any = self.infer  # serve.batch adds the setters; per-model values from config.yaml
        batched.set_max_batch_size(self.cfg.batching.max_batch_size)
        batched.set_batch_wait_timeout_s(self.cfg.batching.batch_wait_timeout_s)
        set_max_concurrent_batches(batched, self.cfg.batching.max_concurrent_batches)
        # Ready-made batches (OIP tensors, slide tiles) take the same number of slots, so that many
        # callers at once do not oversubscribe the cores with concurrent runs.
        self._ready_batches = asyncio.Semaphore(self.cfg.batching.max_concurrent_batches)
        self.metrics = BackboneMetrics(model)
        # Warm-up: the first call at a shape allocates (and on a GPU builds engines / picks kernels),
        # so a GPU replica runs every bucket before it takes traffic; a CPU replica the native size.
        on_cpu = self.backend.device == "cpu"
        for side in [self.cfg.input.native_size] if on_cpu else self.cfg.input.buckets:
            self.backend.infer(np.zeros((1, 3, side, side), dtype=np.float32))
        log.info("backbone %s ready on %s", model, self.backend.describe())

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def infer(self, items: list[np.ndarray]) -> list[dict[str, Any]]:
        replies = await asyncio.to_thread(run_batch, self.backend, items)
        self.metrics.batch(len(items), replies[0]["memory"] if replies else None)
        return replies

    async def infer_batch(self, pixels: np.ndarray) -> dict[str, Any]:
        """A caller that already holds a batch (slide tiles, OIP tensors) runs it as one call."""
        async with self._ready_batches:
            result = await asyncio.to_thread(self.backend.infer, pixels)
        memory = result.memory.to_dict()
        self.metrics.batch(result.batch_size, memory)
        return {
            "outputs": result.outputs,
            "inference_ms": result.latency_ms,
            "batch_size": result.batch_size,
            "memory": memory,
            **self.backend.describe(),
        }

    async def __call__(self, pixels: np.ndarray) -> dict[str, Any]:
        result: dict[str, Any] = await self.infer(pixels)
        return result

    def describe(self) -> dict[str, object]:
        return {**self.backend.describe(), "model": self.cfg.name, "version": self.cfg.version}
