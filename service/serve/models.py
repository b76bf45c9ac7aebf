"""Each model's state across the service, and the builds that make models while it serves.

``ModelStateBook`` keeps them; every replica asks it, wherever it lives:

- ``ModelStates``, one small deployment, holds the book when several processes hold models or
  decode requests (topology ``split``, or several colocated ingress replicas);
- the ingress replica holds it itself when it is the only one and holds every model (topology
  ``colocated`` with one ingress replica, what ``tessera serve`` runs on one host:
  ``service.serve.config.states_in_ingress``): one process fewer, and the polls below are calls
  within the process instead of Ray calls (docs/architecture.md, "Topology").

What it does:

- backbone hosts (in backbone replicas, or in colocated ingress replicas) report what they hold
  (``loading``, ``ready``, ``failed`` with the reason, ``unloaded``) every second, and the answer
  says whether they should hold their model (``wanted``);
- ingress replicas read the states (``ModelControl`` refreshes them twice a second) and send
  Triton's load and unload there, so that every ingress replica and every backbone replica
  follows one decision;
- with ``build_missing`` (``tessera serve --build``) it builds the models that are not built, one
  at a time in a ``tessera build`` subprocess (the default small model first, fp32 first, then
  ``tessera calibrate`` for it; the fp16 graphs once every model serves), so the service answers
  as soon as the first model is ready and the others join as they become ready; a load of an
  unbuilt model builds it the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from service.api.model_repository import ModelStatus
from service.export.fingerprint import is_current
from service.models import ModelRepository
from service.settings import ServerSettings

__all__ = ["STALE_S", "HandleModelStates", "ModelStateBook", "ModelStates", "StateSource", "replica_id"]

log = logging.getLogger(__name__)

#: A backbone replica that has not reported for this long is gone (killed, scaled down).
STALE_S = 10.0


def replica_id() -> str:
    return uuid.uuid4().hex[:12]


@dataclass
class _Replica:
    state: str
    reason: str
    at: float


@dataclass
class _Model:
    desired: bool = True
    #: Bumped by every load request: a replica whose load failed tries again on a new generation.
    generation: int = 0
    build: str = "none"  # none | queued | running | calibrating | fp16 | failed | done
    build_reason: str = ""
    phase: str = ""
    started: float | None = None
    eta_s: float | None = None
    replicas: dict[str, _Replica] = field(default_factory=dict)


class ModelStateBook:
    """Every model's state and builds for one service (the module's docstring says who asks what).

    Built on a running event loop: with ``build_missing`` it starts building at once."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = ServerSettings.model_validate(settings)
        self.repo = ModelRepository(self.settings.model_repo)
        self.models = {name: _Model() for name in self.repo.names()}
        # With --build a model counts as built only when its build is current (config, checkpoint
        # and exporters unchanged): a stale one is rebuilt before it serves, as `tessera build`
        # before `tessera serve` did. Without it the service serves what is built.
        current = is_current if self.settings.build_missing else _has_manifest
        self._built = {name: current(self.repo, name) for name in self.models}
        self._queue: asyncio.Queue[tuple[str, tuple[str, ...]]] = asyncio.Queue()
        self._builder: asyncio.Task[None] | None = None
        if self.settings.build_missing:
            missing = [name for name, built in self._built.items() if not built]
            small = self.settings.small_model
            missing.sort(key=lambda name: name != small)  # the default small model serves first
            for name in missing:
                self._enqueue(name, ("--no-fp16",))
            for name in self.models:  # the fp16 graphs (for GPU hosts) once every model serves on this one
                manifest = self.repo.manifest(name)
                if self.repo.config(name).artifacts.fp16 and (
                    manifest is None or "onnx_fp16" not in manifest.artifacts
                ):
                    self._enqueue(name, ("--fp16",))

    # -- what replicas ask -------------------------------------------------------------------------
    async def states(self) -> dict[str, ModelStatus]:
        return {name: self._status(name) for name in self.models}

    async def wanted(self, model: str) -> tuple[bool, int]:
        """Whether backbone replicas of ``model`` should hold it now, and the load generation."""
        entry = self.models[model]
        return entry.desired and self._built[model] and entry.build != "running", entry.generation

    async def report(self, model: str, replica: str, state: str, reason: str = "") -> tuple[bool, int]:
        """A backbone host says what it holds; the answer is ``wanted``'s, so one call a second does both."""
        self.models[model].replicas[replica] = _Replica(state, reason, time.monotonic())
        return await self.wanted(model)

    # -- Triton's model control ------------------------------------------------------------------
    async def load(self, model: str) -> None:
        entry = self.models[model]
        entry.desired = True
        entry.generation += 1
        self._built[model] = self.repo.manifest(model) is not None
        if not self._built[model] and entry.build not in ("queued", "running"):
            self._enqueue(model, ())

    async def unload(self, model: str) -> None:
        self.models[model].desired = False

    # -- building ------------------------------------------------------------------------------
    def _enqueue(self, model: str, flags: tuple[str, ...]) -> None:
        if "--fp16" not in flags:
            entry = self.models[model]
            entry.build, entry.build_reason, entry.phase, entry.eta_s = "queued", "", "queued", None
        self._queue.put_nowait((model, flags))
        if self._builder is None or self._builder.done():
            self._builder = asyncio.get_running_loop().create_task(self._build_forever())

    async def _build_forever(self) -> None:
        while not self._queue.empty():
            model, flags = await self._queue.get()
            entry = self.models[model]
            serving = "--fp16" in flags
            if serving and not self._built[model]:
                continue  # its fp32 build failed: nothing to add fp16 to
            entry.build, entry.started = "running" if not serving else "fp16", time.monotonic()
            try:
                error = await self._run(model, ["build", "--model", model, "--progress", "json", *flags])
                if error is None and not serving:
                    await self._calibrate(model)
            except Exception as exc:  # a build that cannot even start is that model's failure
                error = f"{type(exc).__name__}: {exc}"
            if serving:
                if error:
                    log.warning("%s: fp16 build failed: %s", model, error)
                entry.build = "done" if entry.build == "fp16" else entry.build
                entry.phase, entry.eta_s = "", None
                continue
            self._built[model] = self.repo.manifest(model) is not None
            entry.build = "failed" if error or not self._built[model] else "done"
            entry.build_reason = error or ("" if self._built[model] else "the build wrote no manifest")
            entry.phase, entry.eta_s = "", None
            log.warning("%s: build %s%s", model, entry.build, f": {entry.build_reason}" if entry.build_reason else "")

    async def _calibrate(self, model: str) -> None:
        """Time the just-built model on this host for the router while its backbones load it: it
        serves meanwhile, on the router's analytic cost (``calibrating`` in its state); the
        ingresses rebuild their router when the calibration lands."""
        entry = self.models[model]
        self._built[model] = self.repo.manifest(model) is not None
        entry.build, entry.phase, entry.eta_s = "calibrating", "calibrate (timing it on this host for the router)", None
        error = await self._run(model, ["calibrate", "--model", model])
        if error:
            log.warning("%s: calibration failed, the router uses its uncalibrated cost: %s", model, error)

    async def _run(self, model: str, args: list[str]) -> str | None:
        """Run ``tessera <args>``; follow its JSON progress lines; the error (last lines) or None."""
        entry = self.models[model]
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "service.cli",
            "--model-repo",
            self.settings.model_repo,
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            # Ray pins OMP_NUM_THREADS to the actor's CPUs (none here): the build may use the host's.
            env={k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"},
            preexec_fn=_die_with_parent,
        )
        tail: list[str] = []
        assert proc.stdout is not None
        async for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            progress = _progress(line)
            if progress is not None:
                entry.phase = str(progress.get("phase", entry.phase))
                eta = progress.get("eta_s")
                entry.eta_s = float(eta) if isinstance(eta, int | float) else None
            elif line:
                tail = [*tail[-19:], line]
        if await proc.wait() == 0:
            return None
        failed = [line for line in tail if " failed " in line]
        return (failed[-1] if failed else " | ".join(tail[-3:]))[:500] or f"tessera {args[0]} exited {proc.returncode}"

    # -- the aggregate -------------------------------------------------------------------------
    def _status(self, name: str) -> ModelStatus:
        entry, built, now = self.models[name], self._built[name], time.monotonic()
        live = {rid: r for rid, r in entry.replicas.items() if now - r.at < STALE_S}
        entry.replicas = live
        states = {r.state for r in live.values()}
        elapsed = round(now - entry.started, 1) if entry.started is not None and entry.build != "done" else None
        if not entry.desired:
            holding = states & {"ready", "loading", "unloading"}
            return ModelStatus(state="unloading" if holding else "unloaded", reason="unloaded by request", built=built)
        if entry.build in ("queued", "running"):
            return ModelStatus(state="building", phase=entry.phase, elapsed_s=elapsed, eta_s=entry.eta_s, built=built)
        if entry.build == "failed":
            return ModelStatus(state="failed", reason=f"build failed: {entry.build_reason}", built=built)
        if not built:
            return ModelStatus(
                state="unavailable",
                reason=f"not built: run `tessera build --model {name}`, or load it with explicit model control",
            )
        if "ready" in states:
            phase = f"building fp16 graph: {entry.phase}" if entry.build == "fp16" and entry.phase else ""
            calibrating = entry.build == "calibrating"
            return ModelStatus(
                state="ready", phase=entry.phase if calibrating else phase, built=True, calibrating=calibrating
            )
        failures = [r.reason for r in live.values() if r.state == "failed"]
        if failures and "loading" not in states:
            return ModelStatus(state="failed", reason=failures[0], built=True)
        return ModelStatus(state="loading", reason="the backbone is loading it", built=True)


