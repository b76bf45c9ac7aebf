"""Synthetic MIRAX (``.mrxs``) slides for tests: small, JPEG-tiled, readable by OpenSlide (dev only).

A MIRAX slide is a main file ``<name>.mrxs`` (OpenSlide only checks that it exists; this writes
it empty) beside a data folder ``<name>/`` holding:

* ``Slidedat.ini``: the metadata, a GLib key file. ``[GENERAL]`` gives the slide id and the grid
  of camera images (``IMAGENUMBER_X``/``_Y``, ``CameraImageDivisionsPerSide = 1``: one image per
  photo); ``[HIERARCHICAL]`` names the index file and lists the records: ``HIER_0`` is
  ``Slide zoom level`` with one section per pyramid level (``IMAGE_FORMAT = JPEG``, the image
  size ``DIGITIZER_WIDTH``/``_HEIGHT``, ``MICROMETER_PER_PIXEL_X``/``_Y``, ``OVERLAP_X``/``_Y``
  of 0, ``IMAGE_FILL_COLOR_BGR``, ``IMAGE_CONCAT_FACTOR``: 0 for level 0, then 1, each level
  halving the previous one), and ``NONHIER_0`` is the ``VIMSLIDE_POSITION_BUFFER`` (no label,
  macro or thumbnail images); ``[DATAFILE]`` lists the one data file.
* ``Index.dat``: the version ``01.02`` and the slide id, then little-endian int32s: pointers to
  the hierarchical and non-hierarchical offset tables, one entry per record, each pointing to a
  linked list of data pages (a first page with 0 items, then pages of ``count, next`` followed
  by the items). A zoom level's items are ``image index, offset, length, file number`` (the
  image index is ``y * IMAGENUMBER_X + x`` of its top-left level-0 image); the position buffer's
  one item is ``0, 0, offset, length, file number``.
* ``Data0000.dat``: the JPEG images back to back, then the position buffer: one 9-byte record
  per camera position (a flag byte of 1, then x and y in level-0 pixels), laid on an exact grid.

Level ``k`` has one ``tile`` x ``tile`` JPEG for every 2^k x 2^k block of level-0 images, the
block downsampled by 2^k (box filter) and padded with the background. The slide's size must be
a multiple of ``tile``: MIRAX level 0 is a whole number of camera images.

The format is described at https://openslide.org/formats/mirax/ and, in full, by the reader in
OpenSlide's ``src/openslide-vendor-mirax.c`` (https://github.com/openslide/openslide); this
writer was built against openslide-bin 4.0.
"""

from __future__ import annotations

import io
import math
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from service.testing.synthetic_slides import _make_blobs, _render

__all__ = ["SyntheticMirax", "make_synthetic_mirax"]

_INDEX_VERSION = "01.02"
_DATA_FILE = "Data0000.dat"
_POSITION_FORMAT_VERSION = 257


@dataclass(frozen=True)
class SyntheticMirax:
    """What :func:`make_synthetic_mirax` wrote: the ``.mrxs``, its data folder and the pixels."""

    path: Path
    data_dir: Path
    width: int
    height: int
    tile: int
    mpp: float
    level_dimensions: tuple[tuple[int, int], ...]
    background: tuple[int, int, int]
    #: (height, width, 3) uint8: the level-0 image the tiles were cut from (before JPEG)
    pixels: np.ndarray


def make_synthetic_mirax(
    path: str | Path,
    *,
    width: int,
    height: int,
    mpp: float = 0.25,
    tile: int = 256,
    seed: int = 0,
    n_blobs: int = 4,
    quality: int = 90,
    slide_id: str = "00000000-0000-0000-0000-00000000c0de",
    background: tuple[int, int, int] = (243, 242, 240),
) -> SyntheticMirax:
    """Write ``<path>.mrxs`` and its data folder ``<path>/``: ``width`` x ``height`` level-0
    pixels of tissue-like blobs (as :func:`~service.testing.make_synthetic_slide` draws them)
    in ``tile``-sided JPEG images, with levels halving until the slide fits one image."""
    if width < 1 or height < 1 or width % tile or height % tile:
        raise ValueError(f"the slide size must be a positive multiple of tile={tile}, got {width}x{height}")
    if mpp <= 0:
        raise ValueError(f"mpp must be positive, got {mpp}")
    path = Path(path)
    main = path if path.suffix.lower() == ".mrxs" else path.with_name(path.name + ".mrxs")
    data_dir = main.with_suffix("")
    data_dir.mkdir(parents=True, exist_ok=True)
    main.write_bytes(b"")

    images_x, images_y = width // tile, height // tile
    n_levels = 1 + max(0, math.ceil(math.log2(max(images_x, images_y))))
    pixels = _render(_make_blobs(width, height, n_blobs, 0.18, seed), background, 0, 0, width, height, 1.0)

    # level 0 on a canvas of whole top-level images, so every level's images are full squares
    side = tile << (n_levels - 1)
    canvas = np.empty((math.ceil(height / side) * side, math.ceil(width / side) * side, 3), dtype=np.uint8)
    canvas[:] = background
    canvas[:height, :width] = pixels

    data = bytearray()
    levels: list[list[tuple[int, int, int]]] = []  # per level: (image index, offset, length)
    level = canvas
    for k in range(n_levels):
        if k:
            h, w = level.shape[0] // 2, level.shape[1] // 2
            level = level.reshape(h, 2, w, 2, 3).mean(axis=(1, 3)).round().astype(np.uint8)
        step = 1 << k  # level-0 images per level-k image, along each side
        items = []
        for gy in range(0, images_y, step):
            for gx in range(0, images_x, step):
                y0, x0 = gy // step * tile, gx // step * tile
                jpeg = _jpeg(level[y0 : y0 + tile, x0 : x0 + tile], quality)
                items.append((gy * images_x + gx, len(data), len(jpeg)))
                data += jpeg
        levels.append(items)

    positions = b"".join(
        struct.pack("<Bii", 1, gx * tile, gy * tile) for gy in range(images_y) for gx in range(images_x)
    )
    position_item = (len(data), len(positions))
    data += positions

    (data_dir / _DATA_FILE).write_bytes(bytes(data))
    (data_dir / "Index.dat").write_bytes(_index(slide_id, levels, position_item))
    (data_dir / "Slidedat.ini").write_text(
        _slidedat(slide_id, images_x, images_y, n_levels, tile, mpp, background), encoding="utf-8"
    )
    dims = tuple((width >> k, height >> k) for k in range(n_levels))
    return SyntheticMirax(main, data_dir, width, height, tile, mpp, dims, background, pixels)


