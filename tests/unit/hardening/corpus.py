"""The bad-input corpus, generated (deterministically) rather than stored.

Each ``Case`` is one HTTP request and what must come back: a 4xx status from ``statuses`` and
an error message that names what was wrong (``says``: at least one of these substrings, case
insensitive). ``image_cases`` are encoded images, reused for ``/v1/predict``, the OIP ``image``
input and gRPC ``tessera.v1.Images/Predict``; ``oip_cases`` are malformed inference requests;
``slide_cases`` are ``/v1/slides`` submissions; ``body_cases`` are request bodies and options
that are wrong before any image is looked at.
"""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from tests.unit.hardening.support import LIMITS, MAX_SLIDE_BYTES

#: The REST model all OIP cases address.
MODEL = "vit_small"
INFER = f"/v2/models/{MODEL}/infer"


@dataclass(frozen=True)
class Case:
    id: str
    path: str
    body: bytes | Callable[[], Iterator[bytes]] = b""
    headers: dict[str, str] = field(default_factory=dict)
    statuses: frozenset[int] = frozenset({400})
    says: tuple[str, ...] = ()
    method: str = "POST"
    files: dict[str, Any] | None = None
    json_body: Any = None
    xfail: str | None = None
    """Set when the case finds a bug outside this suite's files: the reason, and where the fix goes."""


@dataclass(frozen=True)
class ImageCase:
    """An encoded image that is not acceptable, and the substrings its error must contain."""

    id: str
    data: bytes
    content_type: str | None
    statuses: frozenset[int]
    says: tuple[str, ...]


# -- valid images to damage ---------------------------------------------------------------------------
def noise(width: int = 96, height: int = 64, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((height, width, 3)) * 255).astype(np.uint8)


def encode(fmt: str, pixels: np.ndarray | None = None, **kwargs: Any) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(noise() if pixels is None else pixels).save(buf, fmt, **kwargs)
    return buf.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header(width: int, height: int, *, bit_depth: int = 8, colour: int = 2) -> bytes:
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0))


def _png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    chunks, offset = [], 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        chunks.append((data[offset + 4 : offset + 8], data[offset + 8 : offset + 8 + length]))
        offset += 12 + length
    return chunks


def _png_with(data: bytes, replace: Callable[[bytes, bytes], bytes | None]) -> bytes:
    """The PNG rebuilt chunk by chunk, each replaced by ``replace(kind, payload)`` (None keeps it)."""
    out = data[:8]
    for kind, payload in _png_chunks(data):
        new = replace(kind, payload)
        out += png_chunk(kind, payload) if new is None else new
    return out


def zeros_deflate(total: int, block: int = 1 << 20) -> bytes:
    """A zlib stream that inflates to ``total`` zero bytes, built in milliseconds.

    After a full flush the deflate encoder's output for an identical block is identical, so one
    compressed block is repeated; the Adler-32 of n zeros is ``(n mod 65521) << 16 | 1``.
    """
    enc = zlib.compressobj(9)
    zeros = bytes(block)
    first = enc.compress(zeros) + enc.flush(zlib.Z_FULL_FLUSH)
    repeat = enc.compress(zeros) + enc.flush(zlib.Z_FULL_FLUSH)
    count = total // block
    return first + repeat * (count - 1) + b"\x03\x00" + struct.pack(">I", ((count * block) % 65521) << 16 | 1)


def png_claiming(width: int, height: int) -> bytes:
    """A well-formed PNG whose header claims ``width`` x ``height`` (its pixel data is empty)."""
    return png_header(width, height) + png_chunk(b"IDAT", zlib.compress(b"")) + png_chunk(b"IEND", b"")


def png_zeros_bomb(width: int, height: int, inflated: int) -> bytes:
    """A real PNG (every chunk and checksum valid) whose IDAT inflates to ``inflated`` bytes."""
    return png_header(width, height) + png_chunk(b"IDAT", zeros_deflate(inflated)) + png_chunk(b"IEND", b"")


