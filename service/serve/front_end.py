"""``front_end: replica``: the ingress replica's own HTTP and gRPC servers on the service's ports.

Ray Serve's proxies are off (``proxy_location: Disabled``); each ingress replica binds the HTTP port
(uvicorn over the replica's REST app) and the gRPC port (``grpc.aio`` over the replica's RPC
methods) itself, with ``SO_REUSEPORT``, so several replicas on a node share the ports and the kernel
spreads the connections over them. A request is decoded and answered in the process that holds
the serving core: no proxy process, no HAProxy, no Ray call on the way in. Why and what it costs:
docs/architecture.md, "Front end".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import uvicorn

from service.api.grpc_servicer import GrpcIngressMixin, grpc_server
from service.ports import bind_reuse_port

if TYPE_CHECKING:
    import grpc

__all__ = ["KEEP_ALIVE_S", "ReplicaFrontEnd"]

log = logging.getLogger(__name__)

#: Idle HTTP keep-alive (Ray Serve's proxies keep 90 s too; uvicorn's own default is 5 s).
KEEP_ALIVE_S = 90


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Ray owns the replica's signals: uvicorn installs none."""
        yield


class ReplicaFrontEnd:
    """Both servers of one ingress replica. Constructed on the replica's running event loop: it binds
    the ports at once (a port another program holds fails the replica's constructor with the reason)
    and serves on that loop, the one the serving core's objects live on."""

    def __init__(self, app: Any, rpcs: GrpcIngressMixin, *, host: str, http_port: int, grpc_port: int):
        self.address = f"{host}:{http_port}"
        sock = bind_reuse_port(host, http_port)
        self.grpc: grpc.aio.Server | None = None
        try:
            if grpc_port:
                self.grpc = grpc_server(rpcs, grpc_port, host=host, reuse_port=True)
        except OSError:
            sock.close()
            raise
        config = uvicorn.Config(
            app,
            lifespan="off",  # the app has no lifespan handlers; Ray's wrapper runs its own copy's
            access_log=False,  # the app's own middleware logs requests
            log_config=None,
            log_level="warning",
            timeout_keep_alive=KEEP_ALIVE_S,
        )
        self.http = _Server(config)
        loop = asyncio.get_running_loop()
        self._http_task = loop.create_task(self.http.serve(sockets=[sock]))
        self._grpc_task = loop.create_task(self.grpc.start()) if self.grpc is not None else None

    async def stop(self, grace_s: float) -> None:
        """Stop taking connections; requests in flight get ``grace_s`` to finish."""
        self.http.should_exit = True
        if self.grpc is not None:
            await self.grpc.stop(grace_s)
        try:
            await asyncio.wait_for(self._http_task, timeout=grace_s)
        except TimeoutError:
            log.warning("HTTP requests still in flight after %.0f s on %s: closed", grace_s, self.address)
            self._http_task.cancel()
