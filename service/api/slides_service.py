"""The slide-jobs API behind ``/v1/slides``, independent of transport and of Ray.

``SlideService`` is what the REST routes call. ``LocalSlideService`` runs a ``JobManager`` in
this process (unit tests, and inside the Ray ``SlideJobs`` deployment); the ingress reaches that
deployment through a handle with the same methods.

Neither direction holds a slide or a result whole in memory: an upload arrives as a file (the
REST layer spools the multipart body to disk) and is copied in chunks; a result is read back
as an async iterator of chunks (:data:`RESULT_CHUNK` bytes).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from service.slides.jobs import JobManager

__all__ = ["PARTIAL_FEATURES", "RESULT_CHUNK", "LocalSlideService", "SlideService", "iter_file"]

#: bytes per chunk when results are streamed back (and uploads forwarded)
RESULT_CHUNK = 4 << 20
#: the result name of the features committed so far (a snapshot; readable while a job runs)
PARTIAL_FEATURES = "features.partial.h5"


class SlideService(Protocol):
    async def submit(
        self,
        path: str | None,
        upload: BinaryIO | None,
        filename: str | None,
        options: dict[str, Any],
        coords: bytes | None = None,
        coords_path: str | None = None,
    ) -> dict[str, Any]: ...
    async def status(self, job_id: str) -> dict[str, Any]: ...
    async def cancel(self, job_id: str) -> dict[str, Any]: ...
    def result_stream(self, job_id: str, name: str) -> AsyncIterator[bytes]:
        """The result file's bytes in chunks; raises ``NotFound`` at the first ``__anext__``."""
        ...


class LocalSlideService:
    def __init__(self, manager: JobManager):
        self.manager = manager

    async def submit(
        self,
        path: str | None,
        upload: BinaryIO | None,
        filename: str | None,
        options: dict[str, Any],
        coords: bytes | None = None,
        coords_path: str | None = None,
    ) -> dict[str, Any]:
        status = await asyncio.to_thread(
            self.manager.submit,
            path,
            upload=upload,
            filename=filename,
            options=options,
            coords=coords,
            coords_path=coords_path,
        )
        return status.model_dump(mode="json")

    async def status(self, job_id: str) -> dict[str, Any]:
        return self.manager.status(job_id).model_dump(mode="json")

    async def cancel(self, job_id: str) -> dict[str, Any]:
        status = await asyncio.to_thread(self.manager.cancel, job_id)
        return status.model_dump(mode="json")

    async def result_stream(self, job_id: str, name: str) -> AsyncIterator[bytes]:
        if name == PARTIAL_FEATURES:
            snapshot = await asyncio.to_thread(self.manager.partial_features, job_id)
            try:
                async for chunk in iter_file(snapshot):
                    yield chunk
            finally:
                with contextlib.suppress(FileNotFoundError):
                    snapshot.unlink()
            return
        path = self.manager.result_path(job_id, name)
        async for chunk in iter_file(path):
            yield chunk


async def iter_file(path: Path, chunk: int = RESULT_CHUNK) -> AsyncIterator[bytes]:
    """A file's bytes in chunks, read off the event loop."""
    handle = await asyncio.to_thread(open, path, "rb")
    try:
        while data := await asyncio.to_thread(handle.read, chunk):
            yield data
    finally:
        handle.close()
