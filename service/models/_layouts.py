"""Checkpoint key layouts other than timm's, mapped to timm's ViT names on load.

``hf_dinov2``: Hugging Face transformers' ``Dinov2Model`` (``embeddings.*``, ``encoder.layer.N.*``,
``layernorm.*``), the layout Phikon-v2 publishes (``owkin/phikon-v2``: ``model.safetensors``).
Both generations of its names are read: transformers 4's, in which the published files were
written (``attention.attention.query|key|value``, ``attention.output.dense``, SwiGLU
``mlp.weights_in|weights_out``), and transformers 5's, which renames them on load and writes them
when it saves (``attention.q_proj|k_proj|v_proj|o_proj``, ``mlp.gate_proj|up_proj|down_proj``;
its ``conversion_mapping.py``). Query, key and value are concatenated into timm's ``qkv``, gate and
up into ``SwiGLUPacked``'s ``fc1`` (gate first: timm computes ``silu(first half) * second half``,
transformers ``silu(gate) * up``); the mask token (pre-training only) is dropped; LayerScale
``lambda1`` becomes ``ls1.gamma``/``ls2.gamma``. Position embeddings are taken as stored: when
their grid matches the model's (Phikon-v2: 14x14 at 224 px, patch 16) transformers does not
interpolate them either and both compute the same function; another grid is resampled by timm's
checkpoint filter, which is not bit-identical to transformers' ``interpolate_pos_encoding``.
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
    "attention.o_proj": "attn.proj",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
    "mlp.weights_in": "mlp.fc1",
    "mlp.weights_out": "mlp.fc2",
    "mlp.down_proj": "mlp.fc2",
}
#: Tensors joined along dim 0 into one timm tensor: (timm sub-key, parts in order).
_HF_JOINED = {
    "attention.attention.query": ("attn.qkv", "q"),
    "attention.attention.key": ("attn.qkv", "k"),
    "attention.attention.value": ("attn.qkv", "v"),
    "attention.q_proj": ("attn.qkv", "q"),
    "attention.k_proj": ("attn.qkv", "k"),
    "attention.v_proj": ("attn.qkv", "v"),
    "mlp.gate_proj": ("mlp.fc1", "gate"),
    "mlp.up_proj": ("mlp.fc1", "up"),
}
_JOIN_ORDER = {"attn.qkv": ("q", "k", "v"), "mlp.fc1": ("gate", "up")}
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
    joined: dict[tuple[int, str, str], dict[str, torch.Tensor]] = {}
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
        if sub in _HF_JOINED:
            target, part = _HF_JOINED[sub]
            joined.setdefault((index, target, leaf), {})[part] = value
        elif rest in ("layer_scale1.lambda1", "layer_scale2.lambda1"):
            out[f"blocks.{index}.ls{rest[11]}.gamma"] = value
        elif sub in _HF_BLOCK_KEYS:
            out[f"blocks.{index}.{_HF_BLOCK_KEYS[sub]}.{leaf}"] = value
        else:
            out[key] = value
    for (index, target, leaf), parts in joined.items():
        order = _JOIN_ORDER[target]
        missing = [name for name in order if name not in parts]
        if missing:
            raise ValueError(f"encoder.layer.{index}: {target}.{leaf} lacks its {', '.join(missing)} part")
        out[f"blocks.{index}.{target}.{leaf}"] = torch.cat([parts[name] for name in order], dim=0)
    return out


#: Layout name (``weights.layout``) → mapping to timm's names.
LAYOUTS: dict[str, Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]] = {
    "timm": dict,
    "hf_dinov2": hf_dinov2_to_timm,
}
