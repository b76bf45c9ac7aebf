"""GPU runtime choice without a GPU: loud failures, never a silent CPU fallback; TensorRT plan
records and builder flow (with a stand-in ``tensorrt`` module); NVML device mapping; doctor.

What runs for real here: ONNX Runtime (CPU build) asked for providers it does not have, the
loader's candidate chain, ``tessera doctor``. What cannot: CUDA, TensorRT (marked ``gpu`` below).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from service.errors import RuntimeUnavailable
from service.export.build import build_model
from service.models import ModelRepository
from service.runtime import load_backend
from service.runtime.loader import candidates
from service.runtime.memory_gpu import physical_device
from service.runtime.ort import OrtBackend, ProviderUnavailable, provider_load_error, provider_options
from service.runtime.tensorrt import plan_mismatch, tensorrt_available


def _onnx_path(repo: ModelRepository, name: str) -> Path:
    return repo.version_dir(name) / repo.require_manifest(name).artifacts["onnx"].file


def test_a_gpu_provider_that_does_not_load_is_an_error_naming_why(small_repo: Path) -> None:
    """The CPU onnxruntime asked for CUDA drops it from the session; that is refused, not served on CPU."""
    repo = ModelRepository(small_repo)
    with pytest.raises(ProviderUnavailable) as info:
        OrtBackend(_onnx_path(repo, "vit_small"), providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    message = str(info.value)
    assert "CUDAExecutionProvider" in message and "not compiled into onnxruntime" in message
    assert "tessera doctor" in message


def test_provider_load_error_names_the_build() -> None:
    assert provider_load_error("CPUExecutionProvider") is None
    reason = provider_load_error("TensorrtExecutionProvider")
    assert reason is not None and "onnxruntime-gpu" in reason


def test_a_gpu_host_never_falls_back_to_the_cpu_under_auto(small_repo: Path) -> None:
    """With a GPU visible (pretended here) and no GPU runtime that loads, loading fails with every reason."""
    repo = ModelRepository(small_repo)
    labels = [c.label for c in candidates(repo, "vit_small", gpus=1)]
    assert labels == ["tensorrt plan", "onnxruntime[tensorrt] fp16", "onnxruntime[cuda] fp16", "torch[cuda:0] fp16"]
    with pytest.raises(RuntimeUnavailable) as info:
        load_backend(repo, "vit_small", gpus=1)
    message = str(info.value)
    for label in labels:
        assert label in message
    assert "no TensorRT plan built" in message and "PyTorch sees no CUDA device" in message


def test_cpu_is_used_on_a_gpu_host_only_when_asked_for(small_repo: Path) -> None:
    backend = load_backend(ModelRepository(small_repo), "vit_small", gpus=1, providers="cpu")
    assert backend.device == "cpu" and backend.describe()["providers"] == ["CPUExecutionProvider"]
    assert backend.load_notes == []


def test_a_cpu_host_runs_onnxruntime_on_the_cpu_and_refuses_cuda(small_repo: Path) -> None:
    repo = ModelRepository(small_repo)
    backend = load_backend(repo, "vit_small", gpus=0)
    assert (backend.name, backend.device, backend.precision) == ("onnxruntime", "cpu", "fp32")
    with pytest.raises(RuntimeUnavailable, match="asks for a GPU"):
        load_backend(repo, "vit_small", gpus=0, providers="cuda")
    assert load_backend(repo, "vit_small", gpus=0, prefer="torch").name == "torch"


def test_tensorrt_provider_options_have_caches_fp16_and_one_profile_per_bucket(tmp_path: Path) -> None:
    profiles = [
        {"min": [1, 3, 224, 224], "opt": [256, 3, 224, 224], "max": [256, 3, 224, 224]},
        {"min": [1, 3, 512, 512], "opt": [49, 3, 512, 512], "max": [49, 3, 512, 512]},
    ]
    options = provider_options("TensorrtExecutionProvider", device_id=1, cache_dir=tmp_path, profiles=profiles)
    assert options["device_id"] == "1" and options["trt_fp16_enable"] == "True"
    assert options["trt_engine_cache_path"] == str(tmp_path) == options["trt_timing_cache_path"]
    assert options["trt_profile_min_shapes"] == "pixels:1x3x224x224,pixels:1x3x512x512"
    assert options["trt_profile_max_shapes"] == "pixels:256x3x224x224,pixels:49x3x512x512"
    assert provider_options("CUDAExecutionProvider", device_id=2)["device_id"] == "2"


def test_plan_mismatch_names_the_version_or_the_gpu() -> None:
    record = {"tensorrt_version": "10.16.1.11", "compute_capability": [9, 0]}
    assert plan_mismatch(record, "10.16.1.11", (9, 0)) is None
    assert "TensorRT 10.16.1.11" in (plan_mismatch(record, "10.15.1.29", (9, 0)) or "")
    assert "compute capability (9, 0)" in (plan_mismatch(record, "10.16.1.11", (8, 9)) or "")
    assert "rebuild" in (plan_mismatch({}, "10.16.1.11", (9, 0)) or "")


@pytest.mark.parametrize(
    ("visible", "ordinal", "expected"),
    [(None, 1, 1), ("", 0, 0), ("3,1", 0, 3), ("3,1", 1, 1), ("GPU-8f2a,GPU-11", 1, "GPU-11")],
)
def test_nvml_device_follows_cuda_visible_devices(
    visible: str | None, ordinal: int, expected: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert physical_device(ordinal) == expected
    with pytest.raises(ValueError, match="not visible"):
        physical_device(5, "0")


def test_gpus_the_host_has_but_torch_cannot_use_are_a_fault_not_a_cpu_host(tmp_path: Path) -> None:
    from service.runtime.devices import gpu_count, unusable_gpu_reason

    if gpu_count():
        pytest.skip("PyTorch sees a GPU here")
    assert unusable_gpu_reason(dev=str(tmp_path), visible="0") is None  # no device nodes: a CPU host
    (tmp_path / "nvidia0").touch()
    (tmp_path / "nvidiactl").touch()
    reason = unusable_gpu_reason(dev=str(tmp_path), visible="0")
    assert reason is not None and "1 NVIDIA device(s)" in reason and "TESSERA_PROVIDERS=cpu" in reason
    assert unusable_gpu_reason(dev=str(tmp_path), visible="") is None  # given no GPU on purpose (Ray, num_gpus 0)


def test_heavy_ops_on_the_cpu_are_read_from_a_real_profile(small_repo: Path) -> None:
    """The placement check parses ONNX Runtime's own profile (here every node is on the CPU)."""
    from service.runtime.ort import cpu_placed_ops

    repo = ModelRepository(small_repo)
    ops = cpu_placed_ops(
        _onnx_path(repo, "vit_small"), np.zeros((1, 3, 224, 224), np.float32), "pixels", ["CPUExecutionProvider"]
    )
    assert any(op.startswith("Attention") for op in ops) and any(op.startswith("MatMul") for op in ops)
    cpu = load_backend(repo, "vit_small", gpus=0)
    assert cpu.check_placement(224) == [] and "cpu_ops" not in cpu.describe()  # only asked of GPU sessions


