"""Synthetic Zeiss CZI slides for tests, written by Zeiss's own libCZI (``pylibCZIrw``, dev only).

OpenSlide's Zeiss reader (``src/openslide-vendor-zeiss.c``, openslide-bin 4.0) needs, beyond the
file header, subblock directory and metadata XML that libCZI always writes:

* subblocks whose directory entries name only the dimensions ``X``, ``Y``, ``C`` (index 0), ``S``
  and ``M``: any other ("Unrecognized subblock dimension") fails the open. pylibCZIrw's
  ``CziWriter.write`` always adds ``T0 Z0`` to the plane, so this writes through the binding's
  ``AddTileEx`` with the plane ``C0 S0`` (the M index given per tile, as ``write`` computes it);
* pixel type Bgr24 or Bgr48 and compression none, zstd0, zstd1 or JPEG XR (libCZI's writer
  cannot encode JPEG XR); this writes Bgr24 (a uint8 (h, w, 3) array, in B, G, R order), zstd1;
* an attachment directory (``ZISRAWATTDIR``): OpenSlide reads it for the label and macro images
  and fails the open ("No magic string") when the header's pointer to it is 0. libCZI writes no
  attachment directory when there are no attachments, and pylibCZIrw cannot add one, so this
  appends an empty one (32-byte aligned, as CZI segments are) and points the header at it;
* the size in the metadata's ``Information/Image/SizeX``/``SizeY`` and the pixel size in
  ``Scaling/Items/Distance[@Id='X'|'Y']/Value``, in metres: ``write_metadata``'s ``scale_x``/
  ``scale_y`` are documented in µm but written as given, so this passes metres.

One scene, one level (libCZI writes no pyramid), ``tile``-sided subblocks.
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.testing.synthetic_slides import _make_blobs, _render

#: byte offset, in the ``ZISRAWFILE`` segment, of the int64 position of the attachment directory
_ATT_DIR_POS_OFFSET = 32 + 16 + 2 * 16 + 4 + 8 + 8 + 4


@dataclass(frozen=True)
class SyntheticCzi:
    """A written CZI slide and the level-0 pixels it holds (RGB)."""

    path: Path
    width: int
    height: int
    tile: int
    mpp: float
    background: tuple[int, int, int]
    #: (height, width, 3) uint8 RGB, exactly what was written (zstd is lossless)
    pixels: np.ndarray


def make_synthetic_czi(
    path: str | Path,
    *,
    width: int,
    height: int,
    mpp: float = 0.5,
    tile: int = 512,
    seed: int = 0,
    n_blobs: int = 4,
    background: tuple[int, int, int] = (243, 242, 240),
) -> SyntheticCzi:
    """Write ``path`` (a ``.czi``): ``width`` x ``height`` pixels of tissue-like blobs (as
    :func:`~service.testing.make_synthetic_slide` draws them) in ``tile``-sided Bgr24 zstd1
    subblocks, with ``mpp`` µm/px in the scaling metadata."""
    from pylibCZIrw import czi as pyczi  # dev dependency: imported only when a test writes a CZI

    if width < 1 or height < 1 or tile < 1:
        raise ValueError(f"the slide and tile sizes must be positive, got {width}x{height}, tile {tile}")
    if mpp <= 0:
        raise ValueError(f"mpp must be positive, got {mpp}")
    path = Path(path)
    pixels = _render(_make_blobs(width, height, n_blobs, 0.18, seed), background, 0, 0, width, height, 1.0)
    bgr = pixels[..., ::-1]
    compression = "zstd1:ExplicitLevel=1"
    with pyczi.create_czi(str(path), exist_ok=True, compression_options=compression) as czi:
        retiling_id = str(uuid.uuid4())
        m_index = 0
        for y in range(0, height, tile):
            for x in range(0, width, tile):
                block = czi._format_data(np.ascontiguousarray(bgr[y : y + tile, x : x + tile]))
                if not czi._czi_writer.AddTileEx("C0 S0", block, x, y, m_index, compression, retiling_id):
                    raise RuntimeError(f"libCZI refused the subblock at ({x}, {y})")
                m_index += 1
        czi.write_metadata(document_name=path.stem, scale_x=mpp * 1e-6, scale_y=mpp * 1e-6)
    _append_empty_attachment_directory(path)
    return SyntheticCzi(path, width, height, tile, mpp, background, pixels)


def _append_empty_attachment_directory(path: Path) -> None:
    with path.open("r+b") as fh:
        end = fh.seek(0, 2)
        position = -(-end // 32) * 32
        body = struct.pack("<i", 0) + bytes(252)  # entry count, reserved
        fh.write(bytes(position - end))
        fh.write(b"ZISRAWATTDIR".ljust(16, b"\0") + struct.pack("<qq", len(body), len(body)) + body)
        fh.seek(_ATT_DIR_POS_OFFSET)
        fh.write(struct.pack("<q", position))
