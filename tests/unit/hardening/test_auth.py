"""Access control: ``TokenAuth`` (sources, parsing, rotation, constant-time comparison) and the REST
middleware (every route but health and metrics, both error envelopes, tokens never logged)."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from service.api import auth as auth_module
from service.api.auth import ENV_VAR, PUBLIC_HTTP_PATHS, TokenAuth, app_auth, bearer_token, parse_token_file
from service.api.rest import create_app
from service.api.serving import ServingCore
from service.errors import Forbidden, Unauthenticated
from service.settings import ServerSettings
from service.slides import JobManager
from tests.unit.hardening.conftest import make_app
from tests.unit.hardening.corpus import encode

TOKEN = "tok-3f9a1c0e7d"
OTHER = "second-token-with-another-length"


def _rewrite(path: Path, text: str) -> None:
    """Rewrite in place, as an editor or `echo >` would (the inode stays)."""
    time.sleep(0.02)  # past the file system's timestamp granularity
    with path.open("w") as fh:
        fh.write(text)


# -- TokenAuth ----------------------------------------------------------------------------------------
def test_off_by_default_without_tokens() -> None:
    auth = TokenAuth.from_settings(ServerSettings(), environ={})
    assert not auth.enabled
    auth.check(None)  # anything goes
    auth.check("Bearer whatever")


def test_tokens_from_the_environment_variable() -> None:
    auth = TokenAuth.from_settings(None, environ={ENV_VAR: f" {TOKEN}, ,{OTHER},"})
    assert auth.enabled and auth.token_count() == 2
    auth.check(f"Bearer {TOKEN}")
    auth.check(f"bearer   {OTHER}  ")  # the scheme is case-insensitive, whitespace is not part of the token
    with pytest.raises(Forbidden):
        auth.check("Bearer nope")
    with pytest.raises(Forbidden):
        auth.check(f"Bearer {TOKEN[:-1]}")  # a prefix is not the token
    with pytest.raises(Forbidden):
        auth.check(f"Bearer {TOKEN},{OTHER}")


@pytest.mark.parametrize("header", [None, "", "   ", TOKEN, f"Basic {TOKEN}", "Bearer", "Bearer    ", f"Token {TOKEN}"])
def test_missing_or_malformed_credentials_are_unauthenticated(header: str | None) -> None:
    with pytest.raises(Unauthenticated) as info:
        TokenAuth([TOKEN]).check(header)
    assert info.value.http_status == 401 and info.value.grpc_status == "UNAUTHENTICATED"
    assert "Bearer" in info.value.message and TOKEN not in info.value.message


def test_wrong_token_is_permission_denied() -> None:
    with pytest.raises(Forbidden) as info:
        TokenAuth([TOKEN]).check("Bearer not-the-token")
    assert info.value.http_status == 403 and info.value.grpc_status == "PERMISSION_DENIED"
    assert info.value.code == "permission_denied"


def test_token_file_lines_comments_and_blanks(tmp_path: Path) -> None:
    assert parse_token_file(f"# comment\n\n  {TOKEN}  \n   # indented comment\n{OTHER}\n") == [TOKEN, OTHER]
    path = tmp_path / "tokens"
    path.write_text(f"# rotated 2026-11-01\n{TOKEN}\n\n{OTHER}\n")
    auth = TokenAuth(tokens_file=path)
    assert auth.enabled and auth.token_count() == 2
    auth.check(f"Bearer {OTHER}")
    with pytest.raises(Forbidden):
        auth.check("Bearer # rotated 2026-11-01")


def test_environment_and_file_tokens_add_up(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"{OTHER}\n")
    auth = TokenAuth.from_settings(ServerSettings(auth_tokens_file=str(path)), environ={ENV_VAR: TOKEN})
    auth.check(f"Bearer {TOKEN}")
    auth.check(f"Bearer {OTHER}")


def test_rotation_by_rewriting_the_file(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"{TOKEN}\n")
    auth = TokenAuth(tokens_file=path)
    auth.check(f"Bearer {TOKEN}")
    _rewrite(path, f"{OTHER}\n")
    with pytest.raises(Forbidden):
        auth.check(f"Bearer {TOKEN}")
    auth.check(f"Bearer {OTHER}")
    _rewrite(path, f"{TOKEN}\n{OTHER}\n")  # an overlap window: both accepted
    auth.check(f"Bearer {TOKEN}")
    auth.check(f"Bearer {OTHER}")


def test_rotation_by_renaming_over_the_file(tmp_path: Path) -> None:
    """How Kubernetes updates a mounted secret, and how careful tools write: a new inode."""
    path = tmp_path / "tokens"
    path.write_text(f"{TOKEN}\n")
    auth = TokenAuth(tokens_file=path)
    auth.check(f"Bearer {TOKEN}")
    staged = tmp_path / "tokens.new"
    staged.write_text(f"{OTHER[: len(TOKEN)]}\n")  # same size and maybe same mtime: the inode tells
    os.replace(staged, path)
    with pytest.raises(Forbidden):
        auth.check(f"Bearer {TOKEN}")
    auth.check(f"Bearer {OTHER[: len(TOKEN)]}")


def test_missing_token_file_fails_closed_and_recovers(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "tokens"
    auth = TokenAuth(tokens_file=path)  # configured but absent
    assert auth.enabled and auth.token_count() == 0
    with pytest.raises(Forbidden):
        auth.check(f"Bearer {TOKEN}")
    path.write_text(f"{TOKEN}\n")
    auth.check(f"Bearer {TOKEN}")
    path.unlink()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=auth_module.__name__):
        with pytest.raises(Forbidden):
            auth.check(f"Bearer {TOKEN}")
        with pytest.raises(Forbidden):
            auth.check(f"Bearer {TOKEN}")
    assert sum("is missing" in r.getMessage() for r in caplog.records) == 1  # said once, not per request


def test_every_token_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """compare_digest over equal-length digests of every token, whichever matches (no early exit)."""
    calls: list[tuple[int, int]] = []
    real = auth_module.hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(auth_module.hmac, "compare_digest", counting)
    tokens = [f"token-{i}" * (i + 1) for i in range(5)]
    auth = TokenAuth(tokens)
    for presented in (tokens[0], tokens[4], "x", "y" * 1000):
        calls.clear()
        with contextlib.suppress(Forbidden):
            auth.check(f"Bearer {presented}")
        assert len(calls) == len(tokens)
        assert set(calls) == {(32, 32)}  # SHA-256 digests: the length of a token does not show


def test_repr_and_state_hold_no_token(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"{OTHER}\n")
    auth = TokenAuth([TOKEN], tokens_file=path)
    state = repr(auth) + repr(vars(auth))
    assert TOKEN not in state and OTHER not in state
    assert TOKEN.encode() not in b"".join(auth._static)


def test_bearer_token_parsing() -> None:
    assert bearer_token(f"Bearer {TOKEN}") == TOKEN
    assert bearer_token(f"  BEARER\t{TOKEN} ".replace("\t", " ")) == TOKEN


# -- REST ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def token_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("auth") / "tokens"
    path.write_text(f"# tessera tokens\n{TOKEN}\n")
    return path


@pytest.fixture(scope="module")
def protected(core: ServingCore, manager: JobManager, token_file: Path) -> TestClient:
    app = make_app(core, manager, TokenAuth(tokens_file=token_file))

    async def metrics() -> str:
        return "# TYPE tessera_up gauge\ntessera_up 1\n"

    app.state.metrics_source = metrics
    return TestClient(app, raise_server_exceptions=False)


def _routes(app: FastAPI) -> list[tuple[str, str]]:
    """Every (method, concrete path) the app serves (its OpenAPI operations and documentation pages),
    path parameters filled in."""
    fill = {"{model}": "vit_small", "{version}": "1", "{job_id}": "0" * 32, "{name}": "features"}
    routes = [("GET", "/openapi.json"), ("GET", "/docs"), ("GET", "/redoc")]
    for template, operations in app.openapi()["paths"].items():
        path = template
        for key, value in fill.items():
            path = path.replace(key, value)
        routes += [(method.upper(), path) for method in operations]
    return routes


def test_every_route_but_health_and_metrics_needs_a_token(protected: TestClient) -> None:
    routes = _routes(protected.app)  # type: ignore[arg-type]
    assert {("POST", "/v1/predict"), ("POST", "/v2/models/vit_small/infer"), ("GET", "/openapi.json")} <= set(routes)
    checked = 0
    for method, path in routes:
        if path in PUBLIC_HTTP_PATHS:
            continue
        none = protected.request(method, path)
        assert none.status_code == 401, (method, path, none.status_code)
        assert none.headers["www-authenticate"].startswith("Bearer")
        wrong = protected.request(method, path, headers={"authorization": "Bearer wrong"})
        assert wrong.status_code == 403, (method, path, wrong.status_code)
        right = protected.request(method, path, headers={"authorization": f"Bearer {TOKEN}"})
        # A 403 with a valid token can only be the route's own refusal (model control is off for
        # repository load/unload), never the token check's, which names invalid_token.
        assert right.status_code != 401, (method, path, right.status_code)
        assert "invalid_token" not in right.headers.get("www-authenticate", ""), (method, path)
        if right.status_code == 403:
            assert path.startswith("/v2/repository/models/"), (method, path)
        checked += 1
    assert checked >= 15
    # unknown paths too: nothing about the server is answered without a token
    assert protected.get("/no/such/path").status_code == 401


def test_health_and_metrics_need_no_token(protected: TestClient) -> None:
    assert protected.get("/v2/health/live").json() == {"live": True}
    assert protected.get("/v2/health/ready").status_code == 200
    metrics = protected.get("/metrics")
    assert metrics.status_code == 200 and "tessera_up 1" in metrics.text
    assert protected.get("/v2/health/live/").status_code != 200  # exact paths only, no prefix tricks
    assert protected.get("/v2/health/live/../../v1/models").status_code in (401, 404)


def test_refusals_use_each_envelope_and_typed_codes(protected: TestClient) -> None:
    v1 = protected.post("/v1/predict", content=encode("JPEG"), headers={"content-type": "image/jpeg"})
    assert v1.status_code == 401
    assert v1.json()["error"]["code"] == "unauthenticated" and v1.json()["error"]["param"] == "authorization"
    v1 = protected.get("/v1/models", headers={"authorization": "Bearer wrong"})
    assert v1.status_code == 403 and v1.json()["error"]["code"] == "permission_denied"
    assert 'error="invalid_token"' in v1.headers["www-authenticate"]
    v2 = protected.get("/v2/models/vit_small")
    assert v2.status_code == 401 and isinstance(v2.json()["error"], str) and "Bearer" in v2.json()["error"]
    assert v2.headers["x-request-id"]  # refusals pass through the access log middleware


def test_authorised_requests_are_served(protected: TestClient) -> None:
    headers = {"authorization": f"Bearer {TOKEN}", "content-type": "image/jpeg"}
    answer = protected.post("/v1/predict?model=vit_small", content=encode("JPEG"), headers=headers)
    assert answer.status_code == 200 and len(answer.json()["embedding"]) == 384
    meta = protected.get("/v2/models/vit_small", headers={"authorization": f"Bearer {TOKEN}"})
    assert meta.status_code == 200 and meta.json()["name"] == "vit_small"


def test_rest_rotation_by_rewriting_the_file(protected: TestClient, token_file: Path) -> None:
    original = token_file.read_text()
    try:
        _rewrite(token_file, f"{OTHER}\n")
        assert protected.get("/v1/models", headers={"authorization": f"Bearer {TOKEN}"}).status_code == 403
        assert protected.get("/v1/models", headers={"authorization": f"Bearer {OTHER}"}).status_code == 200
    finally:
        _rewrite(token_file, original)
    assert protected.get("/v1/models", headers={"authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_tokens_are_never_logged(protected: TestClient, caplog: pytest.LogCaptureFixture, token_file: Path) -> None:
    wrong = "wrong-secret-9c2e"
    with caplog.at_level(logging.DEBUG):
        protected.get("/v1/models", headers={"authorization": f"Bearer {TOKEN}"})
        protected.get("/v1/models", headers={"authorization": f"Bearer {wrong}"})
        protected.get("/v1/models")
        TokenAuth.from_settings(ServerSettings(auth_tokens_file=str(token_file)), environ={ENV_VAR: OTHER})
    access = [r for r in caplog.records if r.name == "tessera.access"]
    assert [getattr(r, "status", None) for r in access] == [200, 403, 401]  # the refusals are logged too
    for record in caplog.records:
        text = record.getMessage() + repr(vars(record))
        for secret in (TOKEN, wrong, OTHER, "Bearer"):
            assert secret not in text, f"{secret!r} logged by {record.name}: {text[:300]}"


def test_app_auth_comes_from_settings_or_the_environment(
    core: ServingCore, token_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    plain = create_app()
    plain.state.core = core
    assert TestClient(plain).get("/v1/models").status_code == 200  # off by default

    from_settings = create_app()
    from_settings.state.core = core
    from_settings.state.settings = ServerSettings(auth_tokens_file=str(token_file))
    client = TestClient(from_settings)
    assert client.get("/v1/models").status_code == 401
    assert client.get("/v1/models", headers={"authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert app_auth(from_settings.state) is app_auth(from_settings.state)  # built once, then kept

    monkeypatch.setenv(ENV_VAR, f"{OTHER},{TOKEN}")
    from_env = create_app()
    from_env.state.core = core
    client = TestClient(from_env)
    assert client.get("/v1/models").status_code == 401
    assert client.get("/v1/models", headers={"authorization": f"Bearer {OTHER}"}).status_code == 200
