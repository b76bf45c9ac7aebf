"""Fitting a decoded image to a model's input: resize or letterbox, then normalise."""

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


def fit_size(height: int, width: int, target: tuple[int, int], fit: Literal["letterbox", "resize"]) -> tuple[int, int]:
    """Content size after fitting into ``target``: aspect kept (letterbox) or stretched (resize)."""
    th, tw = target
    if fit == "resize":
        return th, tw
    scale = min(th / height, tw / width)
    return max(1, min(th, round(height * scale))), max(1, min(tw, round(width * scale)))


def prepare(
    rgb: np.ndarray,
    cfg: InputConfig,
    target: tuple[int, int] | None = None,
    fit: Literal["letterbox", "resize"] | None = None,
) -> PreparedImage:
    """Resize ``rgb`` (H, W, 3 uint8) to the model input and normalise with the model's mean/std.

    Letterbox pads the bottom and right with the mean colour, which normalises to zero, so the
    padding carries no signal.
    """
    height, width = int(rgb.shape[0]), int(rgb.shape[1])
    target = target or (cfg.native_size, cfg.native_size)
    fit = fit or cfg.fit
    rh, rw = fit_size(height, width, target, fit)
    image = Image.fromarray(rgb)
    if (rh, rw) != (height, width):
        image = image.resize((rw, rh), _FILTERS[cfg.interpolation])
    content = np.asarray(image, dtype=np.float32) / 255.0
    mean = np.asarray(cfg.mean, dtype=np.float32)
    std = np.asarray(cfg.std, dtype=np.float32)
    out = np.zeros((target[0], target[1], 3), dtype=np.float32)  # zero == the mean after normalising
    out[:rh, :rw] = (content - mean) / std
    return PreparedImage(
        pixels=np.ascontiguousarray(out.transpose(2, 0, 1)),
        original_size=(height, width),
        resized_size=(rh, rw),
        input_size=target,
    )
