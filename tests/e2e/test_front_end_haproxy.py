"""``tessera serve --front-end haproxy``: HAProxy listens on the ports and forwards to the ingress
replica's own servers; the contract holds through it (REST, OIP over gRPC and REST with
``tritonclient``, errors as 4xx, metrics, drain on SIGTERM, nothing left behind)."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest

from service.serve.runner import HAPROXY_TUNING
from tests.helpers import assert_nothing_left, slide_crop_jpeg, start_tessera_serve, stop_process_tree

pytestmark = pytest.mark.e2e


def _listener(port: int) -> psutil.Process | None:
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port and conn.pid:
            return psutil.Process(conn.pid)
    return None


def test_the_contract_holds_behind_haproxy(small_repo: Path, tmp_path: Path) -> None:
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    proc, ports, ready = start_tessera_serve(
        env={"TESSERA_MODEL_REPO": str(small_repo)}, cwd=tmp_path, args=("--front-end", "haproxy")
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
        while "tessera_requests_total" not in metrics and time.monotonic() < answered + 8:
            metrics = httpx.get(f"http://127.0.0.1:{ports['metrics']}/metrics", timeout=10).text
            time.sleep(0.5)
        assert "tessera_requests_total" in metrics

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0
    finally:
        left = stop_process_tree(proc, children)
    assert_nothing_left(left, (ports["http"], ports["grpc"]))
