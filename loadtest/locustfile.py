"""Locust users for Tessera: REST predict, OIP binary tensors over REST and gRPC, slide jobs.

Run it with ``tessera loadtest`` (or ``make loadtest``), which starts the service if asked, sets
the mix and checks the SLOs; or directly, against a loopback host only::

    TESSERA_LT_MIX=predict=3,oip=1 locust -f loadtest/locustfile.py --headless -u 8 -r 4 -t 30s \\
        --host http://127.0.0.1:8000

Configuration (environment; see ``loadtest/README.md``): ``TESSERA_LT_MIX`` (user weights, e.g.
``predict=6,oip=2,grpc=2,slide=1``), ``TESSERA_LT_SIZES`` (image sides for ``/v1/predict`` with
weights, 224..2048), ``TESSERA_LT_MODEL``, ``TESSERA_LT_OIP_BATCH``, ``TESSERA_LT_GRPC``
(``host:port``, default the HTTP host on port 9000), ``TESSERA_LT_SLIDE_PATH`` (submit slide jobs by
path inside the server's slide root instead of uploading a synthetic slide), ``TESSERA_LT_PACE_S``
(each user starts a request every so many seconds: an offered rate, Locust's ``constant_pacing``) or,
when it is 0, ``TESSERA_LT_WAIT_S`` (a closed loop with think time drawn from 0..this).

A request the service sheds (503, RESOURCE_EXHAUSTED) is reported under its endpoint's name with
`` [shed]`` appended, so that the SLO check can count sheds apart from errors.
"""

from __future__ import annotations

import itertools
import json
import logging
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

# gRPC must cooperate with gevent before any channel exists (Locust runs users as greenlets).
import grpc.experimental.gevent as grpc_gevent
import numpy as np
from locust import FastHttpUser, User, between, constant_pacing, events, task
from locust.env import Environment

grpc_gevent.init_gevent()

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from loadtest.slo import SHED_SUFFIX  # noqa: E402 - needs the repository root on sys.path
from loadtest.workload import (  # noqa: E402
    Workload,
    cut_slide_jpegs,
    multipart_body,
    require_loopback_target,
    require_loopback_url,
    synthetic_slide_file,
)
from service.clients.oip import oip_binary_body, parse_oip_binary_response  # noqa: E402

log = logging.getLogger("tessera.loadtest")

WORKLOAD = Workload.from_env()
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_TERMINAL = ("succeeded", "failed", "cancelled")
_MEAN = np.asarray([0.485, 0.456, 0.406], dtype=np.float32).reshape(3, 1, 1)
_STD = np.asarray([0.229, 0.224, 0.225], dtype=np.float32).reshape(3, 1, 1)


class Assets:
    """What the users send, prepared once per Locust process (at ``init``)."""

    jpegs: dict[int, list[bytes]] = {}
    pixels: np.ndarray | None = None
    oip_body: bytes = b""
    oip_header_length: int = 0
    slide_bytes: bytes = b""
    slide_name: str = "synthetic.tiff"


@events.init.add_listener
def _prepare(environment: Environment, **_: Any) -> None:
    if environment.host:
        require_loopback_url(environment.host)
    kinds = WORKLOAD.active_kinds()
    start = time.perf_counter()
    sides = sorted(set(WORKLOAD.sizes) if "predict" in kinds else set())
    if "oip" in kinds or "grpc" in kinds:
        sides = sorted({*sides, WORKLOAD.oip_size})
    Assets.jpegs = cut_slide_jpegs(
        sides, slides_dir=WORKLOAD.slides_dir, variants=WORKLOAD.variants, seed=WORKLOAD.seed
    )
    if "oip" in kinds or "grpc" in kinds:
        Assets.pixels = _normalised_batch(Assets.jpegs[WORKLOAD.oip_size], WORKLOAD.oip_batch)
        Assets.oip_body, Assets.oip_header_length = oip_binary_body(Assets.pixels)
    if "slide" in kinds and not WORKLOAD.slide_path:
        cache = Path(tempfile.gettempdir()) / "tessera-loadtest"
        path = synthetic_slide_file(WORKLOAD.slide_side, cache)
        Assets.slide_bytes, Assets.slide_name = path.read_bytes(), path.name
    log.info("load-test assets ready in %.1f s: mix %s, sizes %s", time.perf_counter() - start, WORKLOAD.mix, sides)


