"""Synthetic whole-slide images for tests, benchmarks and the load test, written with tifffile (dev only).

A synthetic slide is a pale background with a few tissue-like blobs (irregular ellipses in
H&E-like pinks and purples with a nuclei-like texture). Pixels are a pure function of level-0
coordinates, so every pyramid level is rendered directly at its own resolution and agrees with
the others, and the ground truth (:meth:`SyntheticSlide.tissue_fraction`) is known exactly.

Files are pyramidal tiled TIFFs with every level in the top-level IFD chain (OpenSlide ignores
SubIFDs), in two flavours:

* ``generic``: no vendor metadata, ``NewSubfileType=1`` on reduced levels; the MPP, when given,
  goes into XResolution/YResolution in pixels per centimetre (OpenSlide and tiffslide read it);
* ``aperio``: an SVS-style ``ImageDescription`` (``Aperio Image Library ...|AppMag = 40|MPP =
  0.25``) that OpenSlide's Aperio driver parses, a stripped thumbnail as the second IFD and
  ``NewSubfileType=0`` on every level, as scanners write them (tifffile's SVS parser, and so
  tiffslide, stops at a reduced page); ``metadata=None`` on every write keeps tifffile from
  adding a second description.

Tiles are produced by a generator, one at a time; background tiles are one shared constant
array that the codec compresses to almost nothing, so a 50,000 x 50,000 slide is written in
seconds with memory independent of its size.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import tifffile

__all__ = ["Blob", "SyntheticSlide", "make_synthetic_slide"]

Flavour = Literal["generic", "aperio"]
Compression = Literal["jpeg", "deflate", "none"]

_APERIO_HEADER = "Aperio Image Library v12.0.15"
# H&E-like colour pairs (stroma pink → cell-rich purple); each blob blends one pair.
_PALETTE: tuple[tuple[tuple[int, int, int], tuple[int, int, int]], ...] = (
    ((236, 160, 196), (150, 80, 160)),
    ((222, 130, 170), (110, 60, 140)),
    ((240, 180, 210), (175, 100, 170)),
    ((210, 120, 150), (120, 50, 120)),
)
_THUMBNAIL_SIDE = 768
_LUT_STEPS = 64
_NUCLEUS = np.array([70, 30, 110], dtype=np.uint8)
_NUCLEUS.flags.writeable = False


@dataclass(frozen=True)
class Blob:
    """An irregular ellipse of tissue, in level-0 pixels."""

    cx: float
    cy: float
    rx: float
    ry: float
    angle: float
    wobble: float
    phase: float
    colour_a: tuple[int, int, int]
    colour_b: tuple[int, int, int]

    @property
    def lut(self) -> np.ndarray:
        """(_LUT_STEPS + 1, 3) uint8: the blend from colour_a to colour_b, then the nucleus."""
        steps = np.linspace(0.0, 1.0, _LUT_STEPS, dtype=np.float32)[:, None]
        a = np.asarray(self.colour_a, dtype=np.float32)
        b = np.asarray(self.colour_b, dtype=np.float32)
        return np.vstack([(a + (b - a) * steps).astype(np.uint8), _NUCLEUS[None, :]])

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        """Axis-aligned bounds (x0, y0, x1, y1) that contain the blob, wobble included."""
        r = max(self.rx, self.ry) * math.sqrt(1.0 + self.wobble)
        return self.cx - r, self.cy - r, self.cx + r, self.cy + r

    def inside(self, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Membership of level-0 points and the blend coordinate (0..1 across the blob).

        The boundary wobbles by ``wobble`` in squared radius; the angle (an arctan2) is only
        computed for points inside that band, which keeps big interior tiles cheap.
        """
        dx = xs - self.cx
        dy = ys - self.cy
        cos, sin = math.cos(self.angle), math.sin(self.angle)
        u = (dx * cos + dy * sin) / self.rx
        v = (-dx * sin + dy * cos) / self.ry
        r2 = u * u + v * v
        inside = r2 <= 1.0 - self.wobble
        band = (r2 > 1.0 - self.wobble) & (r2 <= 1.0 + self.wobble)
        if band.any():
            ub, vb = np.broadcast_to(u, r2.shape)[band], np.broadcast_to(v, r2.shape)[band]
            edge = 1.0 + self.wobble * np.sin(5.0 * np.arctan2(vb, ub) + self.phase)
            inside[band] = r2[band] <= edge
        return inside, np.clip(0.5 + 0.5 * u, 0.0, 1.0)


