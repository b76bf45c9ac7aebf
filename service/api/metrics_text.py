"""Prometheus text from Ray's metrics agent, with the contract's metric names.

Ray exports application metrics as ``ray_<name>``; the contract promises ``tessera_*``. This
rewrites exactly the ``ray_tessera_`` family (samples, HELP and TYPE lines) and leaves Ray's own
metrics as they are.
"""

from __future__ import annotations

import re

__all__ = ["CONTENT_TYPE", "restore_contract_names"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_PATTERN = re.compile(r"^(# (?:HELP|TYPE) )?ray_(tessera_)", re.MULTILINE)


def restore_contract_names(text: str) -> str:
    return _PATTERN.sub(r"\1\2", text)
