"""``tessera serve --front-end replica``: no proxy; the ingress replica's own uvicorn and grpc.aio
servers listen on the service's ports. The contract holds (REST, OIP over gRPC and REST with
``tritonclient``, errors as 4xx, large images between deployments, metrics, a request in flight
answered through SIGTERM, nothing left behind), and a port another program holds is refused before Ray starts."""

from __future__ import annotations

import concurrent.futures
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest

from tests.helpers import assert_nothing_left, slide_crop_jpeg, start_tessera_serve, stop_process_tree

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
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    proc, ports, ready = start_tessera_serve(
        env={"TESSERA_MODEL_REPO": str(small_repo)}, cwd=tmp_path, args=("--front-end", "replica")
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

        response = httpx.post(
            f"{base}/v1/predict", content=slide_crop_jpeg(), headers={"content-type": "image/jpeg"}, timeout=60
        )
        assert response.status_code == 200, response.text
        assert len(response.json()["embedding"]) == 384
        # a large image's pixels (over gRPC between deployments) are far over gRPC's 4 MB default
        large = httpx.post(
            f"{base}/v1/predict",
            content=slide_crop_jpeg(size=1500),
            headers={"content-type": "image/jpeg", "x-request-timeout": "120"},
            timeout=120,
        )
        assert large.status_code == 200, large.text
        bad = httpx.post(f"{base}/v1/predict", content=b"not an image", headers={"content-type": "image/jpeg"})
        assert bad.status_code == 400 and bad.json()["error"]["code"], bad.text

        pixels = np.random.default_rng(0).random((1, 3, 224, 224), dtype=np.float32)
        with grpcclient.InferenceServerClient(f"127.0.0.1:{ports['grpc']}") as client:
            assert client.is_server_live() and client.is_model_ready("vit_small")
            inputs = [grpcclient.InferInput("pixels", list(pixels.shape), "FP32")]
            inputs[0].set_data_from_numpy(pixels)
            embedding = client.infer("vit_small", inputs).as_numpy("embedding")
            assert embedding is not None and embedding.shape == (1, 384)
            wrong = [grpcclient.InferInput("nope", list(pixels.shape), "FP32")]
            wrong[0].set_data_from_numpy(pixels)
            with pytest.raises(InferenceServerException) as refused:
                client.infer("vit_small", wrong)
            assert refused.value.status() == "StatusCode.INVALID_ARGUMENT"
        with httpclient.InferenceServerClient(f"127.0.0.1:{ports['http']}") as client:
            inputs = [httpclient.InferInput("pixels", list(pixels.shape), "FP32")]
            inputs[0].set_data_from_numpy(pixels, binary_data=True)
            outputs = [httpclient.InferRequestedOutput("embedding", binary_data=True)]
            rest_embedding = client.infer("vit_small", inputs, outputs=outputs).as_numpy("embedding")
            assert rest_embedding is not None
            np.testing.assert_allclose(rest_embedding, embedding, rtol=1e-4, atol=1e-5)

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