def _jpeg(pixels: np.ndarray, quality: int) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=quality)
    return out.getvalue()


def _i32(*values: int) -> bytes:
    return struct.pack(f"<{len(values)}i", *values)


def _index(slide_id: str, levels: list[list[tuple[int, int, int]]], position: tuple[int, int]) -> bytes:
    """Index.dat: header, the two root pointers, the offset tables, then each record's pages."""
    index = bytearray((_INDEX_VERSION + slide_id).encode("ascii"))
    roots = len(index)
    index += _i32(0, 0)  # → hierarchical table, → non-hierarchical table (patched below)
    hier_table = len(index)
    index += _i32(*[0] * len(levels))
    nonhier_table = len(index)
    index += _i32(0)
    struct.pack_into("<ii", index, roots, hier_table, nonhier_table)

    def record(table_entry: int, items: bytes, count: int) -> None:
        # the record: an empty first page pointing to one page of ``count`` items
        struct.pack_into("<i", index, table_entry, len(index))
        index.extend(_i32(0, len(index) + 8))
        index.extend(_i32(count, 0) + items)

    for k, items in enumerate(levels):
        record(hier_table + 4 * k, b"".join(_i32(i, off, n, 0) for i, off, n in items), len(items))
    record(nonhier_table, _i32(0, 0, position[0], position[1], 0), 1)
    return bytes(index)


def _slidedat(
    slide_id: str, images_x: int, images_y: int, n_levels: int, tile: int, mpp: float, bg: tuple[int, int, int]
) -> str:
    sections: dict[str, dict[str, object]] = {
        "GENERAL": {
            "SLIDE_VERSION": "01.03",
            "SLIDE_ID": slide_id,
            "SLIDE_NAME": "synthetic",
            "IMAGENUMBER_X": images_x,
            "IMAGENUMBER_Y": images_y,
            "OBJECTIVE_MAGNIFICATION": round(10 / mpp),
            "CameraImageDivisionsPerSide": 1,
        },
        "HIERARCHICAL": {
            "INDEXFILE": "Index.dat",
            "HIER_COUNT": 1,
            "HIER_0_NAME": "Slide zoom level",
            "HIER_0_COUNT": n_levels,
            **{f"HIER_0_VAL_{k}": f"ZoomLevel_{k}" for k in range(n_levels)},
            **{f"HIER_0_VAL_{k}_SECTION": f"LAYER_0_LEVEL_{k}_SECTION" for k in range(n_levels)},
            "NONHIER_COUNT": 1,
            "NONHIER_0_NAME": "VIMSLIDE_POSITION_BUFFER",
            "NONHIER_0_COUNT": 1,
            "NONHIER_0_VAL_0": "default",
            "NONHIER_0_VAL_0_SECTION": "NONHIERLAYER_0_VAL_0_SECTION",
        },
        "DATAFILE": {"FILE_COUNT": 1, "FILE_0": _DATA_FILE},
        "NONHIERLAYER_0_SECTION": {"VIMSLIDE_POSITION_DATA_FORMAT_VERSION": _POSITION_FORMAT_VERSION},
        "NONHIERLAYER_0_VAL_0_SECTION": {},
    }
    for k in range(n_levels):
        sections[f"LAYER_0_LEVEL_{k}_SECTION"] = {
            "OVERLAP_X": 0,
            "OVERLAP_Y": 0,
            "MICROMETER_PER_PIXEL_X": mpp * (1 << k),
            "MICROMETER_PER_PIXEL_Y": mpp * (1 << k),
            "IMAGE_FORMAT": "JPEG",
            "IMAGE_FILL_COLOR_BGR": bg[2] << 16 | bg[1] << 8 | bg[0],
            "DIGITIZER_WIDTH": tile,
            "DIGITIZER_HEIGHT": tile,
            "IMAGE_CONCAT_FACTOR": 1 if k else 0,
        }
    return "".join(
        f"[{name}]\n" + "".join(f"{key} = {value}\n" for key, value in keys.items()) + "\n"
        for name, keys in sections.items()
    )
