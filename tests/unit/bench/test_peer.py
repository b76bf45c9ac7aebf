"""``tessera bench peer``'s harness without Triton: options, the stub's sitecustomize, the no-op
model, commands, result shaping and the report. The Triton side itself runs only in the benchmark
(it needs the ``peer`` extra, which ``make test`` does not install)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.bench import command, peer
from service.bench._common import CpuReading, tree_cpu_seconds
from service.bench.report import evaluate_goals, load_results, write_report
from service.models.config import ModelConfig


# -- options --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"clients": 0}, "--clients"),
        ({"clients": 257}, "--clients"),
        ({"duration_s": 0}, "--duration"),
        ({"warmup_s": -1}, "--warmup"),
        ({"raw_duration_s": 0}, "--raw-duration"),
        ({"servers": ("tessera", "tgi")}, "--server"),
        ({"servers": ("triton", "triton")}, "--server"),
        ({"servers": ()}, "--server"),
        ({"protocols": ("http",)}, "--protocol"),
        ({"model": peer.NOOP_MODEL}, "no-op"),
        ({"rounds": 0}, "--rounds"),
        ({"rounds": 11}, "--rounds"),
    ],
)
def test_options_name_the_bad_value(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        peer.PeerOptions(**change).validate()


def test_defaults_are_valid_and_compare_both_servers_on_both_protocols() -> None:
    options = peer.PeerOptions().validate()
    assert options.servers == ("tessera", "triton") and options.protocols == ("grpc", "rest")
    assert options.clients == 16 and options.noop


def test_command_line_errors_exit_2_before_anything_starts(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        peer.main(["--clients", "0"])
    assert exc.value.code == 2
    assert "--clients must be 1..256" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        peer.main(["--server", "tessera,nginx"])


def test_registered_as_a_benchmark_taking_the_model_repo() -> None:
    assert command.BENCHMARKS["peer"] == ("service.bench.peer", True)


# -- Triton's stub: the sitecustomize --------------------------------------------------------------------
def test_sitecustomize_is_written_where_asked(tmp_path: Path) -> None:
    path = peer.write_sitecustomize(tmp_path / "stub")
    assert path == tmp_path / "stub" / "sitecustomize.py"
    assert path.read_text() == peer.SITECUSTOMIZE
    compile(path.read_text(), str(path), "exec")


def test_triton_env_runs_its_sitecustomize_and_sees_this_environment(tmp_path: Path) -> None:
    """Triton's stub ignores PYTHONPATH but runs ``site`` for the environment first on PATH: the
    throw-away environment imports its own sitecustomize and still finds this one's packages."""
    python = peer.write_stub_env(tmp_path / "env")
    assert python == tmp_path / "env" / "bin" / "python3" and python.exists()
    assert (tmp_path / "env" / "pyvenv.cfg").read_text().startswith("home = ")
    code = "import sys, sitecustomize, numpy, service; print(sys.prefix); print(sitecustomize.__file__)"
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    prefix, module = out.stdout.split()
    assert Path(prefix) == tmp_path / "env"
    assert Path(module) == peer.site_packages(tmp_path / "env") / "sitecustomize.py"
    assert peer.write_stub_env(tmp_path / "env") == python  # again: idempotent


