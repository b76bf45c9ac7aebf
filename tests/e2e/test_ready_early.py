"""End to end: ``tessera serve --build`` answers as soon as its first model is built, the others
join as they become ready; an unbuilt model loaded through Triton's repository API is built."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import tritonclient.http as triton_http

from tests.helpers import start_tessera_serve, stop_process_tree

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _unbuilt_copy(small_repo: Path, dest: Path, keep: tuple[str, ...] = ()) -> Path:
    """The test repository's configs and routes, with only the ``keep`` models built."""
    shutil.copytree(small_repo, dest)
    (dest / "calibration.json").unlink(missing_ok=True)
    for config in dest.glob("*/config.yaml"):
        if config.parent.name not in keep:
            shutil.rmtree(config.parent / "1", ignore_errors=True)
    return dest


def _stop(proc: subprocess.Popen[str]) -> None:
    stop_process_tree(proc, grace_s=90)


def _models(base: str) -> dict[str, Any]:
    return {m["name"]: m for m in httpx.get(f"{base}/v1/models", timeout=30).json()}


def test_ready_with_the_first_model_and_the_others_join(small_repo: Path, tmp_path: Path) -> None:
    repo = _unbuilt_copy(small_repo, tmp_path / "repo")
    output: list[str] = []
    proc, ports, _ = start_tessera_serve(
        model_repo=repo, cwd=tmp_path, args=("--build",), output=output, ready_timeout_s=900
    )
    base = f"http://127.0.0.1:{ports['http']}"
    try:
        before_ready = "".join(output)
        # progress while it builds: the phases of the first model, with elapsed time
        assert "vit_small: building (" in before_ready and "export" in before_ready, before_ready

        models = _models(base)
        assert models["vit_small"]["ready"] and models["vit_small"]["status"]["state"] == "ready"
        waiting = {name: m["status"]["state"] for name, m in models.items() if not m["ready"]}
        assert waiting and set(waiting.values()) <= {"building", "loading"}, waiting

        # the router chooses among ready models and says which it could not consider
        decision = httpx.get(f"{base}/v1/route", params={"width": 224, "height": 224}, timeout=30).json()
        assert decision["model"] == "vit_small" and set(decision["not_ready"]) == set(waiting)
        triton = triton_http.InferenceServerClient(f"127.0.0.1:{ports['http']}")
        index = {m["name"]: m for m in triton.get_model_repository_index()}
        assert index["vit_small"]["state"] == "READY"
        assert {index[name]["state"] for name in waiting} <= {"LOADING", "READY"}  # READY: joined meanwhile

        deadline = time.monotonic() + 1200
        while time.monotonic() < deadline and not all(m["ready"] for m in _models(base).values()):
            time.sleep(2)
        assert all(m["ready"] for m in _models(base).values()), _models(base)
        while time.monotonic() < deadline and "all models settled" not in "".join(output):
            time.sleep(2)  # the last model serves while it is calibrated: settled once that lands
        text = "".join(output)
        for name in waiting:
            assert f"{name} ready (" in text, text
        assert "all models settled: 3/3 ready" in text, text
        # calibrated as they were built: the router has every model's measured latency now
        calibrated = {e["model"] for e in json.loads((repo / "calibration.json").read_text())["entries"]}
        assert calibrated == set(models)
    finally:
        _stop(proc)


def test_loading_an_unbuilt_model_builds_it(small_repo: Path, tmp_path: Path) -> None:
    repo = _unbuilt_copy(small_repo, tmp_path / "repo", keep=("vit_small",))
    proc, ports, _ = start_tessera_serve(model_repo=repo, cwd=tmp_path, args=("--model-control-mode=explicit",))
    try:
        client = triton_http.InferenceServerClient(f"127.0.0.1:{ports['http']}", network_timeout=900)
        index = {m["name"]: m for m in client.get_model_repository_index()}
        assert index["vit_small"]["state"] == "READY"
        assert index["swin_tiny"]["state"] == "UNAVAILABLE" and "not built" in index["swin_tiny"]["reason"]
        client.load_model("swin_tiny")  # builds, calibrates, loads; returns when it answers
        assert client.is_model_ready("swin_tiny")
        assert (repo / "swin_tiny" / "1" / "manifest.json").exists()
        base = f"http://127.0.0.1:{ports['http']}"
        assert _models(base)["swin_tiny"]["ready"] and not _models(base)["nat_tiny"]["ready"]
    finally:
        _stop(proc)
