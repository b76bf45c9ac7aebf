"""The one family of typed errors every layer raises.

Each error carries a stable machine-readable ``code`` and, where it applies, the request
parameter at fault. The transports map them to HTTP status codes and gRPC status codes in
exactly one place (``service.api.errors``); nothing else decides a status code.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "DeadlineExceeded",
    "Forbidden",
    "InvalidInput",
    "NotAllowed",
    "NotFound",
    "Overloaded",
    "PayloadTooLarge",
    "RuntimeUnavailable",
    "TesseraError",
    "Unauthenticated",
    "Unavailable",
    "UnsupportedMediaType",
]


class TesseraError(Exception):
    """Base class: a failure with a known cause that the client should hear about."""

    code: str = "internal"
    http_status: int = 500
    grpc_status: str = "INTERNAL"

    def __init__(self, message: str, *, param: str | None = None, retry_after_s: float | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.retry_after_s = retry_after_s

    def to_dict(self) -> dict[str, str | None]:
        return {"code": self.code, "message": self.message, "param": self.param}

    def __reduce__(self):  # keep keyword-only fields across pickling (Ray ships errors between processes)
        return (_rebuild, (type(self), self.message, self.param, self.retry_after_s))


def _rebuild(cls: type[TesseraError], message: str, param: str | None, retry_after_s: float | None):
    return cls(message, param=param, retry_after_s=retry_after_s)


class InvalidInput(TesseraError):
    """The request is malformed: unreadable image, wrong tensor shape, bad option."""

    code, http_status, grpc_status = "invalid_argument", 400, "INVALID_ARGUMENT"

    @classmethod
    def from_validation(cls, errors: Sequence[Mapping[str, Any]], what: str, *, skip: int = 0) -> InvalidInput:
        """The first of pydantic's ``exc.errors()`` as ``invalid <what> at <field>: <msg>``, the field
        as ``param``; ``skip`` drops leading location parts that name no field (FastAPI's ``body``).
        """
        first = errors[0] if errors else {}
        where = ".".join(str(p) for p in tuple(first.get("loc", ()))[skip:]) or None
        message = first.get("msg", "validation failed")
        return cls(f"invalid {what} at {where}: {message}" if where else f"invalid {what}: {message}", param=where)


class Unauthenticated(TesseraError):
    """No credentials were presented where they are required."""

    code, http_status, grpc_status = "unauthenticated", 401, "UNAUTHENTICATED"


class Forbidden(TesseraError):
    """Credentials were presented but are not valid."""

    code, http_status, grpc_status = "permission_denied", 403, "PERMISSION_DENIED"


class NotFound(TesseraError):
    """Unknown model, model version or job."""

    code, http_status, grpc_status = "not_found", 404, "NOT_FOUND"


class NotAllowed(TesseraError):
    """The server's configuration does not allow this operation (e.g. model control is off)."""

    code, http_status, grpc_status = "not_allowed", 403, "PERMISSION_DENIED"


class Unavailable(TesseraError):
    """The model is known but not available now (unloaded, or not built)."""

    code, http_status, grpc_status = "unavailable", 503, "UNAVAILABLE"


class PayloadTooLarge(TesseraError):
    """The body or the decoded image exceeds a configured limit."""

    code, http_status, grpc_status = "too_large", 413, "INVALID_ARGUMENT"


class UnsupportedMediaType(TesseraError):
    """The content type (or the sniffed format) is not one we decode."""

    code, http_status, grpc_status = "unsupported_media_type", 415, "INVALID_ARGUMENT"


class Overloaded(TesseraError):
    """Queues are full: the client should retry after ``retry_after_s``."""

    code, http_status, grpc_status = "overloaded", 503, "RESOURCE_EXHAUSTED"

    def __init__(self, message: str, *, param: str | None = None, retry_after_s: float | None = 1.0):
        super().__init__(message, param=param, retry_after_s=retry_after_s)


class DeadlineExceeded(TesseraError):
    """The request's deadline passed before an answer was ready."""

    code, http_status, grpc_status = "deadline_exceeded", 504, "DEADLINE_EXCEEDED"


class RuntimeUnavailable(Unavailable):
    """A runtime (TensorRT, an ONNX Runtime provider, CUDA) cannot run here; the message says why.

    Raised when a replica loads its model, never turned into a silent fallback to a slower device.
    """
