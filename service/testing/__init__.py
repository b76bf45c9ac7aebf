"""Development-only helpers: synthetic data for the tests, the benchmarks and the load test.

Not part of the service: no module that serves, routes or runs a model imports this package
(an import-linter contract in ``pyproject.toml`` checks it).
"""

from service.testing.synthetic_czi import SyntheticCzi, make_synthetic_czi
from service.testing.synthetic_mirax import SyntheticMirax, make_synthetic_mirax
from service.testing.synthetic_slides import SyntheticSlide, make_synthetic_slide

__all__ = [
    "SyntheticCzi",
    "SyntheticMirax",
    "SyntheticSlide",
    "make_synthetic_czi",
    "make_synthetic_mirax",
    "make_synthetic_slide",
]
