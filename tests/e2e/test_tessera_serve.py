"""End to end: ``tessera serve`` as a subprocess, driven over HTTP, stopped with a signal."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.helpers import assert_nothing_left, descendants, slide_crop_jpeg, start_tessera_serve, stop_process_tree

pytestmark = pytest.mark.e2e


def test_serve_predict_and_drain_on_sigterm(
    small_repo: Path, tmp_path: Path, cmu_slide: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RAY_metrics_report_interval_ms", raising=False)  # the embedded 1 s, asserted below
    output: list[str] = []
    proc, ports, ready = start_tessera_serve(
        env={"TESSERA_MODEL_REPO": str(small_repo), "TESSERA_RAY_LOGS": "1"}, cwd=tmp_path, output=output
    )
    base = f"http://127.0.0.1:{ports['http']}"
    children = descendants(proc.pid)
    try:
        assert ready.startswith(f"ready: http://127.0.0.1:{ports['http']}")
        assert f"metrics http://127.0.0.1:{ports['metrics']}/metrics" in ready
        response = httpx.post(
            f"{base}/v1/predict", content=slide_crop_jpeg(), headers={"content-type": "image/jpeg"}, timeout=60
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["weights"] == "untrained" and len(body["embedding"]) == 384

        # Metrics from the first request: embedded Ray reports every second (runner.py), so a scrape
        # a few seconds after the first answer holds the request counter (Ray's default is 10 s).
        metrics = ""
        answered = time.monotonic()
        while "tessera_requests_total" not in metrics and time.monotonic() < answered + 8:
            metrics = httpx.get(f"http://127.0.0.1:{ports['metrics']}/metrics", timeout=10).text
            time.sleep(0.5)
        assert "tessera_requests_total" in metrics and "ray_tessera_" not in metrics

        # TESSERA_RAY_LOGS: the ingress replica's access log reaches this terminal through Ray's log
        # monitor, which tessera serve makes list the log folder every 5 s (runner.EMBEDDED_ENV).
        while not any("(ServeReplica:tessera:Ingress" in line and "tessera.access" in line for line in output):
            assert time.monotonic() < answered + 15, "no replica log line forwarded"
            time.sleep(0.5)

        children = descendants(proc.pid)  # the replicas too, now that they answered
        assert children, "Ray should have started worker processes"

        # A request in flight when SIGTERM arrives must still be answered (drain), then exit 0.
        results: list[int] = []

        def slow_call() -> None:
            big = slide_crop_jpeg(size=1500)
            r = httpx.post(f"{base}/v1/predict", content=big, headers={"content-type": "image/jpeg"}, timeout=60)
            results.append(r.status_code)

        caller = threading.Thread(target=slow_call)
        caller.start()
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        caller.join(60)
        assert proc.wait(timeout=90) == 0
        assert results == [200]
    finally:
        left = stop_process_tree(proc, children)
    assert_nothing_left(left, ports.values())
