"""gRPC configured and broken fails the start loudly; gRPC off never looks at the servicers."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from service.serve.config import serve_config
from service.serve.grpc_options import GrpcUnavailable, servicer_functions
from service.settings import ServerSettings


@pytest.fixture
def broken_servicers(monkeypatch: pytest.MonkeyPatch) -> None:
    """``import service.api.grpc_servicer`` raises ImportError, as with grpcio missing.

    The app builder (imported by ``serve_config``) is loaded first, as it is in a started driver.
    """
    import service.serve.app  # noqa: F401

    monkeypatch.setitem(sys.modules, "service.api.grpc_servicer", None)


def test_servicer_functions_name_the_generated_add_functions() -> None:
    functions = servicer_functions()
    assert functions and all(f.startswith("service.api.protos.") and ".add_" in f for f in functions)


@pytest.mark.usefixtures("broken_servicers")
def test_servicers_that_do_not_import_raise_instead_of_turning_grpc_off() -> None:
    with pytest.raises(GrpcUnavailable, match="grpc_port"):
        servicer_functions()


@pytest.mark.usefixtures("broken_servicers")
def test_serve_config_with_grpc_configured_and_broken_fails(tmp_path: Path) -> None:
    with pytest.raises(GrpcUnavailable):
        serve_config(ServerSettings(model_repo=str(tmp_path), grpc_port=9000))


@pytest.mark.usefixtures("broken_servicers")
def test_serve_config_without_grpc_does_not_need_the_servicers(tmp_path: Path) -> None:
    config = serve_config(ServerSettings(model_repo=str(tmp_path), grpc_port=0))
    assert "grpc_options" not in config
