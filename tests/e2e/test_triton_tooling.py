"""End to end: ``tessera serve --model-control-mode=explicit`` as Triton's tools see it (tritonclient)."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http

from service.api.oip import EXTENSIONS
from tests.helpers import start_tessera_serve, stop_process_tree

pytestmark = pytest.mark.e2e


def _pixels(mod: Any) -> Any:
    tensor = mod.InferInput("pixels", [1, 3, 224, 224], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 3, 224, 224), np.float32))
    return tensor


def test_tritons_tools_against_tessera_serve(small_repo: Path, tmp_path: Path) -> None:
    proc, ports, _ = start_tessera_serve(
        env={"TESSERA_MODEL_REPO": str(small_repo)}, cwd=tmp_path, args=("--model-control-mode=explicit",)
    )
    try:
        rest = triton_http.InferenceServerClient(f"127.0.0.1:{ports['http']}", network_timeout=120)
        grpc = triton_grpc.InferenceServerClient(f"127.0.0.1:{ports['grpc']}")
        assert sorted(rest.get_server_metadata()["extensions"]) == sorted(EXTENSIONS)
        assert sorted(grpc.get_server_metadata().extensions) == sorted(EXTENSIONS)

        top = grpc.infer(
            "vit_small", [_pixels(triton_grpc)], outputs=[triton_grpc.InferRequestedOutput("logits", class_count=2)]
        )
        assert top.as_numpy("logits").shape == (1, 2)
        rest.infer("vit_small", [_pixels(triton_http)])
        stats = rest.get_inference_statistics("vit_small")["model_stats"][0]
        assert stats["inference_count"] >= 1
        assert grpc.get_model_config("vit_small").config.max_batch_size == 8

        grpc.unload_model("nat_tiny")
        states = {m["name"]: m["state"] for m in rest.get_model_repository_index()}
        assert states["nat_tiny"] == "UNAVAILABLE" and states["vit_small"] == "READY"
        rest.load_model("nat_tiny")
        assert grpc.is_model_ready("nat_tiny")

        answers: list[Any] = []
        done = threading.Event()

        def callback(result: Any, error: Any) -> None:
            answers.append(error)
            if len(answers) == 2:
                done.set()

        grpc.start_stream(callback=callback)
        for i in range(2):
            grpc.async_stream_infer("vit_small", [_pixels(triton_grpc)], request_id=str(i))
        assert done.wait(120) and answers == [None, None]
        grpc.stop_stream()
        rest.close()
        grpc.close()

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=90) == 0
    finally:
        stop_process_tree(proc)