def test_batches_above_a_tensorrt_profile_run_in_parts(small_repo: Path) -> None:
    backend = load_backend(ModelRepository(small_repo), "vit_small", gpus=0)
    x = np.random.default_rng(3).standard_normal((5, 3, 224, 224)).astype(np.float32)
    whole = backend.infer(x).outputs["embedding"]
    backend._max_batch = {224: 2}  # what a TensorRT-provider session gets from its profiles
    calls = []
    run_one = backend._run_one
    backend._run_one = lambda p: calls.append(len(p)) or run_one(p)  # type: ignore[method-assign]
    parts = backend.infer(x).outputs["embedding"]
    assert calls == [2, 2, 1]
    np.testing.assert_allclose(parts, whole, atol=1e-5)


class _FakeTensorRT:
    """Records what the plan builder asks of TensorRT's Python API (TensorRT itself cannot be installed here)."""

    __version__ = "10.16.1.11"

    def __init__(self, *, strongly_typed: bool = True, plan: bytes | None = b"PLAN") -> None:
        fake = self
        self.calls: dict[str, object] = {"profiles": []}
        flags = {"STRONGLY_TYPED": 5} if strongly_typed else {}
        self.NetworkDefinitionCreationFlag = SimpleNamespace(**flags)
        self.MemoryPoolType = SimpleNamespace(WORKSPACE="workspace")
        self.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None})

        class Profile:
            def set_shape(self, name, lo, opt, hi):  # type: ignore[no-untyped-def]
                fake.calls["profiles"].append((name, lo, opt, hi))  # type: ignore[union-attr]

        class Cache:
            def serialize(self) -> bytes:
                return b"CACHE"

        class Config:
            def set_memory_pool_limit(self, pool, size):  # type: ignore[no-untyped-def]
                fake.calls["workspace"] = size

            def create_timing_cache(self, data):  # type: ignore[no-untyped-def]
                return Cache()

            def set_timing_cache(self, cache, ignore):  # type: ignore[no-untyped-def]
                pass

            def add_optimization_profile(self, profile):  # type: ignore[no-untyped-def]
                pass

            def set_flag(self, flag):  # type: ignore[no-untyped-def]
                raise AssertionError("a strongly typed network takes its precision from the graph")

        class Builder:
            def __init__(self, logger):  # type: ignore[no-untyped-def]
                pass

            def create_network(self, flags):  # type: ignore[no-untyped-def]
                fake.calls["network_flags"] = flags
                return object()

            def create_builder_config(self):  # type: ignore[no-untyped-def]
                return Config()

            def create_optimization_profile(self):  # type: ignore[no-untyped-def]
                return Profile()

            def build_serialized_network(self, network, config):  # type: ignore[no-untyped-def]
                return plan

        class Parser:
            num_errors = 0

            def __init__(self, network, logger):  # type: ignore[no-untyped-def]
                pass

            def parse_from_file(self, path):  # type: ignore[no-untyped-def]
                fake.calls["parsed"] = path
                return True

        self.Builder, self.OnnxParser = Builder, Parser


