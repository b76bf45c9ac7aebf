"""A plain gRPC server (no Ray) over an in-process core, run as a subprocess by the gRPC tests.

    python -m tests.unit.api.grpc_server_main MODEL_REPO PORT

Prints ``READY <port>`` once serving. It runs in its own process because the standard OIP
client (``tritonclient.grpc``) and our generated ``grpc_predict_v2_pb2`` both register the
``inference.*`` messages in protobuf's default pool and cannot share one process.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from service.api.grpc import serve_grpc_inprocess
from tests.unit.api.conftest import build_core


async def main(root: Path, port: int) -> None:
    server = await serve_grpc_inprocess(build_core(root), port)
    print(f"READY {port}", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), int(sys.argv[2])))
