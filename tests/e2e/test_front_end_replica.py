"""``tessera serve --front-end replica --topology split``: no proxy; the ingress replica's own
uvicorn and gRPC servers listen on the service's ports, and call the backbone deployment over gRPC
(the one-host default, replica + colocated, is what the other e2e tests start). The contract
holds (REST, OIP over gRPC and REST with ``tritonclient``, errors as 4xx, large images between
deployments, metrics, a request in flight answered through SIGTERM, nothing left behind), and a
port another program holds is refused before Ray starts."""

from __future__ import annotations

import concurrent.futures
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from tests.helpers import (
    assert_front_end_contract,
    assert_nothing_left,
    slide_crop_jpeg,
    start_tessera_serve,
    stop_process_tree,
)

pytestmark = pytest.mark.e2e


def _listeners(port: int) -> set[int]:
    return {
        conn.pid
        for conn in psutil.net_connections(kind="tcp")
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port and conn.pid
    }


def _is_proxy(proc: psutil.Process) -> bool:
    try:
        return "ProxyActor" in " ".join(proc.cmdline()) or proc.name() == "haproxy"
    except psutil.Error:  # a short-lived child gone since the snapshot
        return False


def test_the_contract_holds_on_the_replicas_own_ports(small_repo: Path, tmp_path: Path) -> None:
    import tritonclient.grpc as grpcclient

    proc, ports, ready = start_tessera_serve(
        env={"TESSERA_MODEL_REPO": str(small_repo)},
        cwd=tmp_path,
        args=("--front-end", "replica", "--topology", "split"),
    )
    children = psutil.Process(proc.pid).children(recursive=True)
    try:
        assert ready.startswith(f"ready: http://127.0.0.1:{ports['http']}")
        # one process holds both ports: the ingress replica (no proxy actor, no HAProxy)
        (http_pid,) = _listeners(ports["http"])
        assert _listeners(ports["grpc"]) == {http_pid}
        assert "ServeReplica:tessera:Ingress" in " ".join(psutil.Process(http_pid).cmdline())
        assert not [p for p in children if _is_proxy(p)]
        base = f"http://127.0.0.1:{ports['http']}"

        assert_front_end_contract(ports)
        with grpcclient.InferenceServerClient(f"127.0.0.1:{ports['grpc']}") as client:
            assert client.is_server_live() and client.is_model_ready("vit_small")

        metrics, answered = "", time.monotonic()
        grpc_requests = 'endpoint="/inference.GRPCInferenceService/ModelInfer"'
        while grpc_requests not in metrics and time.monotonic() < answered + 8:
            metrics = httpx.get(f"http://127.0.0.1:{ports['metrics']}/metrics", timeout=10).text
            time.sleep(0.5)
        assert "tessera_requests_total" in metrics and grpc_requests in metrics

        # a request in flight when the service is told to stop is answered (drained), not cut
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(
                httpx.post,
                f"{base}/v1/predict",
                content=slide_crop_jpeg(size=1500),
                headers={"content-type": "image/jpeg", "x-request-timeout": "120"},
                timeout=120,
            )
            time.sleep(0.5)
            proc.send_signal(signal.SIGTERM)
            assert in_flight.result().status_code == 200
        assert proc.wait(timeout=120) == 0
    finally:
        left = stop_process_tree(proc, children)
    assert_nothing_left(left, (ports["http"], ports["grpc"]))


def test_a_port_another_program_holds_is_refused_before_ray_starts(small_repo: Path, tmp_path: Path) -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        serve = ["serve", "--front-end", "replica", "--http-port", str(port), "--grpc-port", "0"]
        done = subprocess.run(
            [sys.executable, "-m", "service.cli", "--model-repo", str(small_repo), *serve],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"the HTTP port 127.0.0.1:{port}: Address already in use" in done.stderr
    assert "ray" not in done.stderr.lower().replace("--front-end", "")  # refused before Ray started
