"""``tessera serve --topology colocated --front-end haproxy`` (the fastest set-up on one host): the
ingress replica holds the backbones, no backbone deployment runs, and the contract holds (REST,
OIP over gRPC with ``tritonclient``, errors as 4xx, a slide job whose batches run in the ingress,
the backbone's metrics, drain on SIGTERM, nothing left behind)."""

from __future__ import annotations

import io
import shutil
import signal
import time
from pathlib import Path

import h5py
import httpx
import numpy as np
import pytest

from tests.helpers import assert_nothing_left, descendants, slide_crop_jpeg, start_tessera_serve, stop_process_tree

pytestmark = pytest.mark.e2e


def _titles(pid: int) -> list[str]:
    """The process titles under ``pid`` (Ray titles a replica ``ray::ServeReplica:<app>:<deployment>``)."""
    titles = []
    for child in descendants(pid):
        try:
            titles.append(" ".join(child.cmdline()))
        except Exception:  # gone meanwhile
            continue
    return titles


def test_colocated_backbones_serve_the_contract(small_repo: Path, tmp_path: Path, cmu_slide: Path) -> None:
    import tritonclient.grpc as grpcclient

    slides = tmp_path / "slides"
    slides.mkdir()
    shutil.copy(cmu_slide, slides / cmu_slide.name)
    proc, ports, _ = start_tessera_serve(
        env={"TESSERA_MODEL_REPO": str(small_repo), "TESSERA_SLIDE_ROOT": str(slides)},
        cwd=tmp_path,
        args=("--topology", "colocated", "--front-end", "haproxy"),
    )
    children = descendants(proc.pid)
    try:
        titles = _titles(proc.pid)
        assert any("ServeReplica:tessera:Ingress" in t for t in titles), titles
        assert not [t for t in titles if "backbone_" in t], titles
        base = f"http://127.0.0.1:{ports['http']}"

        response = httpx.post(
            f"{base}/v1/predict", content=slide_crop_jpeg(), headers={"content-type": "image/jpeg"}, timeout=60
        )
        assert response.status_code == 200, response.text
        rest_embedding = np.asarray(response.json()["embedding"], dtype=np.float32)
        assert rest_embedding.shape == (384,)
        bad = httpx.post(f"{base}/v1/predict", content=b"not an image", headers={"content-type": "image/jpeg"})
        assert bad.status_code == 400 and bad.json()["error"]["code"], bad.text
        unknown = httpx.post(
            f"{base}/v1/predict?model=nope", content=slide_crop_jpeg(), headers={"content-type": "image/jpeg"}
        )
        assert unknown.status_code == 404, unknown.text

        pixels = np.random.default_rng(0).random((2, 3, 224, 224), dtype=np.float32)
        with grpcclient.InferenceServerClient(f"127.0.0.1:{ports['grpc']}") as client:
            inputs = [grpcclient.InferInput("pixels", list(pixels.shape), "FP32")]
            inputs[0].set_data_from_numpy(pixels)
            embedding = client.infer("vit_small", inputs).as_numpy("embedding")
            assert embedding is not None and embedding.shape == (2, 384)
            assert not np.allclose(embedding[0], embedding[1])

        # A slide job: its batches go from the job replica to the ingress replica that holds the model.
        job = httpx.post(f"{base}/v1/slides?mpp=1.0", json={"path": cmu_slide.name}, timeout=60)
        assert job.status_code == 202, job.text
        status, deadline = job.json(), time.monotonic() + 300
        while status["state"] not in ("succeeded", "failed") and time.monotonic() < deadline:
            time.sleep(0.5)
            status = httpx.get(f"{base}/v1/slides/{status['id']}", timeout=30).json()
        assert status["state"] == "succeeded", status
        features = httpx.get(f"{base}/v1/slides/{status['id']}/features", timeout=60)
        with h5py.File(io.BytesIO(features.content)) as h5:
            assert h5["features"].shape == (status["tiles_total"], 384)

        # The backbone's own series come from the ingress now.
        metrics, answered = "", time.monotonic()
        while "tessera_batch_size" not in metrics and time.monotonic() < answered + 8:
            metrics = httpx.get(f"http://127.0.0.1:{ports['metrics']}/metrics", timeout=10).text
            time.sleep(0.5)
        assert "tessera_batch_size" in metrics and "tessera_requests_total" in metrics

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0
    finally:
        left = stop_process_tree(proc, children)
    assert_nothing_left(left, (ports["http"], ports["grpc"]))


def test_replicas_the_host_cannot_hold_are_refused_at_start(small_repo: Path, tmp_path: Path) -> None:
    """Each colocated ingress replica asks for every model's CPUs: more replicas than the host holds
    used to start one and leave the rest pending without a word. Now ``tessera serve`` says so and
    exits 2, leaving nothing behind."""
    import os
    import subprocess
    import sys

    from service.ports import free_port

    ports = [free_port() for _ in range(3)]
    replicas = min(1024, 2 * (os.cpu_count() or 1) + 1)  # each asks for at least 0.5 CPUs: never fits
    command = [sys.executable, "-m", "service.cli", "--model-repo", str(small_repo), "serve"]
    command += ["--topology", "colocated", "--host", "127.0.0.1", "--http-port", str(ports[0])]
    command += ["--grpc-port", str(ports[1]), "--metrics-port", str(ports[2])]
    proc = subprocess.Popen(
        command,
        env={**os.environ, "TESSERA_INGRESS_REPLICAS": str(replicas)},
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    children: list = []
    try:
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            children += [c for c in descendants(proc.pid) if c not in children]
            time.sleep(0.5)
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 2, stderr
        assert "tessera: cannot start on this host" in stderr, stderr
        assert f"Ingress {replicas} x" in stderr and "TESSERA_INGRESS_REPLICAS" in stderr, stderr
    finally:
        left = stop_process_tree(proc, children)
    assert_nothing_left(left, ports)
