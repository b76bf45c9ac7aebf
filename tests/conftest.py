from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import CMU_SMALL, make_small_repo


@pytest.fixture(scope="session")
def small_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default model repository with shallow networks, built once per test session.

    ``TESSERA_TEST_REPO=DIR`` keeps it in DIR between sessions (rebuilt only where out of date),
    for quick local iterations; CI builds it fresh.
    """
    import os

    from service.export import build_repository
    from service.models import ModelRepository

    keep = os.environ.get("TESSERA_TEST_REPO")
    root = make_small_repo(Path(keep) if keep else tmp_path_factory.mktemp("model_repo"))
    rows = build_repository(ModelRepository(root))
    assert all(r.status in ("built", "up-to-date") for r in rows), rows
    assert keep or all(r.status == "built" for r in rows), rows
    return root


@pytest.fixture(scope="session")
def cmu_slide() -> Path:
    if not CMU_SMALL.exists():
        pytest.skip(f"real slides not found at {CMU_SMALL.parent} (checkout outside the workspace)")
    return CMU_SMALL
