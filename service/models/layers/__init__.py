"""Network blocks shared by the in-house backbone families (timm's ``layers/`` convention)."""

from service.models.layers.neighborhood import (
    BACKENDS,
    Backend,
    NeighborhoodAttention2D,
    natten_available,
    neighborhood_attention,
    neighborhood_attention_macs,
    neighborhood_attention_reference,
    neighborhood_mask,
    resolve_backend,
)

__all__ = [
    "BACKENDS",
    "Backend",
    "NeighborhoodAttention2D",
    "natten_available",
    "neighborhood_attention",
    "neighborhood_attention_macs",
    "neighborhood_attention_reference",
    "neighborhood_mask",
    "resolve_backend",
]