def test_install_triton_is_skipped_when_the_stamp_matches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []

    def fake_run(command: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        calls.append(command)
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(peer.subprocess, "run", fake_run)
    peer.install_triton(tmp_path / "env", ("nvidia-pytriton==0.7.0",))
    peer.install_triton(tmp_path / "env", ("nvidia-pytriton==0.7.0",))
    assert len(calls) == 1
    assert calls[0][-3:] == ["--target", str(peer.site_packages(tmp_path / "env")), "nvidia-pytriton==0.7.0"]
    peer.install_triton(tmp_path / "env", ("nvidia-pytriton==0.7.0", "numpy==1.26.4"))
    assert len(calls) == 2


def test_install_triton_failure_names_the_requirements(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        peer.subprocess,
        "run",
        lambda command, **_: subprocess.CompletedProcess(command, 1, "", "ERROR: No matching distribution"),
    )
    with pytest.raises(RuntimeError, match=r"nvidia-pytriton==0.7.0 for Triton failed: ERROR: No matching"):
        peer.install_triton(tmp_path / "env")
    assert not (peer.site_packages(tmp_path / "env") / ".tessera-peer-requirements").exists()


def _run(code: str, folder: Path) -> subprocess.CompletedProcess[str]:
    env = {"PYTHONPATH": str(folder), "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)


def test_sitecustomize_does_nothing_where_the_c_rlock_has_recursion_count(tmp_path: Path) -> None:
    peer.write_sitecustomize(tmp_path)
    out = _run(
        "import sys; print('multiprocessing.resource_tracker' in sys.modules)",
        tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"  # not even imported in an ordinary interpreter


def test_sitecustomize_gives_the_tracker_a_python_rlock_where_the_c_one_lacks_the_method(tmp_path: Path) -> None:
    """An old embedded libpython is simulated by a ``_thread`` whose RLock has no ``_recursion_count``."""
    path = peer.write_sitecustomize(tmp_path / "stub")
    code = f"""
import sys, types, threading, _thread
real = _thread
sys.modules["_thread"] = types.SimpleNamespace(RLock=type("OldRLock", (), {{}}))
exec(compile(open({str(path)!r}).read(), "sitecustomize", "exec"), {{}})
sys.modules["_thread"] = real
from multiprocessing import resource_tracker
lock = resource_tracker._resource_tracker._lock
assert isinstance(lock, threading._PyRLock), type(lock)
with lock:
    assert lock._recursion_count() == 1
print("ok")
"""
    out = _run(code, tmp_path / "empty")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


# -- the repository both servers serve ---------------------------------------------------------------------
def test_noop_config_is_a_valid_model_batched_like_the_measured_one() -> None:
    batching = {"max_batch_size": 8, "batch_wait_timeout_s": 0.01}
    cfg = ModelConfig.model_validate(peer.noop_config(batching))
    assert cfg.name == peer.NOOP_MODEL
    assert cfg.batching.max_batch_size == 8 and cfg.batching.batch_wait_timeout_s == 0.01
    assert cfg.architecture.kwargs["depth"] == 1 and cfg.output.embedding_dim == cfg.architecture.kwargs["embed_dim"]


def _built_source(tmp_path: Path) -> Path:
    """A source repository with vit_small's real config and a version folder holding a manifest."""
    root = Path(__file__).resolve().parents[3] / "model_repo"
    source = tmp_path / "source"
    (source / "vit_small" / "1").mkdir(parents=True)
    (source / "vit_small" / "config.yaml").write_text((root / "vit_small" / "config.yaml").read_text())
    return source


def test_prepare_repo_links_the_model_and_adds_the_noop_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from service.models import ModelRepository

    source = _built_source(tmp_path)
    monkeypatch.setattr(ModelRepository, "require_manifest", lambda self, name: None)
    repo = peer.prepare_repo(source, "vit_small", tmp_path / "work", noop=True)
    assert (repo / "vit_small").is_symlink()
    assert (repo / "vit_small").resolve() == (source / "vit_small").resolve()
    names = ModelRepository(repo).names()
    assert sorted(names) == sorted(["vit_small", peer.NOOP_MODEL])
    assert ModelRepository(repo).config(peer.NOOP_MODEL).batching.max_batch_size == 8
    # again (the second run of the benchmark): same result, the link replaced
    assert peer.prepare_repo(source, "vit_small", tmp_path / "work", noop=False) == repo
    assert not (repo / "routes.yaml").exists()


def test_prepare_repo_refuses_an_unbuilt_model(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="tessera build"):
        peer.prepare_repo(_built_source(tmp_path), "vit_small", tmp_path / "work", noop=True)


def test_server_commands(tmp_path: Path) -> None:
    ports = peer.Ports(8100, 9100, 8180)
    tessera = peer.tessera_command(tmp_path, ports)
    assert tessera[1:3] == ["-m", "service.cli"] and "serve" in tessera
    assert tessera[tessera.index("--grpc-port") + 1] == "9100" and tessera[tessera.index("--host") + 1] == "127.0.0.1"
    triton = peer.triton_command(tmp_path, ["vit_small", peer.NOOP_MODEL], ports, tmp_path / "env" / "bin" / "python3")
    assert triton[0] == str(tmp_path / "env" / "bin" / "python3")
    assert triton[1:4] == ["-m", "service.bench.peer", "--triton-server"]
    assert [triton[i + 1] for i, a in enumerate(triton) if a == "--serve-model"] == ["vit_small", peer.NOOP_MODEL]
    assert triton[triton.index("--ports") + 1] == "8100,9100,8180"
    assert triton[triton.index("--triton-instances") + 1] == "1"
    two = peer.triton_command(tmp_path, ["vit_small"], ports, instances=2)
    assert two[two.index("--triton-instances") + 1] == "2"


def test_triton_instances_run_after_plain_triton_and_are_validated() -> None:
    options = peer.PeerOptions(triton_instances=(2,)).validate()
    assert options.runs() == [("tessera", {}), ("triton", {}), ("triton:x2", {})]
    for bad, message in (((1,), "2..8"), ((2, 2), "distinct"), ((9,), "2..8")):
        with pytest.raises(ValueError, match=message):
            peer.PeerOptions(triton_instances=bad).validate()
    with pytest.raises(ValueError, match="needs the triton server"):
        peer.PeerOptions(triton_instances=(2,), servers=("tessera",)).validate()


# -- result shaping ------------------------------------------------------------------------------------------
def _rows(tessera: float = 28.0, triton: float = 27.0, p50: tuple[float, float] = (52.0, 51.0)) -> list[dict[str, Any]]:
    rows = []
    for server, rate, latency in (("tessera", tessera, p50[0]), ("triton", triton, p50[1])):
        for protocol in peer.PROTOCOLS:
            for role, model, scale in (("model", "vit_small", 1.0), ("noop", peer.NOOP_MODEL, 20.0)):
                for clients in (16, 1):
                    stats = {"img_per_s": rate * scale / (4 if clients == 1 else 1), "p50_ms": latency, "errors": 0}
                    rows.append(peer.point_row(server, role, model, protocol, clients, stats))
    return rows


def _peer_results(tmp_path: Path, rows: list[dict[str, Any]], summary: dict[str, Any], **fields: Any) -> Path:
    """A results folder holding one ``peer`` result of ``rows`` on a fixed host (``fields`` add to it
    or replace its own; a second call with the same ``benchmark`` rewrites the result)."""
    results = tmp_path / "results"
    results.mkdir(exist_ok=True)
    payload = {
        "benchmark": "peer",
        "host": {"host": "ci-box", "cpu": "Test CPU", "cores": 2, "gpu": None, "date": "2026-12-03T10:00:00+00:00"},
        "model": "vit_small",
        "clients": 16,
        "servers": ["tessera", "triton"],
        "rows": rows,
        "summary": summary,
        **fields,
    }
    (results / f"ci-box-2026-12-03-{payload['benchmark']}.json").write_text(json.dumps(payload))
    return results


def test_summary_meets_the_goal_when_every_comparison_holds() -> None:
    summary = peer.summarize(_rows(), 16)
    assert summary["goal_met"] is True
    assert summary["grpc"]["throughput_ratio"] == pytest.approx(28 / 27, abs=1e-4)
    assert summary["rest"]["p50_delta_ms"] == 1.0
    assert summary["grpc"]["tessera_noop_req_per_s"] == 560.0 and summary["grpc"]["noop_ratio"] == pytest.approx(
        28 / 27, abs=1e-4
    )


@pytest.mark.parametrize(
    ("rows", "why"),
    [
        (_rows(tessera=20.4, triton=27.2), "throughput"),
        (_rows(p50=(67.0, 52.0)), "p50 15 ms above"),
        (_rows(p50=(54.1, 51.0)), "p50 3.1 ms above"),
    ],
)
def test_summary_misses_the_goal(rows: list[dict[str, Any]], why: str) -> None:
    assert peer.summarize(rows, 16)["goal_met"] is False, why


def test_a_missing_or_failed_point_is_none_and_never_met() -> None:
    rows = [r for r in _rows() if not (r["server"] == "triton" and r["protocol"] == "rest" and r["clients"] == 1)]
    summary = peer.summarize(rows, 16)
    assert summary["rest"]["triton_p50_1_client_ms"] is None and summary["rest"]["p50_delta_ms"] is None
    assert summary["goal_met"] is False
    failed = peer.point_row("triton", "model", "vit_small", "grpc", 16, {"img_per_s": 0.0, "skipped": "client failed"})
    assert failed["skipped"] == "client failed" and "p50_ms" not in failed
    assert peer.summarize([failed], 16, ("grpc",))["grpc"]["throughput_ratio"] is None
    assert peer.summarize([], 16)["goal_met"] is False


def test_report_renders_the_peer_section_and_goal(tmp_path: Path) -> None:
    results = _peer_results(
        tmp_path,
        _rows(tessera=20.4, triton=27.2),
        {**peer.summarize(_rows(tessera=20.4, triton=27.2), 16), "notes": ["the host was shared"]},
        noop_model=peer.NOOP_MODEL,
        size=224,
        max_batch_size=8,
        batch_wait_timeout_s=0.01,
        duration_s=20.0,
        warmup_s=3.0,
        backend={"backend": "onnxruntime", "device": "cpu", "precision": "fp32"},
        intra_op_threads=0,
        ort_spin=False,
        versions={"nvidia-pytriton": "0.7.0", "tritonclient": "2.73.0"},
        raw={"img_per_s": 27.0, "before": {"img_per_s": 27.1}, "after": {"img_per_s": 26.9}},
    )
    goal = next(g for g in evaluate_goals(load_results(results)) if g.source == "peer")
    assert goal.status == "not met (suspect: the host was not quiet, see notes)"  # the notes say it was shared
    assert "gRPC: 0.75x img/s, p50 +1.0 ms, no-op 0.75x" in goal.measured
    text = write_report(results, tmp_path / "performance.md", tmp_path / "img").read_text()
    assert "## Service vs Triton (same ONNX file, same host)" in text
    assert "nvidia-pytriton 0.7.0" in text and "> Note: the host was shared." in text
    assert "| grpc | 20.4 | 27.2 | 0.75 |" in text


def test_goal_not_measured_without_a_result(tmp_path: Path) -> None:
    goal = next(g for g in evaluate_goals({}) if g.source == "peer")
    assert goal.status.startswith("not measured") and "tessera bench peer" in goal.status


def test_busy_host_note() -> None:
    assert peer.busy_host_notes(1.0, 1.9, 2) == []
    (note,) = peer.busy_host_notes(7.2, 3.0, 2)
    assert "7.2 at the start and 3.0 at the end on 2 cores" in note


def test_steal_note_from_the_hosts_cpu_times(tmp_path: Path) -> None:
    from service.bench._common import cpu_times, steal_note

    stat = tmp_path / "stat"
    stat.write_text("cpu  100 0 50 800 0 0 0 50 0 0\ncpu0 1 2 3\n")
    before = cpu_times(str(stat))
    assert before == [100, 0, 50, 800, 0, 0, 0, 50, 0, 0]
    # 1000 ticks more, 250 of them stolen by the hypervisor
    (note,) = steal_note(before, [400, 0, 100, 1200, 0, 0, 0, 300, 0, 0])
    assert "took 25.0% of this host's CPU time" in note
    assert steal_note(before, [500, 0, 100, 1300, 0, 0, 0, 51, 0, 0]) == []  # 0.1%: nothing to say
    assert steal_note(None, before) == [] and cpu_times(str(tmp_path / "absent")) is None


# -- levers: Tessera variants ------------------------------------------------------------------------------
def test_variant_parsing_and_run_order() -> None:
    name, env = peer.parse_variant("throughput:RAY_SERVE_THROUGHPUT_OPTIMIZED=1, TESSERA_INGRESS_REPLICAS=2")
    assert name == "throughput"
    assert env == (("RAY_SERVE_THROUGHPUT_OPTIMIZED", "1"), ("TESSERA_INGRESS_REPLICAS", "2"))
    options = peer.PeerOptions(variants=((name, env),)).validate()
    assert options.runs() == [
        ("tessera", {}),
        ("tessera:throughput", {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "TESSERA_INGRESS_REPLICAS": "2"}),
        ("triton", {}),
    ]


@pytest.mark.parametrize("text", ["throughput", "throughput:", "x:RAY_A", "x:=1"])
def test_variant_parse_errors(text: str) -> None:
    with pytest.raises(ValueError, match="NAME:KEY=VALUE"):
        peer.parse_variant(text)


@pytest.mark.parametrize(
    ("variants", "servers", "message"),
    [
        ((("a", (("PATH", "/x"),)),), ("tessera",), "RAY_\\* or TESSERA_\\*"),
        ((("a", (("RAY_X", "1"),)), ("a", (("RAY_Y", "1"),))), ("tessera",), "distinct"),
        ((("Bad Name", (("RAY_X", "1"),)),), ("tessera",), "distinct"),
        ((("a", (("RAY_X", "1"),)),), ("triton",), "needs the tessera server"),
    ],
)
def test_variant_validation(variants: Any, servers: tuple[str, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        peer.PeerOptions(variants=variants, servers=servers).validate()


def test_variant_rows_do_not_enter_the_comparison() -> None:
    rows = _rows()
    rows += [{**r, "server": "tessera:x", "img_per_s": 1.0} for r in rows if r["server"] == "tessera"]
    assert peer.summarize(rows, 16) == peer.summarize(_rows(), 16)


def test_a_server_that_does_not_start_is_a_row_not_the_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from contextlib import contextmanager

    @contextmanager
    def failing(*_: Any, **__: Any) -> Any:
        raise RuntimeError("service.cli exited with 1 before it was ready")
        yield peer.ServerUp(0.0, 0)

    monkeypatch.setattr(peer, "server_process", failing)
    ready, rows = peer._measure_server(
        "tessera:x",
        ["python", "-m", "service.cli"],
        {},
        tmp_path / "log",
        [("vit_small", "model")],
        peer.Ports(1, 2, 3),
        tmp_path / "p.npy",
        peer.PeerOptions(),
    )
    assert ready is None
    assert rows == [
        {
            "server": "tessera:x",
            "role": "model",
            "model": "vit_small",
            "protocol": "-",
            "clients": 0,
            "img_per_s": None,
            "skipped": "service.cli exited with 1 before it was ready",
        }
    ]


def test_result_name_keeps_lever_runs_apart() -> None:
    assert peer.result_name(peer.PeerOptions()) == "peer"
    options = peer.PeerOptions(variants=(("direct-ingress", (("RAY_X", "1"),)),))
    assert peer.result_name(options) == "peer_direct_ingress"


def test_report_of_a_lever_run_compares_variants_with_plain_tessera(tmp_path: Path) -> None:
    rows = [r for r in _rows() if r["server"] == "tessera"]
    rows += [{**r, "server": "tessera:fast", "img_per_s": 2 * r["img_per_s"], "p50_ms": 40.0} for r in rows]
    results = _peer_results(
        tmp_path,
        rows,
        peer.summarize(rows, 16),
        benchmark="peer_fast",
        servers=["tessera", "tessera:fast"],
        variants={"tessera:fast": {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}},
    )
    text = write_report(results, tmp_path / "performance.md", tmp_path / "img").read_text()
    assert '## Service vs Triton, levers (`tessera:fast`: {"RAY_SERVE_THROUGHPUT_OPTIMIZED":"1"})' in text
    assert "| tessera:fast | grpc | 2.00x | -12.0 | 2.00x |" in text
    assert "Triton was not in this run" in text
    goal = next(g for g in evaluate_goals(load_results(results)) if g.source == "peer")
    assert goal.status.startswith("not measured")  # a lever run is not the comparison


def test_report_of_a_lever_run_with_triton_compares_variants_with_both(tmp_path: Path) -> None:
    rows = _rows(tessera=20.0, triton=27.0)
    rows += [
        {**r, "server": "tessera:fast", "img_per_s": 2 * r["img_per_s"], "p50_ms": 40.0}
        for r in rows
        if r["server"] == "tessera"
    ]
    summary = peer.summarize(rows, 16)
    lever = {"benchmark": "peer_fast", "variants": {"tessera:fast": {"TESSERA_TOPOLOGY": "colocated"}}}
    results = _peer_results(tmp_path, rows, summary, servers=["tessera", "tessera:fast", "triton"], **lever)
    text = write_report(results, tmp_path / "performance.md", tmp_path / "img").read_text()
    assert "Each variant against plain Tessera and against Triton" in text
    # img/s 40 against 20 and 27; p50 40 ms against 52 and 51; no-op 800 against 400 and 540
    assert "| tessera:fast | grpc | 2.00x | 1.48x | -12.0 | -11.0 | 2.00x | 1.48x |" in text
    assert "Tessera against Triton" in text  # plain Tessera's own comparison is still there
    # a Triton run with two model instances is one more peer for every variant
    rows += [{**r, "server": "triton:x2", "img_per_s": 2 * r["img_per_s"]} for r in rows if r["server"] == "triton"]
    servers = ["tessera", "tessera:fast", "triton", "triton:x2"]
    _peer_results(tmp_path, rows, summary, servers=servers, triton_instances={"triton:x2": 2}, **lever)
    text = write_report(results, tmp_path / "performance.md", tmp_path / "img").read_text()
    assert "| tessera:fast | grpc | 2.00x | 1.48x | 0.74x | -12.0 | -11.0 | -11.0 | 2.00x | 1.48x | 0.74x |" in text
    assert "`triton:x2` runs 2 model instances sharing the backend" in text
    goal = next(g for g in evaluate_goals(load_results(results)) if g.source == "peer")
    # judged on plain Tessera of the newest run with Triton; the variant's own ratios named beside
    assert goal.measured.startswith("`ci-box-2026-12-03-peer_fast.json`, plain `tessera serve`: gRPC: 0.74x img/s")
    assert "tessera:fast: gRPC 1.48x, REST 1.48x img/s" in goal.measured and goal.status.startswith("not met")


# -- rounds: every server measured several times in turn ------------------------------------------------------
def test_rounds_run_every_server_in_turn_and_merge_to_medians(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from contextlib import contextmanager

    started: list[str] = []
    rates = iter([10.0, 30.0, 20.0, 11.0, 12.0, 25.0])  # tessera, triton, triton, tessera, tessera, triton

    @contextmanager
    def fake_server(command: list[str], *_: Any, **__: Any) -> Any:
        started.append("triton" if "--triton-server" in command else "tessera")
        yield peer.ServerUp(1.0, 4242)

    pids: list[int] = []

    def fake_client(protocol: str, target: str, model: str, *rest: Any) -> dict[str, Any]:
        pids.append(rest[-1])  # the server's process: the client reads its tree's CPU
        rate = next(rates)
        return {"img_per_s": rate, "p50_ms": 50.0, "errors": 0, "requests_ok": 100, "cpu_ms_per_img": 1e3 / rate}

    monkeypatch.setattr(peer, "server_process", fake_server)
    monkeypatch.setattr(peer, "_client_subprocess", fake_client)
    monkeypatch.setattr(peer, "write_stub_env", lambda path: path / "bin" / "python")
    monkeypatch.setattr(peer, "install_triton", lambda path: None)
    options = peer.PeerOptions(rounds=3, protocols=("grpc",), noop=False, clients=1, workdir=str(tmp_path)).validate()
    round_rows, ready = peer._measure_servers(options, tmp_path, tmp_path / "repo", np.zeros((1, 3, 8, 8), "f4"))
    # even rounds in the reverse order: a host drifting over the run favours neither server
    assert started == ["tessera", "triton", "triton", "tessera", "tessera", "triton"]
    assert [r["round"] for r in round_rows] == [1, 1, 2, 2, 3, 3]
    assert ready == {"tessera": 1.0, "triton": 1.0}
    merged = {r["server"]: r for r in peer.merge_rounds(round_rows)}
    assert merged["tessera"]["img_per_s"] == 11.0 and merged["triton"]["img_per_s"] == 25.0
    assert merged["triton"]["img_per_s_rounds"] == [30.0, 20.0, 25.0]
    assert merged["tessera"]["requests_ok"] == 300 and "round" not in merged["tessera"]
    assert pids == [4242] * 6
    assert merged["tessera"]["cpu_ms_per_img"] == pytest.approx(1e3 / 11.0, abs=1e-4)  # the median of the rounds


def test_one_round_keeps_rows_as_measured() -> None:
    rows = [{**r, "round": 1} for r in _rows()]
    assert peer.merge_rounds(rows) == _rows()


def test_a_server_that_failed_one_round_keeps_its_other_rounds_and_says_so() -> None:
    good = [{**r, "round": 2} for r in _rows() if r["server"] == "tessera"]
    failed = {
        **peer.point_row("tessera", "model", "vit_small", "-", 0, {"img_per_s": None, "skipped": "boom"}),
        "round": 1,
    }
    merged = peer.merge_rounds([failed, *good])
    assert all(r["protocol"] != "-" for r in merged) and len(merged) == len(good)
    assert all(r["first_error"] == "did not start in a round: boom" for r in merged)
    assert peer.merge_rounds([failed]) == [{k: v for k, v in failed.items() if k != "round"}]


def test_report_shows_each_rounds_rate(tmp_path: Path) -> None:
    rows = peer.merge_rounds([{**r, "round": n} for n in (1, 2) for r in _rows()])
    results = _peer_results(tmp_path, rows, peer.summarize(rows, 16), rounds=2)
    text = write_report(results, tmp_path / "performance.md", tmp_path / "img").read_text()
    assert "2 rounds in turn, each point the median of its rounds" in text
    assert "rounds: 28, 28 img/s" in text


def test_a_remark_is_shown_but_does_not_make_the_run_suspect(tmp_path: Path) -> None:
    rows = _rows(tessera=20.4, triton=27.2)
    results = _peer_results(tmp_path, rows, {**peer.summarize(rows, 16), "remarks": ["quiet host"], "notes": []})
    goal = next(g for g in evaluate_goals(load_results(results)) if g.source == "peer")
    assert goal.status == "not met"
    assert "> Note: quiet host." in write_report(results, tmp_path / "performance.md", tmp_path / "img").read_text()


def test_a_ready_line_run_into_by_another_writer_still_counts(tmp_path: Path) -> None:
    """Triton's C++ log shares the server's pipe: one of its lines once ran into the ready line
    (``...model_lif`` + ``ready: http://...``), and the round waited out its 300 s."""
    import sys

    line = "I1205 model_lifready: http://127.0.0.1:1 grpc://127.0.0.1:2"
    script = f"import time; print({line!r}, flush=True); time.sleep(30)"
    with peer.server_process([sys.executable, "-c", script], {}, tmp_path / "log.txt", ready_timeout_s=20) as up:
        assert up.ready_s < 20 and up.pid > 0


# -- the servers' CPU ------------------------------------------------------------------------------------------
def test_cpu_between_two_readings_and_the_hosts_busy_share() -> None:
    before = CpuReading(at=10.0, tree=8.0, own=0.5, host=[100, 0, 50, 800, 50, 0, 0, 0, 7, 0])
    after = CpuReading(at=12.0, tree=10.0, own=0.9, host=[200, 0, 100, 900, 50, 0, 0, 0, 9, 0])
    # host: 150 of 250 jiffies neither idle nor iowait (guest time, the ninth, is inside user already)
    assert after.since(before) == {"server_cpu_cores": 1.0, "client_cpu_cores": 0.2, "host_busy": 0.6}
    gone = CpuReading(at=12.0, tree=None, own=0.9, host=None)
    assert gone.since(before) == {"server_cpu_cores": None, "client_cpu_cores": 0.2, "host_busy": None}


def test_a_trees_cpu_counts_its_reaped_descendants_and_a_gone_root_is_none() -> None:
    import os

    burn = "import time\nend = time.process_time() + 0.4\nwhile time.process_time() < end: pass"
    before = tree_cpu_seconds(os.getpid())
    child = subprocess.run([sys.executable, "-c", burn], check=True)  # exited and reaped by this process
    after = tree_cpu_seconds(os.getpid())
    assert before is not None and after is not None and after - before >= 0.4, (before, after)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert tree_cpu_seconds(gone.pid) is None and child.returncode == 0


def test_the_summary_and_report_give_each_servers_cpu_per_image(tmp_path: Path) -> None:
    rows = [{**r, "cpu_ms_per_img": 100.0 if r["server"] == "tessera" else 125.0, "host_busy": 0.99} for r in _rows()]
    summary = peer.summarize(rows, 16)
    assert summary["grpc"]["tessera_cpu_ms_per_img"] == 100.0 and summary["grpc"]["cpu_ratio"] == 0.8
    assert summary["goal_met"] is True  # beside the goal, not part of it
    results = _peer_results(tmp_path, rows, summary)
    text = write_report(results, tmp_path / "performance.md", tmp_path / "img").read_text()
    assert "| Tessera CPU ms/img | Triton CPU ms/img | CPU ratio |" in text
    assert "| 100 | 125 | 0.8 |" in text and "| 99% |" in text


_BUSY_SERVER = """
import asyncio, os, subprocess, sys
import numpy as np
from service.api.grpc_loop_server import LoopServer
from service.api.protos import grpc_predict_v2_pb2 as pb, grpc_predict_v2_pb2_grpc as pbg

class Target:
    async def ModelInfer(self, request, grpc_context=None):
        await asyncio.sleep(0.02)  # this process mostly idle: the busy core is its child's
        out = pb.ModelInferResponse(model_name=request.model_name, id=request.id)
        out.outputs.add(name="embedding", datatype="FP32", shape=[1, 4])
        out.raw_output_contents.append(np.ones((1, 4), np.float32).tobytes())
        return out

async def main(port):
    # a child that keeps a core busy until this process is gone: a server's cost is in its
    # descendants too (Ray's daemons and workers, Triton's stubs)
    subprocess.Popen([sys.executable, "-c", f"import os\\nwhile os.getppid() == {os.getpid()}: pass"])
    server = LoopServer(options=[])
    server.add_servicer(pbg.add_GRPCInferenceServiceServicer_to_server, pbg.GRPCInferenceServiceServicer,
                        Target(), ["ModelInfer"])
    assert server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"ready: http://127.0.0.1:0 grpc://127.0.0.1:{port}", flush=True)
    await server.wait_for_termination()

asyncio.run(main(int(sys.argv[1])))
"""


@pytest.mark.slow  # a server and a core-burning child for a few seconds
def test_the_client_reads_the_whole_server_trees_cpu_in_its_window(tmp_path: Path) -> None:
    """A real ``tritonclient`` load in the client subprocess against a gRPC server whose child
    burns a core: the window's CPU is the tree's, the child's included, and per image."""
    import os

    from tests.helpers import free_port

    port = free_port()
    np.save(tmp_path / "pixels.npy", np.zeros((1, 3, 8, 8), np.float32))
    command = [sys.executable, "-c", _BUSY_SERVER, str(port)]
    with peer.server_process(command, dict(os.environ), tmp_path / "server.log", ready_timeout_s=60) as up:
        stats = peer._client_subprocess("grpc", f"127.0.0.1:{port}", "m", tmp_path / "pixels.npy", 2, 2.0, 0.5, up.pid)
    assert stats.get("errors") == 0 and stats["img_per_s"] > 0, stats
    assert stats["server_cpu_cores"] > 0.7, stats  # the busy child: about one core of the two
    assert stats["cpu_ms_per_img"] == pytest.approx(1e3 * stats["server_cpu_cores"] / stats["img_per_s"], rel=1e-2)
    assert 0.25 < stats["host_busy"] <= 1.0 and stats["client_cpu_cores"] > 0
