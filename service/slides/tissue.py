"""Tissue detection on a low-resolution image of the slide, and its GeoJSON for QuPath.

Stained tissue is coloured, glass and background are grey or white: the HSV saturation
separates them. Real slides add things that are coloured or dark but are not tissue, so before
thresholding three kinds of pixel are excluded:

- **dark** pixels (the brightest channel below :data:`DARK_VALUE`): black pen, slide edges,
  label shadows and out-of-focus debris. Their saturation is high (a little noise over a tiny
  brightness), so the saturation threshold alone counts them as tissue;
- **pen** ink: strongly saturated green, cyan and blue (hue 90-240°, saturation at least
  :data:`PEN_MIN_SATURATION`), colours H&E does not have. Red pen cannot be told from eosin
  and stays;
- **background**: glass is already unsaturated.

The saturation (median-filtered against JPEG chroma noise) is thresholded at Otsu's value over
the remaining pixels, clamped to a band, or at a fixed value. The clean-up works at the mask's
physical scale (µm per mask pixel, from the level-0 µm/px): an opening removes specks smaller
than :data:`OPEN_UM`, a closing bridges gaps narrower than :data:`CLOSE_UM` (both at least one
mask pixel, so at a typical ~12 µm per mask pixel they are not rounded away), holes smaller than
:data:`MAX_HOLE_MM2` are filled (lumens and tears larger than that stay holes), and pieces smaller
than :data:`MIN_TISSUE_MM2` are dropped (dust, debris, isolated cells).

Each grid tile then gets the fraction of its area covered by tissue (from a summed-area table,
so any number of tiles costs one pass); :func:`keep_tiles` applies the tile rule:

- ``fraction`` (the default, with ``tissue_threshold`` 0.25): a tile is embedded when at least a
  quarter of it is tissue. Fewer mostly-glass tiles than TRIDENT's default and close to CLAM's
  default four-point contour check (a tile is kept when any of four points a quarter of the tile
  from its centre lies in tissue);
- ``trident``: TRIDENT's rule, ``min_tissue_proportion`` = ``tissue_threshold``: every tile that
  touches tissue when it is 0 (TRIDENT's default), else tiles with at least that fraction.

:func:`tissue_geojson` and :func:`tiles_geojson` write the tissue contours (with their holes) and
the tile grid as GeoJSON FeatureCollections in level-0 pixel coordinates, which QuPath imports
(File > Import objects, or drag and drop) as annotations and tiles.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
from PIL import Image
from scipy import ndimage

__all__ = [
    "CLOSE_UM",
    "DARK_VALUE",
    "MAX_HOLE_MM2",
    "MAX_SATURATION",
    "MIN_SATURATION",
    "MIN_TISSUE_MM2",
    "OPEN_UM",
    "TissueMask",
    "TissueRule",
    "detect_tissue",
    "keep_tiles",
    "otsu_threshold",
    "saturation",
    "tile_features",
    "tiles_geojson",
    "tissue_geojson",
    "write_feature_collection",
]

TissueRule = Literal["fraction", "trident"]

#: Otsu's threshold is clamped to this band of saturation (0-255): never so low that an
#: empty slide splits its noise in two, never so high that pale eosin-stained stroma is lost
#: (on H&E the tissue histogram is broad, and Otsu alone tends to cut between stroma and
#: nuclei; CLAM's fixed default is 8 after a median blur)
MIN_SATURATION = 15
MAX_SATURATION = 40
#: pixels whose brightest channel is below this are dark (pen, edges, shadows), never tissue
DARK_VALUE = 50
#: pen ink: hue band (degrees) and the saturation (0-255) above which such a colour is ink
PEN_HUE = (90.0, 240.0)
PEN_MIN_SATURATION = 100
#: physical sizes of the clean-up, when the mask's µm per pixel is known
OPEN_UM = 16.0
CLOSE_UM = 32.0
#: holes in tissue smaller than this (mm²) are filled; pieces of tissue smaller are dropped
MAX_HOLE_MM2 = 0.02
MIN_TISSUE_MM2 = 0.05
#: cap on the structuring radius (mask pixels): keeps the clean-up fast on fine masks
MAX_RADIUS_PX = 8
_QUPATH_TISSUE_COLOUR = [0, 160, 0]
_QUPATH_TILE_COLOUR = [60, 100, 220]


@dataclass(frozen=True)
class TissueMask:
    """A boolean tissue mask over the whole slide and its scale to level 0."""

    mask: np.ndarray
    level0_width: int
    level0_height: int
    threshold: float
    #: µm per mask pixel (None when the slide's resolution was not given)
    mask_mpp: float | None = None
    #: fraction of the mask's pixels excluded as dark or as pen ink
    excluded_fraction: float = 0.0

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
    remove_dark: bool = True,
    remove_pen: bool = True,
    min_tissue_mm2: float = MIN_TISSUE_MM2,
    max_hole_mm2: float = MAX_HOLE_MM2,
) -> TissueMask:
    """Tissue mask of a slide from its RGB thumbnail (see the module docstring).

    ``saturation_threshold`` (0-255) fixes the cut; ``None`` uses Otsu's over the pixels not
    excluded, clamped to ``[min_saturation, max_saturation]``. Without ``level0_mpp`` the
    clean-up uses one and two mask pixels and no hole or area filter.
    """
    if thumbnail.ndim != 3 or thumbnail.shape[2] != 3:
        raise ValueError(f"expected an RGB thumbnail, got shape {thumbnail.shape}")
    rgb = np.asarray(thumbnail, dtype=np.uint8)
    sat = ndimage.median_filter(saturation(rgb), size=3)
    excluded = _excluded(rgb, sat, remove_dark=remove_dark, remove_pen=remove_pen)
    if saturation_threshold is None:
        candidates = sat[~excluded]
        threshold = min(max(otsu_threshold(candidates), float(min_saturation)), float(max_saturation))
    else:
        threshold = float(saturation_threshold)
    mask = (sat > threshold) & ~excluded
    h, w = mask.shape
    mask_mpp = level0_mpp * max(level0_width / w, level0_height / h) if level0_mpp else None
    mask = _clean(mask, mask_mpp, min_tissue_mm2=min_tissue_mm2, max_hole_mm2=max_hole_mm2)
    return TissueMask(
        mask=mask,
        level0_width=level0_width,
        level0_height=level0_height,
        threshold=threshold,
        mask_mpp=mask_mpp,
        excluded_fraction=float(excluded.mean()) if excluded.size else 0.0,
    )


def keep_tiles(fractions: np.ndarray, threshold: float, rule: TissueRule = "fraction") -> np.ndarray:
    """Which tiles to embed, from their tissue fractions (see the module docstring)."""
    if rule == "trident":
        return fractions > 0 if threshold <= 0 else fractions >= threshold
    if threshold <= 0:
        return np.ones(len(fractions), dtype=bool)
    return fractions >= threshold


def _excluded(rgb: np.ndarray, sat: np.ndarray, *, remove_dark: bool, remove_pen: bool) -> np.ndarray:
    """Pixels that are dark or pen ink (never tissue, whatever their saturation)."""
    excluded = np.zeros(sat.shape, dtype=bool)
    if remove_dark:
        excluded |= rgb.max(axis=2) < DARK_VALUE
    if remove_pen:
        hue = _hue_degrees(rgb)
        excluded |= (hue >= PEN_HUE[0]) & (hue <= PEN_HUE[1]) & (sat >= PEN_MIN_SATURATION)
    return excluded


def _hue_degrees(rgb: np.ndarray) -> np.ndarray:
    """HSV hue in degrees (0-360) of an RGB uint8 image (OpenCV's full-range hue)."""
    hsv = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2HSV_FULL)
    return hsv[..., 0].astype(np.float32) * (360.0 / 256.0)


