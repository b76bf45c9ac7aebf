"""What the load test sends: the user mix, the image-size mix, the images and the request bodies.

Everything here is plain Python (no Locust, no gRPC), so the runner, the benchmarks and the unit
tests use it too. The Locust file reads its configuration from ``TESSERA_LT_*`` environment
variables (:meth:`Workload.from_env`); ``tessera loadtest`` sets them from its flags.

Images are real tissue: JPEGs cut with OpenSlide from the slides in ``../shared/data/slides``
(or ``TESSERA_LT_SLIDES``), a square region per size and variant, resized when the slide is
smaller than the size asked for.
"""

from __future__ import annotations

import io
import logging
import os
import random
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from service.settings import DEFAULT_LT_SLIDES, LoadtestSettings, load

__all__ = [
    "DEFAULT_MIX",
    "DEFAULT_PACE_S",
    "DEFAULT_SIZES",
    "USER_KINDS",
    "Workload",
    "cut_slide_jpegs",
    "format_weights",
    "is_loopback_host",
    "multipart_body",
    "parse_sizes",
    "parse_weights",
    "require_loopback_target",
    "require_loopback_url",
    "synthetic_slide_file",
]

log = logging.getLogger(__name__)

#: The user classes of the Locust file, by the short name the mix uses.
USER_KINDS = ("predict", "oip", "grpc", "slide")
DEFAULT_MIX = LoadtestSettings.model_fields["mix"].default
DEFAULT_SIZES = LoadtestSettings.model_fields["sizes"].default
#: Seconds between the starts of one user's requests (Locust's ``constant_pacing``): 8 users at 10 s
#: offer 0.8 requests a second, which the reference 2-core host sustains (``loadtest/README.md``).
DEFAULT_PACE_S = 10.0
#: Largest image side the load test cuts (the design's largest single-image size).
MAX_SIZE = 2048

DEFAULT_SLIDES = DEFAULT_LT_SLIDES
_SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn")


def parse_weights(text: str, *, allowed: tuple[str, ...] | None = None, what: str = "mix") -> dict[str, int]:
    """``"a=3,b=1"`` → ``{"a": 3, "b": 1}``; weights are non-negative integers, at least one positive."""
    weights: dict[str, int] = {}
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        name, sep, value = part.partition("=")
        if not sep or not name:
            raise ValueError(f"{what}: expected NAME=WEIGHT, got {part!r}")
        if allowed is not None and name not in allowed:
            raise ValueError(f"{what}: unknown name {name!r}; expected one of {', '.join(allowed)}")
        if name in weights:
            raise ValueError(f"{what}: {name!r} is given twice")
        try:
            weight = int(value)
        except ValueError:
            raise ValueError(f"{what}: weight of {name!r} must be an integer, got {value!r}") from None
        if weight < 0:
            raise ValueError(f"{what}: weight of {name!r} must be >= 0, got {weight}")
        weights[name] = weight
    if not any(weights.values()):
        raise ValueError(f"{what}: at least one weight must be positive (got {text!r})")
    return weights


def format_weights(weights: Mapping[str, int]) -> str:
    return ",".join(f"{k}={v}" for k, v in weights.items())


def parse_sizes(text: str) -> dict[int, int]:
    """``"224=8,2048=1"`` → ``{224: 8, 2048: 1}``; sides from 16 to 2048 pixels."""
    sizes: dict[int, int] = {}
    for name, weight in parse_weights(text, what="sizes").items():
        try:
            side = int(name)
        except ValueError:
            raise ValueError(f"sizes: {name!r} is not a side in pixels") from None
        if not 16 <= side <= MAX_SIZE:
            raise ValueError(f"sizes: {side} is outside 16..{MAX_SIZE} pixels")
        if weight:
            sizes[side] = weight
    return sizes


