"""Building PyTorch backbones from the registry and from config.yaml."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from service.models._layouts import LAYOUTS
from service.models.config import ModelConfig, Pooling
from service.models.meta import ArchFacts

__all__ = [
    "CheckpointMismatch",
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


#: Attribute ``build_from_config`` sets on a backbone: the pooling its config asks for, so that
#: every ``EmbeddingModel(build_from_config(...))`` (build, parity, the PyTorch runtime) pools alike.
POOLING_ATTR = "tessera_pooling"


class EmbeddingModel(nn.Module):
    """Wraps a timm backbone so that one forward gives both outputs the service answers with.

    ``forward(pixels) -> (embedding, logits)``: the pooled pre-logits features and the head's logits.
    ``pooling`` (default: what ``build_from_config`` recorded on the backbone, else ``head``):
    ``head`` is timm's own ``forward_head(pre_logits=True)``; ``cls``, ``mean`` and ``cls+mean`` pool
    the final normalised ViT tokens, the mean over patch tokens only (class and register tokens,
    ``num_prefix_tokens`` of them, excluded).
    """

    def __init__(self, backbone: nn.Module, pooling: Pooling | None = None):
        super().__init__()
        self.backbone: Any = backbone
        recorded: Pooling = getattr(backbone, POOLING_ATTR, "head")
        self.pooling: Pooling = pooling if pooling is not None else recorded

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.backbone.forward_features(pixels)
        logits = self.backbone.forward_head(features)
        if self.pooling == "head":
            return self.backbone.forward_head(features, pre_logits=True), logits
        cls = features[:, 0]
        mean = features[:, int(self.backbone.num_prefix_tokens) :].mean(dim=1)
        if self.pooling == "cls":
            return cls, logits
        if self.pooling == "mean":
            return mean, logits
        return torch.cat([cls, mean], dim=-1), logits


class CheckpointMismatch(RuntimeError):
    """A checkpoint whose keys or shapes do not fit the configured architecture."""


def _describe_mismatch(path: Path, missing: list[str], unexpected: list[str], shapes: list[str], layout: str) -> str:
    def listed(keys: list[str]) -> str:
        shown = ", ".join(keys[:12])
        return shown + (f", ... ({len(keys) - 12} more)" if len(keys) > 12 else "")

    parts = [f"checkpoint {path} does not fit the configured architecture (weights.layout {layout!r})"]
    if missing:
        parts.append(f"Missing keys ({len(missing)}): {listed(missing)}")
    if unexpected:
        parts.append(f"Unexpected keys ({len(unexpected)}): {listed(unexpected)}")
    if shapes:
        parts.append(f"Shape mismatches ({len(shapes)}): {listed(shapes)}")
    parts.append(
        "check architecture.timm_name/kwargs (depth, embed_dim, reg_tokens, no_embed_class, mlp_layer) and "
        "weights.layout against the checkpoint's publisher"
    )
    return "; ".join(parts)


def _read_state(path: Path) -> dict[str, torch.Tensor]:
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
    if not isinstance(state, dict):
        raise CheckpointMismatch(f"checkpoint {path} holds a {type(state).__name__}, not a state dict")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_checkpoint(model: nn.Module, path: str | Path, *, strict: bool = True, layout: str = "timm") -> None:
    """Load a state dict (``.pth``/``.pt``/``.bin``) or a ``.safetensors`` file into ``model``.

    Checkpoints wrapped as ``{"state_dict": ...}`` or ``{"model": ...}`` and keys prefixed with
    ``module.`` (DDP) are accepted, as timm's own loader accepts them. ``layout`` names the key
    layout (``timm``, ``hf_dinov2``: see ``_layouts``). Missing or unexpected keys (with ``strict``)
    and shape mismatches (always) raise ``CheckpointMismatch`` naming them.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if layout not in LAYOUTS:
        raise ValueError(f"unknown checkpoint layout {layout!r}; known: {', '.join(LAYOUTS)}")
    state = LAYOUTS[layout](_read_state(path))
    # timm's per-family filter adapts foreign layouts (original ViT/Swin releases, position
    # embeddings of another grid size); timm-native state dicts pass through it unchanged.
    family_module = sys.modules.get(type(model).__module__)
    filter_fn = getattr(family_module, "checkpoint_filter_fn", None)
    if filter_fn is not None:
        state = filter_fn(state, model)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if shapes or (strict and (missing or unexpected)):
        raise CheckpointMismatch(_describe_mismatch(path, missing, unexpected, shapes, layout))
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


