"""Whole-slide readers: one small interface over OpenSlide and tiffslide.

``open_slide`` tries OpenSlide first (openslide-python over the openslide-bin wheel: every
vendor format it knows) and falls back to tiffslide for TIFFs OpenSlide cannot open (stripped
or oddly laid out TIFFs). A file neither can open is an :class:`InvalidInput`.

Coordinates follow OpenSlide: ``read_region(x0, y0, level, w, h)`` takes the top-left corner in
level-0 pixels and a size in pixels of ``level``. Regions past the slide's edge are white, the
same for both backends, so edge tiles look like background rather than black.

The resolution of level 0 (µm per pixel) is resolved once, by one rule (:func:`resolve_mpp`):
the caller's ``slide_mpp`` (the caller can always correct a wrong header), else the slide's
metadata, else ``10 / objective power`` (40x → 0.25, 20x → 0.5), else an :class:`InvalidInput`
that names ``slide_mpp``. Whatever the source, the result must be plausible for a microscope
scan (:data:`PLAUSIBLE_MPP`, 0.05-20 µm/px) and must not make the slide larger than a glass
slide (:data:`MAX_SLIDE_EXTENT_MM` per side): a generic TIFF whose resolution tag says 72 dpi
(352.8 µm/px) is refused with a message that names ``slide_mpp``, never tiled into millions of
sub-pixel tiles. The metadata's own value is kept beside the one used (``metadata_mpp``).

A reader may be shared by threads: each thread gets its own native handle on first use
(neither OpenSlide's cache nor tiffslide's file handle is meant to be shared by concurrent
readers), and :meth:`SlideReader.close` closes them all.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import numpy as np
from PIL import Image

from service.errors import InvalidInput
from service.slides.formats import locate_slide

__all__ = [
    "MAX_SLIDE_EXTENT_MM",
    "PLAUSIBLE_MPP",
    "MppSource",
    "SlideInfo",
    "SlideReader",
    "check_plausible_mpp",
    "open_slide",
    "resolve_mpp",
]

log = logging.getLogger(__name__)

MppSource = Literal["metadata", "caller", "objective"]

#: a level whose µm/px exceeds the target by less than this fraction still counts as "at or
#: finer than the target" (pyramid downsamples are rarely exact: 2.0005 instead of 2)
LEVEL_TOLERANCE = 0.01
#: pixels per chunk side when a thumbnail is assembled from a large level
_THUMBNAIL_CHUNK = 2048
#: decoded-tile cache shared by the OpenSlide handles of one reader
OPENSLIDE_CACHE_BYTES = 64 << 20
#: metadata MPP and a caller's slide_mpp that differ by more than this are logged
_MPP_DISAGREEMENT = 0.05
#: level-0 µm/px a microscope scan can have: from a 200x oil-immersion scan (≈0.05) to a 0.5x
#: overview (≈20). A TIFF resolution tag of 72 or 300 dpi (352.8 or 84.7 µm/px) is outside.
PLAUSIBLE_MPP = (0.05, 20.0)
#: the longest side, in mm, a slide's level 0 may cover (glass slides are 75 x 25 or 75 x 50 mm;
#: whole-mount slides up to about 127 mm)
MAX_SLIDE_EXTENT_MM = 130.0


@dataclass(frozen=True)
class SlideInfo:
    """Facts about an opened slide, as reported in ``report.json`` and job status."""

    path: str
    backend: str
    vendor: str | None
    level_count: int
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    mpp: float | None
    mpp_source: MppSource | None
    metadata_mpp: float | None
    objective_power: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "backend": self.backend,
            "vendor": self.vendor,
            "level_count": self.level_count,
            "level_dimensions": [list(d) for d in self.level_dimensions],
            "level_downsamples": list(self.level_downsamples),
            "mpp": self.mpp,
            "mpp_source": self.mpp_source,
            "metadata_mpp": self.metadata_mpp,
            "objective_power": self.objective_power,
        }


class SlideReader:
    """A whole-slide image: pyramid geometry, resolution, region reads and a thumbnail.

    One class for both slide libraries, parameterised by the library module: ``openslide``
    (openslide-python) or ``tiffslide``, which share OpenSlide's API (``level_dimensions``,
    ``level_downsamples``, ``properties`` under ``<library>.*`` names, ``read_region``). On top
    of the native handles it adds per-thread handles, white padding past the edge, level selection
    by resolution and a chunked thumbnail whose memory does not depend on the slide's size.

    With OpenSlide, the handles share one bounded tile cache: by default every handle has its own
    32 MiB cache; with a handle per thread that multiplies, and neighbouring tiles read by
    different threads would decode the same JPEG tiles twice. OpenSlide's caches are thread-safe.
    """

    def __init__(self, path: Path, library: ModuleType, *, cache_bytes: int = OPENSLIDE_CACHE_BYTES) -> None:
        self.path = path
        self._lib = library
        #: the library's name: ``openslide`` or ``tiffslide``
        self.backend: str = library.__name__
        self._cache = library.OpenSlideCache(cache_bytes) if hasattr(library, "OpenSlideCache") else None
        self._local = threading.local()
        self._handles: list[Any] = []
        self._lock = threading.Lock()
        self._closed = False
        first = self._handle()
        self.level_dimensions: tuple[tuple[int, int], ...] = tuple((int(w), int(h)) for w, h in first.level_dimensions)
        self.level_downsamples: tuple[float, ...] = tuple(float(d) for d in first.level_downsamples)
        self.metadata_mpp: float | None = _mean_mpp(self._property(first, "mpp-x"), self._property(first, "mpp-y"))
        self.objective_power: float | None = _positive_float(self._property(first, "objective-power"))
        vendor = self._property(first, "vendor")
        self.vendor: str | None = str(vendor) if vendor else None
        #: level-0 µm/px after the resolution rule; set by :func:`open_slide`
        self.mpp: float | None = self.metadata_mpp
        self.mpp_source: MppSource | None = "metadata" if self.metadata_mpp else None

    # -- native layer ------------------------------------------------------------------------
    def _open_handle(self) -> Any:
        if self.backend == "openslide":
            handle = self._lib.OpenSlide(str(self.path))
            handle.set_cache(self._cache)
            return handle
        return self._lib.TiffSlide(str(self.path))

    def _property(self, handle: Any, name: str) -> Any:
        return handle.properties.get(f"{self.backend}.{name}")

    def _read(self, handle: Any, x0: int, y0: int, level: int, w: int, h: int) -> np.ndarray:
        """An in-bounds region as (h', w', 3|4) uint8 (may be smaller at the edges)."""
        if self.backend == "openslide":
            return np.asarray(handle.read_region((x0, y0), level, (w, h)))
        region = handle.read_region((x0, y0), level, (w, h), as_array=True, padding=False)
        if region.ndim == 3 and region.shape[2] == 1:  # grayscale TIFF
            region = np.repeat(region, 3, axis=2)
        return np.asarray(region, dtype=np.uint8)

    # -- handles -----------------------------------------------------------------------------
    def _handle(self) -> Any:
        if self._closed:
            raise RuntimeError(f"slide {self.path} is closed")
        handle = getattr(self._local, "handle", None)
        if handle is None:
            with self._lock:
                if self._closed:
                    raise RuntimeError(f"slide {self.path} is closed")
                handle = self._open_handle()
                self._handles.append(handle)
            self._local.handle = handle
        return handle

    @property
    def open_handles(self) -> int:
        """Native handles opened so far (one per thread that has read)."""
        with self._lock:
            return len(self._handles)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            handles, self._handles = self._handles, []
        for handle in handles:
            try:
                handle.close()
            except Exception:  # a failing close must not hide the error that got us here
                log.debug("closing a slide handle failed", exc_info=True)

    def __enter__(self) -> SlideReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- geometry ----------------------------------------------------------------------------
    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    @property
    def dimensions(self) -> tuple[int, int]:
        return self.level_dimensions[0]

    def level_mpp(self, level: int) -> float:
        """µm per pixel of ``level`` (needs the resolved level-0 mpp)."""
        return self.require_mpp() * self.level_downsamples[level]

    def require_mpp(self) -> float:
        if self.mpp is None:
            raise InvalidInput(_no_mpp_message(self.path), param="slide_mpp")
        return self.mpp

    def best_level_for_mpp(self, target_mpp: float) -> int:
        """The coarsest level whose resolution is at or finer than ``target_mpp``.

        Reading there and resampling down never upsamples (except when the target is finer
        than level 0, where level 0 is the only choice).
        """
        best = 0
        for level in range(self.level_count):
            if self.level_mpp(level) <= target_mpp * (1.0 + LEVEL_TOLERANCE):
                best = level
        return best

    def best_level_for_downsample(self, downsample: float) -> int:
        """The coarsest level with a downsample not above ``downsample`` (OpenSlide's rule)."""
        best = 0
        for level, ds in enumerate(self.level_downsamples):
            if ds <= downsample * (1.0 + LEVEL_TOLERANCE):
                best = level
        return best

    # -- pixels ------------------------------------------------------------------------------
    def read_region(self, x0: int, y0: int, level: int, w: int, h: int) -> np.ndarray:
        """RGB uint8 (h, w, 3): top-left ``(x0, y0)`` in level-0 pixels, size in ``level`` pixels.

        Parts outside the slide are white.
        """
        if not 0 <= level < self.level_count:
            raise ValueError(f"level {level} out of range 0..{self.level_count - 1}")
        if w <= 0 or h <= 0:
            raise ValueError(f"region size must be positive, got {w}x{h}")
        if x0 < 0 or y0 < 0:
            raise ValueError(f"region origin must be inside the slide, got ({x0}, {y0})")
        out = np.full((h, w, 3), 255, dtype=np.uint8)
        lw, lh = self.level_dimensions[level]
        ds = self.level_downsamples[level]
        lx, ly = int(x0 / ds), int(y0 / ds)
        cw, ch = min(w, lw - lx), min(h, lh - ly)
        if cw <= 0 or ch <= 0:
            return out
        region = self._read(self._handle(), x0, y0, level, cw, ch)
        rh, rw = min(ch, region.shape[0]), min(cw, region.shape[1])
        out[:rh, :rw] = _to_rgb(region[:rh, :rw])
        return out

    def thumbnail(self, max_size: int = 1024) -> np.ndarray:
        """RGB uint8 image of the whole slide, longest side ``max_size`` (or less).

        Read from the best level for the needed downsample in chunks of at most
        2048 x 2048 level pixels, so even a single-level gigapixel slide is never decoded whole.
        """
        width, height = self.dimensions
        scale = max(width, height) / max_size
        if scale < 1.0:
            scale = 1.0
        tw, th = max(1, round(width / scale)), max(1, round(height / scale))
        level = self.best_level_for_downsample(scale)
        ds = self.level_downsamples[level]
        lw, lh = self.level_dimensions[level]
        out = np.empty((th, tw, 3), dtype=np.uint8)
        # level pixels per thumbnail pixel along each axis
        fx, fy = lw / tw, lh / th
        step_x = max(1, int(_THUMBNAIL_CHUNK // fx)) if fx > 0 else tw
        step_y = max(1, int(_THUMBNAIL_CHUNK // fy)) if fy > 0 else th
        for ty0 in range(0, th, step_y):
            ty1 = min(th, ty0 + step_y)
            ly0, ly1 = round(ty0 * fy), min(lh, max(round(ty0 * fy) + 1, round(ty1 * fy)))
            for tx0 in range(0, tw, step_x):
                tx1 = min(tw, tx0 + step_x)
                lx0, lx1 = round(tx0 * fx), min(lw, max(round(tx0 * fx) + 1, round(tx1 * fx)))
                chunk = self.read_region(round(lx0 * ds), round(ly0 * ds), level, lx1 - lx0, ly1 - ly0)
                image = Image.fromarray(chunk).resize((tx1 - tx0, ty1 - ty0), Image.Resampling.BOX)
                out[ty0:ty1, tx0:tx1] = np.asarray(image)
        return out

    def info(self) -> SlideInfo:
        return SlideInfo(
            path=str(self.path),
            backend=self.backend,
            vendor=self.vendor,
            level_count=self.level_count,
            level_dimensions=self.level_dimensions,
            level_downsamples=self.level_downsamples,
            mpp=self.mpp,
            mpp_source=self.mpp_source,
            metadata_mpp=self.metadata_mpp,
            objective_power=self.objective_power,
        )


def open_slide(path: str | Path, slide_mpp: float | None = None, *, require_mpp: bool = True) -> SlideReader:
    """Open a whole-slide image and resolve its level-0 resolution.

    ``path`` may be a folder holding one slide (a DICOM series, a multi-file slide): see
    :func:`service.slides.formats.locate_slide`. Raises :class:`InvalidInput`
    (``param="slide"``) when the file is missing or is not a slide either backend can read, and
    (``param="slide_mpp"``) when ``require_mpp`` and no resolution can be found, or the
    resolution found is implausible (see :func:`resolve_mpp` and :func:`check_plausible_mpp`).
    """
    path = locate_slide(Path(path))  # a folder (DICOM series, multi-file slide) → the file to open
    if slide_mpp is not None and not (math.isfinite(slide_mpp) and slide_mpp > 0):
        raise InvalidInput(f"slide_mpp must be a positive number of µm per pixel, got {slide_mpp}", param="slide_mpp")
    if not path.is_file():
        raise InvalidInput(f"slide file not found: {path.name}", param="slide")
    reader = _open_any(path)
    try:
        mpp, source = resolve_mpp(reader.metadata_mpp, slide_mpp, reader.objective_power)
        if mpp is None and require_mpp:
            raise InvalidInput(_no_mpp_message(path), param="slide_mpp")
        if mpp is not None and (require_mpp or source != "metadata"):
            check_plausible_mpp(mpp, source, reader.dimensions, path.name)
        reader.mpp, reader.mpp_source = mpp, source
        if (
            source == "caller"
            and reader.metadata_mpp is not None
            and mpp is not None
            and abs(reader.metadata_mpp - mpp) > _MPP_DISAGREEMENT * mpp
        ):
            log.warning(
                "%s: the caller's slide_mpp=%s overrides the metadata's %s µm/px", path.name, mpp, reader.metadata_mpp
            )
    except BaseException:
        reader.close()
        raise
    return reader


def resolve_mpp(
    metadata_mpp: float | None, slide_mpp: float | None, objective_power: float | None
) -> tuple[float | None, MppSource | None]:
    """The level-0 µm/px and where it came from: caller, else metadata, else objective."""
    if slide_mpp is not None:
        return float(slide_mpp), "caller"
    if metadata_mpp is not None:
        return metadata_mpp, "metadata"
    if objective_power is not None:
        return 10.0 / objective_power, "objective"
    return None, None


def check_plausible_mpp(mpp: float, source: MppSource | None, dimensions: tuple[int, int], name: str) -> None:
    """Refuse a level-0 resolution no microscope scan has, or one that makes the slide larger
    than a glass slide (:class:`InvalidInput` naming ``slide_mpp``)."""
    low, high = PLAUSIBLE_MPP
    origin = {"caller": "slide_mpp", "metadata": "the slide's metadata", "objective": "the objective power"}.get(
        source or "", "the slide"
    )
    if not low <= mpp <= high:
        hint = (
            "pass slide_mpp within that range"
            if source == "caller"
            else "its resolution tag is likely wrong (72 dpi is 352.8 µm/px): pass slide_mpp, "
            "the slide's true level-0 µm per pixel (e.g. 0.25 for a 40x scan, 0.5 for 20x)"
        )
        raise InvalidInput(
            f"{name}: {origin} gives {mpp:.4g} µm/px at level 0, outside the plausible range "
            f"{low}-{high} µm/px for a microscope scan; {hint}",
            param="slide_mpp",
        )
    width_mm, height_mm = dimensions[0] * mpp / 1000.0, dimensions[1] * mpp / 1000.0
    if max(width_mm, height_mm) > MAX_SLIDE_EXTENT_MM:
        raise InvalidInput(
            f"{name}: at {mpp:.4g} µm/px ({origin}) its {dimensions[0]}x{dimensions[1]} pixels would cover "
            f"{width_mm:.0f} x {height_mm:.0f} mm, larger than any glass slide ({MAX_SLIDE_EXTENT_MM:.0f} mm): "
            "pass slide_mpp, the slide's true level-0 µm per pixel",
            param="slide_mpp",
        )


def _open_any(path: Path) -> SlideReader:
    import openslide

    errors: list[str] = []
    try:
        return SlideReader(path, openslide)
    except (openslide.OpenSlideError, OSError, ValueError) as exc:  # OpenSlideUnsupportedFormatError is one
        errors.append(f"openslide: {exc or type(exc).__name__}")
    try:
        import tiffslide

        reader = SlideReader(path, tiffslide)
    except Exception as exc:  # tiffslide raises whatever tifffile/zarr raise on a non-TIFF
        errors.append(f"tiffslide: {exc or type(exc).__name__}")
    else:
        if reader.level_count and all(w > 0 and h > 0 for w, h in reader.level_dimensions):
            return reader
        reader.close()
        errors.append("tiffslide: no image levels")
    raise InvalidInput(
        f"{path.name} is not a whole-slide image that OpenSlide or tiffslide can read ({'; '.join(errors)})",
        param="slide",
    )


def _no_mpp_message(path: Path) -> str:
    return (
        f"{path.name} has no resolution in its metadata (no MPP, no objective power): "
        "pass slide_mpp, the slide's level-0 µm per pixel (e.g. 0.25 for a 40x scan, 0.5 for 20x)"
    )


def _positive_float(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None


def _mean_mpp(x: Any, y: Any) -> float | None:
    mx, my = _positive_float(x), _positive_float(y)
    if mx and my:
        return (mx + my) / 2.0
    return mx or my


def _to_rgb(region: np.ndarray) -> np.ndarray:
    """RGB uint8 from RGB or (non-premultiplied) RGBA, compositing transparency onto white."""
    if region.shape[2] == 3:
        return region
    rgb, alpha = region[..., :3], region[..., 3]
    if alpha.min() == 255:
        return rgb
    a = alpha[..., None].astype(np.float32) / 255.0
    return (rgb.astype(np.float32) * a + 255.0 * (1.0 - a) + 0.5).astype(np.uint8)
