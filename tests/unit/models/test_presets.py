"""Presets of published pathology encoders (``enabled: false`` in ``model_repo/``).

Each preset's exact architecture is built one block deep (``depth: 1``: same width, heads, MLP,
register tokens, patch size and pooling), randomly initialised, saved to a file in the key
layout its publisher ships, then loaded from that file through the normal config path
(``weights.source: file``), exported by ``tessera build``'s ``build_model`` and checked for ONNX
parity; the ONNX embedding is compared with the publisher's pooling computed here independently.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from service.errors import NotFound
from service.export import build_model
from service.models import ModelConfig, ModelRepository, build_from_config, facts_from_model, load_model_config
from service.models._factory import CheckpointMismatch, EmbeddingModel
from service.models._layouts import hf_dinov2_to_timm
from service.runtime.loader import load_backend
from tests.helpers import MODEL_REPO, default_model_names, preset_model_names

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
BIOPTIMUS = ((0.707223, 0.578729, 0.703617), (0.211883, 0.230117, 0.177517))

#: What each publisher documents (sources in each config.yaml): embedding width, pooling, prefix
#: tokens (class + registers) before the patch tokens, token width, patch size, normalisation.
PUBLISHED: dict[str, dict[str, Any]] = {
    "uni_v1": {"embedding": 1024, "pooling": "cls", "prefix": 1, "width": 1024, "patch": 16, "norm": IMAGENET},
    "uni_v2": {"embedding": 1536, "pooling": "cls", "prefix": 9, "width": 1536, "patch": 14, "norm": IMAGENET},
    "virchow2": {"embedding": 2560, "pooling": "cls+mean", "prefix": 5, "width": 1280, "patch": 14, "norm": IMAGENET},
    "hoptimus0": {"embedding": 1536, "pooling": "cls", "prefix": 5, "width": 1536, "patch": 14, "norm": BIOPTIMUS},
    "hoptimus1": {"embedding": 1536, "pooling": "cls", "prefix": 5, "width": 1536, "patch": 14, "norm": BIOPTIMUS},
    "gigapath": {"embedding": 1536, "pooling": "cls", "prefix": 1, "width": 1536, "patch": 16, "norm": IMAGENET},
    "phikon_v2": {"embedding": 1024, "pooling": "cls", "prefix": 1, "width": 1024, "patch": 16, "norm": IMAGENET},
}
#: The SwiGLU presets (a packed fc1 of twice the hidden width). The same five are ViT-H/ViT-g,
#: 0.6-1.1 billion parameters: more than 2 GiB of fp32 weights, kept beside the graph.
SWIGLU = {"uni_v2", "virchow2", "hoptimus0", "hoptimus1", "gigapath"}


def test_the_presets_are_the_published_encoders() -> None:
    assert preset_model_names() == sorted(PUBLISHED)


def test_presets_are_disabled_and_the_default_repository_is_unchanged() -> None:
    repo = ModelRepository(MODEL_REPO)
    assert repo.names() == default_model_names() == ["nat_tiny", "swin_tiny", "vit_small"]
    assert sorted(repo.disabled()) == sorted(PUBLISHED)
    routes = yaml.safe_load((MODEL_REPO / "routes.yaml").read_text())
    assert set(routes["models"]) == set(default_model_names())
    with pytest.raises(NotFound, match=r"disabled: set `enabled: true` and `weights.path`"):
        repo.config("uni_v1")


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_preset_states_the_published_facts(name: str) -> None:
    cfg = load_model_config(MODEL_REPO / name / "config.yaml")
    facts = PUBLISHED[name]
    assert not cfg.enabled and cfg.family == "vit"
    assert cfg.weights.source == "file" and cfg.weights.path
    assert cfg.weights.layout == ("hf_dinov2" if name == "phikon_v2" else "timm")
    assert (cfg.input.native_size, cfg.input.buckets, cfg.input.patch_size) == (224, [224], facts["patch"])
    assert (cfg.input.mean, cfg.input.std) == facts["norm"]
    assert cfg.artifacts.external_data == (name in SWIGLU)
    assert (cfg.output.embedding_dim, cfg.output.pooling, cfg.output.num_classes) == (
        facts["embedding"],
        facts["pooling"],
        0,
    )
    source = (MODEL_REPO / name / "config.yaml").read_text()
    assert "Sources" in source and "TRIDENT" in source


def _shallow_raw(name: str) -> dict[str, Any]:
    raw = yaml.safe_load((MODEL_REPO / name / "config.yaml").read_text())
    raw["enabled"] = True
    raw["architecture"]["kwargs"]["depth"] = 1
    return raw


def _randomise(model: torch.nn.Module, seed: int) -> None:
    """Every parameter random, LayerScale and norm gains near 1, so each block really contributes."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if key.endswith((".gamma", ".lambda1")) or re.search(r"norm\d?\.weight$", key):
                param.copy_(1.0 + 0.1 * noise)
            else:
                param.copy_(0.05 * noise)


