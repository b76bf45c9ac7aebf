"""Two plain gRPC servers (no Ray) over one in-process core, for the hardening tests.

    python -m tests.unit.hardening.grpc_server_main MODEL_REPO OPEN_PORT AUTH_PORT TOKEN_FILE

``OPEN_PORT`` serves without access control; ``AUTH_PORT`` requires a bearer token from
``TOKEN_FILE`` (re-read when it changes). Prints ``READY`` once both serve. A subprocess
because the client side uses tritonclient's ``inference.*`` messages, which cannot share a
process with ours (see ``tests/unit/api/grpc_server_main.py``).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from service.api.auth import TokenAuth
from service.api.grpc_servicer import serve_grpc_inprocess
from tests.unit.hardening.support import build_core


async def main(root: Path, open_port: int, auth_port: int, token_file: Path) -> None:
    core = build_core(root)
    open_server = await serve_grpc_inprocess(core, open_port, auth=TokenAuth())
    auth_server = await serve_grpc_inprocess(core, auth_port, auth=TokenAuth(tokens_file=token_file))
    print("READY", flush=True)
    await asyncio.gather(open_server.wait_for_termination(), auth_server.wait_for_termination())


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])))
