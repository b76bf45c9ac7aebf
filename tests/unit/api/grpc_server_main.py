"""A plain gRPC server (no Ray) over an in-process core, run as a subprocess by the gRPC tests.

    python -m tests.unit.api.grpc_server_main MODEL_REPO PORT [--explicit] [--max-pending N] [--slow S]

Prints ``READY <port>`` once serving. It runs in its own process because the standard OIP
client (``tritonclient.grpc``) and our generated ``grpc_predict_v2_pb2`` both register the
``inference.*`` messages in protobuf's default pool and cannot share one process.
``--explicit`` turns on explicit model control; ``--max-pending`` sets the admission limit;
``--slow`` makes every backbone call take at least S more seconds (to hold requests in flight).
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

import numpy as np

from service.api.grpc_servicer import serve_grpc_inprocess
from service.api.serving import LocalBackboneClient
from tests.unit.api.conftest import build_core


class SlowClient(LocalBackboneClient):
    def __init__(self, inner: LocalBackboneClient, delay_s: float):
        super().__init__(inner.backends)
        self.delay_s = delay_s

    async def infer(self, model: str, pixels: np.ndarray) -> dict[str, Any]:
        await asyncio.sleep(self.delay_s)
        return await super().infer(model, pixels)

    async def infer_batch(self, model: str, pixels: np.ndarray) -> list[dict[str, Any]]:
        await asyncio.sleep(self.delay_s)
        return await super().infer_batch(model, pixels)


async def main(args: argparse.Namespace) -> None:
    core = build_core(
        args.repo,
        max_pending=args.max_pending,
        model_control_mode="explicit" if args.explicit else "none",
    )
    if args.slow:
        assert isinstance(core.client, LocalBackboneClient)
        core.client = SlowClient(core.client, args.slow)
    server = await serve_grpc_inprocess(core, args.port)
    print(f"READY {args.port}", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("repo", type=Path)
    parser.add_argument("port", type=int)
    parser.add_argument("--explicit", action="store_true")
    parser.add_argument("--max-pending", type=int, default=0)
    parser.add_argument("--slow", type=float, default=0.0)
    asyncio.run(main(parser.parse_args()))