@dataclass(frozen=True)
class SyntheticSlide:
    """What :func:`make_synthetic_slide` wrote: file, geometry, metadata and the ground truth."""

    path: Path
    width: int
    height: int
    tile_size: int
    level_dimensions: tuple[tuple[int, int], ...]
    mpp: float | None
    app_mag: float | None
    flavour: Flavour
    compression: Compression
    background: tuple[int, int, int]
    blobs: tuple[Blob, ...]

    def render(self, x0: int, y0: int, width: int, height: int, downsample: float = 1.0) -> np.ndarray:
        """RGB uint8 pixels of a region given in pixels of a level with ``downsample``.

        ``(x0, y0)`` is the region's top-left corner in that level's own pixels.
        """
        return _render(self.blobs, self.background, x0, y0, width, height, downsample)

    def level_downsample(self, level: int) -> float:
        """The downsample level ``level`` was rendered with (width ratio; sizes are rounded up)."""
        return self.width / self.level_dimensions[level][0]

    def tissue_fraction(self, x0: float, y0: float, size: float, samples: int = 32) -> float:
        """Fraction of a level-0 square covered by blobs (sampled on a ``samples``² grid)."""
        step = size / samples
        xs = x0 + (np.arange(samples) + 0.5) * step
        ys = y0 + (np.arange(samples) + 0.5) * step
        gx, gy = np.meshgrid(xs, ys)
        covered = np.zeros(gx.shape, dtype=bool)
        for blob in self.blobs:
            inside, _ = blob.inside(gx, gy)
            covered |= inside
        covered &= (gx < self.width) & (gy < self.height)
        return float(covered.mean())


def make_synthetic_slide(
    path: str | Path,
    width: int,
    height: int,
    *,
    tile_size: int = 256,
    mpp: float | None = 0.25,
    app_mag: float | None = None,
    flavour: Flavour = "generic",
    compression: Compression = "jpeg",
    quality: int = 85,
    n_blobs: int = 4,
    blob_scale: float = 0.18,
    seed: int = 0,
    min_level_size: int = 512,
    background: tuple[int, int, int] = (243, 242, 240),
) -> SyntheticSlide:
    """Write a pyramidal tiled TIFF/SVS of ``width`` x ``height`` level-0 pixels.

    Levels halve until the longest side is at most ``min_level_size``. ``tile_size`` must be
    a multiple of 16 (the TIFF rule); odd image sizes are fine. ``mpp=None`` writes no
    resolution; for the Aperio flavour ``app_mag`` (default ``10 / mpp``) is written as
    ``AppMag``, so a slide with AppMag but no MPP can be made. Blob radii are ``blob_scale``
    times the shorter side, so the tissue fraction does not depend on the slide's size.
    """
    if width < 1 or height < 1:
        raise ValueError(f"slide size must be positive, got {width}x{height}")
    if tile_size < 16 or tile_size % 16:
        raise ValueError(f"tile_size must be a positive multiple of 16 (TIFF), got {tile_size}")
    if mpp is not None and mpp <= 0:
        raise ValueError(f"mpp must be positive, got {mpp}")
    if flavour not in ("generic", "aperio"):
        raise ValueError(f"unknown flavour {flavour!r}")
    if app_mag is None and mpp is not None and flavour == "aperio":
        app_mag = round(10.0 / mpp, 3)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    blobs = _make_blobs(width, height, n_blobs, blob_scale, seed)
    dims = _pyramid(width, height, min_level_size)
    slide = SyntheticSlide(
        path=path,
        width=width,
        height=height,
        tile_size=tile_size,
        level_dimensions=tuple(dims),
        mpp=mpp,
        app_mag=app_mag if flavour == "aperio" else None,
        flavour=flavour,
        compression=compression,
        background=background,
        blobs=blobs,
    )
    codec: str | None = None if compression == "none" else compression
    codec_args = {"level": quality} if compression == "jpeg" else ({"level": 6} if codec else None)
    raw_bytes = sum(w * h * 3 for w, h in dims)
    with tifffile.TiffWriter(path, bigtiff=raw_bytes > 3_500_000_000 and compression == "none") as tif:
        for level, (lw, lh) in enumerate(dims):
            downsample = slide.level_downsample(level)
            description: str | None = None
            resolution: tuple[float, float] | None = None
            if flavour == "aperio":
                description = _aperio_description(slide, level, lw, lh, quality)
            elif mpp is not None:
                pixels_per_cm = 1e4 / (mpp * downsample)
                resolution = (pixels_per_cm, pixels_per_cm)
            tif.write(
                _tiles(slide, lw, lh, downsample),
                shape=(lh, lw, 3),
                dtype=np.uint8,
                tile=(tile_size, tile_size),
                photometric="rgb",
                compression=codec,
                compressionargs=codec_args,
                # Aperio marks its pyramid levels 0 (tifffile's SVS parser stops at a reduced page)
                subfiletype=1 if level and flavour == "generic" else 0,
                metadata=None,
                software=False,
                maxworkers=1,
                description=description,
                resolution=resolution,
                resolutionunit="CENTIMETER" if resolution else None,
            )
            if level == 0 and flavour == "aperio":
                _write_aperio_thumbnail(tif, slide, codec, codec_args)
    return slide


def _pyramid(width: int, height: int, min_level_size: int) -> list[tuple[int, int]]:
    dims = [(width, height)]
    while max(dims[-1]) > min_level_size:
        w, h = dims[-1]
        dims.append((max(1, math.ceil(w / 2)), max(1, math.ceil(h / 2))))
    return dims