def _clean(mask: np.ndarray, mask_mpp: float | None, *, min_tissue_mm2: float, max_hole_mm2: float) -> np.ndarray:
    """Opening, closing, hole filling and the area filter, at the mask's physical scale."""
    if mask_mpp:
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
    if not mask_mpp:
        return mask
    px_per_mm2 = 1e6 / (mask_mpp * mask_mpp)
    if max_hole_mm2 > 0:
        holes, count = ndimage.label(~mask)
        if count:
            sizes = np.bincount(holes.ravel())
            border = np.unique(np.concatenate([holes[0], holes[-1], holes[:, 0], holes[:, -1]]))
            small = sizes < max_hole_mm2 * px_per_mm2
            small[0] = False
            small[border] = False  # background around the tissue is not a hole
            mask = mask | small[holes]
    if min_tissue_mm2 > 0:
        pieces, count = ndimage.label(mask)
        if count:
            sizes = np.bincount(pieces.ravel())
            keep = sizes >= min_tissue_mm2 * px_per_mm2
            keep[0] = False
            mask = keep[pieces]
    return mask


def tissue_geojson(tissue: TissueMask, *, name: str = "Tissue") -> dict[str, Any]:
    """The tissue contours (outer rings with their holes) as a GeoJSON FeatureCollection in
    level-0 pixels: QuPath imports each piece as an annotation classified ``name``."""
    mask = np.ascontiguousarray(tissue.mask.astype(np.uint8))
    contours, hierarchy = cv2.findContours(mask, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    dsx, dsy = tissue.downsample
    features: list[dict[str, Any]] = []
    if hierarchy is not None:
        tree = hierarchy[0]
        for index, contour in enumerate(contours):
            if tree[index][3] != -1:  # a hole: written with its parent
                continue
            rings = [_ring(contour, dsx, dsy)]
            child = tree[index][2]
            while child != -1:
                rings.append(_ring(contours[child], dsx, dsy))
                child = tree[child][0]
            if len(rings[0]) < 4:
                continue
            features.append(
                {
                    "type": "Feature",
                    "geometry": {"type": "Polygon", "coordinates": [r for r in rings if len(r) >= 4]},
                    "properties": {
                        "objectType": "annotation",
                        "classification": {"name": name, "color": _QUPATH_TISSUE_COLOUR},
                        "isLocked": False,
                    },
                }
            )
    return {"type": "FeatureCollection", "features": features}


def tiles_geojson(coords: Iterable[Iterable[int]], patch_size_level0: int) -> dict[str, Any]:
    """The tile grid (level-0 squares, in embedding order) as a GeoJSON FeatureCollection of
    QuPath tiles; each carries its index (the row in ``features``) as a measurement."""
    return {"type": "FeatureCollection", "features": list(tile_features(coords, patch_size_level0))}


def tile_features(coords: Iterable[Iterable[int]], patch_size_level0: int) -> Iterator[dict[str, Any]]:
    """One GeoJSON Feature per tile (see :func:`tiles_geojson`), lazily."""
    size = int(patch_size_level0)
    for index, (x, y) in enumerate(coords):
        x0, y0 = int(x), int(y)
        ring = [[x0, y0], [x0 + size, y0], [x0 + size, y0 + size], [x0, y0 + size], [x0, y0]]
        yield {
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": {
                "objectType": "tile",
                "classification": {"name": "Tile", "color": _QUPATH_TILE_COLOUR},
                "measurements": {"index": index},
            },
        }


