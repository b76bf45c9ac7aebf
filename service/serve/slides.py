"""The slide-jobs deployment: one replica running the ``JobManager``, encoding through the
same backbone deployments as ``/v1/predict``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any, BinaryIO, Literal

import numpy as np
from ray import serve
from ray.serve import metrics
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from service.api.slides_service import RESULT_CHUNK, LocalSlideService
from service.errors import NotFound
from service.models import ModelConfig, ModelRepository
from service.serve.config import APP_NAME, INGRESS
from service.serve.metrics import _keys
from service.settings import ServerSettings
from service.slides.encoder import TileEncoder
from service.slides.jobs import JobManager, JobState
from service.slides.pipeline import PipelineSettings

__all__ = ["HandleEncoder", "SlideJobs"]

log = logging.getLogger(__name__)


class HandleEncoder:
    """A ``TileEncoder`` whose batches run on a backbone deployment (called from a job thread).

    With ``by_model`` the handle is the colocated ingress's, whose ``infer_batch`` names the model.
    """

    def __init__(self, handle: DeploymentHandle, cfg: ModelConfig, *, by_model: bool = False):
        self.handle = handle
        self.by_model = by_model
        self.tile_size = cfg.input.native_size
        self.max_batch_size = cfg.batching.max_batch_size
        self.mean = cfg.input.mean
        self.std = cfg.input.std
        self.interpolation = cfg.input.interpolation
        self.embedding_dim = cfg.output.embedding_dim
        self.name = cfg.name
        self.version = str(cfg.version)
        self.weights: Literal["trained", "untrained"] = "trained" if cfg.trained else "untrained"

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        return self.encode_async(pixels).result()

    def encode_async(self, pixels: np.ndarray) -> _PendingEmbedding:
        """Send a batch without waiting: Ray Serve routes each call to a replica with room, so a
        job with several batches in flight uses every replica of its backbone."""
        if self.by_model:
            return _PendingEmbedding(self.handle.infer_batch.remote(self.name, pixels))
        return _PendingEmbedding(self.handle.infer_batch.remote(pixels))


class _PendingEmbedding:
    """A backbone call in flight; ``result()`` waits and returns the (N, D) embeddings."""

    def __init__(self, response: Any):
        self.response = response

    def result(self) -> np.ndarray:
        reply: dict[str, Any] = self.response.result()
        return np.asarray(reply["outputs"]["embedding"], dtype=np.float32)


@serve.deployment(num_replicas=1, max_ongoing_requests=64, graceful_shutdown_timeout_s=30)
class SlideJobs:
    def __init__(self, settings: dict[str, Any], backbones: dict[str, DeploymentHandle] | None):
        """``backbones``: the backbone deployments (``topology: split``), or None when the ingress
        replicas hold the backbones (``colocated``): batches then go to the ingress, by model."""
        self.settings = ServerSettings.model_validate(settings)
        repo = ModelRepository(self.settings.model_repo)
        names = list(backbones) if backbones is not None else repo.names()
        self._tiles = metrics.Counter("tessera_slide_tiles", "Slide tiles embedded.", tag_keys=_keys("model"))
        self._jobs = metrics.Gauge("tessera_slide_jobs", "Slide jobs by state.", tag_keys=_keys("state"))

        def encoder_factory(model: str | None) -> TileEncoder:
            name = model or self.settings.slide_model
            if name not in names:
                raise NotFound(f"no backbone deployed for model {name!r}", param="model")
            if backbones is None:  # looked up when a job starts: the ingress deploys after this replica
                return HandleEncoder(serve.get_deployment_handle(INGRESS, APP_NAME), repo.config(name), by_model=True)
            return HandleEncoder(backbones[name], repo.config(name))

        def check_model(model: str | None) -> None:
            name = model or self.settings.slide_model
            if name not in names:
                raise NotFound(f"unknown model {name!r}; deployed: {', '.join(names)}", param="model")

        self.manager = JobManager(
            self.settings.job_dir,
            encoder_factory,
            self.settings.slide_root,
            check_model=check_model,
            settings=PipelineSettings(inflight_batches=self.settings.slide_inflight_batches),
            max_concurrent=self.settings.slide_max_concurrent_jobs,
            max_queued=self.settings.slide_max_queued_jobs,
            max_upload_bytes=self.settings.max_slide_bytes,
            on_tiles=lambda model, n: self._tiles.inc(n, tags={"model": model}),
            on_state=self._state_changed,
        )
        self.service = LocalSlideService(self.manager)
        resumed = self.manager.resume_incomplete()
        if resumed:
            log.warning("resuming %d slide job(s) left unfinished: %s", len(resumed), ", ".join(resumed))

    def _state_changed(self, _job_id: str, _state: JobState) -> None:
        for state, count in self.manager.state_counts().items():
            self._jobs.set(count, tags={"state": state})

    async def submit(
        self,
        path: str | None,
        upload_id: str | None,
        filename: str | None,
        options: dict[str, Any],
        coords: bytes | None = None,
        coords_path: str | None = None,
    ) -> dict[str, Any]:
        status = await asyncio.to_thread(
            self.manager.submit,
            path,
            upload_id=upload_id,
            filename=filename,
            options=options,
            coords=coords,
            coords_path=coords_path,
        )
        return status.model_dump(mode="json")

    async def begin_upload(self) -> str:
        return await asyncio.to_thread(self.manager.begin_upload)

    async def append_upload(self, upload_id: str, chunk: bytes) -> int:
        return await asyncio.to_thread(self.manager.append_upload, upload_id, chunk)

    async def status(self, job_id: str) -> dict[str, Any]:
        return await self.service.status(job_id)

    async def cancel(self, job_id: str) -> dict[str, Any]:
        return await self.service.cancel(job_id)

    async def result_chunks(self, job_id: str, name: str) -> AsyncIterator[bytes]:
        """A result file in chunks (a streaming method: call it with ``handle.options(stream=True)``)."""
        async for chunk in self.service.result_stream(job_id, name):
            yield chunk

    def __del__(self) -> None:
        manager = getattr(self, "manager", None)
        if manager is not None:
            manager.shutdown(wait=True, timeout=20)


class HandleSlideService:
    """``SlideService`` over the ``SlideJobs`` deployment handle (used by the ingress).

    An upload is forwarded in chunks (``begin_upload``, ``append_upload``, then ``submit`` with
    its id) and results come back through a streaming handle, so neither the ingress nor the
    job replica holds a slide or a result whole in memory.
    """

    def __init__(self, handle: DeploymentHandle):
        self.handle = handle

    async def submit(
        self,
        path: str | None,
        upload: BinaryIO | None,
        filename: str | None,
        options: dict[str, Any],
        coords: bytes | None = None,
        coords_path: str | None = None,
    ) -> dict[str, Any]:
        upload_id: str | None = None
        if upload is not None:
            upload_id = await self.handle.begin_upload.remote()
            while chunk := await asyncio.to_thread(upload.read, RESULT_CHUNK):
                await self.handle.append_upload.remote(upload_id, chunk)
        result: dict[str, Any] = await self.handle.submit.remote(
            path, upload_id, filename, options, coords, coords_path
        )
        return result

    async def status(self, job_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.handle.status.remote(job_id)
        return result

    async def cancel(self, job_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.handle.cancel.remote(job_id)
        return result

    async def result_stream(self, job_id: str, name: str) -> AsyncIterator[bytes]:
        chunks = self.handle.options(stream=True).result_chunks.remote(job_id, name)
        if not isinstance(chunks, DeploymentResponseGenerator):  # a streaming handle always gives one
            raise TypeError(f"expected a response generator, got {type(chunks).__name__}")
        async for chunk in chunks:
            yield chunk
