"""Architecture facts that travel with every artifact (torch-free).

The router's cost model, the preprocessor and the tiler read these instead of repeating
numbers. They are extracted from the instantiated PyTorch model at build time
(``service.models.facts_from_model``) and stored in ``manifest.json``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["ArchFacts"]


@dataclass(frozen=True)
class ArchFacts:
    """What the cost model needs to know about a backbone.

    ``depths``/``dims``/``num_heads`` have one entry per stage (ViT has one stage). ``patch_size``
    is the stem's stride in pixels; stage ``i`` then runs at stride ``patch_size * 2**i`` for the
    hierarchical families.
    """

    family: str
    patch_size: int
    depths: tuple[int, ...]
    dims: tuple[int, ...]
    num_heads: tuple[int, ...]
    mlp_ratio: float = 4.0
    window_size: int | None = None
    kernel_size: int | None = None
    num_prefix_tokens: int = 0
    params: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ArchFacts:
        return cls(
            family=raw["family"],
            patch_size=int(raw["patch_size"]),
            depths=tuple(raw["depths"]),
            dims=tuple(raw["dims"]),
            num_heads=tuple(raw["num_heads"]),
            mlp_ratio=float(raw.get("mlp_ratio", 4.0)),
            window_size=raw.get("window_size"),
            kernel_size=raw.get("kernel_size"),
            num_prefix_tokens=int(raw.get("num_prefix_tokens", 0)),
            params=int(raw.get("params", 0)),
            extra=dict(raw.get("extra", {})),
        )
