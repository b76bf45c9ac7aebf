"""The gRPC servicers Ray Serve's gRPC proxy serves.

gRPC is on whenever a gRPC port is set. When it is, servicers that cannot be imported (grpcio
missing, a broken generated module) stop the start with :class:`GrpcUnavailable`: the service
never comes up quietly without the gRPC it was asked to serve. ``grpc_port=0``
(``TESSERA_GRPC_PORT=0``, ``--grpc-port 0``) is how to run without it.
"""

from __future__ import annotations

__all__ = ["GrpcUnavailable", "servicer_functions"]


class GrpcUnavailable(RuntimeError):
    """gRPC is configured but its servicers cannot be loaded."""


def servicer_functions() -> list[str]:
    """Import paths of ``add_*Servicer_to_server`` functions for ``gRPCOptions``.

    Raises :class:`GrpcUnavailable` when the servicer module does not import; call it only when
    gRPC is configured.
    """
    try:
        from service.api.grpc_servicer import SERVICER_FUNCTIONS
    except ImportError as exc:
        raise GrpcUnavailable(
            f"gRPC is configured but its servicers do not import ({type(exc).__name__}: {exc}); "
            "fix the installation, or set grpc_port to 0 (TESSERA_GRPC_PORT=0, --grpc-port 0) to run without gRPC"
        ) from exc
    return list(SERVICER_FUNCTIONS)