def write_feature_collection(path: str | Path, features: Iterable[dict[str, Any]]) -> int:
    """Write a GeoJSON FeatureCollection one feature at a time (memory independent of its size);
    returns the number of features. Written to a temporary name and renamed."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    count = 0
    with open(tmp, "w") as fh:
        fh.write('{"type": "FeatureCollection", "features": [')
        for feature in features:
            fh.write(",\n" if count else "\n")
            fh.write(json.dumps(feature, separators=(",", ":")))
            count += 1
        fh.write("\n]}\n")
    tmp.replace(path)
    return count


def _ring(contour: np.ndarray, dsx: float, dsy: float) -> list[list[float]]:
    """A closed ring in level-0 pixels from an OpenCV contour (pixel centres → pixel edges)."""
    points = contour.reshape(-1, 2).astype(np.float64)
    ring = [[round((px + 0.5) * dsx, 1), round((py + 0.5) * dsy, 1)] for px, py in points]
    if ring and ring[0] != ring[-1]:
        ring.append(ring[0])
    return ring


def _radius(radius_um: float, mask_mpp: float) -> int:
    """A radius in mask pixels, at least one (a coarse mask still loses its one-pixel specks)."""
    if mask_mpp <= 0 or not math.isfinite(mask_mpp):
        return 1
    return int(min(MAX_RADIUS_PX, max(1, round(radius_um / mask_mpp))))
