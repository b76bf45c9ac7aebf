"""Tissue detection on a low-resolution image of the slide.

Stained tissue is coloured, glass and background are grey or white: the HSV saturation
separates them. The saturation is median-filtered (JPEG chroma noise), thresholded at Otsu's
value clamped to a band (or at a fixed value), a morphological opening removes specks (dust,
noise) and a closing fills small gaps inside tissue. Each grid tile then
gets the fraction of its area covered by tissue (from a summed-area table, so any number of
tiles costs one pass), and tiles below ``tissue_threshold`` are skipped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

__all__ = ["MAX_SATURATION", "MIN_SATURATION", "TissueMask", "detect_tissue", "otsu_threshold", "saturation"]

#: Otsu's threshold is clamped to this band of saturation (0-255): never so low that an
#: empty slide splits its noise in two, never so high that pale eosin-stained stroma is lost
#: (on H&E the tissue histogram is broad, and Otsu alone tends to cut between stroma and
#: nuclei; CLAM's fixed default is 8 after a median blur)
MIN_SATURATION = 15
MAX_SATURATION = 40
#: physical sizes of the clean-up, when the mask's µm per pixel is known
OPEN_UM = 16.0
CLOSE_UM = 32.0
#: cap on the structuring radius (mask pixels): keeps the clean-up fast on fine masks
MAX_RADIUS_PX = 8


@dataclass(frozen=True)
class TissueMask:
    """A boolean tissue mask over the whole slide and its scale to level 0."""

    mask: np.ndarray
    level0_width: int
    level0_height: int
    threshold: float

    @property
    def downsample(self) -> tuple[float, float]:
        """Level-0 pixels per mask pixel along x and y."""
        h, w = self.mask.shape
        return self.level0_width / w, self.level0_height / h

    @property
    def tissue_fraction(self) -> float:
        return float(self.mask.mean()) if self.mask.size else 0.0

    def tile_fractions(self, coords: np.ndarray, patch_size_level0: int) -> np.ndarray:
        """Fraction (0..1, float32) of each tile covered by tissue.

        ``coords`` are (N, 2) level-0 top-left corners of square tiles of ``patch_size_level0``;
        the part of a tile past the slide's edge counts as background.
        """
        coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
        if coords.shape[0] == 0:
            return np.zeros(0, dtype=np.float32)
        h, w = self.mask.shape
        dsx, dsy = self.downsample
        # a summed-area table; int32 holds any count up to 2**31 mask pixels
        dtype = np.int32 if self.mask.size < 2**31 else np.int64
        integral = np.zeros((h + 1, w + 1), dtype=dtype)
        integral[1:, 1:] = self.mask.astype(dtype).cumsum(axis=0, dtype=dtype).cumsum(axis=1, dtype=dtype)
        x0 = np.rint(coords[:, 0] / dsx).astype(np.int64)
        y0 = np.rint(coords[:, 1] / dsy).astype(np.int64)
        x1 = np.maximum(x0 + 1, np.rint((coords[:, 0] + patch_size_level0) / dsx).astype(np.int64))
        y1 = np.maximum(y0 + 1, np.rint((coords[:, 1] + patch_size_level0) / dsy).astype(np.int64))
        area = (x1 - x0) * (y1 - y0)
        cx0, cx1 = np.clip(x0, 0, w), np.clip(x1, 0, w)
        cy0, cy1 = np.clip(y0, 0, h), np.clip(y1, 0, h)
        covered = integral[cy1, cx1].astype(np.int64) - integral[cy0, cx1] - integral[cy1, cx0] + integral[cy0, cx0]
        return (covered / area).astype(np.float32)

    def save_png(self, path: str | Path) -> None:
        Image.fromarray(np.where(self.mask, 255, 0).astype(np.uint8), mode="L").save(path)


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation of an RGB uint8 image, as uint8 0-255."""
    rgb = np.asarray(rgb, dtype=np.uint8)
    high = rgb.max(axis=2).astype(np.float32)
    low = rgb.min(axis=2).astype(np.float32)
    sat = np.divide(high - low, high, out=np.zeros_like(high), where=high > 0)
    return np.rint(sat * 255.0).astype(np.uint8)


def otsu_threshold(values: np.ndarray) -> float:
    """Otsu's threshold of uint8 values: the cut that maximises the between-class variance.

    Pixels strictly above the returned value are the foreground class. When a range of cuts
    scores the same (an empty stretch between the modes), the middle of that range is returned.
    """
    hist = np.bincount(np.asarray(values, dtype=np.uint8).ravel(), minlength=256).astype(np.float64)
    total = hist.sum()
    if total == 0:
        return 0.0
    levels = np.arange(256, dtype=np.float64)
    weight_low = np.cumsum(hist)
    weight_high = total - weight_low
    mass_low = np.cumsum(hist * levels)
    mean_low = np.divide(mass_low, weight_low, out=np.zeros(256), where=weight_low > 0)
    mean_high = np.divide(mass_low[-1] - mass_low, weight_high, out=np.zeros(256), where=weight_high > 0)
    between = weight_low * weight_high * (mean_low - mean_high) ** 2
    # every cut inside an empty gap of the histogram scores the same: take the gap's middle
    best = np.flatnonzero(np.isclose(between, between.max(), rtol=1e-9, atol=0.0))
    return float((best[0] + best[-1]) // 2)


def detect_tissue(
    thumbnail: np.ndarray,
    level0_width: int,
    level0_height: int,
    *,
    level0_mpp: float | None = None,
    saturation_threshold: float | None = None,
    min_saturation: float = MIN_SATURATION,
    max_saturation: float = MAX_SATURATION,
) -> TissueMask:
    """Tissue mask of a slide from its RGB thumbnail.

    ``saturation_threshold`` (0-255) fixes the cut; ``None`` uses Otsu's, clamped to
    ``[min_saturation, max_saturation]``. With ``level0_mpp`` the opening and closing have fixed
    physical sizes (16 and 32 µm); without it, one and two mask pixels.
    """
    if thumbnail.ndim != 3 or thumbnail.shape[2] != 3:
        raise ValueError(f"expected an RGB thumbnail, got shape {thumbnail.shape}")
    sat = ndimage.median_filter(saturation(thumbnail), size=3)
    if saturation_threshold is None:
        threshold = min(max(otsu_threshold(sat), float(min_saturation)), float(max_saturation))
    else:
        threshold = float(saturation_threshold)
    mask = sat > threshold
    h, w = mask.shape
    if level0_mpp:
        mask_mpp = level0_mpp * max(level0_width / w, level0_height / h)
        open_px, close_px = _radius(OPEN_UM / 2, mask_mpp), _radius(CLOSE_UM / 2, mask_mpp)
    else:
        open_px, close_px = 1, 2
    cross = ndimage.generate_binary_structure(2, 1)
    if open_px:
        mask = ndimage.binary_opening(mask, structure=cross, iterations=open_px)
    if close_px:
        # pad so that the closing does not erode tissue touching the border
        padded = np.pad(mask, close_px, mode="edge")
        mask = ndimage.binary_closing(padded, structure=cross, iterations=close_px)[
            close_px:-close_px, close_px:-close_px
        ]
    return TissueMask(mask=mask, level0_width=level0_width, level0_height=level0_height, threshold=threshold)


def _radius(radius_um: float, mask_mpp: float) -> int:
    """A radius in mask pixels, 0 when the feature is smaller than a pixel."""
    if mask_mpp <= 0 or not math.isfinite(mask_mpp):
        return 1
    return int(min(MAX_RADIUS_PX, math.floor(radius_um / mask_mpp)))
