"""``LoopServer``: grpcio's threaded server running async RPC methods on the event loop that started it.

The scenario runs in a subprocess: it imports the generated ``inference.*`` messages, which clash
with tritonclient's copy in the test process's protobuf pool.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

from tests.helpers import free_port

_SCENARIO = """
import asyncio, sys, threading, time
import grpc
from service.api.grpc_loop_server import LoopServer
from service.api.protos import grpc_predict_v2_pb2 as pb, grpc_predict_v2_pb2_grpc as pbg

class Target:
    def __init__(self):
        self.loop_thread = threading.get_ident()
        self.cancelled = asyncio.Event()
        self.deadlines = []

    async def ServerLive(self, request, grpc_context=None):
        assert threading.get_ident() == self.loop_thread, "ran off the loop"
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, grpc_context=None):
        grpc_context.set_code(grpc.StatusCode.NOT_FOUND)
        grpc_context.set_details("no such thing")
        return pb.ServerReadyResponse()

    async def ModelReady(self, request, grpc_context=None):
        self.deadlines.append(grpc_context.time_remaining())
        return pb.ModelReadyResponse(ready=threading.get_ident() == self.loop_thread and request.name == "m!")

    async def ModelStreamInfer(self, request_stream, grpc_context=None):
        async for request in request_stream:
            yield pb.ModelStreamInferResponse(infer_response=pb.ModelInferResponse(id=request.id))

async def main(port):
    target = Target()
    server = LoopServer(options=[])
    swapped = {  # deserializers of our own, in place of the generated messages' FromString
        "ModelReady": lambda data: pb.ModelReadyRequest(name=pb.ModelReadyRequest.FromString(data).name + "!"),
        "ModelStreamInfer": lambda data: pb.ModelInferRequest(id="d" + pb.ModelInferRequest.FromString(data).id),
    }
    server.add_servicer(pbg.add_GRPCInferenceServiceServicer_to_server, pbg.GRPCInferenceServiceServicer,
                        target, ["ServerLive", "ServerReady", "ModelReady"], ["ModelStreamInfer"], swapped)
    assert server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stub = pbg.GRPCInferenceServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}"))

    def call(method, request, **kw):
        try:
            return method(request, **kw)
        except grpc.RpcError as exc:
            return exc

    ready = await asyncio.to_thread(call, stub.ModelReady, pb.ModelReadyRequest(name="m"))
    timed = await asyncio.to_thread(call, stub.ModelReady, pb.ModelReadyRequest(name="m"), timeout=20)
    print("READY", ready.ready, target.deadlines[0], 0 < target.deadlines[1] <= 21)  # gRPC rounds deadlines up

    error = await asyncio.to_thread(call, stub.ServerReady, pb.ServerReadyRequest())
    print("ERROR", error.code().name, error.details())

    start = time.monotonic()
    late = await asyncio.to_thread(call, stub.ServerLive, pb.ServerLiveRequest(), timeout=0.5)
    await asyncio.wait_for(target.cancelled.wait(), 5)
    print("DEADLINE", late.code().name, round(time.monotonic() - start) < 5)

    requests = iter([pb.ModelInferRequest(id=str(i)) for i in range(3)])
    replies = await asyncio.to_thread(lambda: [r.infer_response.id for r in stub.ModelStreamInfer(requests)])
    print("STREAM", ",".join(replies))
    await server.stop(1)

asyncio.run(main(int(sys.argv[1])))
"""


def test_methods_run_on_the_loop_with_status_deadline_cancellation_and_streams() -> None:
    run = subprocess.run(
        [sys.executable, "-c", _SCENARIO, str(free_port())], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    lines = dict(line.split(" ", 1) for line in run.stdout.splitlines())
    # on the loop, the request through the swapped deserializer; no deadline reads as None
    # (grpcio's own figure is ~1e10 s), a set one as seconds left
    assert lines["READY"] == "True None True"
    assert lines["ERROR"] == "NOT_FOUND no such thing"  # the status the method set on the context
    assert lines["DEADLINE"] == "DEADLINE_EXCEEDED True"  # and the method's coroutine was cancelled
    assert lines["STREAM"] == "d0,d1,d2"  # each request through the swapped deserializer


_EXIT_WITH_A_CALL_IN_FLIGHT = """
import asyncio, sys, threading
import grpc
from service.api.grpc_loop_server import LoopServer
from service.api.protos import grpc_predict_v2_pb2 as pb, grpc_predict_v2_pb2_grpc as pbg

class Slow:
    async def ServerLive(self, request, grpc_context=None):
        await asyncio.sleep(60)

def call(stub):
    try:
        stub.ServerLive(pb.ServerLiveRequest())
    except grpc.RpcError as exc:
        print("CALL", exc.code().name, flush=True)

port = int(sys.argv[1])
loop = asyncio.new_event_loop()
server = LoopServer(options=[])
server.add_servicer(pbg.add_GRPCInferenceServiceServicer_to_server, pbg.GRPCInferenceServiceServicer,
                    Slow(), ["ServerLive"])
server.add_insecure_port(f"127.0.0.1:{port}")
loop.run_until_complete(server.start())
caller = threading.Thread(target=call, args=(pbg.GRPCInferenceServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}")),))
caller.start()
loop.run_until_complete(asyncio.sleep(1))
loop.close()  # the call's task still on it, never cancelled, and the server never stopped
caller.join(10)
print("LEAVING", flush=True)
"""


def test_the_process_exits_when_the_loop_closes_under_a_call() -> None:
    """A pool thread waiting on a loop that is gone ends its call (UNAVAILABLE) instead of holding
    the interpreter's exit forever (the pool's threads are joined at exit)."""
    run = subprocess.run(
        [sys.executable, "-c", _EXIT_WITH_A_CALL_IN_FLIGHT, str(free_port())],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["CALL", "UNAVAILABLE", "LEAVING"]


def test_a_stream_reads_at_most_its_window_ahead_of_its_method() -> None:
    """A stream whose method takes no request: the reader stops pulling from the client after
    ``STREAM_WINDOW`` requests (HTTP/2 flow control then holds the client back), and stops for
    good once the method is done."""
    import asyncio
    import threading

    from service.api.grpc_loop_server import STREAM_WINDOW, LoopServer

    pulled: list[int] = []

    def requests() -> Iterator[int]:
        for i in range(10 * STREAM_WINDOW):
            pulled.append(i)
            yield i

    class Context:
        def add_callback(self, callback: Any) -> bool:
            return True

        def is_active(self) -> bool:
            return True

        def abort(self, code: Any, details: str) -> None:
            raise AssertionError(f"aborted: {code} {details}")

    async def idle(request_stream: Any, grpc_context: Any = None) -> AsyncIterator[str]:
        await asyncio.sleep(1.5)  # the reader fills its window meanwhile
        yield f"read {len(pulled)}"

    loop = asyncio.new_event_loop()
    runner = threading.Thread(target=loop.run_forever, daemon=True)
    runner.start()
    try:
        server = LoopServer(options=[])
        asyncio.run_coroutine_threadsafe(server.start(), loop).result(5)
        handler = server._stream(idle)
        replies = list(handler(None, requests(), Context()))
    finally:
        loop.call_soon_threadsafe(loop.stop)
        runner.join(5)
        loop.close()
    # the window, plus the one request the reader holds while it waits for room
    assert replies == [f"read {STREAM_WINDOW + 1}"]
    assert len(pulled) == STREAM_WINDOW + 1
