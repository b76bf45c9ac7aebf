"""The slide-jobs API behind ``/v1/slides``, independent of transport and of Ray.

``SlideService`` is what the REST routes call. ``LocalSlideService`` runs a ``JobManager`` in
this process (unit tests, and inside the Ray ``SlideJobs`` deployment); the ingress reaches that
deployment through a handle with the same methods.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from service.slides.jobs import JobManager

__all__ = ["LocalSlideService", "SlideService"]


class SlideService(Protocol):
    async def submit(
        self, path: str | None, upload: bytes | None, filename: str | None, options: dict[str, Any]
    ) -> dict[str, Any]: ...
    async def status(self, job_id: str) -> dict[str, Any]: ...
    async def cancel(self, job_id: str) -> dict[str, Any]: ...
    async def result(self, job_id: str, name: str) -> bytes: ...


class LocalSlideService:
    def __init__(self, manager: JobManager):
        self.manager = manager

    async def submit(
        self, path: str | None, upload: bytes | None, filename: str | None, options: dict[str, Any]
    ) -> dict[str, Any]:
        status = await asyncio.to_thread(self.manager.submit, path, upload=upload, filename=filename, options=options)
        return status.model_dump(mode="json")

    async def status(self, job_id: str) -> dict[str, Any]:
        return self.manager.status(job_id).model_dump(mode="json")

    async def cancel(self, job_id: str) -> dict[str, Any]:
        status = await asyncio.to_thread(self.manager.cancel, job_id)
        return status.model_dump(mode="json")

    async def result(self, job_id: str, name: str) -> bytes:
        path = self.manager.result_path(job_id, name)
        return await asyncio.to_thread(path.read_bytes)