@pytest.fixture
def fake_trt(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):  # type: ignore[no-untyped-def]
    from service.runtime import tensorrt as trt_runtime

    def install(**kwargs):  # type: ignore[no-untyped-def]
        fake = _FakeTensorRT(**kwargs)
        monkeypatch.setitem(sys.modules, "tensorrt", fake)
        status = trt_runtime.TensorRTStatus(True, "", fake.__version__, "NVIDIA H200")
        monkeypatch.setattr(trt_runtime, "tensorrt_status", lambda: status)
        monkeypatch.setattr(trt_runtime, "compute_capability", lambda: (9, 0))
        monkeypatch.setenv("TESSERA_TRT_CACHE_DIR", str(tmp_path / "trt-cache"))
        return fake

    return install


def _copy_repo(small_repo: Path, tmp_path: Path, name: str = "vit_small") -> ModelRepository:
    import shutil

    root = tmp_path / "repo"
    shutil.copytree(small_repo / name, root / name)
    shutil.copy(small_repo / "routes.yaml", root / "routes.yaml")
    return ModelRepository(root)


def test_plan_is_built_strongly_typed_from_the_fp16_graph_and_recorded(fake_trt, small_repo: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    fake = fake_trt()
    repo = _copy_repo(small_repo, tmp_path)
    rows = build_model(repo, "vit_small", tensorrt=True)
    assert [r.status for r in rows] == ["up-to-date", "up-to-date", "built"], rows  # ONNX untouched
    assert fake.calls["network_flags"] == 1 << 5
    assert str(fake.calls["parsed"]).endswith("model.fp16.onnx")
    # one profile per bucket, the same pixels per batch as 256 tiles at 224²
    expected = [(256, 3, 224, 224), (87, 3, 384, 384), (49, 3, 512, 512), (12, 3, 1024, 1024)]
    assert [p[2] for p in fake.calls["profiles"]] == expected  # type: ignore[union-attr]
    manifest = repo.require_manifest("vit_small")
    plan = manifest.artifacts["tensorrt"].model_dump()
    assert plan["file"] == "model.sm90.plan" and plan["tensorrt_version"] == "10.16.1.11"
    assert plan["compute_capability"] == [9, 0] and plan["source"] == "model.fp16.onnx"
    assert (repo.version_dir("vit_small") / "model.sm90.plan").read_bytes() == b"PLAN"
    assert (tmp_path / "trt-cache" / "timing.cache").read_bytes() == b"CACHE"
    # a plain build keeps the plan; asking again finds it current
    assert "tensorrt" in repo.require_manifest("vit_small").artifacts
    build_model(repo, "vit_small")
    assert "tensorrt" in repo.require_manifest("vit_small").artifacts
    assert [r.status for r in build_model(repo, "vit_small", tensorrt=True)][-1] == "up-to-date"


def test_a_rebuild_with_the_same_graphs_keeps_the_plan(tmp_path: Path) -> None:
    from service.export.build import _keep_plan
    from service.models import ArtifactRecord, Manifest

    def manifest(config: str, fp16_sha: str, plan: bool) -> Manifest:
        m = Manifest(
            model="m",
            version=1,
            config_sha256=config,
            weights="untrained",
            arch={},
            params=1,
            gmacs_native=1.0,
            native_size=224,
        )
        m.artifacts["onnx_fp16"] = ArtifactRecord(
            file="model.fp16.onnx", sha256=fp16_sha, bytes=1, precision="fp16", kind="onnx"
        )
        if plan:
            m.artifacts["tensorrt"] = ArtifactRecord(
                file="model.sm90.plan", sha256="p", bytes=1, precision="fp16", kind="tensorrt"
            )
        return m

    (tmp_path / "model.sm90.plan").write_bytes(b"PLAN")
    for config, fp16_sha, kept in (("a", "x", True), ("b", "x", False), ("a", "y", False)):
        new = manifest(config, fp16_sha, plan=False)
        _keep_plan(manifest("a", "x", plan=True), new, tmp_path)
        assert ("tensorrt" in new.artifacts) == kept, (config, fp16_sha)


def test_builder_failures_are_rows_not_tracebacks(fake_trt, small_repo: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    fake_trt(strongly_typed=False)
    repo = _copy_repo(small_repo, tmp_path)
    row = build_model(repo, "vit_small", tensorrt=True)[-1]
    assert row.status == "failed" and "strongly typed" in row.note
    fake_trt(plan=None)
    row = build_model(repo, "vit_small", tensorrt=True)[-1]
    assert row.status == "failed" and "no plan" in row.note
    assert "tensorrt" not in repo.require_manifest("vit_small").artifacts


def test_a_plan_for_another_gpu_is_refused_and_the_next_runtime_named(fake_trt, small_repo: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    from service.runtime import tensorrt as trt_runtime

    fake_trt()
    repo = _copy_repo(small_repo, tmp_path)
    build_model(repo, "vit_small", tensorrt=True)
    trt_runtime.compute_capability = lambda: (8, 9)  # type: ignore[assignment]  # (undone by monkeypatch)
    with pytest.raises(RuntimeUnavailable) as info:
        load_backend(repo, "vit_small", gpus=1)
    assert "compute capability (9, 0), this GPU is (8, 9)" in str(info.value)


def test_doctor_on_this_cpu_host_exits_zero_and_names_the_cpu_provider(small_repo: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from service.cli import main

    assert main(["--model-repo", str(small_repo), "doctor"]) == 0
    out = capsys.readouterr().out
    assert "CPUExecutionProvider" in out and "loads" in out
    assert "model vit_small" in out and "onnxruntime on cpu, fp32" in out
    assert main(["--model-repo", str(small_repo), "doctor", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True and report["onnxruntime"]["providers"]["CPUExecutionProvider"]["loads"]


def test_doctor_exits_non_zero_when_a_configured_gpu_runtime_cannot_run(
    small_repo: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:  # type: ignore[no-untyped-def]
    from service.cli import main

    monkeypatch.setenv("TESSERA_PROVIDERS", "cuda")
    assert main(["--model-repo", str(small_repo), "doctor"]) == 1
    out = capsys.readouterr().out
    assert "PROBLEMS" in out and "has no GPU provider" in out and "tessera[gpu]" in out


def test_torch_backend_refuses_what_it_cannot_run() -> None:
    import torch

    from service.runtime.torch_backend import TorchBackend

    model = torch.nn.Identity()
    with pytest.raises(ValueError, match="fp16 on the CPU"):
        TorchBackend(model, device="cpu", precision="fp16")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA device"):
            TorchBackend(model, device="cuda:0", precision="fp16")


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["vit_small", "swin_tiny", "nat_tiny"])
def test_torch_cuda_fp16_matches_cpu_fp32(small_repo: Path, name: str) -> None:
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    repo = ModelRepository(small_repo)
    reference = load_backend(repo, name, gpus=0)
    gpu = load_backend(repo, name, prefer="torch")
    assert gpu.device == "cuda:0" and gpu.precision == "fp16"
    for side in repo.config(name).input.buckets:
        x = np.random.default_rng(side).standard_normal((2, 3, side, side)).astype(np.float32)
        want = reference.infer(x).outputs["embedding"]
        got = gpu.infer(x).outputs["embedding"]
        assert np.abs(got - want).max() <= 2e-2 * float(np.abs(want).max()), side


def test_tensorrt_is_not_available_on_this_host_and_says_why() -> None:
    from service.runtime.tensorrt import tensorrt_status

    if tensorrt_available():
        pytest.skip("this host has TensorRT and a GPU")
    assert tensorrt_status().reason