@serve.deployment(num_replicas=1, max_ongoing_requests=1000, ray_actor_options={"num_cpus": 0})
class ModelStates(ModelStateBook):
    """The book as a deployment of its own, shared by every replica that asks."""

    async def __init__(self, settings: dict[str, Any]) -> None:  # type: ignore[misc]  # Ray awaits it
        # on the replica's event loop, which the builds' tasks need
        super().__init__(settings)


def _die_with_parent() -> None:
    """Run in a build's child before it starts: on Linux the kernel kills the build when the process
    that started it dies. Ray reaps a replica's children only when the replica exits cleanly; a
    colocated ingress killed mid-build (a runtime crash, the OOM killer) would otherwise leave its
    build running beside the one its successor starts, both writing the same model version."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def _has_manifest(repo: ModelRepository, name: str) -> bool:
    return repo.manifest(name) is not None


def _progress(line: str) -> dict[str, Any] | None:
    if not line.startswith("{"):
        return None
    with contextlib.suppress(ValueError):
        value = json.loads(line)
        if isinstance(value, dict) and "phase" in value:
            return value
    return None


class HandleModelStates:
    """The ``ModelStates`` deployment over its handle, with the book's methods that replicas call
    (``ModelControl`` reads the states and sends load and unload; a ``BackboneHost`` reports)."""

    def __init__(self, handle: DeploymentHandle):
        self.handle = handle

    async def states(self) -> dict[str, ModelStatus]:
        states: dict[str, ModelStatus] = await self.handle.states.remote()
        return states

    async def load(self, model: str) -> None:
        await self.handle.load.remote(model)

    async def unload(self, model: str) -> None:
        await self.handle.unload.remote(model)

    async def report(self, model: str, replica: str, state: str, reason: str = "") -> tuple[bool, int]:
        wanted: tuple[bool, int] = await self.handle.report.remote(model, replica, state, reason)
        return wanted


#: Where a replica finds the book: the deployment's handle, or the book itself in this process.
StateSource = HandleModelStates | ModelStateBook
