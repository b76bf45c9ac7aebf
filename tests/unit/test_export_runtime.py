"""Export parity for every default backbone, the manifest, up-to-date skipping, and the ORT backend."""

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from service.export import build_model
from service.models import ModelRepository, build_from_config
from service.models._factory import EmbeddingModel
from service.runtime import load_backend
from service.runtime.batching import run_batch
from service.runtime.ort import ProviderUnavailable, choose_providers
from tests.helpers import default_model_names


@pytest.mark.parametrize("name", default_model_names())
def test_manifest_records_parity_and_facts(small_repo: Path, name: str) -> None:
    repo = ModelRepository(small_repo)
    manifest = repo.require_manifest(name)
    onnx = manifest.artifacts["onnx"]
    assert onnx.parity["max_abs"] < 1e-3
    assert "max_rel" in onnx.parity
    assert onnx.dynamic_axes[0] == "batch"
    assert (repo.version_dir(name) / onnx.file).stat().st_size == onnx.bytes
    assert manifest.weights == "untrained"
    assert manifest.params > 0 and manifest.gmacs_native > 0
    assert manifest.arch["family"] == repo.config(name).family
    assert {"torch", "onnxruntime", "onnx"} <= set(manifest.versions)
    assert onnx.fused["nodes"] > 0  # counts recorded, whatever the optimizer managed


@pytest.mark.parametrize("name", default_model_names())
def test_one_fused_attention_op_per_attention_block(small_repo: Path, name: str) -> None:
    """ViT and Swin: the ONNX Attention op (opset 23) per block, in the ORT-optimised fp32 graph and
    in the standard-ops fp16 graph; NAT: its tiled kernel, one masked Attention op per block."""
    import onnx as onnx_lib

    repo = ModelRepository(small_repo)
    manifest = repo.require_manifest(name)
    blocks = sum(manifest.arch["depths"])
    for key in ("onnx", "onnx_fp16"):
        record = manifest.artifacts[key]
        assert record.fused["attention_blocks"] == blocks
        assert record.fused["attention"] == blocks, (key, record.fused)
        assert record.fused["softmax_unfused"] == 0, (key, record.fused)
        graph = onnx_lib.load(str(repo.version_dir(name) / record.file), load_external_data=False).graph
        assert sum(n.op_type == "Attention" for n in graph.node) == blocks
    # the graph TensorRT is given holds standard ops only
    assert manifest.artifacts["onnx_fp16"].domains == []


@pytest.mark.parametrize("name", default_model_names())
def test_fp16_artifact_within_its_family_bound_at_every_bucket(small_repo: Path, name: str) -> None:
    from service.export.fp16 import fp16_parity_bound

    repo = ModelRepository(small_repo)
    cfg = repo.config(name)
    record = repo.require_manifest(name).artifacts["onnx_fp16"]
    assert record.parity["rtol_bound"] == fp16_parity_bound(cfg.family)
    assert record.parity["max_rel"] <= record.parity["rtol_bound"]
    assert record.input_sizes == cfg.input.buckets
    assert set(record.parity["max_abs_by_size"]) == {str(s) for s in cfg.input.buckets}


def test_neighbourhood_attention_artifact_serves_2048() -> None:
    """The default NAT serves up to 2048² like Swin (its ONNX graph is linear in pixels)."""
    from service.models import load_model_config
    from tests.helpers import MODEL_REPO

    for name in ("nat_tiny", "swin_tiny"):
        assert max(load_model_config(MODEL_REPO / name / "config.yaml").input.buckets) == 2048


@pytest.mark.parametrize("name", default_model_names())
def test_onnx_runtime_matches_pytorch_at_several_batch_sizes(small_repo: Path, name: str) -> None:
    repo = ModelRepository(small_repo)
    cfg = repo.config(name)
    backend = load_backend(repo, name)
    model = EmbeddingModel(build_from_config(cfg, repo.model_dir(name)))
    for batch in (1, 3):
        x = np.random.default_rng(batch).standard_normal((batch, 3, 224, 224)).astype(np.float32)
        result = backend.infer(x)
        with torch.no_grad():
            emb, logits = model(torch.from_numpy(x))
        assert np.abs(result.outputs["embedding"] - emb.numpy()).max() < 1e-3
        assert np.abs(result.outputs["logits"] - logits.numpy()).max() < 1e-3
        assert result.batch_size == batch and result.latency_ms > 0
        assert result.memory.device == "cpu" and result.memory.peak_bytes > 0


