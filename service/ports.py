"""TCP ports: a free one on loopback (for the servers ``tessera serve``, the benchmarks, the load
test and the tests start on ports of their own), whether one is taken, and the shared socket each
ingress replica binds with ``front_end: replica``."""

from __future__ import annotations

import socket

__all__ = ["bind_error", "bind_reuse_port", "free_port"]


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (the OS picks it; another process may take it before use)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _socket(host: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past connections in TIME_WAIT do not count
    return sock


def bind_error(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be bound now ("Address already in use": a listening socket holds
    it), or None when it can."""
    with _socket(host) as sock:
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


def bind_reuse_port(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` that other ``SO_REUSEPORT`` sockets may share (the kernel
    spreads the connections over them); ``OSError`` naming the address when it cannot bind."""
    sock = _socket(host)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"could not bind {host}:{port}: {exc.strerror}") from None
    return sock
