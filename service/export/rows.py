"""One line of ``tessera build``'s table."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BuildRow"]


@dataclass
class BuildRow:
    model: str
    artifact: str
    status: str  # built | up-to-date | skipped | failed
    parity_max_abs: float | None = None
    seconds: float = 0.0
    note: str = ""