def _layer_kwargs(cfg: ModelConfig) -> dict[str, Any]:
    """``architecture.mlp_layer``/``act_layer`` (names in YAML) as the timm classes they name."""
    from timm import layers

    mlp = {"mlp": layers.Mlp, "swiglu_packed": layers.SwiGLUPacked, "swiglu": layers.SwiGLU}
    out: dict[str, Any] = {}
    if cfg.architecture.mlp_layer is not None:
        out["mlp_layer"] = mlp[cfg.architecture.mlp_layer]
    if cfg.architecture.act_layer is not None:
        out["act_layer"] = layers.get_act_layer(cfg.architecture.act_layer)
    return out


def embedding_width(model: Any, pooling: Pooling) -> int | None:
    """Width of the embedding ``EmbeddingModel`` gives for ``pooling``; None when the model does not say."""
    width = getattr(model, "head_hidden_size", None) if pooling == "head" else getattr(model, "num_features", None)
    if width is None:
        width = getattr(model, "num_features", None)
    if width is None:
        return None
    return int(width) * (2 if pooling == "cls+mean" else 1)


def _check_pooling(model: Any, cfg: ModelConfig) -> None:
    """The pooled width is the configured ``embedding_dim``, and token pooling sees normalised tokens."""
    pooling = cfg.output.pooling
    if pooling != "head":
        if not isinstance(getattr(model, "fc_norm", None), nn.Identity):
            raise ValueError(
                f"{cfg.name}: output.pooling {pooling!r} pools the tokens forward_features returns, but this "
                "architecture normalises after pooling (fc_norm); set architecture.kwargs.global_pool to 'token'"
            )
        if not hasattr(model, "num_prefix_tokens"):
            raise ValueError(f"{cfg.name}: output.pooling {pooling!r} needs a ViT with prefix tokens")
    width = embedding_width(model, pooling)
    if width is not None and width != cfg.output.embedding_dim:
        raise ValueError(
            f"{cfg.name}: output.embedding_dim is {cfg.output.embedding_dim} but {cfg.architecture.timm_name} "
            f"with pooling {pooling!r} gives {width}"
        )


def build_from_config(cfg: ModelConfig, config_dir: str | Path) -> nn.Module:
    """Instantiate the backbone a config names: seeded random init, or its local checkpoint.

    The config's pooling travels on the backbone (``POOLING_ATTR``) for ``EmbeddingModel``.
    """
    torch.manual_seed(cfg.weights.seed)
    kwargs = dict(cfg.architecture.kwargs)
    kwargs.setdefault("num_classes", cfg.output.num_classes)
    kwargs.update(_layer_kwargs(cfg))
    model = create_model(cfg.architecture.timm_name, **kwargs)
    _check_pooling(model, cfg)
    if cfg.weights.source == "file":
        assert cfg.weights.path is not None  # validated by WeightsConfig
        path = Path(cfg.weights.path)
        if not path.is_absolute():
            path = Path(config_dir) / path
        load_checkpoint(model, path, strict=cfg.weights.strict, layout=cfg.weights.layout)
    use_fused_attention(model)
    setattr(model, POOLING_ATTR, cfg.output.pooling)
    return model.eval()


def _mlp_ratio(mlp: Any, dim: int) -> float:
    """The plain-MLP ratio with the same multiply-adds: ``(fc1 + fc2 weights) / (2 dim²)``.

    For timm's ``Mlp`` it is ``hidden / dim``. A packed SwiGLU's ``fc1`` holds gate and value
    (``dim -> 2 hidden``) and its ``fc2`` maps ``hidden -> dim``: 1.5 ``hidden / dim``, which is what
    the cost model's ``2 dim (ratio dim)`` then counts.
    """
    linears = (getattr(mlp, name, None) for name in ("fc1", "fc1_g", "fc1_x"))
    weights = sum(m.in_features * m.out_features for m in linears if isinstance(m, nn.Linear))
    weights += mlp.fc2.in_features * mlp.fc2.out_features
    return float(weights) / (2 * dim * dim)


def facts_from_model(model: Any, family: str, cfg: ModelConfig | None = None) -> ArchFacts:
    """Read the architecture facts off an instantiated timm ViT, Swin or in-house NAT."""
    params = sum(p.numel() for p in model.parameters())
    if family == "vit":
        blocks = list(model.blocks)
        attn = blocks[0].attn
        embed_dim = int(model.embed_dim)
        return ArchFacts(
            family="vit",
            patch_size=int(model.patch_embed.patch_size[0]),
            depths=(len(blocks),),
            dims=(embed_dim,),
            num_heads=(int(attn.num_heads),),
            mlp_ratio=_mlp_ratio(blocks[0].mlp, embed_dim),
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
