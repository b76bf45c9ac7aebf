"""Structured access logs; the FP16 artifact; TensorRT profile computation; the PyTorch backend."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.api.logs import configure_access_log
from service.api.rest import create_app
from service.api.serving import LocalBackboneClient, ServingCore
from service.export import build_model
from service.export.tensorrt_build import plan_name
from service.models import ModelRepository
from service.routing.factory import make_router
from service.runtime import load_backend
from service.runtime.profiles import optimization_profiles
from service.runtime.tensorrt import tensorrt_available
from service.runtime.torch_backend import TorchBackend
from tests.helpers import jpeg_bytes


def test_one_json_line_per_request_without_secrets(small_repo: Path) -> None:
    stream = io.StringIO()
    logger = configure_access_log(stream=stream)
    repo = ModelRepository(small_repo)
    app = create_app()
    app.state.core = ServingCore(
        repo, make_router(repo), LocalBackboneClient({"vit_small": load_backend(repo, "vit_small")})
    )
    client = TestClient(app)
    try:
        client.post(
            "/v1/predict",
            content=jpeg_bytes(),
            headers={"content-type": "image/jpeg", "x-request-id": "rid-7", "authorization": "Bearer s3cret"},
        )
    finally:
        for handler in list(logger.handlers):
            if getattr(handler, "_tessera_json", False):
                logger.removeHandler(handler)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    (line,) = [entry for entry in lines if entry.get("request_id") == "rid-7"]
    assert line["status"] == 200 and line["path"] == "/v1/predict" and line["model"] == "vit_small"
    assert line["duration_ms"] > 0 and line["route_reason"]
    assert "s3cret" not in stream.getvalue()


def test_fp16_artifact_has_fp32_io_and_its_own_parity_bound(small_repo: Path, tmp_path: Path) -> None:
    import onnx

    root = tmp_path / "repo"
    root.mkdir()
    shutil.copytree(small_repo / "vit_small", root / "vit_small")
    repo = ModelRepository(root)
    rows = build_model(repo, "vit_small", fp16=True, force=True)
    assert {r.artifact: r.status for r in rows} == {"onnx": "built", "onnx_fp16": "built"}, rows
    record = repo.require_manifest("vit_small").artifacts["onnx_fp16"]
    assert record.precision == "fp16" and record.parity["rtol_bound"] == pytest.approx(1e-2)
    assert record.parity["max_rel"] <= record.parity["rtol_bound"]
    graph = onnx.load(str(repo.version_dir("vit_small") / record.file)).graph
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert all(o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for o in graph.output)
    assert any(init.data_type == onnx.TensorProto.FLOAT16 for init in graph.initializer)


def test_tensorrt_profiles_one_per_bucket_with_batches_a_gpu_needs() -> None:
    profiles = optimization_profiles([1024, 224, 512, 224], max_batch=256, native_size=224)
    # 256 tiles at 224², the same pixels per batch above: 512² at 49, 1024² at 12
    assert [p["opt"] for p in profiles] == [(256, 3, 224, 224), (49, 3, 512, 512), (12, 3, 1024, 1024)]
    assert all(p["min"][0] == 1 and p["max"] == p["opt"] for p in profiles)
    assert optimization_profiles([224, 2048], max_batch=8)[1]["max"][0] == 1
    assert plan_name((9, 0)) == "model.sm90.plan"
    with pytest.raises(ValueError):
        optimization_profiles([224], max_batch=0)


def test_tensorrt_is_reported_unavailable_here_and_build_skips_cleanly(small_repo: Path) -> None:
    if tensorrt_available():
        pytest.skip("this host has TensorRT and a GPU: the gpu-marked tests cover it")
    rows = build_model(ModelRepository(small_repo), "vit_small", tensorrt=True)
    trt = [r for r in rows if r.artifact == "tensorrt"]
    assert trt and trt[0].status == "skipped" and "tensorrt does not import" in trt[0].note
    build_model(ModelRepository(small_repo), "vit_small")  # back to the usual artifacts


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_torch_backend_matches_onnx_runtime(small_repo: Path, precision: str) -> None:
    repo = ModelRepository(small_repo)
    torch_backend = TorchBackend.from_repository(repo, "swin_tiny", precision=precision)
    ort_backend = load_backend(repo, "swin_tiny")
    x = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    a = torch_backend.infer(x).outputs["embedding"]
    b = ort_backend.infer(x).outputs["embedding"]
    tol = 1e-3 if precision == "fp32" else 5e-2 * float(np.abs(b).max())
    assert np.abs(a - b).max() < tol
    assert torch_backend.describe()["precision"] == precision


@pytest.mark.gpu
def test_tensorrt_plan_builds_and_matches_on_a_gpu(small_repo: Path) -> None:
    if not tensorrt_available():
        pytest.skip("needs TensorRT and a CUDA GPU (unverified on the development machines)")
    repo = ModelRepository(small_repo)
    rows = build_model(repo, "vit_small", tensorrt=True)
    assert [r.status for r in rows if r.artifact == "tensorrt"] == ["built"]
    trt = load_backend(repo, "vit_small", prefer="tensorrt")
    x = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    ref = load_backend(repo, "vit_small", prefer="onnxruntime").infer(x).outputs["embedding"]
    assert np.abs(trt.infer(x).outputs["embedding"] - ref).max() < 5e-2 * float(np.abs(ref).max())
