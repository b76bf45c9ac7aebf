"""End to end: ``tessera serve`` as a subprocess, driven over HTTP, stopped with a signal."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest

from tests.helpers import free_port, slide_crop_jpeg

pytestmark = pytest.mark.e2e

TESSERA = str(Path(sys.executable).with_name("tessera"))


def _start(small_repo: Path, tmp_path: Path) -> tuple[subprocess.Popen[str], dict[str, int], str]:
    ports = {"http": free_port(), "grpc": free_port(), "metrics": free_port()}
    env = {**os.environ, "TESSERA_MODEL_REPO": str(small_repo)}
    proc = subprocess.Popen(
        [
            TESSERA,
            "serve",
            "--http-port",
            str(ports["http"]),
            "--grpc-port",
            str(ports["grpc"]),
            "--metrics-port",
            str(ports["metrics"]),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    deadline = time.monotonic() + 240
    lines: list[str] = []
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                pytest.fail("tessera serve exited early:\n" + "".join(lines))
            continue
        lines.append(line)
        if line.startswith("ready: "):
            threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep draining output
            return proc, ports, line.strip()
    proc.kill()
    pytest.fail("no ready line within 240 s:\n" + "".join(lines))


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def test_serve_predict_and_drain_on_sigterm(small_repo: Path, tmp_path: Path, cmu_slide: Path) -> None:
    proc, ports, ready = _start(small_repo, tmp_path)
    base = f"http://127.0.0.1:{ports['http']}"
    try:
        assert ready.startswith(f"ready: http://127.0.0.1:{ports['http']}")
        assert f"metrics http://127.0.0.1:{ports['metrics']}/metrics" in ready
        response = httpx.post(
            f"{base}/v1/predict", content=slide_crop_jpeg(), headers={"content-type": "image/jpeg"}, timeout=60
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["weights"] == "untrained" and len(body["embedding"]) == 384

        metrics = ""
        deadline = time.monotonic() + 60
        while "tessera_requests_total" not in metrics and time.monotonic() < deadline:
            metrics = httpx.get(f"http://127.0.0.1:{ports['metrics']}/metrics", timeout=10).text
            time.sleep(1)
        assert "tessera_requests_total" in metrics and "ray_tessera_" not in metrics

        children = _descendants(proc.pid)
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
        if proc.poll() is None:
            proc.kill()
    time.sleep(1.0)
    leftovers = [p for p in children if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not leftovers, f"processes left behind: {[p.name() for p in leftovers]}"
    for port in ports.values():
        with socket.socket() as sock:
            # SO_REUSEADDR ignores connections in TIME_WAIT; a port still listening fails to bind.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", port))
