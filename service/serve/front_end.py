"""``front_end: replica``: the ingress replica's own HTTP and gRPC servers on the service's ports.

Ray Serve's proxies are off (``proxy_location: Disabled``); each ingress replica binds the HTTP port
(uvicorn over the replica's REST app) and the gRPC port (``LoopServer`` over the replica's RPC
methods, ``service.api.grpc_loop_server``) itself, with ``SO_REUSEPORT``, so several replicas on a
node share the ports and the kernel spreads the connections over them. A request is decoded and
answered in the process that holds the serving core: no proxy process, no HAProxy, no Ray call on
the way in. Why and what it costs: docs/architecture.md, "Front end".
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
    from service.api.grpc_loop_server import LoopServer

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
    """Both servers of one ingress replica.

    Constructed on the replica's running event loop, first thing: it binds the ports at once, so a
    port another program holds fails the replica's constructor with the reason before any model
    loads. :meth:`start` serves, on that loop (the one the serving core's objects live on), once
    the replica can answer."""

    def __init__(self, rpcs: GrpcIngressMixin, *, host: str, http_port: int, grpc_port: int, max_message_bytes: int):
        self.address = f"{host}:{http_port}"
        self._sock = bind_reuse_port(host, http_port)
        self.grpc: LoopServer | None = None
        try:
            if grpc_port:
                self.grpc = grpc_server(
                    rpcs, grpc_port, host=host, max_message_bytes=max_message_bytes, reuse_port=True
                )
        except OSError:
            self._sock.close()
            raise
        self.http: _Server | None = None
        self._tasks: list[asyncio.Task[Any]] = []

    def start(self, app: Any) -> None:
        config = uvicorn.Config(
            app,
            lifespan="off",  # the app has no lifespan handlers; Ray's wrapper runs them for its copy
            access_log=False,  # the app's own middleware logs requests
            log_config=None,
            log_level="warning",
            timeout_keep_alive=KEEP_ALIVE_S,
        )
        self.http = _Server(config)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self.http.serve(sockets=[self._sock]), name="tessera-http")]
        if self.grpc is not None:
            self._tasks.append(loop.create_task(self._serve_grpc(self.grpc), name="tessera-grpc"))

    @staticmethod
    async def _serve_grpc(server: LoopServer) -> None:
        await server.start()
        await server.wait_for_termination()

    def failure(self) -> str | None:
        """Why a server stopped serving on its own (None while both serve)."""
        for task in self._tasks:
            if task.done() and not task.cancelled():
                exc = task.exception()
                return f"{task.get_name()} on {self.address} stopped: {exc!r}" if exc else f"{task.get_name()} stopped"
        return None

    async def stop(self, grace_s: float) -> None:
        """Stop taking connections; the requests in flight on either server get ``grace_s`` in all."""
        if self.http is not None:
            self.http.should_exit = True
        stopping = [*self._tasks]
        if self.grpc is not None:
            stopping.append(asyncio.ensure_future(self.grpc.stop(grace_s)))
        if not stopping:
            return
        _, late = await asyncio.wait(stopping, timeout=grace_s)
        for task in late:
            log.warning(
                "%s: requests still in flight after %.0f s on %s: closed", task.get_name(), grace_s, self.address
            )
            task.cancel()
