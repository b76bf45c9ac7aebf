"""Decoding with limits, and preprocessing (resize, pad, normalise)."""

from service.imaging.decode import (
    SUPPORTED_MEDIA_TYPES,
    DecodedImage,
    DecodeLimits,
    decode_image,
    sniff_format,
)
from service.imaging.preprocess import PreparedImage, fit_size, prepare

__all__ = [
    "SUPPORTED_MEDIA_TYPES",
    "DecodeLimits",
    "DecodedImage",
    "PreparedImage",
    "decode_image",
    "fit_size",
    "prepare",
    "sniff_format",
]