def _timm_to_hf_dinov2(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Write a timm ViT-L state dict in transformers' Dinov2Model names (the layout Phikon-v2 ships)."""
    top = {
        "cls_token": "embeddings.cls_token",
        "pos_embed": "embeddings.position_embeddings",
        "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
        "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
        "norm.weight": "layernorm.weight",
        "norm.bias": "layernorm.bias",
    }
    block = {"norm1": "norm1", "norm2": "norm2", "attn.proj": "attention.output.dense", "mlp.fc1": "mlp.fc1"}
    block |= {"mlp.fc2": "mlp.fc2", "ls1": "layer_scale1", "ls2": "layer_scale2"}
    out = {"embeddings.mask_token": torch.zeros(1, state["cls_token"].shape[-1])}
    for key, value in state.items():
        if key in top:
            out[top[key]] = value
            continue
        index, sub, leaf = re.fullmatch(r"blocks\.(\d+)\.(.+)\.(weight|bias|gamma)", key).groups()  # type: ignore[union-attr]
        prefix = f"encoder.layer.{index}"
        if sub == "attn.qkv":
            for part, chunk in zip(("query", "key", "value"), value.chunk(3, dim=0), strict=True):
                out[f"{prefix}.attention.attention.{part}.{leaf}"] = chunk.clone()
        else:
            out[f"{prefix}.{block[sub]}.{'lambda1' if leaf == 'gamma' else leaf}"] = value
    return out


def _save_published(name: str, cfg: ModelConfig, folder: Path) -> tuple[torch.nn.Module, Path]:
    """A randomly initialised preset, saved as its publisher ships it; returns it and the file."""
    random_cfg = cfg.model_copy(update={"weights": cfg.weights.model_copy(update={"source": "random"})})
    source = build_from_config(random_cfg, folder)
    _randomise(source, seed=sorted(PUBLISHED).index(name))
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    if cfg.weights.layout == "hf_dinov2":
        from safetensors.torch import save_file

        path = folder / "model.safetensors"
        save_file(_timm_to_hf_dinov2(state), str(path))
    else:
        path = folder / "pytorch_model.bin"
        torch.save(state, path)
    return source, path


def _published_embedding(name: str, tokens: torch.Tensor) -> torch.Tensor:
    """The publisher's pooling, written out here (not through Tessera's)."""
    cls = tokens[:, 0]
    if PUBLISHED[name]["pooling"] == "cls":
        return cls
    return torch.cat([cls, tokens[:, PUBLISHED[name]["prefix"] :].mean(1)], dim=-1)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_preset_loads_its_published_file_exports_and_keeps_parity(tmp_path: Path, name: str) -> None:
    import onnxruntime as ort

    torch.set_grad_enabled(False)
    folder = tmp_path / "repo" / name
    folder.mkdir(parents=True)
    raw = _shallow_raw(name)
    source, path = _save_published(name, ModelConfig.model_validate(raw), folder)
    raw["weights"]["path"] = path.name  # relative to the config file
    (folder / "config.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    repo = ModelRepository(tmp_path / "repo")
    cfg = repo.config(name)

    loaded = build_from_config(cfg, repo.model_dir(name))
    for (key, want), have in zip(source.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(want, have), key
    assert loaded.num_prefix_tokens == PUBLISHED[name]["prefix"]
    pixels = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    tokens = source.forward_features(pixels)
    expected = _published_embedding(name, tokens)
    embedding, _ = EmbeddingModel(loaded)(pixels)
    assert embedding.shape == (2, PUBLISHED[name]["embedding"])
    torch.testing.assert_close(embedding, expected)
    assert float(expected.std()) > 0.1  # random blocks, not a near-identity network

    rows = build_model(repo, name)
    assert [(r.artifact, r.status) for r in rows] == [("onnx", "built"), ("onnx_fp16", "built")], rows
    manifest = repo.require_manifest(name)
    assert manifest.weights == "trained"
    assert manifest.artifacts["onnx"].parity["max_abs"] <= cfg.artifacts.parity_atol
    for key, graph in (("onnx", "model.onnx"), ("onnx_fp16", "model.fp16.onnx")):
        record = manifest.artifacts[key]
        # The ViT-H/ViT-g presets keep their weights beside the graph (a protobuf stops at 2 GiB).
        assert record.data_file == (f"{graph}.data" if name in SWIGLU else None), key
        assert record.bytes < (1 << 20) if name in SWIGLU else record.data_bytes == 0
    assert sorted(p.name for p in repo.version_dir(name).iterdir() if "raw" in p.name) == []
    arch = manifest.arch
    assert (arch["dims"], arch["patch_size"], arch["num_prefix_tokens"]) == (
        [PUBLISHED[name]["width"]],
        PUBLISHED[name]["patch"],
        PUBLISHED[name]["prefix"],
    )
    session = ort.InferenceSession(str(repo.version_dir(name) / "model.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(["embedding"], {"pixels": pixels.numpy()})[0]
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-4, rtol=1e-4)
    served = load_backend(repo, name, providers="cpu").infer(pixels.numpy()).outputs["embedding"]
    np.testing.assert_allclose(served, expected.numpy(), atol=1e-4, rtol=1e-4)
    assert [r.status for r in build_model(repo, name)] == ["up-to-date", "up-to-date"]
    if name in SWIGLU:  # a lost data file is a stale artifact: rebuilt
        (repo.version_dir(name) / "model.onnx.data").unlink()
        assert [r.status for r in build_model(repo, name, fp16=False)] == ["built"]


#: transformers 5 renames Dinov2's tensors on load and writes the new names; the published files
#: carry the old ones (the renaming table: transformers' ``conversion_mapping.py``, ``Dinov2Model``).
_TRANSFORMERS_4_NAMES = {
    "attention.q_proj": "attention.attention.query",
    "attention.k_proj": "attention.attention.key",
    "attention.v_proj": "attention.attention.value",
    "attention.o_proj": "attention.output.dense",
    "mlp.down_proj": "mlp.weights_out",
}


def _as_transformers_4(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if ".mlp.gate_proj." in key:
            out[key.replace("gate_proj", "weights_in")] = torch.cat([value, state[key.replace("gate", "up")]], dim=0)
            continue
        if ".mlp.up_proj." in key:
            continue
        for new, old in _TRANSFORMERS_4_NAMES.items():
            key = key.replace(f".{new}.", f".{old}.")
        out[key] = value.contiguous()
    return out


@pytest.mark.parametrize("swiglu", [False, True], ids=["phikon_v2", "swiglu"])
def test_hf_dinov2_layout_matches_transformers_own_model(tmp_path: Path, swiglu: bool) -> None:
    """The ``hf_dinov2`` mapping against transformers' ``Dinov2Model`` itself, in both generations of
    its key names: the Phikon-v2 preset (one block) and a SwiGLU Dinov2 (gate/up order)."""
    transformers = pytest.importorskip("transformers")
    from safetensors.torch import save_file

    torch.set_grad_enabled(False)
    raw = _shallow_raw("phikon_v2")
    width, heads = (384, 6) if swiglu else (1024, 16)
    hf_config = transformers.Dinov2Config(
        hidden_size=width,
        num_hidden_layers=1,
        num_attention_heads=heads,
        patch_size=16,
        image_size=224,
        mlp_ratio=4,
        layerscale_value=1.0,
        layer_norm_eps=1e-6,
        use_swiglu_ffn=swiglu,
    )
    reference = transformers.Dinov2Model(hf_config).eval()
    _randomise(reference, seed=7)
    if swiglu:  # transformers' SwiGLU hidden width: 2/3 of mlp_ratio·width, rounded up to 8
        hidden = reference.encoder.layer[0].mlp.down_proj.in_features
        kwargs = {"embed_dim": width, "num_heads": heads, "mlp_ratio": 2 * hidden / width}
        raw["architecture"]["kwargs"] |= kwargs
        raw["architecture"] |= {"mlp_layer": "swiglu_packed", "act_layer": "silu"}
        raw["output"]["embedding_dim"] = width
    pixels = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    expected = reference(pixel_values=pixels).last_hidden_state[:, 0]
    state = reference.state_dict()
    for generation, published in (("transformers-5", state), ("transformers-4", _as_transformers_4(state))):
        save_file({k: v.contiguous() for k, v in published.items()}, str(tmp_path / f"{generation}.safetensors"))
        raw["weights"]["path"] = f"{generation}.safetensors"
        loaded = build_from_config(ModelConfig.model_validate(raw), tmp_path)
        embedding, _ = EmbeddingModel(loaded)(pixels)
        torch.testing.assert_close(embedding, expected, atol=2e-5, rtol=2e-5, msg=generation)
        assert float(expected.std()) > 0.1


def test_swiglu_presets_count_their_mlp_cost_right() -> None:
    """A packed SwiGLU (fc1: dim -> 2h, fc2: h -> dim) costs 3·dim·h, i.e. a plain-MLP ratio of 1.5 h/dim."""
    for name in sorted(SWIGLU):
        cfg = ModelConfig.model_validate(_shallow_raw(name) | {"weights": {"source": "random"}})
        model = build_from_config(cfg, MODEL_REPO)
        fc1, fc2 = model.blocks[0].mlp.fc1, model.blocks[0].mlp.fc2
        assert fc1.out_features == 2 * fc2.in_features, name
        facts = facts_from_model(model, "vit", cfg)
        dim = PUBLISHED[name]["width"]
        assert facts.mlp_ratio == pytest.approx(1.5 * fc2.in_features / dim), name


# Errors a user meets when a preset and a checkpoint disagree: clear, and naming what differs.


def _tiny(tmp_path: Path, **changes: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "name": "tiny",
        "family": "vit",
        "architecture": {
            "timm_name": "vit_small_patch16_224",
            "kwargs": {"depth": 1, "num_classes": 0, "reg_tokens": 2, "global_pool": "token"},
        },
        "input": {"native_size": 224, "patch_size": 16},
        "output": {"embedding_dim": 768, "num_classes": 0, "pooling": "cls+mean"},
    }
    for section, value in changes.items():
        raw[section] = {**raw.get(section, {}), **value} if isinstance(value, dict) else value
    return raw


def test_a_checkpoint_missing_keys_is_refused_naming_them(tmp_path: Path) -> None:
    cfg = ModelConfig.model_validate(_tiny(tmp_path))
    state = build_from_config(cfg, tmp_path).state_dict()
    del state["blocks.0.attn.qkv.weight"], state["reg_token"]
    state["head.extra"] = torch.zeros(1)
    torch.save(state, tmp_path / "ckpt.pth")
    cfg = ModelConfig.model_validate(_tiny(tmp_path, weights={"source": "file", "path": "ckpt.pth"}))
    with pytest.raises(CheckpointMismatch) as err:
        build_from_config(cfg, tmp_path)
    message = str(err.value)
    assert "Missing keys (2): reg_token, blocks.0.attn.qkv.weight" in message
    assert "Unexpected keys (1): head.extra" in message


def test_a_checkpoint_of_another_shape_is_refused_naming_it(tmp_path: Path) -> None:
    kwargs = {"depth": 1, "num_classes": 0, "reg_tokens": 2, "global_pool": "token", "mlp_ratio": 2.0}
    other = ModelConfig.model_validate(_tiny(tmp_path, architecture={"kwargs": kwargs}))
    torch.save(build_from_config(other, tmp_path).state_dict(), tmp_path / "ckpt.pth")
    cfg = ModelConfig.model_validate(_tiny(tmp_path, weights={"source": "file", "path": "ckpt.pth"}))
    with pytest.raises(
        CheckpointMismatch, match=r"Shape mismatches \(3\): blocks.0.mlp.fc1.weight \(768, 384\) != \(1536, 384\)"
    ):
        build_from_config(cfg, tmp_path)


def test_a_transformers_checkpoint_read_as_timm_names_the_layout(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    plain = _tiny(tmp_path, architecture={"kwargs": {"depth": 1, "num_classes": 0, "global_pool": "token"}})
    plain["output"] = {"embedding_dim": 384, "num_classes": 0, "pooling": "cls"}
    state = build_from_config(ModelConfig.model_validate(plain), tmp_path).state_dict()
    save_file({k: v.contiguous() for k, v in _timm_to_hf_dinov2(state).items()}, str(tmp_path / "m.safetensors"))
    wrong = ModelConfig.model_validate(plain | {"weights": {"source": "file", "path": "m.safetensors"}})
    with pytest.raises(CheckpointMismatch, match=r"weights.layout 'timm'.*Unexpected keys \(\d+\): embeddings"):
        build_from_config(wrong, tmp_path)
    right = plain | {"weights": {"source": "file", "path": "m.safetensors", "layout": "hf_dinov2"}}
    loaded = build_from_config(ModelConfig.model_validate(right), tmp_path)
    for key, value in state.items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_hf_dinov2_mapping_names_an_incomplete_attention() -> None:
    state = {"encoder.layer.0.attention.attention.query.weight": torch.zeros(4, 4)}
    with pytest.raises(ValueError, match=r"encoder.layer.0: attn.qkv.weight lacks its k, v part"):
        hf_dinov2_to_timm(state)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"architecture": {"kwargs": {"mlp_layer": "SwiGLUPacked"}}},
            r"kwargs.mlp_layer .* use architecture.mlp_layer",
        ),
        ({"architecture": {"act_layer": "swish"}}, r"act_layer"),
        ({"family": "swin"}, r"pooling 'cls\+mean' pools ViT tokens; family 'swin'"),
        ({"output": {"pooling": "max"}}, r"pooling"),
        ({"weights": {"layout": "openclip"}}, r"layout"),
    ],
)
def test_config_errors_name_the_field(tmp_path: Path, changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ModelConfig.model_validate(_tiny(tmp_path, **changes))


def test_an_embedding_width_that_the_pooling_does_not_give_is_refused(tmp_path: Path) -> None:
    cfg = ModelConfig.model_validate(_tiny(tmp_path, output={"embedding_dim": 384}))
    with pytest.raises(
        ValueError, match=r"embedding_dim is 384 but vit_small_patch16_224 with pooling 'cls\+mean' gives 768"
    ):
        build_from_config(cfg, tmp_path)


def test_token_pooling_refuses_an_architecture_that_normalises_after_pooling(tmp_path: Path) -> None:
    kwargs = {"depth": 1, "num_classes": 0, "global_pool": "avg"}
    cfg = ModelConfig.model_validate(_tiny(tmp_path, architecture={"kwargs": kwargs}))
    with pytest.raises(ValueError, match=r"fc_norm.*global_pool to 'token'"):
        build_from_config(cfg, tmp_path)


def test_mean_pooling_leaves_out_class_and_register_tokens(tmp_path: Path) -> None:
    cfg = ModelConfig.model_validate(_tiny(tmp_path, output={"embedding_dim": 384, "pooling": "mean"}))
    model = build_from_config(cfg, tmp_path)
    pixels = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        tokens = model.forward_features(pixels)
        embedding, _ = EmbeddingModel(model)(pixels)
    assert tokens.shape[1] == 3 + 196
    torch.testing.assert_close(embedding, tokens[:, 3:].mean(1))


def test_weights_above_the_protobuf_limit_go_beside_the_graph_unasked(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """No flag needed: a model whose fp32 weights pass the threshold (lowered here) gets a data file."""
    from service.export import build as build_module

    raw = _tiny(tmp_path)
    raw["input"]["sizes"] = [224]
    (tmp_path / "repo" / "tiny").mkdir(parents=True)
    (tmp_path / "repo" / "tiny" / "config.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.setattr(build_module, "EXTERNAL_DATA_BYTES", 1024)
    repo = ModelRepository(tmp_path / "repo")
    assert [r.status for r in build_model(repo, "tiny", fp16=False)] == ["built"]
    record = repo.require_manifest("tiny").artifacts["onnx"]
    assert record.data_file == "model.onnx.data" and record.data_bytes > 10 * record.bytes
