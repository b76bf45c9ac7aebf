"""A gRPC server for async RPC methods: grpcio's threaded server, each call handed to one event loop.

The RPC methods (``GrpcIngressMixin``'s) are coroutines over a serving core whose objects (the
batcher, the admission limit) belong to one event loop: the Ray replica's, or the test process's.
``LoopServer`` runs grpcio's own server, a thread per call in progress, and each handler thread
hands its call to that loop (``asyncio.run_coroutine_threadsafe``) and waits for the answer.

Why not ``grpc.aio``, which runs on the loop itself: on the 2-core host, a ``ModelInfer`` that
only parses its 602 KB request and answers a fixed tensor served 815-834 requests/s from 16
``tritonclient`` gRPC clients with ``grpc.aio`` at 113-117% of a core, 1226-1255 with the
threaded server at 83-97%, and 1212-1248 with the threaded server handing each call to an event
loop as here (2026-12-04; docs/architecture.md, "Front end"). grpc.aio's Python-side completion
queue polling costs more per call than a thread switch.

A call holds a thread of the pool (``MAX_WORKERS``) while it runs, and a call beyond that many
at once is refused by gRPC itself with RESOURCE_EXHAUSTED (``maximum_concurrent_rpcs``) rather
than queued with no bound; the core's admission limit (``max_pending_predictions``) refuses
inference beyond its own size first. A ``ModelStreamInfer`` stream holds a pool thread and a
reader thread for its life, and reads at most ``STREAM_WINDOW`` requests ahead of its method.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import queue
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

import grpc

__all__ = ["MAX_WORKERS", "ContextAdapter", "LoopServer"]

#: Calls in progress at once (each holds a thread, idle ones cost no CPU); more are refused.
MAX_WORKERS = 256
#: Requests of one stream read from the client and not yet taken by its method: past that, the
#: reader waits, and HTTP/2 flow control holds the client back.
STREAM_WINDOW = 16

#: A "time remaining" beyond this is no deadline at all (about 31 years).
NO_DEADLINE_S = 1e9

#: How often a waiting handler thread checks that its call can still be answered.
POLL_S = 1.0

_END = object()


class ContextAdapter:
    """What ``GrpcIngressMixin`` needs from a context (its code and details kept to read back),
    over a grpcio ``ServicerContext``: the methods set from the loop, read by the handler thread."""

    def __init__(self, context: Any):
        self._context = context
        self._code: Any = None
        self._details = ""

    def set_code(self, code: Any) -> None:
        self._code = code
        self._context.set_code(code)

    def set_details(self, details: str) -> None:
        self._details = details
        self._context.set_details(details)

    def code(self) -> Any:
        return self._code

    def details(self) -> str:
        return self._details

    def time_remaining(self) -> float | None:
        """Seconds to the call's deadline; None when it has none (grpcio's threaded server then
        reports the time to its infinite deadline, ~1e10 s)."""
        left = self._context.time_remaining()
        return None if left is None or left > NO_DEADLINE_S else float(left)

    def invocation_metadata(self) -> Sequence[tuple[str, Any]]:
        return tuple(self._context.invocation_metadata() or ())


def _finish(context: Any, adapter: ContextAdapter) -> None:
    """End the call with the status the method set, when it set one other than OK."""
    code = adapter.code()
    if code is not None and code != grpc.StatusCode.OK:
        context.abort(code, adapter.details())


def _cancel_with_call(context: Any, future: concurrent.futures.Future[Any]) -> None:
    """The call ended (the client cancelled, its deadline passed): cancel its coroutine."""
    if not context.add_callback(future.cancel):  # already over
        future.cancel()


class LoopServer:
    """``grpc.server`` with servicers whose methods run on the event loop that called :meth:`start`.

    The same shape as ``grpc.aio.Server`` for its owners: ``add_insecure_port``, then ``await
    start()``, ``await wait_for_termination()``, ``await stop(grace)``."""

    def __init__(self, options: Sequence[tuple[str, Any]], max_workers: int = MAX_WORKERS) -> None:
        self._server = grpc.server(
            concurrent.futures.ThreadPoolExecutor(max_workers, thread_name_prefix="tessera-grpc"),
            options=list(options),
            maximum_concurrent_rpcs=max_workers,
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Event | None = None

    def add_servicer(
        self,
        add_to_server: Callable[[Any, Any], None],
        base: type,
        target: Any,
        methods: Sequence[str],
        stream_methods: Sequence[str] = (),
    ) -> None:
        """Register an instance of the generated servicer ``base`` whose RPCs call ``target``'s
        coroutine methods of the same names (``stream_methods``: request-stream to reply-stream)."""
        handlers: dict[str, Any] = {name: self._unary(getattr(target, name)) for name in methods}
        handlers.update({name: self._stream(getattr(target, name)) for name in stream_methods})
        add_to_server(type(f"Loop{base.__name__}", (base,), handlers)(), self._server)

    def add_insecure_port(self, address: str) -> int:
        return self._server.add_insecure_port(address)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        self._server.start()

    async def wait_for_termination(self) -> None:
        assert self._stopped is not None, "start() first"
        await self._stopped.wait()

    async def stop(self, grace: float | None) -> None:
        """Refuse new calls; the calls in progress get ``grace`` seconds (they run on this loop,
        which keeps running meanwhile), then are cancelled."""
        await asyncio.to_thread(lambda: self._server.stop(grace).wait())  # stop(None) itself waits
        if self._stopped is not None:
            self._stopped.set()

    def _submit(self, coroutine: Any) -> concurrent.futures.Future[Any]:
        if self._loop is None:
            coroutine.close()
            raise RuntimeError("the server was not started on an event loop")
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop)

    def _loop_gone(self) -> bool:
        return self._loop is None or self._loop.is_closed()

    def _result(self, future: concurrent.futures.Future[Any], context: Any) -> Any:
        """The coroutine's result (a call whose client left is cancelled by ``_cancel_with_call``).
        The handler thread looks up every ``POLL_S``: a call whose loop is gone (closed with the
        call still on it) ends UNAVAILABLE rather than being waited for, so that no pool thread
        blocks the interpreter's exit."""
        while True:
            try:
                return future.result(timeout=POLL_S)
            except concurrent.futures.CancelledError:
                context.abort(grpc.StatusCode.CANCELLED, "the call was cancelled")
            except TimeoutError:
                if self._loop_gone():
                    context.abort(grpc.StatusCode.UNAVAILABLE, "the server stopped before answering")

    def _unary(self, method: Callable[..., Any]) -> Callable[..., Any]:
        def handler(_servicer: Any, request: Any, context: Any) -> Any:
            adapter = ContextAdapter(context)
            future = self._submit(method(request, grpc_context=adapter))
            _cancel_with_call(context, future)
            reply = self._result(future, context)
            _finish(context, adapter)
            return reply

        handler.__name__ = method.__name__
        return handler

    def _stream(self, method: Callable[..., AsyncIterator[Any]]) -> Callable[..., Iterator[Any]]:
        def handler(_servicer: Any, request_iterator: Iterator[Any], context: Any) -> Iterator[Any]:
            loop = self._loop
            if loop is None:
                raise RuntimeError("the server was not started on an event loop")
            adapter = ContextAdapter(context)
            inbox: asyncio.Queue[Any] = asyncio.Queue()
            outbox: queue.Queue[Any] = queue.Queue()
            window = threading.Semaphore(STREAM_WINDOW)  # requests read and not yet taken
            over = threading.Event()  # the method is done with the stream: stop reading

            def read() -> None:  # the client's requests, onto the loop as the method takes them
                try:
                    for request in request_iterator:
                        while not window.acquire(timeout=POLL_S):
                            if over.is_set() or self._loop_gone():
                                return
                        loop.call_soon_threadsafe(inbox.put_nowait, request)
                except Exception:
                    pass
                finally:
                    with contextlib.suppress(RuntimeError):  # the loop is gone: nothing waits any more
                        loop.call_soon_threadsafe(inbox.put_nowait, _END)

            async def requests() -> AsyncIterator[Any]:
                while (item := await inbox.get()) is not _END:
                    window.release()
                    yield item

            async def pump() -> None:
                try:
                    async for reply in method(requests(), grpc_context=adapter):
                        outbox.put(reply)
                finally:
                    over.set()
                    outbox.put(_END)

            threading.Thread(target=read, name="tessera-grpc-stream", daemon=True).start()
            future = self._submit(pump())
            _cancel_with_call(context, future)
            while True:
                try:
                    reply = outbox.get(timeout=POLL_S)
                except queue.Empty:
                    if future.done() or self._loop_gone():
                        break
                    continue
                if reply is _END:
                    break
                yield reply
            self._result(future, context)
            _finish(context, adapter)

        handler.__name__ = method.__name__
        return handler
