"""A model's backbone: dynamic batching over one runtime ``Backend`` (``BackboneHost``), held by a
``Backbone`` deployment replica or, colocated, by an ingress replica."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from typing import Any

import numpy as np
from ray import serve
from ray.serve.handle import DeploymentHandle

from service.errors import Unavailable
from service.models import ModelRepository
from service.runtime import Backend, load_backend
from service.runtime.batching import DynamicBatcher, run_batch
from service.runtime.loader import RuntimePreference
from service.serve.metrics import BackboneMetrics
from service.serve.models import HandleModelStates, StateSource, replica_id
from service.settings import ServerSettings

__all__ = ["Backbone", "BackboneHost"]

log = logging.getLogger(__name__)


class BackboneHost:
    """What one process holds of a model's backbone: its runtime session and its ``DynamicBatcher``.

    A ``Backbone`` replica holds one (``topology: split``); an ingress replica holds one per model
    (``topology: colocated``), so that a request runs where it was decoded, with no hop between
    processes. Either way:

    A model that is built when the host starts is loaded before the replica takes traffic (a
    runtime that cannot run fails the replica with the reason). With ``states`` (the
    ``ModelStates`` deployment's handle, or the ingress's own ``ModelStateBook``) the host then
    follows the service's decision every second: it loads a model built while the service runs
    (``tessera serve --build``, a load that builds), and on unload it finishes its batches in
    flight and releases the session and its memory (the process stays, holding nothing, until the
    model is loaded again). It reports what it holds (``loading``, ``ready``, ``failed`` with the reason, ``unloaded``).

    Built on the replica's event loop (Ray Serve runs constructors there).
    """

    def __init__(
        self,
        model_repo: str,
        model: str,
        runtime: RuntimePreference = "auto",
        providers: str = "auto",
        intra_op_threads: int = 0,
        ort_spin: bool = False,
        trt_cache_dir: str = ".tessera/trt-cache",
        states: StateSource | None = None,
        *,
        in_ingress: bool = False,
        cpu_lanes: int = 1,
    ):
        """``in_ingress``: the host shares its process with the ingress (topology colocated), so a
        model that cannot load is that model's failure (its state says ``failed`` with the reason;
        the other models serve), not the process's; and the process's memory is the ingress's to report."""
        self.repo = ModelRepository(model_repo)
        self.model = model
        self.cfg = self.repo.config(model)
        self._load_options = {
            "prefer": runtime,
            "providers": providers,
            "intra_op_threads": intra_op_threads,
            "spin": ort_spin,
            "cache_dir": trt_cache_dir,
            "lanes": cpu_lanes,
        }
        self.metrics = BackboneMetrics(model, host_process=None if in_ingress else f"backbone_{model}")
        self.backend: Backend | None = None
        self.state, self.reason = "unloaded", "not built yet"
        self._busy = 0
        self._failed_generation: int | None = None
        if self.repo.manifest(model) is not None:
            # Raises RuntimeUnavailable (the replica fails to start, with the reason) when no runtime
            # the settings allow can run here: never a silent fallback from a GPU to the CPU.
            try:
                self.backend = self._load()
                self.state, self.reason = "ready", ""
            except Exception as exc:
                if not in_ingress:
                    raise
                # the model says why in its state until a load request (a new generation) retries it
                self.state, self.reason, self._failed_generation = "failed", f"{type(exc).__name__}: {exc}"[:500], 0
                log.warning("backbone %s could not load: %s", model, self.reason)
        self._slots(self.backend)
        self._id = replica_id()
        self._states = states
        if states is not None:
            self._follower = asyncio.get_running_loop().create_task(self._follow(states))

    def _slots(self, backend: Backend | None) -> None:
        """The batcher and the ready-batch slots for ``backend``: as many batches at once as the model's
        ``max_concurrent_batches`` or the backend's CPU lanes, whichever is more."""
        batching = self.cfg.batching
        slots = max(batching.max_concurrent_batches, backend.lanes if backend is not None else 1)
        if getattr(self, "_batcher", None) is not None and self._batcher.max_concurrent == slots:
            return
        # Single images wait here to share a batch (size and wait from config.yaml). A batcher this
        # replaces finishes what it holds on the new backend.
        self._batcher: DynamicBatcher[np.ndarray, dict[str, Any]] = DynamicBatcher(
            self._run_items,
            max_batch_size=batching.max_batch_size,
            wait_s=batching.batch_wait_timeout_s,
            max_concurrent=slots,
            key=lambda pixels: pixels.shape,  # a batch holds one shape: a small image never waits out a large one's run
        )
        # Ready-made batches (OIP tensors, slide tiles) take the same number of slots, so that many
        # callers at once do not oversubscribe the cores with concurrent runs.
        self._ready_batches = asyncio.Semaphore(slots)

    @classmethod
    def from_settings(
        cls, settings: ServerSettings, model: str, states: StateSource | None = None, *, in_ingress: bool = False
    ) -> BackboneHost:
        """The host ``settings`` ask for (the one place their runtime options meet the constructor)."""
        return cls(
            settings.model_repo,
            model,
            settings.runtime,
            settings.providers,
            settings.intra_op_threads,
            settings.ort_spin,
            settings.trt_cache_dir,
            states,
            in_ingress=in_ingress,
            cpu_lanes=settings.cpu_lanes,
        )

    def _load(self) -> Backend:
        backend = load_backend(self.repo, self.model, **self._load_options)  # type: ignore[arg-type]
        # Warm-up: the first call at a shape allocates (and on a GPU builds engines / picks kernels),
        # so a GPU replica runs every bucket before it takes traffic; a CPU replica the native size.
        on_cpu = backend.device == "cpu"
        for side in [self.cfg.input.native_size] if on_cpu else self.cfg.input.buckets:
            backend.warm_up(np.zeros((1, 3, side, side), dtype=np.float32))
        log.info("backbone %s ready on %s", self.model, backend.describe())
        return backend

    async def _follow(self, states: StateSource) -> None:
        while True:
            try:
                # one call a second: what this host holds, answered with whether it should hold it
                wanted, generation = await states.report(self.model, self._id, self.state, self.reason)
                if wanted and self.backend is None and self._failed_generation != generation:
                    await self._load_now(states, generation)
                    await states.report(self.model, self._id, self.state, self.reason)
                elif not wanted and self.backend is not None:
                    await self._release(states)
                    await states.report(self.model, self._id, self.state, self.reason)
            except Exception as exc:  # the states deployment restarting: keep serving what is held
                log.warning("backbone %s: model states not reached: %s", self.model, exc)
            await asyncio.sleep(1.0)

    async def _load_now(self, states: StateSource, generation: int) -> None:
        self.state, self.reason = "loading", ""
        await states.report(self.model, self._id, self.state, self.reason)
        try:
            self.repo = ModelRepository(self.repo.root)  # the manifest written since this replica started
            self.backend = await asyncio.to_thread(self._load)
            self._slots(self.backend)
            self.state, self.reason, self._failed_generation = "ready", "", None
        except Exception as exc:  # RuntimeUnavailable and friends: said in the state, not retried until a load
            self.state, self.reason, self._failed_generation = (
                "failed",
                f"{type(exc).__name__}: {exc}"[:500],
                generation,
            )
            log.warning("backbone %s could not load: %s", self.model, self.reason)

    async def _release(self, states: StateSource, timeout_s: float = 30.0) -> None:
        """Finish the batches in flight, then close the session and free its memory."""
        self.state, self.reason = "unloading", "unloaded by request"
        await states.report(self.model, self._id, self.state, self.reason)
        deadline = time.monotonic() + timeout_s
        while self._busy and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        backend, self.backend = self.backend, None
        if backend is not None:
            backend.close()
        del backend
        gc.collect()
        self.state = "unloaded"

    def _require_backend(self) -> Backend:
        if self.backend is None:
            raise Unavailable(f"model {self.model!r} is {self.state} on this replica ({self.reason})", param="model")
        return self.backend

    async def infer(self, pixels: np.ndarray) -> dict[str, Any]:
        """One (3, H, W) image, run in a batch with the other images queued meanwhile."""
        return await self._batcher(pixels)

    async def _run_items(self, items: list[np.ndarray]) -> list[dict[str, Any]]:
        backend = self._require_backend()
        self._busy += 1
        try:
            replies = await asyncio.to_thread(run_batch, backend, items)
        finally:
            self._busy -= 1
        self.metrics.batch(len(items), replies[0]["memory"] if replies else None)
        return replies

    async def infer_batch(self, pixels: np.ndarray) -> dict[str, Any]:
        """A caller that already holds a batch (slide tiles, OIP tensors) runs it as one call."""
        backend = self._require_backend()
        self._busy += 1
        try:
            async with self._ready_batches:
                result = await asyncio.to_thread(backend.infer, pixels)
        finally:
            self._busy -= 1
        memory = result.memory.to_dict()
        self.metrics.batch(result.batch_size, memory)
        return {
            "outputs": result.outputs,
            "inference_ms": result.latency_ms,
            "batch_size": result.batch_size,
            "memory": memory,
            **backend.describe(),
        }

    def describe(self) -> dict[str, object]:
        return {**self._require_backend().describe(), "model": self.cfg.name, "version": self.cfg.version}


@serve.deployment(graceful_shutdown_wait_loop_s=0.5, graceful_shutdown_timeout_s=30)
class Backbone:
    """One replica of a model's backbone (``topology: split``): a ``BackboneHost`` behind a handle."""

    def __init__(self, settings: dict[str, Any], model: str, states: DeploymentHandle | None = None):
        source = HandleModelStates(states) if states is not None else None
        self.host = BackboneHost.from_settings(ServerSettings.model_validate(settings), model, source)

    async def infer(self, pixels: np.ndarray) -> dict[str, Any]:
        return await self.host.infer(pixels)

    async def infer_batch(self, pixels: np.ndarray) -> dict[str, Any]:
        return await self.host.infer_batch(pixels)

    async def __call__(self, pixels: np.ndarray) -> dict[str, Any]:
        return await self.host.infer(pixels)

    def describe(self) -> dict[str, object]:
        return self.host.describe()
