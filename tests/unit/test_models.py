"""Backbones: the factory, config validation, checkpoint loading (timm state dict and safetensors)."""

from pathlib import Path

import pytest
import torch
import yaml

from service.models import ModelConfig, build_from_config, create_model, load_checkpoint, load_model_config
from service.models._factory import EmbeddingModel
from tests.helpers import MODEL_REPO, default_model_names, make_small_repo


@pytest.fixture(scope="module")
def small_configs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[ModelConfig, Path]]:
    root = make_small_repo(tmp_path_factory.mktemp("repo"))
    return {name: (load_model_config(root / name / "config.yaml"), root / name) for name in default_model_names()}


@pytest.mark.parametrize("name", default_model_names())
def test_every_default_config_is_valid(name: str) -> None:
    cfg = load_model_config(MODEL_REPO / name / "config.yaml")
    assert cfg.name == name
    assert cfg.weights.source == "random"


def test_a_typo_in_a_config_is_an_error(tmp_path: Path) -> None:
    raw = yaml.safe_load((MODEL_REPO / "vit_small" / "config.yaml").read_text())
    raw["batching"]["max_batch_sise"] = 4
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError, match="max_batch_sise"):
        load_model_config(tmp_path / "config.yaml")


def test_file_weights_need_a_path() -> None:
    raw = yaml.safe_load((MODEL_REPO / "vit_small" / "config.yaml").read_text())
    raw["weights"] = {"source": "file"}
    with pytest.raises(ValueError, match=r"weights\.path"):
        ModelConfig.model_validate(raw)


@pytest.mark.parametrize("name", default_model_names())
def test_random_init_is_deterministic_and_gives_both_outputs(name: str, small_configs: dict) -> None:
    cfg, folder = small_configs[name]
    x = torch.randn(2, 3, cfg.input.native_size, cfg.input.native_size)
    a = EmbeddingModel(build_from_config(cfg, folder))(x)
    b = EmbeddingModel(build_from_config(cfg, folder))(x)
    assert a[0].shape == (2, cfg.output.embedding_dim)
    assert a[1].shape == (2, cfg.output.num_classes)
    assert torch.equal(a[0], b[0])


@pytest.mark.parametrize("fmt", ["pth", "safetensors", "pth-wrapped-ddp"])
def test_checkpoint_round_trip(fmt: str, tmp_path: Path, small_configs: dict) -> None:
    cfg, _ = small_configs["vit_small"]
    torch.manual_seed(123)
    source = create_model(cfg.architecture.timm_name, **cfg.architecture.kwargs).eval()
    state = source.state_dict()
    if fmt == "safetensors":
        from safetensors.torch import save_file

        path = tmp_path / "weights.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    elif fmt == "pth":
        path = tmp_path / "weights.pth"
        torch.save(state, path)
    else:
        path = tmp_path / "weights.pth"
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)

    raw = cfg.model_dump(mode="json")
    raw["weights"] = {"source": "file", "path": path.name, "seed": 0}
    loaded = build_from_config(ModelConfig.model_validate(raw), tmp_path)
    x = torch.randn(1, 3, 224, 224)
    assert torch.allclose(loaded(x), source(x))
    assert ModelConfig.model_validate(raw).trained


def test_mismatched_checkpoint_is_refused(tmp_path: Path, small_configs: dict) -> None:
    cfg, _ = small_configs["vit_small"]
    torch.save({"unrelated.weight": torch.zeros(3)}, tmp_path / "bad.pth")
    model = create_model(cfg.architecture.timm_name, **cfg.architecture.kwargs)
    with pytest.raises(RuntimeError, match="Missing key"):
        load_checkpoint(model, tmp_path / "bad.pth")


def test_pretrained_downloads_are_refused() -> None:
    with pytest.raises(ValueError, match="download"):
        create_model("vit_small_patch16_224", pretrained=True)