def jpeg_with_size(width: int, height: int) -> bytes:
    """A valid JPEG with the frame header's size rewritten (SOF0: FFC0 len P H W)."""
    data = bytearray(encode("JPEG", quality=80))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def tiff_with_size(width: int, height: int) -> bytes:
    """A minimal little-endian TIFF whose IFD claims ``width`` x ``height`` 8-bit grey pixels."""
    entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1)]
    entries += [(273, 4, 1, 8 + 2 + 12 * 8 + 4), (277, 3, 1, 1), (279, 4, 1, 16)]
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", *e) for e in entries) + struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + bytes(16)


def tiff_ifd_chain(count: int) -> bytes:
    """A valid 1x1 TIFF followed by ``count - 1`` more linked directories (pages)."""
    entries = [(256, 4, 1, 1), (257, 4, 1, 1), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1)]
    entries += [(273, 4, 1, 0), (277, 3, 1, 1), (278, 4, 1, 1), (279, 4, 1, 1)]
    size = 2 + 12 * len(entries) + 4
    out = [b"II*\x00" + struct.pack("<I", 8)]
    for i in range(count):
        nxt = 8 + (i + 1) * size if i < count - 1 else 0
        out.append(struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", *e) for e in entries))
        out.append(struct.pack("<I", nxt))
    return b"".join(out)


def webp_vp8x_with_size(width: int, height: int) -> bytes:
    """A WebP extended-format header claiming ``width`` x ``height`` (24-bit minus-one fields)."""
    vp8x = b"VP8X" + struct.pack("<I", 10) + b"\x00\x00\x00\x00" + (width - 1).to_bytes(3, "little")
    vp8x += (height - 1).to_bytes(3, "little")
    body = b"WEBP" + vp8x + encode("WEBP")[12:]
    return b"RIFF" + struct.pack("<I", len(body)) + body


# -- image cases --------------------------------------------------------------------------------------
_BAD = frozenset({400})
_TOO_LARGE = frozenset({413})
_UNSUPPORTED = frozenset({415})
_DECODE_WORDS = ("truncated", "corrupt", "not a valid", "could not", "broken", "unrecognised")


def image_cases() -> list[ImageCase]:
    cases: list[ImageCase] = []
    rng = np.random.default_rng(7)
    media = {"JPEG": "image/jpeg", "PNG": "image/png", "TIFF": "image/tiff", "WEBP": "image/webp"}
    for fmt, ctype in media.items():
        good = encode(fmt)
        magic = good[:16] if fmt == "WEBP" else good[:4]
        for frac in (0.3, 0.6, 0.9):
            cut = good[: int(len(good) * frac)]
            cases.append(ImageCase(f"{fmt}-truncated-{int(frac * 100)}pct", cut, ctype, _BAD, _DECODE_WORDS))
        cases.append(ImageCase(f"{fmt}-signature-only", magic, ctype, _BAD, _DECODE_WORDS))
        garbage = magic + rng.integers(0, 256, 512, dtype=np.uint8).tobytes()
        cases.append(ImageCase(f"{fmt}-signature-then-garbage", garbage, ctype, _BAD, _DECODE_WORDS))
        cases.append(ImageCase(f"{fmt}-as-octet-stream-truncated", good[: len(good) // 2], None, _BAD, _DECODE_WORDS))

    png = encode("PNG")
    bad_crc = bytearray(png)
    bad_crc[29] ^= 0xFF  # IHDR's CRC
    cases.append(ImageCase("PNG-bad-IHDR-crc", bytes(bad_crc), "image/png", _BAD, _DECODE_WORDS))
    idat_garbage = _png_with(
        png, lambda k, p: png_chunk(k, rng.integers(0, 256, len(p), dtype=np.uint8).tobytes()) if k == b"IDAT" else None
    )
    cases.append(ImageCase("PNG-IDAT-not-zlib", idat_garbage, "image/png", _BAD, _DECODE_WORDS))
    cases.append(
        ImageCase("PNG-bit-depth-7", png_header(8, 8, bit_depth=7) + png_chunk(b"IEND", b""), "image/png", _BAD, ())
    )
    cases.append(ImageCase("PNG-no-IDAT", png_header(8, 8) + png_chunk(b"IEND", b""), "image/png", _BAD, ()))
    cases.append(ImageCase("PNG-zero-size", png_header(0, 0) + png_chunk(b"IEND", b""), "image/png", _BAD, ()))
    ztxt = png[:33] + png_chunk(b"zTXt", b"k\x00\x00" + zlib.compress(bytes(64 << 20), 9)) + png[33:]
    cases.append(ImageCase("PNG-zTXt-bomb-64MiB", ztxt, "image/png", _BAD, ("too large",)))
    iccp = png[:33] + png_chunk(b"iCCP", b"p\x00\x00" + zlib.compress(bytes(64 << 20), 9)) + png[33:]
    cases.append(ImageCase("PNG-iCCP-bomb-64MiB", iccp, "image/png", _BAD, ("too large",)))

    jpeg = encode("JPEG", quality=80)
    cases.append(ImageCase("JPEG-zero-height", jpeg_with_size(96, 0), "image/jpeg", _BAD, ()))
    cases.append(ImageCase("JPEG-no-scan", jpeg[: jpeg.index(b"\xff\xda")] + b"\xff\xd9", "image/jpeg", _BAD, ()))

    tiff = encode("TIFF")
    offsets = tiff_with_size(64, 64)[:-16]  # the strip is missing: StripOffsets point past the end
    cases.append(ImageCase("TIFF-strip-past-end", offsets, "image/tiff", _BAD, ()))
    bad_compression = bytearray(tiff_with_size(4, 4))
    bad_compression[8 + 2 + 12 * 3 + 8 : 8 + 2 + 12 * 3 + 10] = struct.pack("<H", 60000)
    cases.append(ImageCase("TIFF-unknown-compression", bytes(bad_compression), "image/tiff", _BAD, ()))
    cases.append(ImageCase("TIFF-lzw-truncated", encode("TIFF", compression="tiff_lzw")[:300], None, _BAD, ()))
    del tiff

    webp = encode("WEBP")
    wrong_riff = webp[:4] + struct.pack("<I", 10) + webp[8:]
    cases.append(ImageCase("WEBP-wrong-RIFF-size", wrong_riff, "image/webp", _BAD, ()))
    bad_vp8 = bytearray(webp)
    bad_vp8[20:40] = bytes(20)
    cases.append(ImageCase("WEBP-zeroed-frame-header", bytes(bad_vp8), "image/webp", _BAD, ()))

    # bodies that are not images at all
    cases.append(ImageCase("zero-bytes", b"", "image/jpeg", _BAD, ("empty",)))
    cases.append(ImageCase("zero-bytes-no-type", b"", None, _BAD, ("empty",)))
    cases.append(ImageCase("one-byte", b"\xff", "image/jpeg", _BAD, ("signature",)))
    cases.append(ImageCase("one-byte-no-type", b"\x89", None, _BAD, ("signature",)))
    cases.append(ImageCase("text-as-jpeg", b"hello, world", "image/jpeg", _BAD, ("signature",)))
    gif = encode("GIF", np.zeros((8, 8, 3), np.uint8))
    cases.append(ImageCase("GIF-not-supported", gif, None, _BAD, ("JPEG, PNG, TIFF or WebP",)))
    cases.append(ImageCase("BMP-not-supported", encode("BMP"), None, _BAD, ("JPEG, PNG, TIFF or WebP",)))
    svg = b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>'
    cases.append(ImageCase("SVG-not-supported", svg, None, _BAD, ("JPEG, PNG, TIFF or WebP",)))

    # content types that are wrong for the bytes, or not images
    cases.append(ImageCase("PNG-labelled-jpeg", png, "image/jpeg", _BAD, ("content type says",)))
    cases.append(ImageCase("JPEG-labelled-webp", jpeg, "image/webp", _BAD, ("content type says",)))
    for ctype in ("text/plain", "application/json", "image/gif", "image/svg+xml", "video/mp4", "x/y; a=b"):
        cases.append(ImageCase(f"JPEG-as-{ctype.split(';')[0]}", jpeg, ctype, _UNSUPPORTED, ("not supported",)))

    # decompression bombs by header: refused before any pixel is decoded
    cases.append(ImageCase("PNG-claims-100000x100000", png_claiming(100_000, 100_000), "image/png", _TOO_LARGE, ()))
    cases.append(ImageCase("PNG-claims-over-limit", png_claiming(5000, 4000), "image/png", _TOO_LARGE, ("limit",)))
    cases.append(ImageCase("PNG-claims-too-wide", png_claiming(20_000, 1), "image/png", _TOO_LARGE, ("limit",)))
    cases.append(ImageCase("JPEG-claims-65500x65500", jpeg_with_size(65500, 65500), None, _TOO_LARGE, ()))
    cases.append(ImageCase("TIFF-claims-100000x100000", tiff_with_size(100_000, 100_000), None, _TOO_LARGE, ()))
    cases.append(ImageCase("WEBP-claims-16384x16384", webp_vp8x_with_size(16384, 16384), None, _TOO_LARGE, ()))
    over = b"\xff\xd8\xff" + bytes(LIMITS.max_bytes + 1)
    cases.append(ImageCase("body-over-image-byte-limit", over, "image/jpeg", _TOO_LARGE, ("limit",)))
    return cases


# -- requests that fail before (or instead of) decoding -------------------------------------------------
def _multipart(parts: list[tuple[str, str | None, bytes]], boundary: str = "tessera-boundary") -> bytes:
    lines = []
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        lines.append(f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n")
    return b"".join(lines) + f"--{boundary}--\r\n".encode()


def body_cases() -> list[Case]:
    jpeg = encode("JPEG")
    multipart = "multipart/form-data; boundary=tessera-boundary"

    def chunked_over_limit() -> Iterator[bytes]:
        for _ in range(LIMITS.max_bytes // (1 << 20) + 2):
            yield bytes(1 << 20)

    deep = ("[" * 100_000 + "]" * 100_000).encode()
    return [
        Case(
            "multipart-without-image-field",
            "/v1/predict",
            files={"file": ("x.jpg", jpeg, "image/jpeg")},
            says=("image",),
        ),
        Case(
            "multipart-image-field-empty",
            "/v1/predict",
            _multipart([("image", None, b"")]),
            {"content-type": multipart},
            says=("empty",),
        ),
        Case(
            "multipart-two-files",
            "/v1/predict",
            _multipart([("image", "a.jpg", jpeg), ("image", "b.jpg", jpeg)]),
            {"content-type": multipart},
            says=("multipart",),
        ),
        Case(
            "multipart-no-boundary",
            "/v1/predict",
            b"--x\r\n\r\n",
            {"content-type": "multipart/form-data"},
            says=("multipart", "boundary"),
        ),
        Case(
            "multipart-unterminated",
            "/v1/predict",
            _multipart([("image", "a.jpg", jpeg)])[:-40],
            {"content-type": multipart},
            says=("multipart",),
        ),
        Case(
            "content-length-over-limit",
            "/v1/predict",
            b"x",
            {"content-type": "image/jpeg", "content-length": str(LIMITS.max_bytes + 1)},
            statuses=_TOO_LARGE,
            says=("limit",),
        ),
        Case(
            "content-length-not-a-number",
            "/v1/predict",
            jpeg,
            {"content-type": "image/jpeg", "content-length": "lots"},
            says=("content-length",),
        ),
        Case(
            "chunked-body-over-limit",
            "/v1/predict",
            chunked_over_limit,
            {"content-type": "image/jpeg"},
            statuses=_TOO_LARGE,
            says=("limit",),
        ),
        Case(
            "option-output-unknown",
            "/v1/predict?output=everything",
            jpeg,
            {"content-type": "image/jpeg"},
            says=("output",),
        ),
        Case(
            "option-top_k-negative",
            "/v1/predict?top_k=-1",
            jpeg,
            {"content-type": "image/jpeg"},
            says=("top_k", "greater"),
        ),
        Case(
            "option-top_k-not-int",
            "/v1/predict?top_k=many",
            jpeg,
            {"content-type": "image/jpeg"},
            says=("top_k", "integer"),
        ),
        Case(
            "option-unknown-model",
            "/v1/predict?model=nope",
            jpeg,
            {"content-type": "image/jpeg"},
            statuses=frozenset({404}),
            says=("nope",),
        ),
        Case(
            "multipart-bad-top_k-field",
            "/v1/predict",
            _multipart([("image", "a.jpg", jpeg), ("top_k", None, b"x")]),
            {"content-type": multipart},
            says=("option", "top_k"),
        ),
        Case(
            "timeout-header-not-a-number",
            "/v1/predict",
            jpeg,
            {"content-type": "image/jpeg", "x-request-timeout": "soon"},
            says=("x-request-timeout",),
        ),
        Case(
            "timeout-header-nan",
            "/v1/predict",
            jpeg,
            {"content-type": "image/jpeg", "x-request-timeout": "nan"},
            says=("x-request-timeout",),
        ),
        Case(
            "timeout-header-negative",
            "/v1/predict",
            jpeg,
            {"content-type": "image/jpeg", "x-request-timeout": "-1"},
            says=("x-request-timeout",),
        ),
        Case("route-zero-width", "/v1/route?width=0&height=10", method="GET", says=("width", "greater")),
        Case("route-huge-height", "/v1/route?width=10&height=99999999999", method="GET", says=("height", "less")),
        Case("route-not-a-number", "/v1/route?width=a&height=10", method="GET", says=("width", "integer")),
        Case(
            "unknown-route",
            "/v1/nothing-here",
            method="GET",
            statuses=frozenset({404}),
            says=("not found",),
        ),
        Case("wrong-method", "/v1/predict", method="GET", statuses=frozenset({405}), says=("method",)),
        Case(
            "oip-json-over-body-limit",
            INFER,
            b"{" + b" " * (LIMITS.max_bytes + 10) + b"}",
            {"content-type": "application/json"},
            statuses=_TOO_LARGE,
            says=("limit",),
        ),
        Case(
            "oip-deeply-nested-json",
            INFER,
            deep,
            {"content-type": "application/json"},
            says=("json", "nested"),
        ),
        Case(
            "slides-deeply-nested-json",
            "/v1/slides",
            deep,
            {"content-type": "application/json"},
            says=("json", "nested"),
        ),
        # Triton's control extensions parse their optional JSON bodies with the same helper
        Case(
            "repository-load-deeply-nested-json",
            f"/v2/repository/models/{MODEL}/load",
            deep,
            {"content-type": "application/json"},
            says=("json", "nested"),
        ),
        Case(
            "repository-index-not-text",
            "/v2/repository/index",
            b"\xff\xfe\x00\xd8\x00",
            {"content-type": "application/json"},
            says=("json", "utf-8"),
        ),
        Case(
            "repository-index-wrong-field-type",
            "/v2/repository/index",
            b'{"ready": [1]}',
            {"content-type": "application/json"},
            says=("ready",),
        ),
    ]


# -- OIP over REST ------------------------------------------------------------------------------------------
def _pixels(shape: list[int], datatype: str = "FP32", data: Any = None, **extra: Any) -> dict[str, Any]:
    count = int(np.prod(shape)) if all(isinstance(d, int) and d >= 0 for d in shape) else 1
    tensor = {"name": "pixels", "shape": shape, "datatype": datatype, "data": [0.0] * count if data is None else data}
    tensor.update(extra)
    return tensor


def _request(*inputs: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"inputs": list(inputs), **extra}


def _binary(header: dict[str, Any], raw: bytes, *, length: int | None = None) -> tuple[bytes, dict[str, str]]:
    text = json.dumps(header).encode()
    return text + raw, {"inference-header-content-length": str(len(text) if length is None else length)}


def oip_cases() -> list[Case]:
    side = 224
    n_px = 3 * side * side
    good_shape = [1, 3, side, side]
    cases: list[Case] = []

    def add(case_id: str, payload: Any, says: tuple[str, ...], statuses: frozenset[int] = _BAD, path: str = INFER):
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        cases.append(Case(f"oip-{case_id}", path, body, {"content-type": "application/json"}, statuses, says))

    def add_binary(case_id: str, header: dict[str, Any], raw: bytes, says: tuple[str, ...], length: int | None = None):
        body, headers = _binary(header, raw, length=length)
        cases.append(
            Case(f"oip-{case_id}", INFER, body, {"content-type": "application/octet-stream", **headers}, _BAD, says)
        )

    add("not-json", b"inputs: pixels", ("json",))
    add("empty-body", b"", ("json",))
    add("json-array", [1, 2, 3], ("valid dictionary", "object"))
    add("no-inputs-field", {"outputs": []}, ("inputs",))
    add("inputs-empty", _request(), ("no inputs",))
    add("inputs-not-a-list", {"inputs": "pixels"}, ("inputs",))
    add("unknown-field", _request(_pixels(good_shape), colour="red"), ("colour", "extra"))
    add("unknown-input-name", _request({**_pixels(good_shape), "name": "tensor0"}), ("unknown input",))
    add("two-inputs", _request(_pixels(good_shape), _pixels(good_shape)), ("exactly one",))
    add("shape-rank-3", _request(_pixels([3, side, side])), ("shape",))
    add("shape-4-channels", _request(_pixels([1, 4, side, side])), ("shape",))
    add("shape-wrong-size", _request(_pixels([1, 3, 100, 100])), ("100x100", "accepts"))
    add("shape-not-square", _request(_pixels([1, 3, 224, 384])), ("accepts",))
    add("shape-negative", _request(_pixels([1, 3, -224, side], data=[0.0])), ("non-negative",))
    add("shape-empty", _request(_pixels([], data=[0.0])), ("shape",))
    add("shape-zero-images", _request(_pixels([0, 3, side, side], data=[])), ("no images",))
    add("shape-not-ints", _request(_pixels(["a", 3, side, side], data=[0.0])), ("shape", "integer"))
    add("shape-huge-batch", _request(_pixels([10**9, 3, side, side], data=[0.0])), ("limit",), _TOO_LARGE)
    add("datatype-int32", _request(_pixels(good_shape, "INT32", [0] * n_px)), ("datatype",))
    add("datatype-unknown", _request(_pixels(good_shape, "FP8")), ("datatype",))
    add("datatype-bytes-for-pixels", _request(_pixels(good_shape, "BYTES")), ("datatype",))
    add(
        "image-with-fp32",
        _request({"name": "image", "shape": [1], "datatype": "FP32", "data": [0.0]}),
        ("datatype", "BYTES"),
    )
    add("element-count-short", _request(_pixels(good_shape, data=[0.0] * (n_px - 1))), ("elements",))
    add("element-count-long", _request(_pixels(good_shape, data=[0.0] * (n_px + 5))), ("elements",))
    add("data-ragged", _request(_pixels(good_shape, data=[[0.0, 1.0], [2.0]])), ("regular", "list of numbers"))
    add("data-strings", _request(_pixels(good_shape, data=["a"] * n_px)), ("numbers",))
    add("data-missing", _request({"name": "pixels", "shape": good_shape, "datatype": "FP32"}), ("no data",))
    add("uint8-out-of-range", _request(_pixels(good_shape, "UINT8", [300] * n_px)), ("[0, 255]",))
    add("uint8-fractional", _request(_pixels(good_shape, "UINT8", [1.5] * n_px)), ("integers",))
    for literal in ("NaN", "Infinity", "-Infinity"):
        text = json.dumps(_request(_pixels(good_shape, data=[0.0] * n_px)))
        add(f"fp32-{literal.lower()}", text.replace("0.0", literal, 1).encode(), ("NaN or Inf",))
    add("fp16-overflows-to-inf", _request(_pixels(good_shape, "FP16", [1e6] * n_px)), ("NaN or Inf",))
    add("unknown-output", _request(_pixels(good_shape), outputs=[{"name": "features"}]), ("unknown output",))
    add(
        "output-twice",
        _request(_pixels(good_shape), outputs=[{"name": "embedding"}, {"name": "embedding"}]),
        ("twice",),
    )
    add(
        "binary_data-not-bool",
        _request(_pixels(good_shape), outputs=[{"name": "embedding", "parameters": {"binary_data": "yes"}}]),
        ("binary_data",),
    )
    add("unknown-model", _request(_pixels(good_shape)), ("nope",), frozenset({404}), "/v2/models/nope/infer")
    add(
        "unknown-version",
        _request(_pixels(good_shape)),
        ("version",),
        frozenset({404}),
        f"/v2/models/{MODEL}/versions/99/infer",
    )
    add(
        "image-not-base64", _request({"name": "image", "shape": [1], "datatype": "BYTES", "data": ["%%%"]}), ("base64",)
    )
    corrupt = base64.b64encode(encode("PNG")[:100]).decode()
    add(
        "image-corrupt-png",
        _request({"name": "image", "shape": [1], "datatype": "BYTES", "data": [corrupt]}),
        _DECODE_WORDS,
    )
    add(
        "image-count-mismatch",
        _request({"name": "image", "shape": [2], "datatype": "BYTES", "data": [corrupt]}),
        ("elements",),
    )
    add(
        "image-number-elements",
        _request({"name": "image", "shape": [1], "datatype": "BYTES", "data": [5]}),
        ("strings",),
    )
    add(
        "image-too-many",
        _request({"name": "image", "shape": [10_000], "datatype": "BYTES", "data": []}),
        ("limit",),
        _TOO_LARGE,
    )

    # the binary tensor extension
    raw = np.zeros(good_shape, np.float32).tobytes()
    header = _request(
        {"name": "pixels", "shape": good_shape, "datatype": "FP32", "parameters": {"binary_data_size": len(raw)}}
    )
    add_binary("binary-size-mismatch-short", header, raw[:-4], ("remain",))
    add_binary("binary-size-mismatch-long", header, raw + b"\x00" * 8, ("add up",))
    small = _request({"name": "pixels", "shape": good_shape, "datatype": "FP32", "parameters": {"binary_data_size": 8}})
    add_binary("binary-size-too-small-for-shape", small, raw[:8], ("needs",))
    nan = np.zeros(good_shape, np.float32)
    nan.flat[123] = np.nan
    add_binary("binary-fp32-nan", header, nan.tobytes(), ("NaN or Inf",))
    inf = np.zeros(good_shape, np.float32)
    inf.flat[7] = -np.inf
    add_binary("binary-fp32-neg-inf", header, inf.tobytes(), ("NaN or Inf",))
    add_binary("binary-header-length-past-end", header, raw, ("header",), length=len(json.dumps(header)) + len(raw) + 1)
    add_binary("binary-header-length-inside-json", header, raw, ("json",), length=5)
    negative = _request(
        {"name": "pixels", "shape": good_shape, "datatype": "FP32", "parameters": {"binary_data_size": -1}}
    )
    add_binary("binary-size-negative", negative, raw, ("binary_data_size",))
    both = _request(
        {
            "name": "pixels",
            "shape": good_shape,
            "datatype": "FP32",
            "data": [0.0],
            "parameters": {"binary_data_size": len(raw)},
        }
    )
    add_binary("binary-and-json-data", both, raw, ("both",))
    body, _ = _binary(header, raw)
    cases.append(
        Case(
            "oip-header-length-not-int",
            INFER,
            body,
            {"content-type": "application/octet-stream", "inference-header-content-length": "ten"},
            _BAD,
            ("integer",),
        )
    )
    cases.append(
        Case(
            "oip-gzip-encoding",
            INFER,
            b"\x1f\x8b" + bytes(20),
            {"content-type": "application/json", "content-encoding": "gzip"},
            _UNSUPPORTED,
            ("content-encoding",),
        )
    )
    return cases


# -- slides ---------------------------------------------------------------------------------------------------
def slide_cases() -> list[Case]:
    """Submissions against the slide root that ``conftest.slide_root`` lays out."""

    def path(case_id: str, value: str, says: tuple[str, ...], xfail: str | None = None) -> Case:
        return Case(f"slide-path-{case_id}", "/v1/slides", json_body={"path": value}, says=says, xfail=xfail)

    outside = ("inside", "slide root", "..")
    not_slide = ("not a whole-slide image", "resolution", "no slide")
    cases = [
        path("dotdot", "../outside.svs", outside),
        path("dotdot-deep", "../../../../../../etc/passwd", outside),
        path("dotdot-inside", "sub/../../outside.svs", outside),
        path("absolute-outside", "/etc/passwd", outside),
        path("symlink-file-outside", "escape.svs", outside),
        path("symlink-dir-outside", "escape_dir/passwd", outside),
        path("not-a-slide-text", "notes.svs", not_slide),
        path("not-a-slide-png", "photo.png", not_slide),
        path("tiff-without-resolution", "plain.tiff", not_slide),
        path("empty-file", "empty.svs", not_slide),
        path("missing", "missing.svs", ("no slide",)),
        path("directory", "sub", ("no slide",)),
        path("empty", "", ("empty",)),
        path("nul-byte", "notes\x00.svs", ("malformed",)),
        path("url-encoded-dotdot", "%2e%2e/outside.svs", ("no slide",)),
        path(
            "name-too-long",
            "a" * 5000 + ".svs",
            ("long", "no slide"),
        ),
        Case(  # a JSON-escaped lone surrogate: valid JSON, not encodable as UTF-8 when echoed back
            "slide-path-lone-surrogate",
            "/v1/slides",
            b'{"path": "\\udcff.svs"}',
            {"content-type": "application/json"},
            says=("no slide",),
        ),
        Case("slide-json-not-object", "/v1/slides", b'["a.svs"]', {"content-type": "application/json"}, says=("path",)),
        Case("slide-json-path-not-string", "/v1/slides", json_body={"path": 5}, says=("path",)),
        Case(
            "slide-json-unknown-field",
            "/v1/slides",
            json_body={"path": "notes.svs", "colour": "red"},
            says=("unknown",),
        ),
        Case("slide-json-invalid", "/v1/slides", b'{"path": ', {"content-type": "application/json"}, says=("json",)),
        Case(
            "slide-wrong-content-type",
            "/v1/slides",
            b"path=a.svs",
            {"content-type": "text/plain"},
            says=("multipart", "json"),
        ),
        Case("slide-option-negative-mpp", "/v1/slides?mpp=-1", json_body={"path": "notes.svs"}, says=("mpp",)),
        Case("slide-option-tiny-tile", "/v1/slides?tile=1", json_body={"path": "notes.svs"}, says=("tile",)),
        Case(
            "slide-upload-not-a-slide",
            "/v1/slides",
            files={"slide": ("x.svs", b"not a slide", "text/plain")},
            says=not_slide,
        ),
        Case(
            "slide-upload-empty",
            "/v1/slides",
            files={"slide": ("x.svs", b"", "application/octet-stream")},
            says=("empty",),
        ),
        Case(
            "slide-upload-traversal-name",
            "/v1/slides",
            files={"slide": ("../../../etc/cron.d/x.svs", b"II*\x00" + bytes(64), "image/tiff")},
            says=not_slide,
        ),
        Case(
            "slide-upload-field-missing", "/v1/slides", files={"file": ("x.svs", b"x", "image/tiff")}, says=("slide",)
        ),
        Case(
            "slide-upload-over-limit",
            "/v1/slides",
            files={"slide": ("x.svs", bytes(MAX_SLIDE_BYTES + 1), "x/y")},
            statuses=_TOO_LARGE,
            says=("limit",),
        ),
        Case(
            "slide-unknown-job",
            "/v1/slides/0123456789abcdef0123456789abcdef",
            method="GET",
            statuses=frozenset({404}),
            says=("0123456789abcdef",),
        ),
        Case(
            "slide-unknown-result",
            "/v1/slides/0123456789abcdef0123456789abcdef/passwd",
            method="GET",
            statuses=frozenset({404}),
            says=("passwd",),
        ),
        Case(
            "slide-job-id-dotdot",
            "/v1/slides/%2E%2E/features",
            method="GET",
            statuses=frozenset({404}),
            says=("job", "not found", "no "),
        ),
        Case(
            "slide-job-id-dotdot-status",
            "/v1/slides/%2E%2E",
            method="GET",
            statuses=frozenset({404}),
            says=("job", "not found", "no "),
        ),
    ]
    return cases
