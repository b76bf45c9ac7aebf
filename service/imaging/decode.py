"""Decoding encoded images with limits checked before anything large is allocated.

The format is sniffed from the bytes (a client's Content-Type is checked against it), the
header's claimed size is checked against ``max_pixels`` before pixels are decoded, and every
decoder error becomes an ``InvalidInput`` that says what was wrong.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from service.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType

__all__ = ["SUPPORTED_MEDIA_TYPES", "DecodeLimits", "DecodedImage", "decode_image", "sniff_format"]

#: Content types we decode, and the PIL format names they correspond to.
SUPPORTED_MEDIA_TYPES = {
    "image/jpeg": "JPEG",
    "image/jpg": "JPEG",
    "image/png": "PNG",
    "image/tiff": "TIFF",
    "image/webp": "WEBP",
}
_GENERIC_TYPES = {"", "application/octet-stream", "image/*", "*/*"}

_MAGIC = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"II+\x00", "TIFF"),
    (b"MM\x00+", "TIFF"),
)


@dataclass(frozen=True)
class DecodeLimits:
    max_bytes: int = 64 << 20
    max_pixels: int = 8192 * 8192
    max_side: int = 16384


@dataclass(frozen=True)
class DecodedImage:
    pixels: np.ndarray  # (H, W, 3) uint8 RGB
    format: str

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])


def sniff_format(data: bytes) -> str | None:
    for magic, fmt in _MAGIC:
        if data.startswith(magic):
            return fmt
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def _media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def decode_image(data: bytes, content_type: str | None = None, limits: DecodeLimits | None = None) -> DecodedImage:
    """Decode ``data`` into RGB uint8, refusing what is unsupported, malformed or too large."""
    limits = limits or DecodeLimits()
    media = _media_type(content_type)
    if media not in _GENERIC_TYPES and media not in SUPPORTED_MEDIA_TYPES:
        raise UnsupportedMediaType(
            f"content type {media!r} is not supported; send one of: "
            f"{', '.join(sorted(set(SUPPORTED_MEDIA_TYPES) - {'image/jpg'}))}",
            param="content-type",
        )
    if len(data) == 0:
        raise InvalidInput("the request body is empty: send the encoded image bytes", param="image")
    if len(data) > limits.max_bytes:
        raise PayloadTooLarge(f"image is {len(data)} bytes; the limit is {limits.max_bytes}", param="image")
    fmt = sniff_format(data)
    if fmt is None:
        raise InvalidInput("the body is not a JPEG, PNG, TIFF or WebP image (unrecognised signature)", param="image")
    declared = SUPPORTED_MEDIA_TYPES.get(media)
    if declared is not None and declared != fmt:
        raise InvalidInput(f"content type says {media} but the bytes are {fmt}", param="content-type")

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=[fmt])
            width, height = image.size  # header only: nothing decoded yet
            _check_size(width, height, limits)
            # Multi-frame images (TIFF pages, APNG, animated WebP) open on their first frame, the one
            # we decode. Never ask for n_frames: for a TIFF it walks every directory, quadratic in
            # their number (100,000 empty IFDs in 11 MB took 75 s).
            if image.tell() != 0:
                image.seek(0)
            image.load()
            rgb = image.convert("RGB")
    except (PayloadTooLarge, InvalidInput):
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise PayloadTooLarge(f"image refused before decoding: {exc}", param="image") from exc
    except UnidentifiedImageError as exc:
        raise InvalidInput(f"could not read the {fmt} image: the data is not a valid image", param="image") from exc
    except (OSError, ValueError, SyntaxError, EOFError, IndexError, TypeError, MemoryError) as exc:
        raise InvalidInput(f"could not decode the {fmt} image (truncated or corrupt): {exc}", param="image") from exc
    pixels = np.asarray(rgb, dtype=np.uint8)
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.size == 0:
        raise InvalidInput(f"decoded image has unusable shape {pixels.shape}", param="image")
    return DecodedImage(pixels=pixels, format=fmt)


def _check_size(width: int, height: int, limits: DecodeLimits) -> None:
    if width <= 0 or height <= 0:
        raise InvalidInput(f"image header claims an empty size {width}x{height}", param="image")
    if width > limits.max_side or height > limits.max_side or width * height > limits.max_pixels:
        raise PayloadTooLarge(
            f"image is {width}x{height} pixels; the limit is {limits.max_pixels} pixels and "
            f"{limits.max_side} per side (slides go to /v1/slides)",
            param="image",
        )
