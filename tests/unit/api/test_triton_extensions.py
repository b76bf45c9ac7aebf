"""Triton's tooling surface, driven by the standard client (tritonclient) over REST and gRPC.

Each test runs on both transports: REST against the app over an in-process core on a real port
(uvicorn in a thread), gRPC against ``serve_grpc_inprocess`` in a subprocess (tritonclient.grpc
and our generated messages cannot share a process). The "explicit" servers allow model control;
the "restricted" ones refuse it, admit one request at a time and hold each backbone call 1.5 s.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from service.api.oip import EXTENSIONS
from service.api.serving import LocalBackboneClient, ServingCore
from service.errors import Unavailable
from service.runtime import Backend
from tests.helpers import jpeg_bytes
from tests.unit.api.conftest import Reference, build_core, grpc_server, http_server
from tests.unit.api.grpc_server_main import SlowClient

SLOW_S = 1.5
LABELS = [f"class_{i}" for i in range(1000)]


@pytest.fixture(scope="module")
def labelled(small_repo: Path) -> Iterator[None]:
    """nat_tiny gets a labels file (read per request); the other models have none."""
    path = small_repo / "nat_tiny" / "labels.txt"
    path.write_text("\n".join(LABELS) + "\n")
    yield
    path.unlink()


@pytest.fixture(scope="module")
def explicit_http(small_repo: Path, backends: dict[str, Backend], labelled: None) -> Iterator[tuple[str, ServingCore]]:
    core = build_core(small_repo, backends, model_control_mode="explicit")
    with http_server(core) as url:
        yield url, core


@pytest.fixture(scope="module")
def explicit_grpc(small_repo: Path, tmp_path_factory: pytest.TempPathFactory, labelled: None) -> Iterator[str]:
    with grpc_server(small_repo, tmp_path_factory.mktemp("grpc") / "explicit.log", "--explicit") as url:
        yield url


@pytest.fixture(scope="module")
def restricted_http(small_repo: Path, backends: dict[str, Backend]) -> Iterator[str]:
    core = build_core(small_repo, backends, max_pending=1)
    assert isinstance(core.client, LocalBackboneClient)
    core.client = SlowClient(core.client, SLOW_S)
    with http_server(core) as url:
        yield url


@pytest.fixture(scope="module")
def restricted_grpc(small_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("grpc") / "restricted.log"
    with grpc_server(small_repo, log, "--max-pending", "1", "--slow", str(SLOW_S)) as url:
        yield url


class Triton:
    """One tritonclient (HTTP or gRPC) and the few places where their answers differ in form."""

    def __init__(self, kind: str, url: str):
        self.kind = kind
        self.url = url
        self.mod: ModuleType = triton_http if kind == "http" else triton_grpc
        self.client: Any = self.mod.InferenceServerClient(url=url)

    def code(self, exc: pytest.ExceptionInfo[InferenceServerException]) -> str:
        """The HTTP status ("400") or the gRPC code name ("INVALID_ARGUMENT")."""
        return str(exc.value.status()).removeprefix("StatusCode.")

    def expect(self, http: int, grpc: str) -> str:
        return str(http) if self.kind == "http" else grpc

    def stats(self, model: str = "", version: str = "") -> list[dict[str, Any]]:
        if self.kind == "http":
            answer = self.client.get_inference_statistics(model, version)
        else:
            answer = self.client.get_inference_statistics(model, version, as_json=True)
        return [_ints(s) for s in answer["model_stats"]]

    def config(self, model: str) -> dict[str, Any]:
        if self.kind == "http":
            return _ints(self.client.get_model_config(model))
        return _ints(self.client.get_model_config(model, as_json=True)["config"])

    def index(self) -> dict[str, dict[str, Any]]:
        if self.kind == "http":
            entries = self.client.get_model_repository_index()
        else:
            entries = self.client.get_model_repository_index(as_json=True)["models"]
        return {e["name"]: e for e in entries}

    def pixels(self, n: int = 2, seed: int = 0) -> tuple[Any, np.ndarray]:
        data = np.random.default_rng(seed).standard_normal((n, 3, 224, 224)).astype(np.float32)
        tensor = self.mod.InferInput("pixels", list(data.shape), "FP32")
        tensor.set_data_from_numpy(data)
        return tensor, data


def _ints(value: Any) -> Any:
    """gRPC's JSON renders 64-bit integers as strings: turn digit strings back into ints."""
    if isinstance(value, dict):
        return {k: _ints(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_ints(v) for v in value]
    if isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)
    return value


