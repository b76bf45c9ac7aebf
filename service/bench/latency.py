"""Single-request latency through the real service (embedded Ray Serve), REST and gRPC.

One client, requests in sequence, medians: ``/v1/predict`` with a 224² JPEG cut from a real
slide, OIP infer with a 1x3x224x224 FP32 tensor over REST (binary) and gRPC (tritonclient), and
``tessera.v1.Images/Predict``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from service.bench._common import write_result

__all__ = ["run"]


def _median_ms(fn: Callable[[], object], n: int) -> dict[str, float]:
    fn()  # warm-up
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    times.sort()
    return {"median_ms": round(statistics.median(times), 2), "p90_ms": round(times[int(0.9 * (n - 1))], 2), "n": n}


def _tile_jpeg() -> bytes:
    import io

    import openslide

    slide_path = Path(__file__).resolve().parents[2].parent / "shared/data/slides/CMU-1-Small-Region.svs"
    with openslide.OpenSlide(str(slide_path)) as slide:
        region = slide.read_region((800, 1200), 0, (224, 224)).convert("RGB")
    buf = io.BytesIO()
    region.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def run(repo_path: str = "model_repo", n: int = 50) -> dict[str, Any]:
    import grpc
    import httpx
    import tritonclient.grpc as tg

    from service.api.protos import tessera_images_pb2, tessera_images_pb2_grpc
    from service.ports import free_port
    from service.serve.runner import start_service, stop_service
    from service.settings import ServerSettings

    settings = ServerSettings(
        model_repo=repo_path, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port()
    )
    jpeg = _tile_jpeg()
    pixels = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    settings = start_service(settings)  # "auto" resolved: the set-up measured
    try:
        base = f"http://127.0.0.1:{settings.http_port}"
        client = httpx.Client(timeout=60)
        predict = _median_ms(
            lambda: client.post(
                f"{base}/v1/predict", content=jpeg, headers={"content-type": "image/jpeg"}
            ).raise_for_status(),
            n,
        )
        predict20 = _median_ms(
            lambda: client.post(
                f"{base}/v1/predict", content=jpeg, headers={"content-type": "image/jpeg"}
            ).raise_for_status(),
            20,
        )
        header = (
            b'{"inputs":[{"name":"pixels","shape":[1,3,224,224],"datatype":"FP32",'
            b'"parameters":{"binary_data_size":%d}}]}' % pixels.nbytes
        )
        oip_rest = _median_ms(
            lambda: client.post(
                f"{base}/v2/models/vit_small/infer",
                content=header + pixels.tobytes(),
                headers={
                    "inference-header-content-length": str(len(header)),
                    "content-type": "application/octet-stream",
                },
            ).raise_for_status(),
            n,
        )
        target = f"127.0.0.1:{settings.grpc_port}"
        triton = tg.InferenceServerClient(target)
        inp = tg.InferInput("pixels", [1, 3, 224, 224], "FP32")
        inp.set_data_from_numpy(pixels)
        oip_grpc = _median_ms(lambda: triton.infer("vit_small", [inp]), n)
        with grpc.insecure_channel(target) as channel:
            stub = tessera_images_pb2_grpc.ImagesStub(channel)
            request = tessera_images_pb2.PredictRequest(image=jpeg, content_type="image/jpeg")
            images_grpc = _median_ms(lambda: stub.Predict(request, timeout=60), n)
        answer = client.post(f"{base}/v1/predict", content=jpeg, headers={"content-type": "image/jpeg"}).json()
    finally:
        stop_service()
    result = {
        "benchmark": "latency",
        "front_end": settings.front_end,
        "topology": settings.topology,
        "rest_v1_predict_224_jpeg": predict,
        "rest_v1_predict_224_jpeg_20": predict20,
        "rest_oip_infer_224_fp32": oip_rest,
        "grpc_oip_infer_224_fp32": oip_grpc,
        "grpc_images_predict_224_jpeg": images_grpc,
        "model": answer["model"],
        "server_timing_ms": answer["timing_ms"],
    }
    for key, value in result.items():
        print(f"{key}: {value}")
    print(f"wrote {write_result('latency', result)}")
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-repo", default="model_repo")
    parser.add_argument("-n", type=int, default=50)
    args = parser.parse_args(argv)
    run(args.model_repo, args.n)


if __name__ == "__main__":
    main()
