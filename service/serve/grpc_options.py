"""The gRPC servicers Ray Serve's gRPC proxy serves (filled in by the gRPC API)."""

from __future__ import annotations

__all__ = ["servicer_functions"]


def servicer_functions() -> list[str]:
    """Import paths of ``add_*Servicer_to_server`` functions for ``gRPCOptions``."""
    try:
        from service.api.grpc_servicer import SERVICER_FUNCTIONS
    except ImportError:
        return []
    return list(SERVICER_FUNCTIONS)
