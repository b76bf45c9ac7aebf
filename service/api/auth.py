"""Optional bearer-token access control, shared by REST and gRPC.

Tokens come from the environment variable ``TESSERA_AUTH_TOKENS`` (comma-separated) and/or the
file named by ``ServerSettings.auth_tokens_file`` (one token a line; blank lines and lines
starting with ``#`` are ignored). Both sources add up. With neither configured, access control
is off and every request is served, as before.

When it is on, every REST route except ``PUBLIC_HTTP_PATHS`` (liveness, readiness: what a load
balancer or a kubelet probes; ``/metrics``: what Prometheus scrapes, usually without credentials)
needs ``Authorization: Bearer <token>``, and every gRPC method except ``PUBLIC_GRPC_METHODS``
needs the metadata ``authorization: Bearer <token>``. No credentials is ``Unauthenticated``
(401 / UNAUTHENTICATED); credentials that match no token is ``Forbidden`` (403 /
PERMISSION_DENIED), mapped by the one error mapping.

Rotation without a restart: the file is stat'ed on every check and read again when its mtime,
ctime, size or inode changes (a rewrite in place, a rename over it, a Kubernetes secret update). A
token file that is configured but missing or unreadable yields no tokens: the server fails
closed, and says so in its log.

The presented token is compared against every accepted token with ``hmac.compare_digest`` over
SHA-256 digests (equal lengths, no early exit), so the time taken says nothing about which
token or how much of it matched. Only digests are kept in memory; tokens are never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from service.errors import Forbidden, TesseraError, Unauthenticated
from service.settings import ProcessSettings, load

__all__ = [
    "AUTHORIZATION",
    "ENV_VAR",
    "PUBLIC_GRPC_METHODS",
    "PUBLIC_HTTP_PATHS",
    "TokenAuth",
    "app_auth",
    "bearer_token",
    "challenge_headers",
    "parse_token_file",
    "parse_token_list",
]

log = logging.getLogger(__name__)

#: Environment variable with comma-separated tokens.
ENV_VAR = "TESSERA_AUTH_TOKENS"
#: The header (REST) and metadata key (gRPC) that carries the credentials.
AUTHORIZATION = "authorization"
#: REST paths served without credentials: health probes and the Prometheus scrape.
PUBLIC_HTTP_PATHS = frozenset({"/v2/health/live", "/v2/health/ready", "/metrics"})
#: gRPC methods served without credentials: the OIP health probes.
PUBLIC_GRPC_METHODS = frozenset({"ServerLive", "ServerReady"})


def parse_token_list(text: str | None) -> list[str]:
    """Tokens from a comma-separated string (the environment variable)."""
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def parse_token_file(text: str) -> list[str]:
    """Tokens from a token file: one a line, blank lines and ``#`` comment lines ignored."""
    tokens = []
    for line in text.splitlines():
        token = line.strip()
        if token and not token.startswith("#"):
            tokens.append(token)
    return tokens


#: The signature of a token file that could not be stat'ed.
_MISSING = (-1, -1, -1, -1)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def bearer_token(authorization: str | None) -> str:
    """The token in an ``Authorization`` value; ``Unauthenticated`` when there is none."""
    if authorization is None or not authorization.strip():
        raise Unauthenticated(
            "this server requires a bearer token: send 'Authorization: Bearer <token>'", param=AUTHORIZATION
        )
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthenticated("the Authorization credentials must have the form 'Bearer <token>'", param=AUTHORIZATION)
    return token


def challenge_headers(err: TesseraError) -> dict[str, str]:
    """``WWW-Authenticate`` for a refused REST request (RFC 6750), added to the mapped headers."""
    if isinstance(err, Unauthenticated):
        return {"WWW-Authenticate": 'Bearer realm="tessera"'}
    if isinstance(err, Forbidden):
        return {"WWW-Authenticate": 'Bearer realm="tessera", error="invalid_token"'}
    return {}


class TokenAuth:
    """The accepted tokens (static ones and a re-read file) and the check of presented credentials."""

    def __init__(self, tokens: Iterable[str] = (), *, tokens_file: str | Path | None = None):
        self._static = tuple(_digest(t) for t in tokens if t)
        self._file = Path(tokens_file) if tokens_file else None
        self._file_digests: tuple[bytes, ...] = ()
        self._signature: tuple[int, int, int, int] | None = None  # (mtime, ctime, size, inode) of the last read
        self._lock = threading.Lock()
        if self._file is not None:
            self._refresh()

    @classmethod
    def from_settings(cls, settings: Any = None, environ: Mapping[str, str] | None = None) -> TokenAuth:
        """Tokens from ``TESSERA_AUTH_TOKENS`` in ``environ`` and the file ``settings.auth_tokens_file``."""
        tokens_file = getattr(settings, "auth_tokens_file", None) if settings is not None else None
        auth = cls(parse_token_list(load(ProcessSettings, environ).auth_tokens), tokens_file=tokens_file)
        if auth.enabled:
            log.info(
                "access control on: %d token(s) from %s%s",
                len(auth._static),
                ENV_VAR,
                f", and the token file {auth._file}" if auth._file else "",
            )
        return auth

    @property
    def enabled(self) -> bool:
        """Whether credentials are required: some token source is configured."""
        return bool(self._static) or self._file is not None

    def token_count(self) -> int:
        """How many tokens are accepted right now (after re-reading a changed file)."""
        return len(self._digests())

    def check(self, authorization: str | None) -> None:
        """Nothing when access control is off or the credentials match a token; else the typed error."""
        if not self.enabled:
            return
        presented = _digest(bearer_token(authorization))
        matched = False
        for accepted in self._digests():  # every token, no early exit
            matched |= hmac.compare_digest(accepted, presented)
        if not matched:
            raise Forbidden("the bearer token is not valid for this server", param=AUTHORIZATION)

    def __repr__(self) -> str:  # counts only: never a token
        source = f", file={str(self._file)!r}" if self._file else ""
        return f"TokenAuth(static={len(self._static)}{source})"

    # -- the token file --------------------------------------------------------------------------
    def _digests(self) -> tuple[bytes, ...]:
        if self._file is None:
            return self._static
        self._refresh()
        return self._static + self._file_digests

    @staticmethod
    def _stat(path: Path) -> tuple[int, int, int, int]:
        try:
            st = os.stat(path)  # follows symlinks: a swapped secret mount is a new inode
        except OSError:
            return _MISSING
        return (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino)

    def _refresh(self) -> None:
        path = self._file
        if path is None or self._stat(path) == self._signature:
            return
        with self._lock:
            signature = self._stat(path)
            if signature == self._signature:
                return
            digests: tuple[bytes, ...] = ()
            if signature == _MISSING:
                log.warning("token file %s is missing: no token from it is accepted", path)
            else:
                try:
                    text = path.read_text(encoding="utf-8", errors="surrogateescape")
                except OSError as exc:
                    log.warning("token file %s could not be read (%s): no token from it is accepted", path, exc)
                else:
                    digests = tuple(_digest(t) for t in parse_token_file(text))
                    log.info("token file %s read: %d token(s)", path, len(digests))
            self._file_digests, self._signature = digests, signature


def app_auth(state: Any) -> TokenAuth:
    """The ``TokenAuth`` of an app (``app.state.auth``), made from ``app.state.settings`` on first use."""
    auth: TokenAuth | None = getattr(state, "auth", None)
    if auth is None:
        auth = TokenAuth.from_settings(getattr(state, "settings", None))
        state.auth = auth
    return auth
