import struct
import zlib

import numpy as np
import pytest

from service.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType
from service.imaging import DecodeLimits, decode_image, fit_size, prepare, sniff_format
from service.models.config import InputConfig
from tests.helpers import encode, jpeg_bytes

RGB = (np.arange(48 * 64 * 3) % 251).astype(np.uint8).reshape(48, 64, 3)


@pytest.mark.parametrize(
    ("fmt", "media"), [("JPEG", "image/jpeg"), ("PNG", "image/png"), ("TIFF", "image/tiff"), ("WEBP", "image/webp")]
)
def test_decodes_every_supported_format(fmt: str, media: str) -> None:
    data = encode(RGB, fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    for ctype in (media, None, "application/octet-stream"):
        image = decode_image(data, ctype)
        assert (image.height, image.width, image.format) == (48, 64, fmt)
    if fmt in ("PNG", "TIFF", "WEBP"):
        assert np.array_equal(decode_image(data, media).pixels, RGB)


def test_unsupported_content_type_is_415() -> None:
    with pytest.raises(UnsupportedMediaType, match="text/plain"):
        decode_image(jpeg_bytes(), "text/plain")


def test_content_type_that_contradicts_the_bytes_is_400() -> None:
    with pytest.raises(InvalidInput, match="says image/png but the bytes are JPEG"):
        decode_image(jpeg_bytes(), "image/png")


@pytest.mark.parametrize("body", [b"", b"\xff", b"not an image at all", b"\xff\xd8\xff" + b"\x00" * 20])
def test_garbage_is_400_with_a_message(body: bytes) -> None:
    with pytest.raises(InvalidInput) as info:
        decode_image(body, "image/jpeg")
    assert info.value.param == "image"


def test_truncated_jpeg_is_400() -> None:
    data = jpeg_bytes(256, 256)
    with pytest.raises(InvalidInput, match="truncated or corrupt"):
        decode_image(data[: len(data) // 2], "image/jpeg")


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height with one tiny (invalid) data chunk."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")
    )


def test_claimed_size_is_refused_before_decoding() -> None:
    with pytest.raises(PayloadTooLarge, match="10000000000 pixels"):
        decode_image(_png_header_only(100_000, 100_000), "image/png")


def test_body_over_the_byte_limit_is_413() -> None:
    with pytest.raises(PayloadTooLarge):
        decode_image(jpeg_bytes(), "image/jpeg", DecodeLimits(max_bytes=100))


def test_sniffing() -> None:
    assert sniff_format(jpeg_bytes()) == "JPEG"
    assert sniff_format(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "WEBP"
    assert sniff_format(b"GIF89a") is None


CFG = InputConfig(native_size=224, patch_size=16, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def test_letterbox_keeps_aspect_and_pads_with_zero_after_normalising() -> None:
    prepared = prepare(np.full((100, 200, 3), 255, np.uint8), CFG)
    assert prepared.pixels.shape == (3, 224, 224)
    assert prepared.resized_size == (112, 224)
    assert np.allclose(prepared.pixels[:, :112], (1.0 - 0.5) / 0.25)
    assert np.all(prepared.pixels[:, 112:] == 0)


def test_resize_stretches_and_pad_keeps_scale() -> None:
    prepared = prepare(RGB, CFG, content=fit_size(48, 64, (224, 224), "resize"))
    assert prepared.resized_size == (224, 224)
    assert fit_size(48, 64, (224, 224), "letterbox") == (168, 224)
    assert fit_size(48, 64, (224, 224), "pad") == (48, 64)
    assert fit_size(480, 64, (224, 224), "pad") == (224, 30)  # larger than the input: letterboxed
    padded = prepare(RGB, CFG, target=(224, 224), content=(48, 64))
    assert padded.resized_size == (48, 64) and np.all(padded.pixels[:, 48:] == 0)


def test_content_larger_than_the_input_is_refused() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        prepare(RGB, CFG, target=(32, 32), content=(48, 64))
