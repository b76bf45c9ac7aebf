"""Request-body helpers shared by the REST routers."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from starlette.datastructures import FormData
from starlette.types import Message

from service.errors import InvalidInput, PayloadTooLarge

__all__ = ["parse_json_body", "read_body_limited", "replay_form", "spooled_form"]


def parse_json_body(raw: bytes, *, hint: str = "") -> Any:
    """The JSON value in a request body; anything unparseable is a 400 naming why, never a 500.

    ``json.loads`` raises ``UnicodeDecodeError`` for bytes that are no UTF-8/16/32 text (before any
    ``JSONDecodeError``) and ``RecursionError`` for arrays nested past the interpreter's limit.
    """
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"the request's JSON is not valid: {exc}{hint}", param="body") from None
    except UnicodeDecodeError:
        raise InvalidInput(
            f"the request's JSON is not valid: not UTF-8, UTF-16 or UTF-32 text{hint}", param="body"
        ) from None
    except RecursionError:
        raise InvalidInput("the request's JSON is nested too deeply", param="body") from None


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


@contextlib.asynccontextmanager
async def spooled_form(
    request: Request, limit: int, *, max_files: int = 1, max_fields: int = 16
) -> AsyncIterator[FormData]:
    """Parse a multipart body as it streams in: files are spooled to temporary files on disk
    (Starlette's ``UploadFile``), so a large upload is never held in memory; the body is refused
    with 413 from ``Content-Length`` before reading, or at the first chunk past ``limit``.
    The files are closed (and deleted) when the context exits.
    """
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise InvalidInput("Content-Length is not a number", param="content-length") from None
        if size > limit:
            raise PayloadTooLarge(f"request body of {size} bytes exceeds the limit of {limit}", param="body")
    total = 0

    async def receive() -> Message:
        nonlocal total
        message = await request.receive()
        if message["type"] == "http.request":
            total += len(message.get("body", b""))
            if total > limit:
                raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes", param="body")
        return message

    try:
        form = await Request(request.scope, receive).form(max_files=max_files, max_fields=max_fields)
    except PayloadTooLarge:
        raise
    except Exception as exc:  # malformed multipart is the client's mistake
        raise InvalidInput(f"malformed multipart body: {exc}", param="body") from exc
    try:
        yield form
    finally:
        await form.close()
