"""Backpressure and deadlines on both transports, against a `tessera serve` with tiny queues.

Bounded: a fixed number of requests to loopback, then it stops. Shed requests must be quick
503/RESOURCE_EXHAUSTED with Retry-After; every accepted request must get the right answer.
"""

from __future__ import annotations

import signal
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from tests.helpers import jpeg_bytes, make_vit_only_repo, start_tessera_serve, stop_process_tree

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

BURST = 48


#: ``split``: Ray's proxy and the backbone's own queue bounds (``max_ongoing_requests``,
#: ``max_queued_requests``, its ``BackPressureError`` mapped to ``Overloaded``) take part, as on a
#: cluster; ``default``: the one-host set-up (the replica's own servers, the model in the ingress),
#: where the ingress's ``max_pending_predictions`` alone sheds.
SETUPS = {"split": ("--topology", "split", "--front-end", "ray"), "default": ()}


@pytest.fixture(scope="module", params=list(SETUPS))
def tiny_queue_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    root = make_vit_only_repo(
        tmp_path_factory.mktemp("overload_repo"), max_batch_size=2, max_ongoing_requests=2, max_queued_requests=2
    )

    proc, ports, _ = start_tessera_serve(
        model_repo=root, env={"TESSERA_MAX_PENDING_PREDICTIONS": "6"}, args=SETUPS[request.param]
    )
    try:
        yield ports
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=90)
        finally:
            stop_process_tree(proc)
    assert code == 0


def test_rest_overload_sheds_quickly_and_serves_correctly(tiny_queue_server: dict) -> None:
    base = f"http://127.0.0.1:{tiny_queue_server['http']}"
    image = jpeg_bytes(seed=11)
    reference = httpx.post(f"{base}/v1/predict", content=image, headers={"content-type": "image/jpeg"}, timeout=60)
    assert reference.status_code == 200
    expected = np.asarray(reference.json()["embedding"])

    def call(_: int) -> tuple[int, float, httpx.Response]:
        start = time.perf_counter()
        r = httpx.post(f"{base}/v1/predict", content=image, headers={"content-type": "image/jpeg"}, timeout=120)
        return r.status_code, time.perf_counter() - start, r

    with ThreadPoolExecutor(BURST) as pool:
        results = list(pool.map(call, range(BURST)))
    codes = [code for code, _, _ in results]
    assert set(codes) <= {200, 503}, codes
    shed = [(t, r) for code, t, r in results if code == 503]
    served = [r for code, _, r in results if code == 200]
    assert shed and served
    for _, r in shed:
        assert r.headers["retry-after"] == "1"
        assert r.json()["error"]["code"] == "overloaded"
    for r in served:
        np.testing.assert_allclose(r.json()["embedding"], expected, atol=1e-4)
    median_shed_ms = statistics.median(t for t, _ in shed) * 1e3
    print(f"\nREST burst of {BURST}: served {len(served)}, shed {len(shed)}, median 503 time {median_shed_ms:.1f} ms")

    time.sleep(1.0)  # recovery: after the burst, a request is served normally
    again = httpx.post(f"{base}/v1/predict", content=image, headers={"content-type": "image/jpeg"}, timeout=60)
    assert again.status_code == 200


def test_grpc_overload_is_resource_exhausted(tiny_queue_server: dict) -> None:
    import tritonclient.grpc as tg
    from tritonclient.utils import InferenceServerException

    target = f"127.0.0.1:{tiny_queue_server['grpc']}"
    pixels = np.random.default_rng(2).standard_normal((1, 3, 224, 224)).astype(np.float32)

    def call(_: int) -> str:
        client = tg.InferenceServerClient(target)
        inp = tg.InferInput("pixels", list(pixels.shape), "FP32")
        inp.set_data_from_numpy(pixels)
        try:
            out = client.infer("vit_small", [inp]).as_numpy("embedding")
            return "OK" if out.shape == (1, 384) and np.isfinite(out).all() else "WRONG"
        except InferenceServerException as exc:
            return str(exc.status())
        finally:
            client.close()

    with ThreadPoolExecutor(BURST) as pool:
        statuses = list(pool.map(call, range(BURST)))
    assert "WRONG" not in statuses
    assert any("RESOURCE_EXHAUSTED" in s for s in statuses), statuses
    assert "OK" in statuses
    assert all(s == "OK" or "RESOURCE_EXHAUSTED" in s for s in statuses), statuses


def test_deadlines_on_both_transports(tiny_queue_server: dict) -> None:
    import tritonclient.grpc as tg
    from tritonclient.utils import InferenceServerException

    base = f"http://127.0.0.1:{tiny_queue_server['http']}"
    r = httpx.post(
        f"{base}/v1/predict",
        content=jpeg_bytes(),
        timeout=60,
        headers={"content-type": "image/jpeg", "x-request-timeout": "0.000001"},
    )
    assert r.status_code == 504 and r.json()["error"]["code"] == "deadline_exceeded"
    client = tg.InferenceServerClient(f"127.0.0.1:{tiny_queue_server['grpc']}")
    inp = tg.InferInput("pixels", [1, 3, 224, 224], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 3, 224, 224), np.float32))
    with pytest.raises(InferenceServerException) as err:
        client.infer("vit_small", [inp], headers={"x-request-timeout": "0.000001"})
    assert "DEADLINE_EXCEEDED" in str(err.value.status())