@pytest.fixture(params=["http", "grpc"])
def triton(request: pytest.FixtureRequest) -> Iterator[Triton]:
    url = (
        request.getfixturevalue("explicit_http")[0]
        if request.param == "http"
        else request.getfixturevalue("explicit_grpc")
    )
    client = Triton(request.param, url)
    yield client
    client.client.close()


@pytest.fixture(params=["http", "grpc"])
def restricted(request: pytest.FixtureRequest) -> Iterator[Triton]:
    client = Triton(request.param, request.getfixturevalue(f"restricted_{request.param}"))
    yield client
    client.client.close()


# -- 7. metadata -------------------------------------------------------------------------------------
def test_server_metadata_lists_the_extensions_that_work(triton: Triton) -> None:
    meta = triton.client.get_server_metadata()
    extensions = meta["extensions"] if triton.kind == "http" else list(meta.extensions)
    assert sorted(extensions) == sorted(EXTENSIONS)
    assert {"statistics", "model_configuration", "model_repository", "classification", "parameters"} <= set(extensions)


def test_model_metadata_lists_every_pixel_datatype(triton: Triton) -> None:
    meta = triton.client.get_model_metadata("vit_small")
    inputs = (
        meta["inputs"] if triton.kind == "http" else [{"name": t.name, "datatype": t.datatype} for t in meta.inputs]
    )
    assert [t["datatype"] for t in inputs if t["name"] == "pixels"] == ["FP32", "FP16", "UINT8"]
    for datatype, dtype in (("FP16", np.float16), ("UINT8", np.uint8)):  # each listed datatype is accepted
        tensor = triton.mod.InferInput("pixels", [1, 3, 224, 224], datatype)
        tensor.set_data_from_numpy(np.zeros((1, 3, 224, 224), dtype=dtype))
        assert triton.client.infer("vit_small", [tensor]).as_numpy("embedding").shape == (1, 384)


# -- 1. statistics -------------------------------------------------------------------------------------
def test_statistics_count_what_was_inferred(triton: Triton) -> None:
    (before,) = triton.stats("swin_tiny")
    tensor_swin = triton.mod.InferInput("pixels", [2, 3, 224, 224], "FP32")
    tensor_swin.set_data_from_numpy(np.zeros((2, 3, 224, 224), np.float32))
    triton.client.infer("swin_tiny", [tensor_swin])
    image = triton.mod.InferInput("image", [1], "BYTES")
    image.set_data_from_numpy(np.array([jpeg_bytes(300, 200, seed=2)], dtype=np.object_))
    triton.client.infer("swin_tiny", [image])
    with pytest.raises(InferenceServerException):
        triton.client.infer("swin_tiny", [triton.pixels(1)[0]], timeout=1)  # 1 µs: fails

    (after,) = triton.stats("swin_tiny", "1")
    assert after["name"] == "swin_tiny" and str(after["version"]) == "1"
    assert after["inference_count"] - before.get("inference_count", 0) == 3
    assert after["execution_count"] - before.get("execution_count", 0) == 2
    assert after["last_inference"] > 0
    inference, previous = after["inference_stats"], before.get("inference_stats", {})
    assert inference["success"]["count"] - previous.get("success", {}).get("count", 0) == 2
    assert inference["fail"]["count"] - previous.get("fail", {}).get("count", 0) == 1
    for stage in ("queue", "compute_input", "compute_infer", "compute_output"):
        assert inference[stage]["count"] - previous.get(stage, {}).get("count", 0) == 2
    assert inference["compute_infer"]["ns"] > 0 and inference["compute_input"]["ns"] > 0
    sizes = {b["batch_size"]: b for b in after["batch_stats"]}
    assert {1, 2} <= set(sizes) and sizes[2]["compute_infer"]["ns"] > 0

    everything = triton.stats()
    assert {s["name"] for s in everything} == {"nat_tiny", "swin_tiny", "vit_small"}
    with pytest.raises(InferenceServerException) as exc:
        triton.stats("nope")
    assert triton.code(exc) == triton.expect(404, "NOT_FOUND")


