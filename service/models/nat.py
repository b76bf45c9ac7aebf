"""Neighborhood Attention Transformer (NAT), the in-house neighbourhood-attention family.

Paper: Ali Hassani, Steven Walton, Jiachen Li, Shen Li, Humphrey Shi, "Neighborhood Attention
Transformer", CVPR 2023 (arXiv:2204.07143). Original code: https://github.com/SHI-Labs/NAT

A convolutional tokenizer (two 3x3 stride-2 convolutions, stride 4 overall), four stages of
neighborhood-attention blocks (kernel 7, LayerNorm, MLP ratio 3) with 3x3 stride-2 convolutional
downsampling between them, a final LayerNorm, global average pooling and a linear head.

Differences from the published models: no relative position bias (NATTEN >= 0.20 has none, and
the ONNX/flex kernels must compute the same function as NATTEN), and no pretrained weights.
Feature maps stay channels-last ``(B, H, W, C)`` inside the network; any input size works (each
stride-2 convolution rounds up), with maps smaller than the kernel attending to whole axes.

Registered in timm's registry, so ``service.models.create_model("nat_tiny")`` (or
``timm.create_model`` once this module is imported) builds it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import ClassifierHead, DropPath, Mlp, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

from service.models.layers.neighborhood import NeighborhoodAttention2D
from service.models.meta import ArchFacts

__all__ = ["NAT", "ConvDownsample", "ConvTokenizer", "NATBlock", "NATStage"]


class ConvTokenizer(nn.Module):
    """Two 3x3 stride-2 convolutions: ``(B, C_in, H, W) -> (B, H/4, W/4, embed_dim)``, normalised."""

    def __init__(self, in_chans: int = 3, embed_dim: int = 64):
        super().__init__()
        self.proj = nn.Sequential(
            nn.Conv2d(in_chans, embed_dim // 2, kernel_size=3, stride=2, padding=1),
            nn.Conv2d(embed_dim // 2, embed_dim, kernel_size=3, stride=2, padding=1),
        )
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class ConvDownsample(nn.Module):
    """3x3 stride-2 convolution between stages, channels-last in and out: ``(B, H, W, C) -> (B, H/2, W/2, C')``."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.reduction = nn.Conv2d(dim, out_dim, kernel_size=3, stride=2, padding=1, bias=False)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.reduction(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.norm(x)


class NATBlock(nn.Module):
    """Pre-norm transformer block with neighborhood attention over ``(B, H, W, C)``."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        kernel_size: int = 7,
        mlp_ratio: float = 3.0,
        qkv_bias: bool = True,
        proj_drop: float = 0.0,
        drop_path: float = 0.0,
        attn_backend: str = "auto",
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = NeighborhoodAttention2D(
            dim, num_heads, kernel_size=kernel_size, qkv_bias=qkv_bias, backend=attn_backend
        )
        self.drop_path1 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=nn.GELU, drop=proj_drop)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x)))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


class NATStage(nn.Module):
    """Optional downsampling (every stage but the first), then ``depth`` NA blocks."""

    def __init__(
        self,
        dim: int,
        out_dim: int,
        depth: int,
        num_heads: int,
        downsample: bool,
        kernel_size: int = 7,
        mlp_ratio: float = 3.0,
        qkv_bias: bool = True,
        proj_drop: float = 0.0,
        drop_path: Sequence[float] = (),
        attn_backend: str = "auto",
    ):
        super().__init__()
        self.downsample: nn.Module = ConvDownsample(dim, out_dim) if downsample else nn.Identity()
        drop_path = list(drop_path) or [0.0] * depth
        self.blocks = nn.Sequential(
            *[
                NATBlock(
                    out_dim,
                    num_heads,
                    kernel_size=kernel_size,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    proj_drop=proj_drop,
                    drop_path=drop_path[i],
                    attn_backend=attn_backend,
                )
                for i in range(depth)
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))


class NAT(nn.Module):
    """Hierarchical neighborhood-attention backbone with timm's classifier interface.

    ``forward_features(x)`` gives the normalised last-stage map ``(B, H/32, W/32, num_features)``;
    ``forward_head(features, pre_logits=True)`` its average-pooled embedding.
    """

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        embed_dim: int = 64,
        depths: Sequence[int] = (3, 4, 6, 5),
        num_heads: Sequence[int] = (2, 4, 8, 16),
        kernel_size: int = 7,
        mlp_ratio: float = 3.0,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        attn_backend: str = "auto",
    ):
        super().__init__()
        depths, num_heads = tuple(depths), tuple(num_heads)
        if len(depths) != len(num_heads) or not depths:
            raise ValueError(f"depths {depths} and num_heads {num_heads} need one entry per stage")
        if global_pool not in ("avg", ""):
            raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.depths = depths
        self.num_heads = num_heads
        self.dims = tuple(embed_dim * 2**i for i in range(len(depths)))
        self.kernel_size = kernel_size
        self.mlp_ratio = mlp_ratio
        self.patch_size = 4
        self.num_features = self.head_hidden_size = self.dims[-1]

        self.patch_embed = ConvTokenizer(in_chans, embed_dim)
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        stages: list[nn.Module] = []
        self.feature_info: list[dict[str, Any]] = []
        for i, (depth, heads) in enumerate(zip(depths, num_heads, strict=True)):
            first = sum(depths[:i])
            stages.append(
                NATStage(
                    self.dims[max(i - 1, 0)],
                    self.dims[i],
                    depth,
                    heads,
                    downsample=i > 0,
                    kernel_size=kernel_size,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    proj_drop=proj_drop_rate,
                    drop_path=rates[first : first + depth],
                    attn_backend=attn_backend,
                )
            )
            self.feature_info.append(
                {"num_chs": self.dims[i], "reduction": self.patch_size * 2**i, "module": f"stages.{i}"}
            )
        self.stages = nn.Sequential(*stages)
        self.norm = nn.LayerNorm(self.num_features)
        self.head = ClassifierHead(
            self.num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate, input_fmt="NHWC"
        )
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool is not None and global_pool not in ("avg", ""):
            raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = global_pool
        self.head.reset(num_classes, pool_type=global_pool)

    def set_attn_backend(self, backend: str) -> None:
        """Switch every block's neighborhood-attention kernel (``auto``, ``natten``, ``flex``, ``gather``)."""
        for module in self.modules():
            if isinstance(module, NeighborhoodAttention2D):
                module.set_backend(backend)

    def arch_facts(self) -> ArchFacts:
        """The numbers the router, preprocessor and tiler need (stored in ``manifest.json``)."""
        return ArchFacts(
            family="nat",
            patch_size=self.patch_size,
            depths=self.depths,
            dims=self.dims,
            num_heads=self.num_heads,
            mlp_ratio=float(self.mlp_ratio),
            kernel_size=self.kernel_size,
            params=sum(p.numel() for p in self.parameters()),
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` pixels -> ``(B, ceil(H/32), ceil(W/32), num_features)`` (for 4 stages)."""
        if x.dim() != 4:
            raise ValueError(f"expected (B, C, H, W) pixels, got shape {tuple(x.shape)}")
        return self.norm(self.stages(self.patch_embed(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        out: torch.Tensor = self.head(x, pre_logits=pre_logits)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _create_nat(variant: str, pretrained: bool = False, **kwargs: Any) -> NAT:
    if kwargs.get("features_only"):
        raise ValueError("features_only is not supported by the NAT family; use forward_features")
    model: NAT = build_model_with_cfg(NAT, variant, pretrained, **kwargs)
    return model


def _cfg(url: str = "", **kwargs: Any) -> dict[str, Any]:
    return {
        "url": url,
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "crop_pct": 0.875,
        "interpolation": "bicubic",
        "fixed_input_size": False,
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.proj.0",
        "classifier": "head.fc",
        "license": "mit",
        **kwargs,
    }


default_cfgs = generate_default_cfgs(
    {
        "nat_mini": _cfg(),
        "nat_tiny": _cfg(),
    }
)


@register_model
def nat_mini(pretrained: bool = False, **kwargs: Any) -> NAT:
    """NAT-Mini: depths (3, 4, 6, 5), dim 64, heads (2, 4, 8, 16); ~20M params, ~2.7 GMACs at 224."""
    model_args: dict[str, Any] = {"depths": (3, 4, 6, 5), "embed_dim": 64, "num_heads": (2, 4, 8, 16)}
    return _create_nat("nat_mini", pretrained=pretrained, **{**model_args, **kwargs})


@register_model
def nat_tiny(pretrained: bool = False, **kwargs: Any) -> NAT:
    """NAT-Tiny: depths (3, 4, 18, 5), dim 64, heads (2, 4, 8, 16); ~28M params, ~4.3 GMACs at 224."""
    model_args: dict[str, Any] = {"depths": (3, 4, 18, 5), "embed_dim": 64, "num_heads": (2, 4, 8, 16)}
    return _create_nat("nat_tiny", pretrained=pretrained, **{**model_args, **kwargs})
