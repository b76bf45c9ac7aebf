"""A gRPC server for async RPC methods: grpcio's threaded server, each call handed to one event loop.

The RPC methods (``GrpcIngressMixin``'s) are coroutines over a serving core whose objects (the
batcher, the admission limit) belong to one event loop: the Ray replica's, or the test process's.
``LoopServer`` runs grpcio's own server, a thread per call in progress, and each handler thread
hands its call to that loop (a task started there, ``_LoopCall``) and waits for the answer.

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
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
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


class _GeneratedHandlers:
    """Stands in for the server in a generated ``add_*_to_server``, keeping the service's method
    handlers (so that a method's request deserializer can be swapped before they are registered)."""

    def __init__(self) -> None:
        self.service = ""
        self.handlers: dict[str, Any] = {}

    def add_generic_rpc_handlers(self, _handlers: Any) -> None:
        pass

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        self.service, self.handlers = service, dict(handlers)


def _with_deserializer(handler: Any, deserializer: Callable[[bytes], Any] | None) -> Any:
    """``handler`` with ``deserializer`` for its requests (unary or request-streaming methods)."""
    if deserializer is None:
        return handler
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            handler.unary_unary, request_deserializer=deserializer, response_serializer=handler.response_serializer
        )
    if handler.stream_stream is not None:
        return grpc.stream_stream_rpc_method_handler(
            handler.stream_stream, request_deserializer=deserializer, response_serializer=handler.response_serializer
        )
    raise ValueError("a request deserializer is swapped only on unary-unary and stream-stream methods")


class _LoopCall:
    """One call's coroutine, run as a task on the loop and waited for by its handler thread.

    One lock, released by the task's done callback, is all the handover: cheaper per call than
    ``asyncio.run_coroutine_threadsafe``, whose concurrent future chains its state through two
    callbacks and wakes its waiter through a Python ``Condition``."""

    __slots__ = ("_cancelled", "_coroutine", "_finished", "_over", "_task")

    def __init__(self, coroutine: Any) -> None:
        self._coroutine = coroutine
        self._finished = threading.Lock()
        self._finished.acquire()  # released once the task is over
        self._task: asyncio.Task[Any] | None = None
        self._cancelled = False
        self._over = False

    def start(self) -> None:
        """On the loop: run the coroutine (unless the call was cancelled before it started)."""
        if self._cancelled:
            self._coroutine.close()
            self._end()
            return
        self._task = asyncio.get_running_loop().create_task(self._coroutine)
        self._task.add_done_callback(self._end)

    def cancel(self) -> None:
        """On the loop."""
        self._cancelled = True
        if self._task is not None:
            self._task.cancel()

    def _end(self, _task: Any = None) -> None:
        self._over = True
        self._finished.release()

    def done(self) -> bool:
        return self._over

    def wait(self, timeout: float) -> bool:
        """In the handler thread: whether the call ended within ``timeout`` seconds."""
        return self._finished.acquire(timeout=timeout)

    def result(self) -> Any:
        """The coroutine's result or exception, once it ended (``asyncio.CancelledError``: cancelled)."""
        if self._task is None:
            raise asyncio.CancelledError
        return self._task.result()


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
        deserializers: Mapping[str, Callable[[bytes], Any]] | None = None,
    ) -> None:
        """Register an instance of the generated servicer ``base`` whose RPCs call ``target``'s
        coroutine methods of the same names (``stream_methods``: request-stream to reply-stream).

        ``deserializers``: the request deserializer of the methods named, instead of the generated
        message's ``FromString``."""
        handlers: dict[str, Any] = {name: self._unary(getattr(target, name)) for name in methods}
        handlers.update({name: self._stream(getattr(target, name)) for name in stream_methods})
        generated = _GeneratedHandlers()
        add_to_server(type(f"Loop{base.__name__}", (base,), handlers)(), generated)
        if not generated.service:
            raise RuntimeError(f"{add_to_server.__qualname__} registered no method handlers")
        methods_handlers = {
            name: _with_deserializer(handler, (deserializers or {}).get(name))
            for name, handler in generated.handlers.items()
        }
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(generated.service, methods_handlers),)
        )
        self._server.add_registered_method_handlers(generated.service, methods_handlers)

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

    def _submit(self, coroutine: Any) -> _LoopCall:
        loop = self._loop
        if loop is None:
            coroutine.close()
            raise RuntimeError("the server was not started on an event loop")
        call = _LoopCall(coroutine)
        try:
            loop.call_soon_threadsafe(call.start)
        except RuntimeError:  # the loop is closed
            coroutine.close()
            raise
        return call

    def _loop_gone(self) -> bool:
        return self._loop is None or self._loop.is_closed()

    def _cancel_with_call(self, context: Any, call: _LoopCall) -> None:
        """The call ended (the client cancelled, its deadline passed): cancel its coroutine."""
        loop = self._loop

        def cancel() -> None:  # grpcio runs this when the call ends, answered or not
            if call.done():  # answered: nothing to cancel, and no need to wake the loop
                return
            with contextlib.suppress(RuntimeError):  # the loop is closed: nothing runs there any more
                assert loop is not None
                loop.call_soon_threadsafe(call.cancel)

        if not context.add_callback(cancel):  # already over
            cancel()

    def _result(self, call: _LoopCall, context: Any) -> Any:
        """The coroutine's result (a call whose client left is cancelled by ``_cancel_with_call``).
        The handler thread looks up every ``POLL_S``: a call whose loop is gone (closed with the
        call still on it) ends UNAVAILABLE rather than being waited for, so that no pool thread
        blocks the interpreter's exit."""
        while not call.wait(POLL_S):
            if self._loop_gone():
                context.abort(grpc.StatusCode.UNAVAILABLE, "the server stopped before answering")
        try:
            return call.result()
        except asyncio.CancelledError:
            context.abort(grpc.StatusCode.CANCELLED, "the call was cancelled")

    def _unary(self, method: Callable[..., Any]) -> Callable[..., Any]:
        def handler(_servicer: Any, request: Any, context: Any) -> Any:
            adapter = ContextAdapter(context)
            call = self._submit(method(request, grpc_context=adapter))
            self._cancel_with_call(context, call)
            reply = self._result(call, context)
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
            call = self._submit(pump())
            self._cancel_with_call(context, call)
            while True:
                try:
                    reply = outbox.get(timeout=POLL_S)
                except queue.Empty:
                    if not (call.done() or self._loop_gone()):
                        continue
                    try:  # what the method answered between that wait and its end still goes out
                        reply = outbox.get_nowait()
                    except queue.Empty:
                        break
                if reply is _END:
                    break
                yield reply
            self._result(call, context)
            _finish(context, adapter)

        handler.__name__ = method.__name__
        return handler
