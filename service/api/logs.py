"""Structured logs: one JSON line per request on the ``tessera.access`` logger."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

__all__ = ["ACCESS_FIELDS", "JsonFormatter", "configure_access_log"]

#: Fields of an access-log line beyond the time, level and message.
ACCESS_FIELDS = ("request_id", "method", "path", "status", "duration_ms", "model", "route_reason", "transport")


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "msg", ...extra fields}`` on one line. Never logs headers."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in ACCESS_FIELDS:
            value = getattr(record, key, None)
            if value is not None:
                payload[key] = value
        return json.dumps(payload, separators=(",", ":"))


def configure_access_log(level: str = "INFO", stream: Any = None) -> logging.Logger:
    """Send ``tessera.access`` to ``stream`` (stderr) as JSON lines; idempotent per process."""
    logger = logging.getLogger("tessera.access")
    logger.setLevel(level)
    logger.propagate = False
    if not any(getattr(h, "_tessera_json", False) for h in logger.handlers):
        handler = logging.StreamHandler(stream or sys.stderr)
        handler.setFormatter(JsonFormatter())
        handler._tessera_json = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    return logger