@dataclass(frozen=True)
class Workload:
    """The load test's configuration, as the Locust processes read it from the environment."""

    mix: dict[str, int] = field(default_factory=lambda: parse_weights(DEFAULT_MIX, allowed=USER_KINDS))
    sizes: dict[int, int] = field(default_factory=lambda: parse_sizes(DEFAULT_SIZES))
    model: str = "vit_small"
    oip_batch: int = 1
    oip_size: int = 224
    grpc_target: str | None = None
    slides_dir: Path = DEFAULT_SLIDES
    slide_path: str | None = None
    slide_side: int = 2048
    slide_poll_s: float = 0.5
    slide_timeout_s: float = 300.0
    wait_s: float = 0.0
    pace_s: float = 0.0
    variants: int = 4
    seed: int = 0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Workload:
        """The workload ``TESSERA_LT_*`` describe (``os.environ``, or ``env``); a bad value names its variable."""
        return cls.from_settings(load(LoadtestSettings, env))

    @classmethod
    def from_settings(cls, lt: LoadtestSettings) -> Workload:
        try:
            mix = parse_weights(lt.mix, allowed=USER_KINDS)
        except ValueError as exc:
            raise ValueError(f"TESSERA_LT_MIX: {exc}") from None
        try:
            sizes = parse_sizes(lt.sizes)
        except ValueError as exc:
            raise ValueError(f"TESSERA_LT_SIZES: {exc}") from None
        return cls(
            mix=mix,
            sizes=sizes,
            model=lt.model,
            oip_batch=lt.oip_batch,
            oip_size=lt.oip_size,
            grpc_target=lt.grpc or None,
            slides_dir=lt.slides,
            slide_path=lt.slide_path or None,
            slide_side=lt.slide_side,
            slide_poll_s=lt.slide_poll_s,
            slide_timeout_s=lt.slide_timeout_s,
            wait_s=lt.wait_s,
            pace_s=lt.pace_s,
            variants=lt.variants,
            seed=lt.seed,
        )

    def to_env(self) -> dict[str, str]:
        """The environment that makes :meth:`from_env` in another process return this workload."""
        env = {
            "TESSERA_LT_MIX": format_weights(self.mix),
            "TESSERA_LT_SIZES": format_weights({str(k): v for k, v in self.sizes.items()}),
            "TESSERA_LT_MODEL": self.model,
            "TESSERA_LT_OIP_BATCH": str(self.oip_batch),
            "TESSERA_LT_OIP_SIZE": str(self.oip_size),
            "TESSERA_LT_SLIDES": str(self.slides_dir),
            "TESSERA_LT_SLIDE_SIDE": str(self.slide_side),
            "TESSERA_LT_SLIDE_POLL_S": str(self.slide_poll_s),
            "TESSERA_LT_SLIDE_TIMEOUT_S": str(self.slide_timeout_s),
            "TESSERA_LT_WAIT_S": str(self.wait_s),
            "TESSERA_LT_PACE_S": str(self.pace_s),
            "TESSERA_LT_VARIANTS": str(self.variants),
            "TESSERA_LT_SEED": str(self.seed),
        }
        if self.grpc_target:
            env["TESSERA_LT_GRPC"] = self.grpc_target
        if self.slide_path:
            env["TESSERA_LT_SLIDE_PATH"] = self.slide_path
        return env

    def active_kinds(self) -> list[str]:
        return [kind for kind in USER_KINDS if self.mix.get(kind, 0) > 0]

    def pick_size(self, rng: random.Random) -> int:
        sides = list(self.sizes)
        return rng.choices(sides, weights=[self.sizes[s] for s in sides])[0]


# -- images --------------------------------------------------------------------------------------------
def slide_files(slides_dir: Path) -> list[Path]:
    if not slides_dir.is_dir():
        return []
    return sorted(p for p in slides_dir.iterdir() if p.suffix.lower() in _SLIDE_SUFFIXES)


