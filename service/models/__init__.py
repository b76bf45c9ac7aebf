"""Backbone definitions: timm's ViT and Swin, the in-house neighbourhood-attention family.

``create_model(name, **kwargs)`` is the one way in. Everything importable from here without
PyTorch (configs, facts, manifests, the repository) is imported eagerly; the torch-dependent
factory is imported on first use so that Ray replicas serving ONNX never load PyTorch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from service.models.config import ModelConfig, load_model_config
from service.models.manifest import ArtifactRecord, Manifest
from service.models.meta import ArchFacts
from service.models.repository import ModelRepository

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "ArchFacts",
    "ArtifactRecord",
    "Manifest",
    "ModelConfig",
    "ModelRepository",
    "build_from_config",
    "create_model",
    "facts_from_model",
    "load_checkpoint",
    "load_model_config",
]


def create_model(name: str, **kwargs: Any) -> nn.Module:
    from service.models._factory import create_model as _create

    return _create(name, **kwargs)


def build_from_config(cfg: ModelConfig, config_dir: Any) -> nn.Module:
    from service.models._factory import build_from_config as _build

    return _build(cfg, config_dir)


def facts_from_model(model: nn.Module, family: str, cfg: ModelConfig | None = None) -> ArchFacts:
    from service.models._factory import facts_from_model as _facts

    return _facts(model, family, cfg)


def load_checkpoint(model: nn.Module, path: Any, *, strict: bool = True) -> None:
    from service.models._factory import load_checkpoint as _load

    _load(model, path, strict=strict)
