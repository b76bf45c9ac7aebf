import pytest


@pytest.fixture(autouse=True)
def _no_ray():
    """Unit tests fail if anything initialises Ray."""
    yield
    import sys

    if "ray" in sys.modules:
        import ray

        assert not ray.is_initialized(), "a unit test initialised Ray"
