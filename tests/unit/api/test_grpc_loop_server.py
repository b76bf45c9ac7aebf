"""``LoopServer``: grpcio's threaded server running async RPC methods on the event loop that started it.

The scenario runs in a subprocess: it imports the generated ``inference.*`` messages, which clash
with tritonclient's copy in the test process's protobuf pool.
"""

from __future__ import annotations

import subprocess
import sys

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
        return pb.ModelReadyResponse(ready=threading.get_ident() == self.loop_thread)

    async def ModelStreamInfer(self, request_stream, grpc_context=None):
        async for request in request_stream:
            yield pb.ModelStreamInferResponse(infer_response=pb.ModelInferResponse(id=request.id))

async def main(port):
    target = Target()
    server = LoopServer(options=[])
    server.add_servicer(pbg.add_GRPCInferenceServiceServicer_to_server, pbg.GRPCInferenceServiceServicer,
                        target, ["ServerLive", "ServerReady", "ModelReady"], ["ModelStreamInfer"])
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
    # on the loop; no deadline reads as None (grpcio's own figure is ~1e10 s), a set one as seconds left
    assert lines["READY"] == "True None True"
    assert lines["ERROR"] == "NOT_FOUND no such thing"  # the status the method set on the context
    assert lines["DEADLINE"] == "DEADLINE_EXCEEDED True"  # and the method's coroutine was cancelled
    assert lines["STREAM"] == "0,1,2"


_EXIT_WITH_A_CALL_IN_FLIGHT = """
import asyncio, sys, threading
import grpc
from service.api.grpc_loop_server import LoopServer
from service.api.protos import grpc_predict_v2_pb2 as pb, grpc_predict_v2_pb2_grpc as pbg

class Slow:
    async def ServerLive(self, request, grpc_context=None):
        await asyncio.sleep(60)

async def main(port):
    server = LoopServer(options=[])
    server.add_servicer(pbg.add_GRPCInferenceServiceServicer_to_server, pbg.GRPCInferenceServiceServicer,
                        Slow(), ["ServerLive"])
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stub = pbg.GRPCInferenceServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
    threading.Thread(target=lambda: stub.ServerLive(pb.ServerLiveRequest()), daemon=True).start()
    await asyncio.sleep(1)
    print("LEAVING", flush=True)  # the loop ends with the call in flight, the server never stopped

asyncio.run(main(int(sys.argv[1])))
"""


def test_the_process_exits_with_a_call_in_flight_and_no_stop() -> None:
    """A pool thread waiting on a loop that is gone must not hold the interpreter's exit."""
    run = subprocess.run(
        [sys.executable, "-c", _EXIT_WITH_A_CALL_IN_FLIGHT, str(free_port())],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert run.returncode == 0, run.stderr
    assert "LEAVING" in run.stdout
