"""TCP ports: a free one on loopback (for the servers ``tessera serve``, the benchmarks, the load
test and the tests start on ports of their own), whether one is taken, and the shared socket each
ingress replica binds with ``front_end: replica``."""

from __future__ import annotations

import random
import socket
from pathlib import Path

__all__ = ["QUIET_PORTS", "bind_error", "bind_reuse_port", "free_port"]


#: Where ``free_port`` looks first: below Linux's ephemeral ports (32768-60999 by default) and clear
#: of Ray's own ranges (worker ports 10002-19999, Ray Serve's direct-ingress ports from 30000).
QUIET_PORTS = range(20000, 30000)


def _ephemeral_ports(path: str = "/proc/sys/net/ipv4/ip_local_port_range") -> range | None:
    """The kernel's ephemeral port range, or None where it cannot be read."""
    try:
        low, high = (int(v) for v in Path(path).read_text().split())
    except (OSError, ValueError):
        return None
    return range(low, high + 1)


def free_port(host: str = "127.0.0.1", *, ephemeral: range | None = None, tries: int = 50) -> int:
    """A port nothing is bound to now, from ``QUIET_PORTS`` when they lie outside the kernel's
    ephemeral range (else one the OS picks). Another process may still take it before use, but not
    the usual way: an ephemeral port is what every outgoing connection and every port-0 listener
    draws, and on a host where Ray has just opened hundreds of them, a port picked there and bound
    by HAProxy half a minute later was once taken by then ("Address already in use")."""
    ephemeral = ephemeral if ephemeral is not None else _ephemeral_ports()
    quiet = ephemeral is not None and (QUIET_PORTS.stop <= ephemeral.start or QUIET_PORTS.start >= ephemeral.stop)
    if quiet:
        for port in random.sample(QUIET_PORTS, tries):
            with socket.socket() as sock:
                try:
                    sock.bind((host, port))
                except OSError:
                    continue
                return port
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