def _make_blobs(width: int, height: int, n_blobs: int, scale: float, seed: int) -> tuple[Blob, ...]:
    rng = np.random.default_rng(seed)
    short = min(width, height)
    blobs = []
    for i in range(n_blobs):
        rx = short * scale * rng.uniform(0.6, 1.2)
        ry = rx * rng.uniform(0.5, 1.0)
        margin = max(rx, ry)
        cx = rng.uniform(min(margin, width / 2), max(width - margin, width / 2))
        cy = rng.uniform(min(margin, height / 2), max(height - margin, height / 2))
        colour_a, colour_b = _PALETTE[i % len(_PALETTE)]
        blobs.append(
            Blob(
                cx=float(cx),
                cy=float(cy),
                rx=float(rx),
                ry=float(ry),
                angle=float(rng.uniform(0, math.pi)),
                wobble=float(rng.uniform(0.05, 0.2)),
                phase=float(rng.uniform(0, 2 * math.pi)),
                colour_a=colour_a,
                colour_b=colour_b,
            )
        )
    return tuple(blobs)


def _render(
    blobs: tuple[Blob, ...],
    background: tuple[int, int, int],
    x0: int,
    y0: int,
    width: int,
    height: int,
    downsample: float,
) -> np.ndarray:
    out = np.empty((height, width, 3), dtype=np.uint8)
    out[:] = background
    # level-0 extent of the region, to cull blobs that cannot touch it
    lx0, ly0 = x0 * downsample, y0 * downsample
    lx1, ly1 = (x0 + width) * downsample, (y0 + height) * downsample
    hits = [b for b in blobs if _overlaps(b.bbox, (lx0, ly0, lx1, ly1))]
    if not hits:
        return out
    xs = ((np.arange(width, dtype=np.float32) + x0 + 0.5) * downsample)[None, :]
    ys = ((np.arange(height, dtype=np.float32) + y0 + 0.5) * downsample)[:, None]
    # nuclei-like dots on a 24-px level-0 lattice (separable, so cheap)
    period = np.float32(2 * math.pi / 24.0)
    dots = (np.sin(xs * period) * np.sin(ys * period)) > 0.75
    for blob in hits:
        inside, blend = blob.inside(xs, ys)
        if not inside.any():
            continue
        # colour through a small lookup table: 64 blend steps, then the nucleus colour
        index = (np.broadcast_to(blend, inside.shape) * np.float32(_LUT_STEPS - 1)).astype(np.uint8)
        np.putmask(index, dots, _LUT_STEPS)
        colour = np.take(blob.lut, index, axis=0)
        if inside.all():
            out[:] = colour
        else:
            np.copyto(out, colour, where=inside[..., None])
    return out


def _overlaps(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _tiles(slide: SyntheticSlide, level_w: int, level_h: int, downsample: float) -> Iterator[np.ndarray]:
    ts = slide.tile_size
    blank = np.empty((ts, ts, 3), dtype=np.uint8)
    blank[:] = slide.background
    for ty in range(math.ceil(level_h / ts)):
        for tx in range(math.ceil(level_w / ts)):
            x0, y0 = tx * ts, ty * ts
            box = (x0 * downsample, y0 * downsample, (x0 + ts) * downsample, (y0 + ts) * downsample)
            if any(_overlaps(b.bbox, box) for b in slide.blobs):
                yield _render(slide.blobs, slide.background, x0, y0, ts, ts, downsample)
            else:
                yield blank


def _write_aperio_thumbnail(
    tif: tifffile.TiffWriter, slide: SyntheticSlide, codec: str | None, codec_args: dict[str, int] | None
) -> None:
    """Real SVS files carry a stripped thumbnail as their second IFD; tifffile's SVS series
    detection (and so tiffslide) relies on that layout, and OpenSlide lists it as the
    ``thumbnail`` associated image."""
    scale = max(slide.width, slide.height) / _THUMBNAIL_SIDE
    tw, th = max(1, round(slide.width / scale)), max(1, round(slide.height / scale))
    pixels = slide.render(0, 0, tw, th, slide.width / tw)
    description = f"{_APERIO_HEADER} \r\n{slide.width}x{slide.height} -> {tw}x{th} - "
    tif.write(
        pixels,
        photometric="rgb",
        compression=codec,
        compressionargs=codec_args,
        rowsperstrip=16,
        description=description,
        metadata=None,
        software=False,
    )


def _aperio_description(slide: SyntheticSlide, level: int, lw: int, lh: int, quality: int) -> str:
    ts = slide.tile_size
    codec = {"jpeg": f"JPEG/RGB Q={quality}", "deflate": "Deflate/RGB", "none": "Raw/RGB"}[slide.compression]
    if level == 0:
        head = f"{_APERIO_HEADER} \r\n{lw}x{lh} [0,0 {lw}x{lh}] ({ts}x{ts}) {codec}"
    else:
        head = f"{_APERIO_HEADER} \r\n{slide.width}x{slide.height} -> {lw}x{lh} - ({ts}x{ts}) {codec}"
    fields = []
    if slide.app_mag is not None:
        fields.append(f"AppMag = {slide.app_mag:g}")
    if slide.mpp is not None:
        fields.append(f"MPP = {slide.mpp:.4f}")
    fields += ["ScanScope ID = SYNTHETIC", "Filename = synthetic"]
    return "|".join([head, *fields])
