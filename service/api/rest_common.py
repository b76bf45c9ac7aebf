"""Request-body helpers shared by the REST routers."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from starlette.datastructures import FormData

from service.errors import InvalidInput, PayloadTooLarge

__all__ = ["read_body_limited", "replay_form"]


async def read_body_limited(request: Request, limit: int) -> bytes:
    """Read the body, refusing with 413 as soon as it is known to exceed ``limit``.

    A declared ``Content-Length`` over the limit is refused before anything is read; a chunked
    body is refused at the first chunk past the limit, so at most ``limit`` bytes are held.
    """
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise InvalidInput("Content-Length is not a number", param="content-length") from None
        if size > limit:
            raise PayloadTooLarge(f"request body of {size} bytes exceeds the limit of {limit}", param="body")
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes", param="body")
        chunks.append(chunk)
    return b"".join(chunks)


async def replay_form(request: Request, body: bytes, *, max_files: int = 1, max_fields: int = 16) -> FormData:
    """Parse a multipart body that was already read (with its limit) as a form."""

    async def replay() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        return await Request(request.scope, replay).form(max_files=max_files, max_fields=max_fields)
    except Exception as exc:  # malformed multipart is the client's mistake
        raise InvalidInput(f"malformed multipart body: {exc}", param="body") from exc