def cut_slide_jpegs(
    sizes: list[int] | tuple[int, ...],
    *,
    slides_dir: Path = DEFAULT_SLIDES,
    variants: int = 4,
    seed: int = 0,
    quality: int = 90,
) -> dict[int, list[bytes]]:
    """``variants`` JPEGs per side in ``sizes``, cut from the slides in ``slides_dir`` with OpenSlide.

    A region of ``side``² level-0 pixels at a random place when the slide is large enough,
    else the largest square the slide has, resized to ``side``. Without slides (or OpenSlide)
    the images are synthetic, and a warning says so.
    """
    files = slide_files(slides_dir)
    try:
        import openslide
    except ImportError:  # pragma: no cover - openslide-python is a dependency
        files = []
    if not files:
        log.warning("no slides in %s (or no OpenSlide): load-test images are synthetic", slides_dir)
        return {side: [_synthetic_jpeg(side, seed + i, quality) for i in range(variants)] for side in sizes}
    rng = np.random.default_rng(seed)
    out: dict[int, list[bytes]] = {side: [] for side in sizes}
    handles = [openslide.OpenSlide(str(path)) for path in files]
    try:
        for side in sizes:
            for i in range(variants):
                slide = handles[i % len(handles)]
                width, height = slide.dimensions
                region = min(side, width, height)
                x = int(rng.integers(0, width - region + 1))
                y = int(rng.integers(0, height - region + 1))
                image = slide.read_region((x, y), 0, (region, region)).convert("RGB")
                if region != side:
                    image = image.resize((side, side), Image.Resampling.BICUBIC)
                out[side].append(_jpeg(image, quality))
    finally:
        for handle in handles:
            handle.close()
    return out


def _jpeg(image: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _synthetic_jpeg(side: int, seed: int, quality: int) -> bytes:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) / side
    base = np.stack([200 + 40 * np.sin(6 * xx), 120 + 60 * np.cos(5 * yy), 170 + 30 * np.sin(4 * (xx + yy))], -1)
    pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    return _jpeg(Image.fromarray(pixels), quality)


def multipart_body(
    field_name: str, filename: str, data: bytes, content_type: str, fields: Mapping[str, str] | None = None
) -> tuple[bytes, str]:
    """A ``multipart/form-data`` body with one file and some text fields; returns (body, Content-Type)."""
    boundary = f"tessera-{uuid.uuid4().hex}"
    parts: list[bytes] = []
    for name, value in (fields or {}).items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    parts.append(
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field_name}"; filename="{filename}"\r\n'
            f"Content-Type: {content_type}\r\n\r\n"
        ).encode()
        + data
        + b"\r\n"
    )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def synthetic_slide_file(side: int, cache_dir: Path, *, tissue_everywhere: bool = False, mpp: float = 0.5) -> Path:
    """A synthetic pyramidal TIFF of ``side``² pixels at ``mpp`` µm/px, written once into ``cache_dir``.

    ``tissue_everywhere`` covers the whole slide with tissue-like blobs (every tile is tissue).
    """
    from service.testing.synthetic_slides import make_synthetic_slide

    name = f"synthetic-{side}-{'full' if tissue_everywhere else 'blobs'}-{mpp:g}.tiff"
    path = cache_dir / name
    if path.exists() and path.stat().st_size > 0:
        return path
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = cache_dir / f".{name}.{os.getpid()}.partial"
    if tissue_everywhere:
        # two blobs centred on the slide whose inner radius (wobble included) exceeds the half-diagonal
        make_synthetic_slide(partial, side, side, mpp=mpp, n_blobs=2, blob_scale=3.0)
    else:
        make_synthetic_slide(partial, side, side, mpp=mpp)
    partial.replace(path)
    return path


# -- loopback only ----------------------------------------------------------------------------------------
def is_loopback_host(host: str) -> bool:
    """``localhost`` or a loopback address (127.0.0.0/8, ::1); nothing else, not even names."""
    import ipaddress

    host = host.strip().strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def require_loopback_url(url: str) -> str:
    """``url`` unchanged when it is ``http(s)://<loopback>[:port]``; ``ValueError`` otherwise."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"host must be an http(s) URL such as http://127.0.0.1:8000, got {url!r}")
    if not is_loopback_host(parts.hostname):
        raise ValueError(f"refusing to load-test {parts.hostname!r}: only loopback hosts (127.0.0.1, ::1, localhost)")
    try:
        parts.port  # noqa: B018 - validates the port
    except ValueError as exc:
        raise ValueError(f"bad port in {url!r}: {exc}") from None
    return url


def require_loopback_target(target: str) -> str:
    """A gRPC ``host:port`` target on a loopback host; ``ValueError`` otherwise."""
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"gRPC target must be HOST:PORT, got {target!r}")
    if not is_loopback_host(host):
        raise ValueError(f"refusing to load-test {host!r}: only loopback hosts (127.0.0.1, ::1, localhost)")
    return target
