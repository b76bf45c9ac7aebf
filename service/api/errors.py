"""The one mapping from errors to HTTP statuses and gRPC codes, for every transport."""

from __future__ import annotations

import logging
from typing import Any

from service.errors import DeadlineExceeded, InvalidInput, Overloaded, TesseraError

__all__ = ["as_tessera_error", "grpc_code", "http_body", "http_headers"]

log = logging.getLogger(__name__)


def as_tessera_error(exc: BaseException) -> TesseraError:
    """Classify any exception: ours pass through, Ray's and asyncio's are translated, the rest are 500s."""
    if isinstance(exc, TesseraError):
        return exc
    cause = getattr(exc, "cause", None) or exc.__cause__
    if isinstance(cause, TesseraError):
        return cause
    name = type(exc).__name__
    if name in ("BackPressureError",):
        return Overloaded(f"server is at capacity ({exc}); retry shortly", retry_after_s=1.0)
    if name in ("TimeoutError", "CancelledError", "GetTimeoutError", "RequestCancelledError"):
        return DeadlineExceeded("the request did not finish before its deadline")
    if isinstance(exc, ValueError) and "pixels" in str(exc):
        return InvalidInput(str(exc))
    log.exception("unexpected server error", exc_info=exc)
    return TesseraError(f"internal error ({name}); this is a bug, please report it")


def http_body(err: TesseraError, *, oip: bool) -> dict[str, Any]:
    """``/v1``: ``{"error": {"code", "message", "param"}}``; ``/v2`` (OIP): ``{"error": "message"}``."""
    return {"error": err.message} if oip else {"error": err.to_dict()}


def http_headers(err: TesseraError) -> dict[str, str]:
    if err.retry_after_s is not None:
        return {"Retry-After": str(max(1, round(err.retry_after_s)))}
    return {}


def grpc_code(err: TesseraError) -> Any:
    import grpc

    return getattr(grpc.StatusCode, err.grpc_status)
