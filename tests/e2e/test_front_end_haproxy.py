"""``tessera serve --front-end haproxy --topology split``: HAProxy listens on the ports and forwards
to the ingress replica's own servers, which call the backbone over gRPC (colocated behind HAProxy:
test_topology_colocated.py); the contract holds through it (REST, OIP over gRPC and REST with
``tritonclient``, errors as 4xx, metrics, drain on SIGTERM, nothing left behind)."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx
import psutil
import pytest

from service.serve.runner import HAPROXY_TUNING
from tests.helpers import assert_front_end_contract, assert_nothing_left, start_tessera_serve, stop_process_tree

pytestmark = pytest.mark.e2e


def _listener(port: int) -> psutil.Process | None:
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port and conn.pid:
            return psutil.Process(conn.pid)
    return None


def test_the_contract_holds_behind_haproxy(small_repo: Path, tmp_path: Path) -> None:
    proc, ports, ready = start_tessera_serve(
        env={"TESSERA_MODEL_REPO": str(small_repo)},
        cwd=tmp_path,
        args=("--front-end", "haproxy", "--topology", "split"),
    )
    children = psutil.Process(proc.pid).children(recursive=True)
    try:
        assert ready.startswith(f"ready: http://127.0.0.1:{ports['http']}")
        haproxy = _listener(ports["http"])
        assert haproxy is not None and haproxy.name() == "haproxy"
        grpc_listener = _listener(ports["grpc"])
        assert grpc_listener is not None and grpc_listener.name() == "haproxy"
        # Tessera's HTTP/2 windows reach the HAProxy that runs (Ray's default is 64 KiB)
        cmdline = haproxy.cmdline()
        config = Path(cmdline[cmdline.index("-f") + 1]).read_text()
        for side in ("fe", "be"):
            window = HAPROXY_TUNING[f"RAY_SERVE_HAPROXY_H2_{side.upper()}_INITIAL_WINDOW_SIZE"]
            assert f"tune.h2.{side}.initial-window-size {window}" in config
        assert_front_end_contract(ports)

        metrics, answered = "", time.monotonic()
        while "tessera_requests_total" not in metrics and time.monotonic() < answered + 8:
            metrics = httpx.get(f"http://127.0.0.1:{ports['metrics']}/metrics", timeout=10).text
            time.sleep(0.5)
        assert "tessera_requests_total" in metrics

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0
    finally:
        left = stop_process_tree(proc, children)
    assert_nothing_left(left, (ports["http"], ports["grpc"]))