def test_build_skips_when_up_to_date_and_rebuilds_on_change(small_repo: Path) -> None:
    """A change to what the artifact is made from rebuilds it; a serving-only change does not."""
    repo = ModelRepository(small_repo)
    name = "vit_small"
    rows = build_model(repo, name)
    assert [r.status for r in rows] == ["up-to-date", "up-to-date"]  # onnx, onnx_fp16
    manifest_path = repo.manifest_path(name)
    before = json.loads(manifest_path.read_text())["config_sha256"]
    config = repo.model_dir(name) / "config.yaml"
    original = config.read_text()
    try:
        serving_only = original.replace("batch_wait_timeout_s: 0.01", "batch_wait_timeout_s: 0.02")
        assert serving_only != original
        config.write_text(serving_only)
        rows = build_model(ModelRepository(small_repo), name)
        assert [r.status for r in rows] == ["up-to-date", "up-to-date"]
        assert json.loads(manifest_path.read_text())["config_sha256"] == before
        reseeded = original.replace("seed: 0", "seed: 1")
        assert reseeded != original
        config.write_text(reseeded)
        rows = build_model(ModelRepository(small_repo), name)
        assert [r.status for r in rows] == ["built", "built"]
        assert json.loads(manifest_path.read_text())["config_sha256"] != before
    finally:
        config.write_text(original)
        build_model(ModelRepository(small_repo), name)


def test_run_batch_never_mixes_shapes() -> None:
    class Recorder:
        name, device, precision = "fake", "cpu", "fp32"
        shapes: list[tuple[int, ...]] = []

        def infer(self, pixels: np.ndarray):
            from service.runtime.base import InferenceResult
            from service.runtime.memory import host_memory

            self.shapes.append(pixels.shape)
            return InferenceResult({"embedding": pixels.mean(axis=(2, 3))}, 1.0, host_memory(), len(pixels))

        def describe(self) -> dict[str, str]:
            return {"backend": self.name}

    backend = Recorder()
    items = [np.full((3, 8, 8), i, np.float32) for i in range(3)] + [np.full((3, 16, 16), 9, np.float32)]
    replies = run_batch(backend, items)  # type: ignore[arg-type]
    assert sorted(backend.shapes) == [(1, 3, 16, 16), (3, 3, 8, 8)]
    assert [r["outputs"]["embedding"][0] for r in replies] == [0, 1, 2, 9]
    assert [r["batch_size"] for r in replies] == [3, 3, 3, 1]


def test_provider_choice() -> None:
    cpu_only = ["CPUExecutionProvider"]
    gpu = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers("auto", cpu_only) == cpu_only
    assert choose_providers("auto", gpu) == gpu
    assert choose_providers("cuda", gpu) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers("cpu", gpu) == ["CPUExecutionProvider"]
    with pytest.raises(ProviderUnavailable, match="CUDAExecutionProvider requested"):
        choose_providers("cuda", cpu_only)


@pytest.mark.parametrize("spin", [False, True])
def test_ort_spinning_follows_the_setting(small_repo: Path, spin: bool) -> None:
    """Idle ORT threads spin only when asked: replicas sharing a CPU host must not burn each other's cores."""
    backend = load_backend(ModelRepository(small_repo), "vit_small", providers="cpu", spin=spin)
    options = backend.session.get_session_options()  # type: ignore[attr-defined]
    for key in ("session.intra_op.allow_spinning", "session.inter_op.allow_spinning"):
        assert options.get_session_config_entry(key) == ("1" if spin else "0")


