"""Building PyTorch backbones from the registry and from config.yaml."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from service.models.config import ModelConfig
from service.models.meta import ArchFacts

__all__ = [
    "EmbeddingModel",
    "build_from_config",
    "create_model",
    "facts_from_model",
    "load_checkpoint",
    "use_fused_attention",
]


def _register_in_house() -> None:
    """Import the in-house families so that their ``@register_model`` functions run."""
    import importlib

    try:
        importlib.import_module("service.models.nat")
    except ModuleNotFoundError as exc:  # the NA family is optional until it lands
        if exc.name != "service.models.nat":
            raise


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """The one way in: any timm name, or an in-house family registered in timm's registry."""
    _register_in_house()
    kwargs.setdefault("pretrained", False)
    if kwargs["pretrained"]:
        raise ValueError("pretrained=True would download weights; point weights.path at a local checkpoint")
    return timm.create_model(name, **kwargs)


class EmbeddingModel(nn.Module):
    """Wraps a timm backbone so that one forward gives both outputs the service answers with.

    ``forward(pixels) -> (embedding, logits)``: the pooled pre-logits features and the head's logits.
    """

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone: Any = backbone

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.backbone.forward_features(pixels)
        embedding = self.backbone.forward_head(features, pre_logits=True)
        logits = self.backbone.forward_head(features)
        return embedding, logits


def load_checkpoint(model: nn.Module, path: str | Path, *, strict: bool = True) -> None:
    """Load a timm-style state dict (``.pth``/``.pt``/``.bin``) or a ``.safetensors`` file.

    Checkpoints wrapped as ``{"state_dict": ...}`` or ``{"model": ...}`` and keys prefixed with
    ``module.`` (DDP) are accepted, as timm's own loader accepts them.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    state: Any
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
        for key in ("state_dict", "model", "state_dict_ema"):
            if isinstance(state, dict) and key in state and isinstance(state[key], dict):
                state = state[key]
                break
    state = {k.removeprefix("module."): v for k, v in state.items()}
    # timm's per-family filter adapts foreign layouts (original ViT/Swin releases, position
    # embeddings of another grid size); timm-native state dicts pass through it unchanged.
    family_module = sys.modules.get(type(model).__module__)
    filter_fn = getattr(family_module, "checkpoint_filter_fn", None)
    if filter_fn is not None:
        state = filter_fn(state, model)
    result = model.load_state_dict(state, strict=strict)
    if not strict and (result.missing_keys or result.unexpected_keys):
        import logging

        logging.getLogger(__name__).warning(
            "checkpoint %s: %d missing and %d unexpected keys",
            path,
            len(result.missing_keys),
            len(result.unexpected_keys),
        )


def use_fused_attention(model: nn.Module) -> int:
    """Make every timm attention block call ``scaled_dot_product_attention``; returns how many.

    timm's ViT uses SDPA by default, but its Swin window attention only when fused attention is
    forced (``TIMM_FUSED_ATTN=2``), and ``TIMM_FUSED_ATTN=0`` turns it off everywhere. One SDPA
    call is what becomes one fused ``Attention`` op in the ONNX export (opset 23), FlashAttention
    or memory-efficient attention on CUDA, and no materialised score matrix in PyTorch. The
    in-house NA family does not use the flag (its kernel choice is ``set_attn_backend``).
    """
    count = 0
    for module in model.modules():
        if isinstance(getattr(module, "fused_attn", None), bool):
            setattr(module, "fused_attn", True)  # noqa: B010 - typed nn.Module attribute
            count += 1
    return count


def build_from_config(cfg: ModelConfig, config_dir: str | Path) -> nn.Module:
    """Instantiate the backbone a config names: seeded random init, or its local checkpoint."""
    torch.manual_seed(cfg.weights.seed)
    kwargs = dict(cfg.architecture.kwargs)
    kwargs.setdefault("num_classes", cfg.output.num_classes)
    model = create_model(cfg.architecture.timm_name, **kwargs)
    if cfg.weights.source == "file":
        assert cfg.weights.path is not None  # validated by WeightsConfig
        path = Path(cfg.weights.path)
        if not path.is_absolute():
            path = Path(config_dir) / path
        load_checkpoint(model, path, strict=cfg.weights.strict)
    use_fused_attention(model)
    return model.eval()


def facts_from_model(model: Any, family: str, cfg: ModelConfig | None = None) -> ArchFacts:
    """Read the architecture facts off an instantiated timm ViT, Swin or in-house NAT."""
    params = sum(p.numel() for p in model.parameters())
    if family == "vit":
        blocks = list(model.blocks)
        attn = blocks[0].attn
        embed_dim = int(model.embed_dim)
        hidden = blocks[0].mlp.fc1.out_features
        return ArchFacts(
            family="vit",
            patch_size=int(model.patch_embed.patch_size[0]),
            depths=(len(blocks),),
            dims=(embed_dim,),
            num_heads=(int(attn.num_heads),),
            mlp_ratio=hidden / embed_dim,
            num_prefix_tokens=int(getattr(model, "num_prefix_tokens", 1)),
            params=params,
        )
    if family == "swin":
        depths, dims, heads = [], [], []
        for stage in model.layers:
            depths.append(len(stage.blocks))
            # ``stage.dim`` is the stage's *input* width (before patch merging); the blocks' width is
            # what attention and the MLPs run at.
            dims.append(int(stage.blocks[0].mlp.fc1.in_features))
            heads.append(int(stage.blocks[0].attn.num_heads))
        hidden = model.layers[0].blocks[0].mlp.fc1.out_features
        window = model.layers[0].blocks[0].window_size
        return ArchFacts(
            family="swin",
            patch_size=int(model.patch_embed.patch_size[0]),
            depths=tuple(depths),
            dims=tuple(dims),
            num_heads=tuple(heads),
            mlp_ratio=hidden / dims[0],
            window_size=int(window[0] if isinstance(window, tuple | list) else window),
            params=params,
            extra={"img_size": tuple(int(v) for v in model.patch_embed.img_size)},
        )
    if family == "nat" and hasattr(model, "arch_facts"):
        facts: ArchFacts = model.arch_facts()
        return facts
    raise ValueError(f"no fact extractor for family {family!r}")
