"""Deadlines a client sets: ``X-Request-Timeout`` (REST header), ``x-request-timeout`` (gRPC
metadata, where the transport does not expose the call's own deadline), in seconds. One parser for
``/v1``, OIP REST and gRPC, so the three accept and refuse exactly the same values."""

from __future__ import annotations

from service.errors import InvalidInput

__all__ = ["MAX_TIMEOUT_S", "TIMEOUT_HEADER", "parse_timeout"]

#: The REST header and the gRPC metadata key (lower case, as HTTP/2 and gRPC metadata spell it).
TIMEOUT_HEADER = "x-request-timeout"
#: The longest deadline a client may ask for.
MAX_TIMEOUT_S = 3600.0


def parse_timeout(raw: str | None, *, where: str = TIMEOUT_HEADER) -> float | None:
    """Seconds from the header's (or metadata's) text; None when absent.

    ``where`` names the value in the error (``metadata x-request-timeout`` on gRPC). Not a number,
    NaN, zero, negative or above :data:`MAX_TIMEOUT_S` is 400 / INVALID_ARGUMENT."""
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise InvalidInput(f"{where} must be a number of seconds", param=TIMEOUT_HEADER) from None
    if not 0 < value <= MAX_TIMEOUT_S:
        raise InvalidInput(f"{where} must be in (0, {MAX_TIMEOUT_S:.0f}] seconds", param=TIMEOUT_HEADER)
    return value