def test_cpu_lanes_run_a_batch_that_starts_beside_another_on_the_narrow_session(small_repo: Path) -> None:
    """Two lanes on two threads: a batch alone runs on the session with both threads; one that starts
    while another runs takes the single-threaded session, which gives the same answer."""
    repo = ModelRepository(small_repo)
    backend = load_backend(repo, "vit_small", providers="cpu", intra_op_threads=2, lanes=2)
    assert backend.lanes == 2
    narrow = backend._narrow  # type: ignore[attr-defined]
    assert narrow.get_session_options().intra_op_num_threads == 1
    assert backend.session.get_session_options().intra_op_num_threads == 2  # type: ignore[attr-defined]
    pixels = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    alone = backend.infer(pixels).outputs["embedding"]
    assert backend.lane_runs == {"wide": 1, "narrow": 0}  # type: ignore[attr-defined]
    assert backend._session_for() is backend.session  # type: ignore[attr-defined]  # a batch is running
    beside = backend.infer(pixels).outputs["embedding"]
    assert backend.lane_runs == {"wide": 2, "narrow": 1}  # type: ignore[attr-defined]
    np.testing.assert_allclose(beside, alone, rtol=1e-4, atol=1e-4)
    # a lane runs its batch in parts of at most four 224² images, and answers the same as a whole run
    sizes: list[int] = []

    class Recorded:
        def run(self, names: Any, feeds: dict[str, np.ndarray]) -> Any:
            sizes.append(len(next(iter(feeds.values()))))
            return narrow.run(names, feeds)

    backend._narrow = Recorded()  # type: ignore[attr-defined]
    six = np.random.default_rng(1).standard_normal((6, 3, 224, 224)).astype(np.float32)
    names = list(backend.output_names)  # type: ignore[attr-defined]
    whole = backend.session.run(names, {backend.input_name: six})[names.index("embedding")]  # type: ignore[attr-defined]
    parts = backend.infer(six).outputs["embedding"]  # still beside the batch left running above
    assert sizes == [4, 2] and parts.shape == whole.shape == (6, 384)
    np.testing.assert_allclose(parts, whole, rtol=1e-4, atol=1e-4)
    # one lane, or one thread to share: one session; 0 is one lane per thread, never more lanes than threads
    assert load_backend(repo, "vit_small", providers="cpu", intra_op_threads=2, lanes=1).lanes == 1
    assert load_backend(repo, "vit_small", providers="cpu", intra_op_threads=1, lanes=2).lanes == 1
    assert load_backend(repo, "vit_small", providers="cpu", intra_op_threads=3, lanes=0).lanes == 3
    assert load_backend(repo, "vit_small", providers="cpu", intra_op_threads=2, lanes=8).lanes == 2


def test_a_non_finite_output_fails_the_parity_check(tmp_path: Path) -> None:
    """max(0.0, nan) is 0.0 in Python: a NaN output (an fp16 overflow) must not pass as exact."""
    import onnx as onnx_lib
    from onnx import TensorProto, helper

    from service.export.parity import onnx_parity

    nodes = [
        helper.make_node("Sub", ["pixels", "pixels"], ["zero"]),
        helper.make_node("Div", ["zero", "zero"], ["nan"]),  # 0/0
        helper.make_node("ReduceMean", ["nan"], ["embedding"], keepdims=0, axes=[1, 2, 3]),
        helper.make_node("Identity", ["embedding"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "nan",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["b", 3, "h", "w"])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["b"]) for n in ("embedding", "logits")],
    )
    path = tmp_path / "nan.onnx"
    onnx_lib.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))

    class Mean(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            m = x.mean(dim=(1, 2, 3))
            return m, m

    parity = onnx_parity(Mean(), path, [16], rng=np.random.default_rng(0), providers=["CPUExecutionProvider"])
    assert parity["max_abs"] == float("inf") and parity["max_rel"] == float("inf")


def test_a_failed_fp16_artifact_is_rebuilt_next_time(small_repo: Path, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import shutil

    from service.export import fp16

    shutil.copytree(small_repo / "vit_small", tmp_path / "vit_small")
    repo = ModelRepository(tmp_path)
    monkeypatch.setitem(fp16.FP16_PARITY_RTOL, "vit", 1e-12)
    rows = build_model(repo, "vit_small", force=True)
    assert {r.artifact: r.status for r in rows} == {"onnx": "built", "onnx_fp16": "failed"}
    assert "onnx_fp16" not in repo.require_manifest("vit_small").artifacts
    monkeypatch.undo()
    rows = build_model(repo, "vit_small")  # not "up-to-date": the fp16 artifact it asks for is missing
    assert {r.artifact: r.status for r in rows} == {"onnx_fp16": "built"}  # the fp32 graph is kept as it is
    assert {"onnx", "onnx_fp16"} <= set(repo.require_manifest("vit_small").artifacts)