def _normalised_batch(jpegs: list[bytes], n: int) -> np.ndarray:
    import io

    from PIL import Image

    tiles = []
    for i in range(n):
        rgb = np.asarray(Image.open(io.BytesIO(jpegs[i % len(jpegs)])).convert("RGB"), dtype=np.float32)
        tiles.append((rgb.transpose(2, 0, 1) / 255.0 - _MEAN) / _STD)
    return np.ascontiguousarray(np.stack(tiles), dtype=np.float32)


def _judge(response: Any, name: str, ok: int = 200) -> dict[str, Any] | None:
    """Success, shed (503: renamed to the shed row) or failure; the JSON body on success."""
    status = response.status_code
    if status == ok:
        return {}
    if status == 503:
        response.request_meta["name"] = name + SHED_SUFFIX
        response.failure(f"shed: 503 (Retry-After {response.headers.get('retry-after', '-')})")
        return None
    detail = ""
    try:
        error = json.loads(response.content or b"{}").get("error")
        detail = error.get("code", "") if isinstance(error, dict) else str(error or "")
    except (ValueError, AttributeError):
        detail = str(getattr(response, "error", "") or "")
    response.failure(f"HTTP {status} {detail}".strip())
    return None


def _post(client: Any, path: str, body: bytes, headers: dict[str, str], name: str) -> Any:
    """``client.post`` with a bytes body (sent as is), its outcome left to the caller (``catch_response``)."""
    return client.post(path, data=body, headers=headers, name=name, catch_response=True)


def _wait() -> Any:
    """Paced users offer a known rate (users / pace); unpaced ones loop with think time."""
    if WORKLOAD.pace_s > 0:
        return constant_pacing(WORKLOAD.pace_s)
    return between(0, WORKLOAD.wait_s)


class PredictUser(FastHttpUser):
    """``POST /v1/predict`` with a real tissue JPEG; the side drawn from ``TESSERA_LT_SIZES``."""

    weight = WORKLOAD.mix.get("predict", 0)
    wait_time = _wait()

    started = itertools.count()

    def on_start(self) -> None:
        # Seeded per user (TESSERA_LT_SEED, the user's start order): two runs draw the same sizes.
        self.rng = random.Random(f"{WORKLOAD.seed}:{next(PredictUser.started)}")

    @task
    def predict(self) -> None:
        side = WORKLOAD.pick_size(self.rng)
        name = f"/v1/predict {side}px"
        data = self.rng.choice(Assets.jpegs[side])
        with _post(self.client, "/v1/predict", data, {"content-type": "image/jpeg"}, name) as response:
            if _judge(response, name) is None:
                return
            try:
                body = json.loads(response.content)
                if not body.get("embedding"):
                    response.failure("answer has no embedding")
                    return
            except ValueError:
                response.failure("answer is not JSON")
                return
            response.success()


class OipUser(FastHttpUser):
    """OIP REST inference with an FP32 Nx3x224x224 binary tensor (``Inference-Header-Content-Length``)."""

    weight = WORKLOAD.mix.get("oip", 0)
    wait_time = _wait()

    @task
    def infer(self) -> None:
        model = WORKLOAD.model
        name = f"/v2/models/{model}/infer"
        headers = {
            "content-type": "application/octet-stream",
            "Inference-Header-Content-Length": str(Assets.oip_header_length),
        }
        with _post(self.client, name, Assets.oip_body, headers, name) as response:
            if _judge(response, name) is None:
                return
            try:
                outputs = parse_oip_binary_response(
                    response.content, response.headers.get("Inference-Header-Content-Length")
                )
                embedding = outputs["embedding"]
            except (ValueError, KeyError) as exc:
                response.failure(f"malformed OIP answer: {exc}")
                return
            if embedding.shape[0] != WORKLOAD.oip_batch or not np.isfinite(embedding).all():
                response.failure(f"embedding of shape {embedding.shape} (expected {WORKLOAD.oip_batch} rows)")
                return
            response.success()


