"""Fitting a decoded image to a model's input: scale to the content size, pad, normalise.

The router decides both sizes (``RouteDecision.content_size`` inside ``input_size``); this
module only carries the decision out, so what the answer reports is what the model saw.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image

from service.models.config import InputConfig

__all__ = ["PreparedImage", "fit_size", "prepare"]

_FILTERS = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
}


@dataclass(frozen=True)
class PreparedImage:
    pixels: np.ndarray  # (3, H, W) float32, normalised
    original_size: tuple[int, int]  # (height, width)
    resized_size: tuple[int, int]  # content size inside the input, before padding
    input_size: tuple[int, int]  # (height, width) the model sees


def fit_size(
    height: int, width: int, target: tuple[int, int], fit: Literal["letterbox", "resize", "pad"]
) -> tuple[int, int]:
    """Content size inside ``target``: stretched (resize), unscaled when it fits (pad), else aspect kept."""
    th, tw = target
    if fit == "resize":
        return th, tw
    if fit == "pad" and height <= th and width <= tw:
        return height, width
    scale = min(th / height, tw / width)
    return max(1, min(th, round(height * scale))), max(1, min(tw, round(width * scale)))


def prepare(
    rgb: np.ndarray,
    cfg: InputConfig,
    target: tuple[int, int] | None = None,
    content: tuple[int, int] | None = None,
) -> PreparedImage:
    """Scale ``rgb`` (H, W, 3 uint8) to ``content`` and pad it to ``target``, normalised.

    ``target`` defaults to the model's native square; ``content`` to the config's ``fit`` of the
    image into ``target``. Padding (bottom and right) is the mean colour, which normalises to zero,
    so it carries no signal.
    """
    height, width = int(rgb.shape[0]), int(rgb.shape[1])
    target = target or (cfg.native_size, cfg.native_size)
    rh, rw = content or fit_size(height, width, target, cfg.fit)
    if rh > target[0] or rw > target[1]:
        raise ValueError(f"content {rh}x{rw} does not fit in input {target[0]}x{target[1]}")
    image = Image.fromarray(rgb)
    if (rh, rw) != (height, width):
        image = image.resize((rw, rh), _FILTERS[cfg.interpolation])
    mean = np.asarray(cfg.mean, dtype=np.float32) * 255.0
    inv_std = 1.0 / (np.asarray(cfg.std, dtype=np.float32) * 255.0)
    out = np.zeros((3, target[0], target[1]), dtype=np.float32)  # zero == the mean after normalising
    content_px = np.asarray(image, dtype=np.float32)
    out[:, :rh, :rw] = ((content_px - mean) * inv_std).transpose(2, 0, 1)
    return PreparedImage(pixels=out, original_size=(height, width), resized_size=(rh, rw), input_size=target)
