"""Checkpoint key layouts other than timm's, mapped to timm's ViT names on load.

``hf_dinov2``: Hugging Face transformers' ``Dinov2Model`` (``embeddings.*``, ``encoder.layer.N.*``,
``layernorm.*``), the layout Phikon-v2 publishes (``owkin/phikon-v2``: ``model.safetensors``). Query,
key and value are concatenated into timm's ``qkv``; the mask token (used only in pre-training) is
dropped; LayerScale ``lambda1`` becomes ``ls1.gamma``/``ls2.gamma``. The position embeddings are
taken as stored: when their grid matches the model's (Phikon-v2: 14x14 at 224 px, patch 16),
transformers does not interpolate them either and the two models compute the same function; another
grid is resampled by timm's checkpoint filter, which is not bit-identical to transformers'
``interpolate_pos_encoding``. SwiGLU Dinov2 checkpoints (``use_swiglu_ffn``: ``weights_in``/
``weights_out``) map to timm's ``SwiGLUPacked`` (``fc1``/``fc2``).
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch

__all__ = ["LAYOUTS", "hf_dinov2_to_timm"]

_HF_BLOCK = re.compile(r"^encoder\.layer\.(\d+)\.(.+)$")

#: transformers Dinov2Layer sub-keys → timm Block sub-keys (q/k/v are handled apart).
_HF_BLOCK_KEYS = {
    "norm1": "norm1",
    "norm2": "norm2",
    "attention.output.dense": "attn.proj",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
    "mlp.weights_in": "mlp.fc1",
    "mlp.weights_out": "mlp.fc2",
}
_HF_TOP_KEYS = {
    "embeddings.cls_token": "cls_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}
_DROPPED = {"embeddings.mask_token"}


def hf_dinov2_to_timm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a transformers ``Dinov2Model`` state dict to timm's ViT names.

    Keys the mapping does not know are kept as they are, so that a strict load names them.
    A ``dinov2.`` prefix (a ``Dinov2For*`` head model's backbone) is removed first.
    """
    if any(k.startswith("dinov2.") for k in state):
        state = {k.removeprefix("dinov2."): v for k, v in state.items() if k.startswith("dinov2.")}
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if key in _DROPPED:
            continue
        if key in _HF_TOP_KEYS:
            out[_HF_TOP_KEYS[key]] = value
            continue
        match = _HF_BLOCK.match(key)
        if match is None:
            out[key] = value
            continue
        index, rest = int(match.group(1)), match.group(2)
        sub, _, leaf = rest.rpartition(".")
        if sub in ("attention.attention.query", "attention.attention.key", "attention.attention.value"):
            qkv.setdefault((index, leaf), {})[sub.rsplit(".", 1)[1]] = value
        elif rest in ("layer_scale1.lambda1", "layer_scale2.lambda1"):
            out[f"blocks.{index}.ls{rest[11]}.gamma"] = value
        elif sub in _HF_BLOCK_KEYS:
            out[f"blocks.{index}.{_HF_BLOCK_KEYS[sub]}.{leaf}"] = value
        else:
            out[key] = value
    for (index, leaf), parts in qkv.items():
        if set(parts) != {"query", "key", "value"}:
            missing = sorted({"query", "key", "value"} - set(parts))
            raise ValueError(f"encoder.layer.{index}: attention {leaf} lacks {', '.join(missing)}")
        out[f"blocks.{index}.attn.qkv.{leaf}"] = torch.cat([parts["query"], parts["key"], parts["value"]], dim=0)
    return out


#: Layout name (``weights.layout``) → mapping to timm's names.
LAYOUTS: dict[str, Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]] = {
    "timm": dict,
    "hf_dinov2": hf_dinov2_to_timm,
}
