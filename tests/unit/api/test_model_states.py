"""Models that join while the service runs: shared states, the router among ready models, load and
unload through a shared source (the ``ModelStates`` deployment's protocol, here in process)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from service.api.model_repository import ModelStatus
from service.api.oip import OpenInference
from service.api.serving import ServingCore
from service.errors import Unavailable
from service.models import ModelRepository
from service.routing.factory import make_router
from service.runtime import Backend
from tests.unit.api.conftest import build_core


class FakeStates:
    """States set by the test; load makes a model ready after ``load_ticks`` reads (a build)."""

    def __init__(self, states: dict[str, ModelStatus], load_ticks: int = 2, fail: str | None = None):
        self.current = dict(states)
        self.load_ticks = load_ticks
        self.fail = fail
        self.calls: list[tuple[str, str]] = []
        self._pending: dict[str, int] = {}

    async def states(self) -> dict[str, ModelStatus]:
        for model in list(self._pending):
            self._pending[model] -= 1
            if self._pending[model] <= 0:
                del self._pending[model]
                state = "failed" if model == self.fail else "ready"
                self.current[model] = ModelStatus(state=state, reason="boom" if state == "failed" else "", built=True)
            else:
                self.current[model] = ModelStatus(state="building", phase="parity at 224²", eta_s=3.0)
        return dict(self.current)

    async def load(self, model: str) -> None:
        self.calls.append(("load", model))
        self._pending[model] = self.load_ticks

    async def unload(self, model: str) -> None:
        self.calls.append(("unload", model))
        self.current[model] = ModelStatus(state="unloaded", reason="unloaded by request", built=True)


def _core(small_repo: Path, backends: dict[str, Backend], states: FakeStates) -> ServingCore:
    repo = ModelRepository(small_repo)
    core = build_core(small_repo, backends, model_control_mode="explicit", states=states)
    core.router_factory = lambda: make_router(repo)
    core.control.refresh_s = 0.01
    return core


def test_only_ready_models_serve_and_the_decision_says_which_are_not(
    small_repo: Path, backends: dict[str, Backend]
) -> None:
    states = FakeStates(
        {
            "vit_small": ModelStatus(state="ready", built=True),
            "swin_tiny": ModelStatus(state="building", phase="parity at 512²", elapsed_s=40.0, eta_s=80.0),
            "nat_tiny": ModelStatus(state="failed", reason="build failed: out of memory"),
        }
    )
    core = _core(small_repo, backends, states)

    async def scenario() -> None:
        await core.control.refresh()
        assert core.server_ready()
        decision = core.route(640, 640)
        assert decision.model == "vit_small"
        assert decision.not_ready == {
            "swin_tiny": "building (parity at 512², 40 s, ~80 s left)",
            "nat_tiny": "failed (build failed: out of memory)",
        }
        with pytest.raises(Unavailable, match=r"swin_tiny.*building"):
            core.route(512, 512, "swin_tiny")
        with pytest.raises(Unavailable, match="not ready"):  # only the larger models take 2048²: later
            core.route(2048, 2048)
        listed = {m.name: m for m in core.models()}
        assert set(listed) == {"vit_small", "swin_tiny", "nat_tiny"}
        assert listed["swin_tiny"].status.state == "building" and listed["swin_tiny"].status.eta_s == 80.0
        assert listed["nat_tiny"].status.reason == "build failed: out of memory" and not listed["nat_tiny"].ready
        assert listed["vit_small"].ready

    asyncio.run(scenario())


def test_no_ready_model_means_not_ready(small_repo: Path, backends: dict[str, Backend]) -> None:
    states = FakeStates({name: ModelStatus(state="building") for name in ("vit_small", "swin_tiny", "nat_tiny")})
    core = _core(small_repo, backends, states)
    assert not core.server_ready()  # before the first states: nothing known, nothing ready

    async def scenario() -> None:
        await core.control.refresh()
        assert not core.server_ready()
        with pytest.raises(Unavailable):
            core.route(224, 224)

    asyncio.run(scenario())


def test_a_model_that_becomes_ready_joins_and_the_router_is_rebuilt(
    small_repo: Path, backends: dict[str, Backend]
) -> None:
    states = FakeStates({"vit_small": ModelStatus(state="ready", built=True)} | _building("swin_tiny", "nat_tiny"))
    core = _core(small_repo, backends, states)
    rebuilt: list[int] = []
    factory = core.router_factory
    assert factory is not None
    core.router_factory = lambda: (rebuilt.append(1), factory())[1]

    async def scenario() -> None:
        await core.control.refresh()
        assert rebuilt == [1]  # vit_small became ready
        states.current["swin_tiny"] = ModelStatus(state="ready", built=True)
        await core.control.refresh()
        assert rebuilt == [1, 1]
        assert core.is_ready("swin_tiny") and "swin_tiny" not in core.route(512, 512).not_ready
        await core.control.refresh()  # nothing changed: the router is kept
        assert rebuilt == [1, 1]

    asyncio.run(scenario())


def _building(*names: str) -> dict[str, ModelStatus]:
    return {name: ModelStatus(state="building") for name in names}


def test_load_goes_through_the_shared_states_and_waits_until_ready(
    small_repo: Path, backends: dict[str, Backend]
) -> None:
    states = FakeStates(
        {"vit_small": ModelStatus(state="ready", built=True)}
        | {n: ModelStatus(state="unavailable", reason="not built") for n in ("swin_tiny", "nat_tiny")},
        fail="nat_tiny",
    )
    core = _core(small_repo, backends, states)

    async def scenario() -> None:
        await core.control.refresh()
        await core.control.load("swin_tiny")  # builds (two reads of "building"), then ready
        assert core.is_ready("swin_tiny") and ("load", "swin_tiny") in states.calls
        with pytest.raises(Unavailable, match=r"nat_tiny.*could not be loaded: boom"):
            await core.control.load("nat_tiny")
        core.control.load_timeout_s = 0.0
        states.load_ticks = 1000
        with pytest.raises(Unavailable, match="still building"):
            await core.control.load("swin_tiny")

    asyncio.run(scenario())


def test_unload_through_the_shared_states_waits_for_the_backbones(
    small_repo: Path, backends: dict[str, Backend]
) -> None:
    states = FakeStates({n: ModelStatus(state="ready", built=True) for n in ("vit_small", "swin_tiny", "nat_tiny")})
    core = _core(small_repo, backends, states)

    async def scenario() -> None:
        await core.control.refresh()
        await core.control.unload("swin_tiny")
        assert ("unload", "swin_tiny") in states.calls
        assert core.control.status("swin_tiny").state == "unloaded" and not core.is_ready("swin_tiny")
        index = {e.name: e for e in OpenInference(core).repository_index()}
        assert index["swin_tiny"].state == "UNAVAILABLE" and "unloaded" in index["swin_tiny"].reason
        assert index["vit_small"].state == "READY"

    asyncio.run(scenario())


def test_repository_index_maps_states_to_tritons(small_repo: Path, backends: dict[str, Backend]) -> None:
    states = FakeStates(
        {
            "vit_small": ModelStatus(state="ready", built=True),
            "swin_tiny": ModelStatus(state="building", phase="export"),
            "nat_tiny": ModelStatus(state="failed", reason="RuntimeUnavailable: no GPU"),
        }
    )
    core = _core(small_repo, backends, states)

    async def scenario() -> dict[str, Any]:
        await core.control.refresh()
        return {e.name: e for e in OpenInference(core).repository_index()}

    index = asyncio.run(scenario())
    assert index["vit_small"].state == "READY" and index["vit_small"].reason == ""
    assert index["swin_tiny"].state == "LOADING" and "export" in index["swin_tiny"].reason
    assert index["nat_tiny"].state == "UNAVAILABLE" and "no GPU" in index["nat_tiny"].reason


def test_every_ingress_follows_one_decision(small_repo: Path, backends: dict[str, Backend]) -> None:
    """Unloaded through one ingress replica, loaded through another: both serve it again."""
    states = FakeStates({n: ModelStatus(state="ready", built=True) for n in ("vit_small", "swin_tiny", "nat_tiny")})
    first, second = _core(small_repo, backends, states), _core(small_repo, backends, states)
    states.load_ticks = 1

    async def scenario() -> None:
        await first.control.refresh()
        await second.control.refresh()
        await first.control.unload("nat_tiny")
        await second.control.refresh()
        assert not first.is_ready("nat_tiny") and not second.is_ready("nat_tiny")
        await second.control.load("nat_tiny")
        await first.control.refresh()
        assert first.is_ready("nat_tiny") and second.is_ready("nat_tiny")

    asyncio.run(scenario())


def test_states_keep_refreshing_after_a_failed_fetch(small_repo: Path, backends: dict[str, Backend]) -> None:
    states = FakeStates({"vit_small": ModelStatus(state="ready", built=True)} | _building("swin_tiny", "nat_tiny"))
    real = states.states
    calls = 0

    async def flaky() -> dict[str, ModelStatus]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("ModelStates restarting")
        return await real()

    states.states = flaky  # type: ignore[method-assign]
    core = _core(small_repo, backends, states)

    async def scenario() -> None:
        core.control.start()
        for _ in range(200):
            if core.server_ready():
                break
            await asyncio.sleep(0.01)
        assert core.server_ready() and calls >= 2

    asyncio.run(scenario())


def test_the_router_is_rebuilt_when_a_calibration_lands(small_repo: Path, backends: dict[str, Backend]) -> None:
    states = FakeStates(
        {
            "vit_small": ModelStatus(state="ready", built=True, calibrating=True),
            "swin_tiny": ModelStatus(state="ready", built=True),
            "nat_tiny": ModelStatus(state="ready", built=True),
        }
    )
    core = _core(small_repo, backends, states)
    rebuilt: list[int] = []
    core.router_factory = lambda: (rebuilt.append(1), make_router(ModelRepository(small_repo)))[1]

    async def scenario() -> None:
        await core.control.refresh()
        first = len(rebuilt)
        await core.control.refresh()
        assert len(rebuilt) == first  # nothing changed: the router is kept
        states.current["vit_small"] = ModelStatus(state="ready", built=True)  # calibrated now
        await core.control.refresh()
        assert len(rebuilt) == first + 1

    asyncio.run(scenario())