# -- 2. model configuration ----------------------------------------------------------------------------
def test_model_config_in_tritons_shape(triton: Triton) -> None:
    config = triton.config("vit_small")
    assert config["name"] == "vit_small" and config["platform"] == "onnxruntime_onnx"
    assert config["backend"] == "onnxruntime" and config["max_batch_size"] == 8
    inputs = {t["name"]: t for t in config["input"]}
    assert inputs["pixels"]["data_type"] == "TYPE_FP32" and inputs["pixels"]["dims"] == [3, -1, -1]
    assert inputs["image"]["data_type"] == "TYPE_STRING"
    outputs = {t["name"]: t for t in config["output"]}
    assert outputs["embedding"]["dims"] == [384] and outputs["logits"]["dims"] == [1000]
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 10000
    assert config["dynamic_batching"]["preferred_batch_size"] == [8]
    (group,) = config["instance_group"]
    assert group["kind"] == "KIND_CPU" and group["count"] == 1
    facts = {k: v["string_value"] for k, v in config["parameters"].items()}
    assert facts["buckets"] == "224,384,512,1024" and facts["runtime"] == "onnxruntime"
    assert facts["precision"] == "fp32" and facts["pixel_datatypes"] == "FP32,FP16,UINT8"
    assert triton.config("nat_tiny")["output"][1]["label_filename"] == "labels.txt"
    with pytest.raises(InferenceServerException) as exc:
        triton.config("nope")
    assert triton.code(exc) == triton.expect(404, "NOT_FOUND")


# -- 3. model repository -------------------------------------------------------------------------------
def test_repository_index_unload_and_load(triton: Triton, explicit_http: tuple[str, ServingCore]) -> None:
    index = triton.index()
    assert set(index) == {"nat_tiny", "swin_tiny", "vit_small"}
    assert all(e["state"] == "READY" and str(e["version"]) == "1" for e in index.values())
    try:
        triton.client.unload_model("swin_tiny")
        entry = triton.index()["swin_tiny"]
        assert entry["state"] == "UNAVAILABLE" and "unloaded" in entry["reason"]
        assert not triton.client.is_model_ready("swin_tiny") and triton.client.is_model_ready("vit_small")
        with pytest.raises(InferenceServerException) as exc:
            triton.client.infer("swin_tiny", [triton.pixels(1)[0]])
        assert triton.code(exc) == triton.expect(503, "UNAVAILABLE") and "not ready: unloaded" in exc.value.message()
        if triton.kind == "http":  # /v1 follows: /v1/models shows the state and /v1/predict refuses it
            url = f"http://{explicit_http[0]}"
            listed = {m["name"]: m for m in httpx.get(f"{url}/v1/models").json()}
            assert listed["swin_tiny"]["status"]["state"] == "unloaded" and not listed["swin_tiny"]["ready"]
            answer = httpx.post(f"{url}/v1/predict?model=swin_tiny", content=jpeg_bytes(), timeout=60)
            assert answer.status_code == 503
    finally:
        triton.client.load_model("swin_tiny")
    assert triton.index()["swin_tiny"]["state"] == "READY" and triton.client.is_model_ready("swin_tiny")
    assert triton.client.infer("swin_tiny", [triton.pixels(1)[0]]).as_numpy("embedding").shape == (1, 768)
    with pytest.raises(InferenceServerException) as exc:
        triton.client.load_model("nope")
    assert triton.code(exc) == triton.expect(404, "NOT_FOUND")
    with pytest.raises(InferenceServerException) as exc:
        triton.client.load_model("vit_small", config=json.dumps({"max_batch_size": 4}))
    assert triton.code(exc) == triton.expect(400, "INVALID_ARGUMENT") and "'config'" in exc.value.message()


def test_router_routes_around_an_unloaded_model(explicit_http: tuple[str, ServingCore]) -> None:
    _, core = explicit_http
    chosen = core.route(512, 512).model
    fitting = [c.model for c in core.route(512, 512).candidates if c.fits]
    assert len(fitting) > 1, fitting
    core.control._unloaded[chosen] = "test"
    try:
        rerouted = core.route(512, 512)
        assert rerouted.model != chosen and rerouted.model in fitting
        # the decision says what it left out, and why
        assert rerouted.not_ready == {chosen: "unloaded (test)"}
        assert f"{chosen} would have been chosen but is not ready (unloaded (test))" in rerouted.explanation
        assert rerouted.reason == "fastest_ready" and "asked for" not in rerouted.explanation
        with pytest.raises(Unavailable):  # a model asked for by name is refused, not replaced
            core.route(512, 512, chosen)
    finally:
        core.control._unloaded.pop(chosen)


def test_unload_waits_for_requests_in_flight(small_repo: Path, backends: dict[str, Backend]) -> None:
    """Unload drains: it answers once the model's in-flight request has finished."""
    import asyncio

    core = build_core(small_repo, backends, model_control_mode="explicit")
    assert isinstance(core.client, LocalBackboneClient)
    core.client = SlowClient(core.client, 1.0)

    async def scenario() -> tuple[float, bool]:
        from service.api.oip import InferRequest, InputTensor, OpenInference

        oip = OpenInference(core)
        pixels = np.zeros((1, 3, 224, 224), np.float32)
        request = InferRequest(inputs=[InputTensor("pixels", "FP32", (1, 3, 224, 224), raw=pixels.tobytes())])
        running = asyncio.create_task(oip.infer("vit_small", None, request))
        await asyncio.sleep(0.3)
        loop = asyncio.get_running_loop()
        start = loop.time()
        await oip.unload("vit_small")
        return loop.time() - start, running.done() and running.exception() is None

    waited, finished = asyncio.run(scenario())
    assert finished and waited >= 0.5


def test_model_control_is_refused_unless_explicit(restricted: Triton) -> None:
    for action in (restricted.client.load_model, restricted.client.unload_model):
        with pytest.raises(InferenceServerException) as exc:
            action("vit_small")
        assert restricted.code(exc) == restricted.expect(403, "PERMISSION_DENIED")
        assert "explicit model control is disabled" in exc.value.message()
    assert restricted.client.is_model_ready("vit_small")


# -- 4. classification ---------------------------------------------------------------------------------
def _entries(result: Any, name: str = "logits") -> list[list[str]]:
    array = result.as_numpy(name)
    return [[item.decode() if isinstance(item, bytes) else str(item) for item in row] for row in array]


def test_classification_gives_top_k_bytes(triton: Triton, reference: Reference) -> None:
    tensor, data = triton.pixels(n=2, seed=3)
    logits = reference.backends["vit_small"].infer(data).outputs["logits"]
    forms: list[dict[str, Any]] = [{"binary_data": True}, {"binary_data": False}] if triton.kind == "http" else [{}]
    for form in forms:  # REST: binary and JSON outputs; gRPC: raw_output_contents
        result = triton.client.infer(
            "vit_small", [tensor], outputs=[triton.mod.InferRequestedOutput("logits", class_count=3, **form)]
        )
        assert result.as_numpy("logits").shape == (2, 3)
        for row, image in zip(_entries(result), logits, strict=True):
            assert all(len(entry.split(":")) == 2 for entry in row)  # vit_small has no labels
            values = [float(entry.split(":")[0]) for entry in row]
            indices = [int(entry.split(":")[1]) for entry in row]
            assert indices == list(np.argsort(-image)[:3])
            np.testing.assert_allclose(values, image[indices], atol=1e-4)


def test_classification_with_labels(triton: Triton) -> None:
    tensor, _ = triton.pixels(n=1, seed=4)
    result = triton.client.infer(
        "nat_tiny", [tensor], outputs=[triton.mod.InferRequestedOutput("logits", class_count=2)]
    )
    (row,) = _entries(result)
    for entry in row:
        _, index, label = entry.split(":")
        assert label == LABELS[int(index)]


# -- 5. parameters -------------------------------------------------------------------------------------
def test_unknown_parameters_are_refused_by_name(triton: Triton) -> None:
    tensor, _ = triton.pixels(n=1)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"parameters": {"flavour": "vanilla"}}, "flavour"),
        ({"priority": 1}, "priority"),
        ({"sequence_id": 7}, "'sequence_"),  # sequence_id, _start, _end: whichever is checked first
    ]
    for kwargs, name in cases:
        with pytest.raises(InferenceServerException) as exc:
            triton.client.infer("vit_small", [tensor], **kwargs)
        assert triton.code(exc) == triton.expect(400, "INVALID_ARGUMENT"), exc.value.message()
        assert (name if name.startswith("'") else repr(name)) in exc.value.message()


def test_timeout_parameter_is_honoured(triton: Triton) -> None:
    tensor, _ = triton.pixels(n=1)
    with pytest.raises(InferenceServerException) as exc:
        triton.client.infer("vit_small", [tensor], timeout=1)  # microseconds
    assert triton.code(exc) == triton.expect(504, "DEADLINE_EXCEEDED")
    assert triton.client.infer("vit_small", [tensor], timeout=60_000_000).as_numpy("embedding").shape == (1, 384)


# -- 6. streaming (gRPC) -----------------------------------------------------------------------------
def _stream(url: str, requests: list[tuple[str, list[Any], dict[str, Any]]]) -> dict[str, tuple[Any, Any]]:
    """Send every request on one ModelStreamInfer call; the answers by request id."""
    answers: dict[str, tuple[Any, Any]] = {}
    done = threading.Event()

    def callback(result: Any, error: Any) -> None:
        key = result.get_response().id if result is not None else f"error-{len(answers)}"
        answers[key] = (result, error)
        if len(answers) == len(requests):
            done.set()

    with triton_grpc.InferenceServerClient(url=url) as client:
        client.start_stream(callback=callback)
        for request_id, inputs, kwargs in requests:
            client.async_stream_infer("vit_small", inputs, request_id=request_id, **kwargs)
        assert done.wait(120), f"only {len(answers)} of {len(requests)} answers"
        client.stop_stream()
    return answers


def test_stream_infer_answers_every_request(explicit_grpc: str, reference: Reference) -> None:
    requests = []
    expected = {}
    for i in range(5):
        data = np.random.default_rng(20 + i).standard_normal((1, 3, 224, 224)).astype(np.float32)
        tensor = triton_grpc.InferInput("pixels", [1, 3, 224, 224], "FP32")
        tensor.set_data_from_numpy(data)
        requests.append((f"s-{i}", [tensor], {}))
        expected[f"s-{i}"] = reference.embed("vit_small", data)
    bad = triton_grpc.InferInput("pixels", [1, 3, 64, 64], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 3, 64, 64), np.float32))
    requests.append(("s-bad", [bad], {}))
    answers = _stream(explicit_grpc, requests)
    assert len(answers) == 6
    for key, embedding in expected.items():
        result, error = answers[key]
        assert error is None
        np.testing.assert_allclose(result.as_numpy("embedding"), embedding, atol=1e-4)
    errors = [error for result, error in answers.values() if error is not None]
    assert len(errors) == 1 and "INVALID_ARGUMENT" in str(errors[0]) and "224x224" in str(errors[0])


def test_stream_infer_has_the_same_admission_and_deadlines(restricted_grpc: str) -> None:
    tensor = triton_grpc.InferInput("pixels", [1, 3, 224, 224], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 3, 224, 224), np.float32))
    answers = _stream(restricted_grpc, [("a", [tensor], {}), ("b", [tensor], {})])
    messages = [str(error) for _, error in answers.values() if error is not None]
    assert len(messages) == 1 and "RESOURCE_EXHAUSTED" in messages[0], messages
    (answer,) = _stream(restricted_grpc, [("c", [tensor], {"timeout": 1})]).values()
    assert "DEADLINE_EXCEEDED" in str(answer[1])


# -- 7. admission ------------------------------------------------------------------------------------
def test_oip_inference_goes_through_the_admission_limit(restricted: Triton) -> None:
    """With max_pending 1 and a backbone held 1.5 s, a second concurrent request is shed at once."""

    def one(_: int) -> str:
        client = restricted.mod.InferenceServerClient(url=restricted.url)
        tensor, _ = restricted.pixels(n=1)
        try:
            client.infer("vit_small", [tensor])
            return "ok"
        except InferenceServerException as exc:
            return str(exc.status()).removeprefix("StatusCode.")
        finally:
            client.close()

    with ThreadPoolExecutor(2) as pool:
        codes = sorted(pool.map(one, range(2)))
    assert codes == sorted(["ok", restricted.expect(503, "RESOURCE_EXHAUSTED")])