class GrpcUser(User):
    """OIP ``ModelInfer`` over gRPC with ``tritonclient.grpc``, reported to Locust's statistics."""

    weight = WORKLOAD.mix.get("grpc", 0)
    wait_time = _wait()

    def on_start(self) -> None:
        import tritonclient.grpc as tg

        target = WORKLOAD.grpc_target or f"{urlsplit(self.host or 'http://127.0.0.1').hostname}:9000"
        self.target = require_loopback_target(target)
        self.client = tg.InferenceServerClient(self.target)
        if Assets.pixels is None:
            raise RuntimeError("no pixels prepared: grpc is not in TESSERA_LT_MIX")
        self.inputs = [tg.InferInput("pixels", list(Assets.pixels.shape), "FP32")]
        self.inputs[0].set_data_from_numpy(Assets.pixels)
        self.outputs = [tg.InferRequestedOutput("embedding")]

    def on_stop(self) -> None:
        client = getattr(self, "client", None)
        if client is not None:
            client.close()

    @task
    def infer(self) -> None:
        from tritonclient.utils import InferenceServerException

        model = WORKLOAD.model
        name = f"ModelInfer {model}"
        start = time.perf_counter()
        exception: Exception | None = None
        length = 0
        try:
            result = self.client.infer(model, self.inputs, outputs=self.outputs, client_timeout=120)
            embedding = result.as_numpy("embedding")
            if embedding is None or embedding.shape[0] != WORKLOAD.oip_batch:
                raise ValueError(f"embedding of shape {None if embedding is None else embedding.shape}")
            length = int(embedding.nbytes)
        except InferenceServerException as exc:
            if "RESOURCE_EXHAUSTED" in str(exc.status()):
                name += SHED_SUFFIX
            exception = exc
        except Exception as exc:
            exception = exc
        self.environment.events.request.fire(
            request_type="grpc",
            name=name,
            response_time=(time.perf_counter() - start) * 1e3,
            response_length=length,
            exception=exception,
            context={},
        )


class SlideUser(FastHttpUser):
    """A slide job: submit (upload of a small synthetic slide, or a path), poll, fetch the features.

    Each step is its own row; the whole job is one more row, ``JOB slide job``, timed end to end.
    """

    weight = WORKLOAD.mix.get("slide", 0)
    wait_time = _wait()

    @task
    def slide_job(self) -> None:
        start = time.perf_counter()
        error = self._run_job()
        self.environment.events.request.fire(
            request_type="JOB",
            name="slide job",
            response_time=(time.perf_counter() - start) * 1e3,
            response_length=0,
            exception=RuntimeError(error) if error else None,
            context={},
        )

    def _run_job(self) -> str | None:
        name = "/v1/slides"
        if WORKLOAD.slide_path:
            body = json.dumps({"path": WORKLOAD.slide_path}).encode()
            ctype = "application/json"
        else:
            body, ctype = multipart_body("slide", Assets.slide_name, Assets.slide_bytes, "image/tiff")
        with _post(self.client, name, body, {"content-type": ctype}, name) as r:
            if _judge(r, name, ok=202) is None:
                return f"submit: HTTP {r.status_code}"
            try:
                job_id = json.loads(r.content)["id"]
            except (ValueError, KeyError):
                r.failure("no job id in the answer")
                return "submit: no job id"
            r.success()
        deadline = time.monotonic() + WORKLOAD.slide_timeout_s
        state = "queued"
        while time.monotonic() < deadline:
            with self.client.get(f"/v1/slides/{job_id}", name="/v1/slides/{id}", catch_response=True) as r:
                if _judge(r, "/v1/slides/{id}") is None:
                    return f"poll: HTTP {r.status_code}"
                status = json.loads(r.content)
                state = status.get("state", "")
                r.success()
            if state in _TERMINAL:
                break
            time.sleep(WORKLOAD.slide_poll_s)
        if state != "succeeded":
            return f"job ended {state!r}" if state in _TERMINAL else f"job not done in {WORKLOAD.slide_timeout_s:.0f} s"
        path = f"/v1/slides/{job_id}/features"
        with self.client.get(path, name="/v1/slides/{id}/features", catch_response=True) as r:
            if _judge(r, "/v1/slides/{id}/features") is None:
                return f"features: HTTP {r.status_code}"
            if not r.content.startswith(_HDF5_MAGIC):
                r.failure("features are not HDF5")
                return "features are not HDF5"
            r.success()
        return None
