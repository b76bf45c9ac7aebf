"""The ``ModelStates`` deployment's logic, run in process (its class, without Ray's cluster): how
backbone reports and builds add up to each model's state, and what backbones are told to hold."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest

from service.serve.models import STALE_S, ModelStates, _progress
from service.settings import ServerSettings


def _states(repo: Path, **settings: Any) -> Any:
    cls = ModelStates.func_or_class  # type: ignore[attr-defined]
    states = cls.__new__(cls)

    async def init() -> None:
        await states.__init__(ServerSettings(model_repo=str(repo), **settings).model_dump(mode="json"))

    asyncio.run(init())
    return states


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_backbone_reports_make_the_state(small_repo: Path) -> None:
    states = _states(small_repo)
    assert _run(states.states())["vit_small"].state == "loading"  # built, no replica has said anything
    assert _run(states.wanted("vit_small")) == (True, 0)
    assert _run(states.report("vit_small", "r1", "ready")) == (True, 0)  # the report answers wanted
    _run(states.report("swin_tiny", "r2", "failed", "RuntimeUnavailable: CUDA asked, no GPU"))
    now = _run(states.states())
    assert now["vit_small"].state == "ready"
    assert now["swin_tiny"].state == "failed" and "no GPU" in now["swin_tiny"].reason
    # a replica that stopped reporting (killed) no longer counts
    states.models["vit_small"].replicas["r1"].at -= STALE_S + 1
    assert _run(states.states())["vit_small"].state == "loading"


def test_unload_then_load(small_repo: Path) -> None:
    states = _states(small_repo)
    _run(states.report("vit_small", "r1", "ready"))
    _run(states.unload("vit_small"))
    assert _run(states.wanted("vit_small"))[0] is False
    assert _run(states.states())["vit_small"].state == "unloading"  # the replica still holds it
    _run(states.report("vit_small", "r1", "unloaded", "unloaded by request"))
    assert _run(states.states())["vit_small"].state == "unloaded"
    _run(states.load("vit_small"))
    assert _run(states.wanted("vit_small")) == (True, 1)  # a new generation: a failed replica retries
    assert _run(states.states())["vit_small"].state == "loading"


def test_a_model_not_built_is_unavailable_without_build(small_repo: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(small_repo, repo)
    shutil.rmtree(repo / "nat_tiny" / "1")
    states = _states(repo)
    status = _run(states.states())["nat_tiny"]
    assert status.state == "unavailable" and "tessera build --model nat_tiny" in status.reason
    assert _run(states.wanted("nat_tiny"))[0] is False


def test_build_missing_queues_the_small_model_first(small_repo: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(small_repo, repo)
    for name in ("nat_tiny", "vit_small"):
        shutil.rmtree(repo / name / "1")

    async def scenario() -> list[tuple[str, tuple[str, ...]]]:
        cls = ModelStates.func_or_class  # type: ignore[attr-defined]
        states = cls.__new__(cls)
        settings = ServerSettings(model_repo=str(repo), build_missing=True, small_model="vit_small")
        started: list[tuple[str, tuple[str, ...]]] = []

        async def fake_run(model: str, args: list[str]) -> str | None:
            started.append((model, tuple(args)))
            states.models[model].phase = "export"
            assert (await states.states())[model].state in ("building", "loading")
            if model == "nat_tiny" and args[0] == "build":
                return "nat_tiny: build failed: boom"
            if args[0] == "build" and not (repo / model / "1").exists():
                shutil.copytree(small_repo / model / "1", repo / model / "1")
            return None

        states._run = fake_run
        await states.__init__(settings.model_dump(mode="json"))
        assert (await states.states())["vit_small"].state == "building"
        assert (await states.states())["swin_tiny"].state == "loading"  # built: its backbone loads it
        while states._builder is not None and not states._builder.done():
            await asyncio.sleep(0.01)
        final = await states.states()
        assert final["nat_tiny"].state == "failed" and "boom" in final["nat_tiny"].reason
        return started

    started = asyncio.run(scenario())
    # the small model first (fp32 only, then calibrated), then the next; the fp16 graphs last, for
    # the models that have an fp32 build to add them to (nat_tiny's failed)
    assert [(model, args[0], args[-1]) for model, args in started] == [
        ("vit_small", "build", "--no-fp16"),
        ("vit_small", "calibrate", "vit_small"),
        ("nat_tiny", "build", "--no-fp16"),
        ("vit_small", "build", "--fp16"),
    ]


@pytest.mark.parametrize(
    ("line", "phase"),
    [
        ('{"model": "vit_small", "phase": "parity at 224²", "elapsed_s": 3.0, "eta_s": 12.5}', "parity at 224²"),
        ("[  3.0s] vit_small export", None),
        ("{not json", None),
    ],
)
def test_progress_lines(line: str, phase: str | None) -> None:
    parsed = _progress(line)
    assert (parsed or {}).get("phase") == phase


def test_build_missing_rebuilds_a_stale_model_before_it_serves(small_repo: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(small_repo, repo)
    config = repo / "swin_tiny" / "config.yaml"
    config.write_text(config.read_text().replace("seed: 0", "seed: 1"))  # other weights: its build is stale

    async def scenario() -> tuple[Any, Any, Any]:
        cls = ModelStates.func_or_class  # type: ignore[attr-defined]
        states = cls.__new__(cls)
        release = asyncio.Event()

        async def fake_run(model: str, args: list[str]) -> str | None:
            await release.wait()
            return None

        states._run = fake_run
        await states.__init__(ServerSettings(model_repo=str(repo), build_missing=True).model_dump(mode="json"))
        building = (await states.states())["swin_tiny"]
        wanted = await states.wanted("swin_tiny")
        others = await states.wanted("vit_small")
        release.set()
        return building, wanted, others

    building, wanted, others = asyncio.run(scenario())
    assert building.state == "building" and wanted[0] is False  # the stale build is not served
    assert others[0] is True


def test_a_built_model_serves_while_it_is_calibrated(small_repo: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(small_repo, repo)
    shutil.rmtree(repo / "vit_small" / "1")

    async def scenario() -> dict[str, Any]:
        cls = ModelStates.func_or_class  # type: ignore[attr-defined]
        states = cls.__new__(cls)
        seen: dict[str, Any] = {}

        async def fake_run(model: str, args: list[str]) -> str | None:
            if args[0] == "build":
                shutil.copytree(small_repo / model / "1", repo / model / "1")
                seen["wanted while building"] = (await states.wanted(model))[0]
            elif args[0] == "calibrate":  # the backbone loads the graph meanwhile, and serves it
                seen["wanted while calibrating"] = (await states.wanted(model))[0]
                await states.report(model, "r1", "ready")
                seen["calibrating"] = (await states.states())[model]
            return None

        states._run = fake_run
        await states.__init__(
            ServerSettings(model_repo=str(repo), build_missing=True, small_model="vit_small").model_dump(mode="json")
        )
        while states._builder is not None and not states._builder.done():
            await asyncio.sleep(0.01)
        seen["after"] = (await states.states())["vit_small"]
        return seen

    seen = asyncio.run(scenario())
    assert seen["wanted while building"] is False and seen["wanted while calibrating"] is True
    calibrating = seen["calibrating"]
    assert calibrating.state == "ready" and calibrating.calibrating and "calibrate" in calibrating.phase
    assert seen["after"].state == "ready" and not seen["after"].calibrating and not seen["after"].phase


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl's parent-death signal is Linux's")
def test_a_build_dies_with_the_process_that_started_it() -> None:
    """A colocated ingress killed mid-build must not leave its build running beside its successor's."""
    starter = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import subprocess, sys, time\n"
            "from service.serve.models import _die_with_parent\n"
            "child = subprocess.Popen(['sleep', '120'], preexec_fn=_die_with_parent)\n"
            "print(child.pid, flush=True)\n"
            "time.sleep(120)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert starter.stdout is not None
    child = int(starter.stdout.readline())
    assert psutil.pid_exists(child)
    starter.kill()  # SIGKILL: no clean exit, nothing of Ray's reaping
    starter.wait(10)
    with contextlib.suppress(psutil.NoSuchProcess):
        psutil.Process(child).wait(10)  # raises TimeoutExpired while the build would still run
    assert not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE
