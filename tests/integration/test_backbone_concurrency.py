"""A backbone with ``max_concurrent_batches: 4`` (Swin-T in the default repository) runs a small
image beside a large one instead of queueing it behind (Ray Serve's ``@serve.batch`` is FIFO)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from ray import serve

from service.models import ModelRepository
from service.serve.app import APP_NAME, backbone_deployment_name
from service.serve.config import INGRESS

pytestmark = pytest.mark.integration


def test_a_small_image_finishes_while_a_large_one_runs(serve_url: str, serve_settings) -> None:
    assert ModelRepository(serve_settings.model_repo).config("swin_tiny").batching.max_concurrent_batches > 1
    large = np.zeros((3, 2048, 2048), dtype=np.float32)
    small = np.zeros((3, 224, 224), dtype=np.float32)
    if serve_settings.topology == "split":
        backbone = serve.get_deployment_handle(backbone_deployment_name("swin_tiny"), app_name=APP_NAME)
        run = lambda pixels: backbone.remote(pixels).result(timeout_s=300)  # noqa: E731
    else:  # colocated: the ingress holds the backbone; its ready-batch slots (max_concurrent_batches too)
        ingress = serve.get_deployment_handle(INGRESS, app_name=APP_NAME)

        def run(pixels: np.ndarray) -> dict:
            reply = ingress.infer_batch.remote("swin_tiny", pixels[None]).result(timeout_s=300)
            return {**reply, "outputs": {k: v[0] for k, v in reply["outputs"].items()}}

    run(small)  # warm the path
    done: dict[str, float] = {}
    replies: dict[str, dict] = {}

    def call(name: str, pixels: np.ndarray) -> None:
        replies[name] = run(pixels)
        done[name] = time.perf_counter()

    start = time.perf_counter()
    first = threading.Thread(target=call, args=("large", large))
    first.start()
    time.sleep(0.3)  # the large batch has started
    call("small", small)
    first.join(timeout=300)
    assert set(replies) == {"large", "small"}
    assert replies["small"]["outputs"]["embedding"].shape == replies["large"]["outputs"]["embedding"].shape
    # FIFO would answer the small image only after the large one's whole run
    assert done["small"] < done["large"], {k: round(v - start, 2) for k, v in done.items()}
