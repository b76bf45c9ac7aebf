"""``tessera bench`` / ``tessera loadtest`` argument parsing and dispatch (no benchmark runs)."""

from __future__ import annotations

import argparse
import sys
import types
from typing import Any

import pytest

from service.bench import command
from service.cli import loadtest as loadtest_command


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tessera")
    parser.add_argument("--model-repo", default=None)
    sub = parser.add_subparsers(dest="command", required=True)
    command.add_bench_parser(sub)
    loadtest_command.add_loadtest_parser(sub)
    return parser


@pytest.fixture
def fake_bench(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    calls: list[list[str]] = []
    module = types.ModuleType("fake_bench_module")

    def main(argv: list[str] | None = None) -> int:
        calls.append(list(argv or []))
        return 3

    module.main = main  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fake_bench_module", module)
    monkeypatch.setitem(command.BENCHMARKS, "attention", ("fake_bench_module", True))
    monkeypatch.setitem(command.BENCHMARKS, "report", ("fake_bench_module", False))
    return calls


def test_bench_passes_its_options_and_the_model_repo(fake_bench: list[list[str]]) -> None:
    args = _parser().parse_args(["--model-repo", "repo", "bench", "attention", "--sizes", "224", "512", "--help"])
    assert args.func is command.cmd_bench
    assert command.cmd_bench(args) == 3
    assert fake_bench == [["--model-repo", "repo", "--sizes", "224", "512", "--help"]]

    args = _parser().parse_args(["--model-repo", "repo", "bench", "attention", "--model-repo", "other"])
    command.cmd_bench(args)
    assert fake_bench[-1] == ["--model-repo", "other"]

    args = _parser().parse_args(["--model-repo", "repo", "bench", "report", "--out", "x.md"])
    command.cmd_bench(args)
    assert fake_bench[-1] == ["--out", "x.md"]


def test_every_benchmark_name_is_a_choice() -> None:
    for name in ("all", "ort-vs-torch", "attention", "service", "slide", "router", "report"):
        assert _parser().parse_args(["bench", name]).name == name
    with pytest.raises(SystemExit):
        _parser().parse_args(["bench", "nonsense"])


def test_missing_benchmark_module(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(command.BENCHMARKS, "router", ("service.bench.no_such_benchmark", False))
    assert command.cmd_bench(_parser().parse_args(["bench", "router"])) == 2
    assert "not available" in capsys.readouterr().err


def test_loadtest_parser_and_runner(monkeypatch: pytest.MonkeyPatch) -> None:
    args = _parser().parse_args(
        ["--model-repo", "r", "loadtest", "--start", "-u", "4", "-r", "2", "-t", "15s", "--mix", "predict=1"]
    )
    assert args.func is loadtest_command.cmd_loadtest
    from loadtest import runner

    seen: dict[str, Any] = {}

    def fake_run(options: Any) -> int:
        seen["options"] = options
        return 0

    monkeypatch.setattr(runner, "run", fake_run)
    assert loadtest_command.cmd_loadtest(args) == 0
    options = seen["options"]
    assert (options.start, options.users, options.spawn_rate, options.duration_s, options.model_repo) == (
        True,
        4,
        2.0,
        15,
        "r",
    )
