"""Tessera against Triton on the same ONNX file, same host, one run (``tessera bench peer``).

Both servers run as subprocesses of this benchmark, one after the other, on one model repository:

* **Tessera**: ``tessera serve`` on loopback ports, as a user runs it (on one host: the ingress
  replica's own servers, the model and its ``DynamicBatcher`` in the same process); each
  ``--tessera-variant`` runs it again with other settings (e.g.
  ``TESSERA_TOPOLOGY=split,TESSERA_FRONT_END=ray``, a cluster's set-up);
* **Triton**: Triton Inference Server started through ``nvidia-pytriton`` (the ``peer`` extra), one
  model bound per Tessera model, whose inference function runs the *same* runtime ``Backend`` Tessera
  loads (``load_backend``: the same ONNX file, ONNX Runtime session options, intra-op threads and
  spinning, from the same ``TESSERA_*`` settings), behind Triton's dynamic batcher with the model's
  ``max_batch_size`` and ``batch_wait_timeout_s`` as ``max_queue_delay_microseconds``.

Each server is driven by ``tritonclient`` (gRPC, and REST with binary tensors) in a client
subprocess, closed loop, one 224² FP32 tissue tile per request, at ``--clients`` clients (throughput)
and at 1 client (latency), for the model and for a *no-op* model: a one-block, 16-wide ViT built into
the benchmark's own repository and served by both sides the same way, so its requests per second
are the front end's ceiling (transport, batching, hops) rather than the model's. The raw backend
at the model's full batch (no server at all) is measured before and after, as the reference.
At the start and the end of each point's window the client reads the CPU time of the server's
whole process tree (``CpuReading``: Tessera's Ray daemons and workers, Triton's server and stubs),
its own and the host's, so each point also says what an image cost the server in CPU.

Triton's Python-backend stub embeds an older libpython 3.11 whose C ``RLock`` lacks
``_recursion_count``, which this interpreter's ``multiprocessing.resource_tracker`` calls when the
stub loads a model. The fix is a ``sitecustomize.py`` that gives the resource tracker a pure-Python
``RLock`` where the C one lacks the method (and does nothing elsewhere). The stub ignores
``PYTHONPATH`` (measured: a ``sitecustomize`` there is not imported) but runs ``site`` for the
Python environment it finds first on ``PATH``, which pytriton sets to the environment of the
process that starts Triton. So the benchmark writes a throw-away environment in a temporary folder
(``write_stub_env``): a ``pyvenv.cfg`` over the same base interpreter, the ``sitecustomize.py``, and
a ``.pth`` that adds this environment's site-packages, and starts the Triton process with its
``python``. Nothing is written into the real environment.

Goal (DESIGN.md): Tessera >= 1.0x Triton's images/s over gRPC and REST binary; single-client p50
within 3 ms of Triton's; no-op front-end ceiling >= Triton's. A benchmark reports; it never asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from service.bench._common import CpuReading, cpu_times, steal_note, write_result
from service.ports import free_port

__all__ = [
    "NOOP_MODEL",
    "PROTOCOLS",
    "SERVERS",
    "SITECUSTOMIZE",
    "PeerOptions",
    "main",
    "noop_config",
    "prepare_repo",
    "run",
    "summarize",
    "write_sitecustomize",
]

RESULT_NAME = "peer"
#: Triton's side, installed into the benchmark's own environment (``install_triton``), never the service's
TRITON_REQUIREMENTS = ("nvidia-pytriton==0.7.0",)
PROTOCOLS = ("grpc", "rest")
SERVERS = ("tessera", "triton")
NOOP_MODEL = "peer_noop"
#: the goal's latency allowance: Tessera's 1-client p50 at most this much above Triton's
P50_ALLOWANCE_MS = 3.0
#: what each point reads of the CPU in its window (``CpuReading``): the server's processes' CPU per
#: image (a request, on the no-op model), their cores busy, the client's, and the host's busy share
CPU_STATS = ("cpu_ms_per_img", "server_cpu_cores", "client_cpu_cores", "host_busy")
ROOT = Path(__file__).resolve().parents[2]

SITECUSTOMIZE = '''\
"""Written by `tessera bench peer` for Triton's Python-backend stub (see service/bench/peer.py).

The stub embeds an older libpython 3.11 whose C RLock lacks `_recursion_count`, which this
interpreter's multiprocessing.resource_tracker calls at model load: give the tracker a pure-Python
RLock there. Where the C RLock has the method (every ordinary interpreter), do nothing.
"""
import _thread

if not hasattr(_thread.RLock, "_recursion_count"):
    import threading
    from multiprocessing import resource_tracker

    resource_tracker._resource_tracker._lock = threading._PyRLock()
'''


def write_sitecustomize(folder: str | Path) -> Path:
    """Write the stub's ``sitecustomize.py`` into ``folder`` (created); returns its path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "sitecustomize.py"
    path.write_text(SITECUSTOMIZE)
    return path


def site_packages(env: str | Path) -> Path:
    """``env/lib/pythonX.Y/site-packages`` for this interpreter's version."""
    import sysconfig

    return Path(env) / "lib" / f"python{sysconfig.get_python_version()}" / "site-packages"


def write_stub_env(folder: str | Path, prefix: str | Path | None = None) -> Path:
    """Triton's Python environment in ``folder``, over this process's base interpreter: the stub's
    ``sitecustomize.py`` in its own site-packages (where ``install_triton`` puts pytriton and its
    numpy), then, through a ``.pth``, the site-packages of the environment at ``prefix`` (default:
    this one) for everything else (ONNX Runtime, Tessera's own dependencies). Returns its python."""
    import sysconfig

    folder = Path(folder)
    prefix = str(Path(prefix or sys.prefix).resolve())
    base = Path(getattr(sys, "_base_executable", sys.executable))
    version = sysconfig.get_python_version()
    (folder / "bin").mkdir(parents=True, exist_ok=True)
    (folder / "pyvenv.cfg").write_text(
        f"home = {base.parent}\ninclude-system-site-packages = false\nversion = {version}\n"
    )
    for name in ("python3", "python", f"python{version}"):
        link = folder / "bin" / name
        if not link.is_symlink():
            link.symlink_to(base)
    own = site_packages(folder)
    write_sitecustomize(own)
    (own / "_tessera_peer.pth").write_text(
        f"import site; list(map(site.addsitedir, site.getsitepackages([{prefix!r}])))\n"
    )
    return folder / "bin" / "python3"


def install_triton(env: str | Path, requirements: Sequence[str] = TRITON_REQUIREMENTS) -> None:
    """pip-install ``requirements`` with their dependencies into ``env``'s own site-packages (once:
    a stamp records what was installed). They stay out of the service's environment: pytriton 0.7.0
    pins numpy < 2, which Ray's pyarrow refuses (``pyarrow requires NumPy 2.0 or newer``)."""
    target = site_packages(env)
    stamp = target / ".tessera-peer-requirements"
    wanted = "\n".join(requirements) + "\n"
    if stamp.exists() and stamp.read_text() == wanted:
        return
    target.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    done = subprocess.run([*command, "--target", str(target), *requirements], capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise RuntimeError(f"installing {' '.join(requirements)} for Triton failed: {' | '.join(tail)}")
    stamp.write_text(wanted)


# -- options ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PeerOptions:
    """What one run measures; ``validate`` names the first bad value."""

    model_repo: str = "model_repo"
    model: str = "vit_small"
    clients: int = 16
    duration_s: float = 20.0
    warmup_s: float = 3.0
    raw_duration_s: float = 10.0
    servers: tuple[str, ...] = SERVERS
    protocols: tuple[str, ...] = PROTOCOLS
    noop: bool = True
    ready_timeout_s: float = 300.0
    workdir: str = ".tessera/peer"
    notes: tuple[str, ...] = ()
    #: every server measured this many times in turn (the host drifts over a run); rows are medians
    rounds: int = 1
    #: extra Tessera runs, each right after the plain one: (name, environment it adds), e.g.
    #: ``("throughput", (("RAY_SERVE_THROUGHPUT_OPTIMIZED", "1"),))``; rows name them ``tessera:<name>``
    variants: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = ()
    #: extra Triton runs right after the plain one (one model instance), each with this many instances
    #: sharing the backend with Tessera's CPU lanes (``TESSERA_CPU_LANES``); rows name them ``triton:x<N>``
    triton_instances: tuple[int, ...] = ()

    def validate(self) -> PeerOptions:
        if not 1 <= self.clients <= 256:
            raise ValueError(f"--clients must be 1..256, got {self.clients}")
        if not 0 < self.duration_s <= 600:
            raise ValueError(f"--duration must be in (0, 600] s, got {self.duration_s}")
        if not 0 <= self.warmup_s <= 120:
            raise ValueError(f"--warmup must be in [0, 120] s, got {self.warmup_s}")
        if not 1 <= self.rounds <= 10:
            raise ValueError(f"--rounds must be 1..10, got {self.rounds}")
        if not 0 < self.raw_duration_s <= 600:
            raise ValueError(f"--raw-duration must be in (0, 600] s, got {self.raw_duration_s}")
        if not self.servers or set(self.servers) - set(SERVERS) or len(set(self.servers)) != len(self.servers):
            raise ValueError(f"--server must name each of {', '.join(SERVERS)} at most once, got {self.servers}")
        if not self.protocols or set(self.protocols) - set(PROTOCOLS):
            raise ValueError(f"--protocol must be among {', '.join(PROTOCOLS)}, got {self.protocols}")
        if self.model == NOOP_MODEL:
            raise ValueError(f"{NOOP_MODEL!r} is the benchmark's own no-op model; name a model of the repository")
        if self.triton_instances and "triton" not in self.servers:
            raise ValueError("--triton-instances needs the triton server")
        if any(not 2 <= n <= 8 for n in self.triton_instances) or len(set(self.triton_instances)) != len(
            self.triton_instances
        ):
            raise ValueError(f"--triton-instances must be distinct, 2..8, got {self.triton_instances}")
        names = [name for name, _ in self.variants]
        if self.variants and "tessera" not in self.servers:
            raise ValueError("--tessera-variant needs the tessera server")
        if len(set(names)) != len(names) or not all(re.fullmatch(r"[a-z0-9_\-]{1,32}", n) for n in names):
            raise ValueError(f"--tessera-variant names must be distinct, [a-z0-9_-]{{1,32}}, got {names}")
        for _, env in self.variants:
            for key, _value in env:
                if not re.fullmatch(r"(RAY|TESSERA)_[A-Z0-9_]+", key):
                    raise ValueError(f"--tessera-variant sets RAY_* or TESSERA_* variables only, got {key!r}")
        return self

    def runs(self) -> list[tuple[str, dict[str, str]]]:
        """(label, extra environment) per server start, in order: each variant after plain Tessera."""
        out: list[tuple[str, dict[str, str]]] = []
        for server in self.servers:
            out.append((server, {}))
            if server == "tessera":
                out += [(f"tessera:{name}", dict(env)) for name, env in self.variants]
            if server == "triton":
                out += [(f"triton:x{n}", {}) for n in self.triton_instances]
        return out

    def schedule(self) -> list[tuple[int, str, dict[str, str]]]:
        """(round, label, extra environment) per server start: ``runs()`` in odd rounds, reversed in
        even ones (A B C, C B A, ...), so that a host that speeds up or slows down over the run
        favours no server; the first peer runs, in one order, put Triton last in every round while
        raw ORT rose 20% from start to end."""
        return [
            (r, label, env)
            for r in range(1, self.rounds + 1)
            for label, env in (self.runs() if r % 2 else self.runs()[::-1])
        ]


def parse_variant(text: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """``NAME:KEY=VALUE[,KEY=VALUE...]`` → (name, ((key, value), ...))."""
    name, sep, rest = text.partition(":")
    pairs = [p.partition("=") for p in rest.split(",") if p.strip()] if sep else []
    if not sep or not pairs or any(not eq or not k.strip() for k, eq, _ in pairs):
        raise ValueError(f"--tessera-variant wants NAME:KEY=VALUE[,KEY=VALUE...], got {text!r}")
    return name.strip(), tuple((k.strip(), v.strip()) for k, _, v in pairs)


# -- the model repository both servers serve ---------------------------------------------------------------
def noop_config(batching: dict[str, Any]) -> dict[str, Any]:
    """``config.yaml`` of the no-op model: a one-block, 16-wide ViT-S/16 stem (almost no compute),
    batched as the measured model is, so that its rate is the serving path's ceiling."""
    return {
        "name": NOOP_MODEL,
        "version": 1,
        "family": "vit",
        "description": "tessera bench peer: front-end ceiling (one block, 16 wide)",
        "architecture": {
            "timm_name": "vit_small_patch16_224",
            "kwargs": {"embed_dim": 16, "depth": 1, "num_heads": 1},
        },
        "weights": {"source": "random", "seed": 0},
        "input": {"native_size": 224, "sizes": [224], "patch_size": 16},
        "output": {"embedding_dim": 16, "num_classes": 8},
        "batching": dict(batching),
        "artifacts": {"onnx": True, "optimize": False},
    }


def prepare_repo(source: str | Path, model: str, workdir: str | Path, *, noop: bool) -> Path:
    """``workdir/repo``: ``model`` linked from ``source`` (its config and built version), and the
    no-op model's config (built by ``build_noop``). No routes.yaml: OIP inference names its model."""
    import yaml

    from service.models import ModelRepository

    src = ModelRepository(source)
    cfg = src.config(model)
    src.require_manifest(model)
    repo = Path(workdir) / "repo"
    if (repo / model).exists() or (repo / model).is_symlink():
        if (repo / model).is_symlink():
            (repo / model).unlink()
        else:
            shutil.rmtree(repo / model)
    (repo / model).parent.mkdir(parents=True, exist_ok=True)
    (repo / model).symlink_to(src.model_dir(model).resolve(), target_is_directory=True)
    if noop:
        noop_dir = repo / NOOP_MODEL
        noop_dir.mkdir(parents=True, exist_ok=True)
        text = yaml.safe_dump(noop_config(cfg.batching.model_dump(mode="json")), sort_keys=False)
        config = noop_dir / "config.yaml"
        if not config.exists() or config.read_text() != text:
            config.write_text(text)
    return repo


def build_noop(repo: Path) -> None:
    """``tessera build --model peer_noop`` in a subprocess (skipped by the build when up to date)."""
    command = [sys.executable, "-m", "service.cli", "--model-repo", str(repo), "build", "--model", NOOP_MODEL]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=ROOT)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise RuntimeError(f"building the no-op model failed: {' | '.join(tail)}")


# -- servers -------------------------------------------------------------------------------------------------
@dataclass
class Ports:
    http: int
    grpc: int
    metrics: int

    @classmethod
    def free(cls) -> Ports:
        return cls(free_port(), free_port(), free_port())


def tessera_command(repo: Path, ports: Ports) -> list[str]:
    return [
        sys.executable,
        "-m",
        "service.cli",
        "--model-repo",
        str(repo.resolve()),
        "serve",
        "--host",
        "127.0.0.1",
        "--http-port",
        str(ports.http),
        "--grpc-port",
        str(ports.grpc),
        "--metrics-port",
        str(ports.metrics),
    ]


def triton_command(
    repo: Path, models: Sequence[str], ports: Ports, python: str | Path | None = None, instances: int = 1
) -> list[str]:
    return [
        str(python or sys.executable),
        "-m",
        "service.bench.peer",
        "--triton-server",
        "--model-repo",
        str(repo.resolve()),
        *(a for m in models for a in ("--serve-model", m)),
        "--ports",
        f"{ports.http},{ports.grpc},{ports.metrics}",
        "--triton-instances",
        str(instances),
    ]


@dataclass(frozen=True)
class ServerUp:
    """A started server: seconds it took to print its ``ready:`` line, and its process id (the root
    of the process tree whose CPU the clients read)."""

    ready_s: float
    pid: int


@contextmanager
def server_process(
    command: list[str], env: dict[str, str], log_path: Path, ready_timeout_s: float
) -> Iterator[ServerUp]:
    """Start ``command``, yield it once it printed its ``ready:`` line, SIGTERM it after."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log: IO[str] = open(log_path, "w")  # noqa: SIM115 - closed below
    started = time.monotonic()
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT, start_new_session=True
    )
    ready = threading.Event()

    def drain() -> None:
        for line in proc.stdout or ():
            if not log.closed:
                log.write(line)
                log.flush()
            # anywhere in the line: Triton's C++ log shares the pipe, and one of its lines once ran
            # into the ready line ("...model_lif" + "ready: http://..."), so a round waited 300 s
            if "ready: http://" in line:
                ready.set()

    reader = threading.Thread(target=drain, name="peer-server-log", daemon=True)
    reader.start()
    try:
        while not ready.wait(0.2):
            if proc.poll() is not None:
                raise RuntimeError(f"{command[2]} exited with {proc.returncode} before it was ready; see {log_path}")
            if time.monotonic() - started > ready_timeout_s:
                raise RuntimeError(f"{command[2]} not ready after {ready_timeout_s:.0f} s; see {log_path}")
        yield ServerUp(round(time.monotonic() - started, 2), proc.pid)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # its own session: Triton's and Ray's children too
                proc.wait(timeout=30)
        reader.join(timeout=5)
        log.close()


def serve_triton(repo_path: str, models: Sequence[str], ports: Ports, instances: int = 1) -> int:
    """The Triton side (run in its own process): each model behind Triton's dynamic batcher, its
    inference function the runtime ``Backend`` Tessera's replica would load with these settings.
    With ``instances`` > 1 that many model instances share the backend, loaded with Tessera's CPU
    lanes, so Triton runs batches side by side as Tessera does under load."""
    from pytriton.decorators import batch
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    from service.models import ModelRepository
    from service.runtime import load_backend
    from service.settings import ServerSettings

    settings = ServerSettings.from_env()
    repo = ModelRepository(repo_path)
    config = TritonConfig(
        http_address="127.0.0.1",
        http_port=ports.http,
        grpc_address="127.0.0.1",
        grpc_port=ports.grpc,
        metrics_port=ports.metrics,
        log_verbose=0,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with Triton(config=config) as triton:
        for name in models:
            cfg = repo.config(name)
            backend = load_backend(
                repo,
                name,
                prefer=settings.runtime,
                providers=settings.providers,
                intra_op_threads=settings.intra_op_threads,
                spin=settings.ort_spin,
                cache_dir=settings.trt_cache_dir,
                lanes=settings.cpu_lanes if instances > 1 else 1,
            )
            side = cfg.input.native_size
            zeros = np.zeros((1, 3, side, side), dtype=np.float32)
            backend.warm_up(zeros)  # as Tessera's replica, every session
            sample = backend.infer(zeros).outputs

            def infer(pixels: np.ndarray, _backend: Any = backend) -> dict[str, np.ndarray]:
                return dict(_backend.infer(pixels).outputs)

            triton.bind(
                model_name=name,
                infer_func=[batch(infer) for _ in range(instances)],
                inputs=[Tensor(name="pixels", dtype=np.float32, shape=(3, -1, -1))],
                outputs=[Tensor(name=k, dtype=np.float32, shape=tuple(v.shape[1:])) for k, v in sample.items()],
                config=ModelConfig(
                    max_batch_size=cfg.batching.max_batch_size,
                    batcher=DynamicBatcher(max_queue_delay_microseconds=round(cfg.batching.batch_wait_timeout_s * 1e6)),
                ),
                strict=False,
            )
            print(f"triton: bound {name} on {backend.describe()}", flush=True)
        triton.run()
        print(f"ready: http://127.0.0.1:{ports.http} grpc://127.0.0.1:{ports.grpc}", flush=True)
        while not stop.wait(0.5):
            if not triton.is_alive():
                print("triton: the server died", flush=True)
                return 1
    return 0


# -- clients (run in a subprocess: tritonclient apart from the benchmark's own imports) ---------------------
async def _closed_loop(
    protocol: str,
    target: str,
    model: str,
    pixels: np.ndarray,
    clients: int,
    duration_s: float,
    warmup_s: float,
    server_pid: int | None = None,
) -> tuple[Any, dict[str, float | None]]:
    """``clients`` tritonclient asyncio clients, each sending its next request when its answer is
    in: (the window's statistics, the CPU the server's processes, this client and the host spent in
    the window, read at its start and end when ``server_pid`` is given)."""
    from tritonclient.utils import InferenceServerException

    from service.bench.service_vs_raw import LoadStats

    if protocol == "grpc":
        import tritonclient.grpc.aio as client_module
    elif protocol == "rest":
        import tritonclient.http.aio as client_module
    else:
        raise ValueError(f"unknown protocol {protocol!r}")
    stats = LoadStats(window_s=duration_s)
    begin = time.perf_counter() + warmup_s
    end = begin + duration_s

    async def worker() -> None:
        client = client_module.InferenceServerClient(target)
        inputs = [client_module.InferInput("pixels", list(pixels.shape), "FP32")]
        outputs = [client_module.InferRequestedOutput("embedding")]
        if protocol == "rest":  # binary tensors both ways
            inputs[0].set_data_from_numpy(pixels, binary_data=True)
            outputs = [client_module.InferRequestedOutput("embedding", binary_data=True)]
        else:
            inputs[0].set_data_from_numpy(pixels)
        try:
            while time.perf_counter() < end:
                start = time.perf_counter()
                try:
                    result = await client.infer(model, inputs, outputs=outputs)
                    embedding = result.as_numpy("embedding")
                    images = 0 if embedding is None else int(embedding.shape[0])
                    ok = images == pixels.shape[0]
                    status = "OK" if ok else "WRONG_SHAPE"
                except InferenceServerException as exc:
                    ok, status, images = False, str(exc.status() or exc.message())[:200], 0
                except Exception as exc:  # a malformed answer is an error of the point, not of the run
                    ok, status, images = False, f"{type(exc).__name__}: {exc}"[:200], 0
                done = time.perf_counter()
                if begin <= done <= end:
                    stats.record(ok, status, (done - start) * 1e3, images, None)
        finally:
            await client.close()

    async def cpu_window() -> dict[str, float | None]:
        if server_pid is None:
            return {}
        try:
            await asyncio.sleep(max(0.0, begin - time.perf_counter()))
            before = await asyncio.to_thread(CpuReading.now, server_pid)
            await asyncio.sleep(max(0.0, end - time.perf_counter()))
            after = await asyncio.to_thread(CpuReading.now, server_pid)
        except Exception as exc:  # the CPU is beside the point's rates: never the reason they are lost
            print(f"reading the CPU failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            return {}
        return after.since(before)

    cpu, *_ = await asyncio.gather(cpu_window(), *(worker() for _ in range(clients)))
    return stats, dict(cpu or {})


def client_load(
    protocol: str,
    target: str,
    model: str,
    pixels: np.ndarray,
    clients: int,
    duration_s: float,
    warmup_s: float,
    server_pid: int | None = None,
) -> dict[str, Any]:
    """A closed loop of ``clients`` tritonclient clients against ``target``; the window's statistics,
    with the server's CPU per image (``cpu_ms_per_img``, all its processes) when ``server_pid`` is given."""
    stats, cpu = asyncio.run(_closed_loop(protocol, target, model, pixels, clients, duration_s, warmup_s, server_pid))
    out = dict(stats.to_dict())
    if cpu:
        out.update(cpu)
        cores, rate = cpu.get("server_cpu_cores"), out.get("img_per_s")
        out["cpu_ms_per_img"] = round(1e3 * cores / rate, 4) if cores is not None and rate else None
    return out


def _client_subprocess(
    protocol: str,
    target: str,
    model: str,
    pixels_path: Path,
    clients: int,
    duration_s: float,
    warmup_s: float,
    server_pid: int | None = None,
) -> dict[str, Any]:
    command = [
        sys.executable,
        "-m",
        "service.bench.peer",
        "--client",
        protocol,
        "--target",
        target,
        "--model",
        model,
        "--pixels",
        str(pixels_path),
        "--clients",
        str(clients),
        "--duration",
        str(duration_s),
        "--warmup",
        str(warmup_s),
        *(["--server-pid", str(server_pid)] if server_pid is not None else []),
    ]
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=duration_s + warmup_s + 180, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"img_per_s": 0.0, "skipped": "client timed out"}
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return dict(json.loads(line[7:]))
    tail = (out.stderr or out.stdout).strip().splitlines()[-3:]
    return {"img_per_s": 0.0, "skipped": f"client failed (exit {out.returncode}): {' | '.join(tail)[:400]}"}


# -- shaping the result -------------------------------------------------------------------------------------
def _rows_by(rows: list[dict[str, Any]]) -> dict[tuple[str, str, str, int], dict[str, Any]]:
    return {(r["server"], r["role"], r["protocol"], int(r["clients"])): r for r in rows}


def _ratio(a: Any, b: Any) -> float | None:
    if not isinstance(a, int | float) or not isinstance(b, int | float) or not b:
        return None
    return round(float(a) / float(b), 4)


def summarize(rows: list[dict[str, Any]], clients: int, protocols: Sequence[str] = PROTOCOLS) -> dict[str, Any]:
    """Tessera against Triton per protocol: throughput at ``clients`` clients, p50 at 1 client, the
    no-op ceiling; ``goal_met`` only when every comparison was measured and holds. Beside them, not
    part of the goal: each server's CPU per image at ``clients`` clients, all its processes (on a
    host whose cores are all busy, what decides img/s; as noisy from run to run as img/s)."""
    by = _rows_by(rows)
    summary: dict[str, Any] = {}
    verdicts: list[bool] = []
    for protocol in protocols:

        def get(server: str, role: str, n: int, key: str, protocol: str = protocol) -> Any:
            return (by.get((server, role, protocol, n)) or {}).get(key)

        tessera, triton = get("tessera", "model", clients, "img_per_s"), get("triton", "model", clients, "img_per_s")
        ratio = _ratio(tessera, triton)
        p50_tessera, p50_triton = get("tessera", "model", 1, "p50_ms"), get("triton", "model", 1, "p50_ms")
        delta = (
            round(float(p50_tessera) - float(p50_triton), 2)
            if isinstance(p50_tessera, int | float) and isinstance(p50_triton, int | float)
            else None
        )
        ceiling = _ratio(get("tessera", "noop", clients, "img_per_s"), get("triton", "noop", clients, "img_per_s"))
        summary[protocol] = {
            "tessera_img_per_s": tessera,
            "triton_img_per_s": triton,
            "throughput_ratio": ratio,
            "tessera_p50_1_client_ms": p50_tessera,
            "triton_p50_1_client_ms": p50_triton,
            "p50_delta_ms": delta,
            "tessera_noop_req_per_s": get("tessera", "noop", clients, "img_per_s"),
            "triton_noop_req_per_s": get("triton", "noop", clients, "img_per_s"),
            "noop_ratio": ceiling,
            "tessera_cpu_ms_per_img": get("tessera", "model", clients, "cpu_ms_per_img"),
            "triton_cpu_ms_per_img": get("triton", "model", clients, "cpu_ms_per_img"),
            "cpu_ratio": _ratio(
                get("tessera", "model", clients, "cpu_ms_per_img"), get("triton", "model", clients, "cpu_ms_per_img")
            ),
        }
        verdicts += [
            ratio is not None and ratio >= 1.0,
            delta is not None and delta <= P50_ALLOWANCE_MS,
            ceiling is not None and ceiling >= 1.0,
        ]
    summary["goal_met"] = bool(verdicts) and all(verdicts)
    return summary


def merge_rounds(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per point (server, role, model, protocol, clients): the median over the rounds that
    measured it (img/s and latencies), counts summed, and each round's img/s and p50 kept beside."""
    measured = {r["server"] for r in rows if r["protocol"] != "-"}
    failed = {r["server"]: r["skipped"] for r in rows if r["protocol"] == "-" and r.get("skipped")}
    # a server that did not start in one round but did in another: its points, with the failure said
    rows = [
        {**r, "first_error": r.get("first_error") or f"did not start in a round: {failed[r['server']]}"}
        if r["server"] in failed and r["server"] in measured
        else r
        for r in rows
        if not (r["protocol"] == "-" and r["server"] in measured)
    ]
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for row in rows:
        key = (row["server"], row["role"], row["model"], row["protocol"], row["clients"])
        groups.setdefault(key, []).append(row)
    merged = []
    for group in groups.values():
        if len(group) == 1:
            merged.append({k: v for k, v in group[0].items() if k != "round"})
            continue
        out = {k: group[0][k] for k in ("server", "role", "model", "protocol", "clients")}
        for stat in ("img_per_s", "p50_ms", "p95_ms", "p99_ms", *CPU_STATS):
            rates = [float(r[stat]) for r in group if r.get(stat) is not None]
            if rates or stat not in CPU_STATS:  # rows of runs that did not read the CPU stay as they were
                out[stat] = round(float(np.median(rates)), 4 if stat in CPU_STATS else 3) if rates else None
        for count in ("requests_ok", "shed", "errors"):
            counts = [int(r[count]) for r in group if r.get(count) is not None]
            out[count] = sum(counts) if counts else None
        errors = [r["first_error"] for r in group if r.get("first_error")]
        if errors:
            out["first_error"] = errors[0]
        if all(r.get("skipped") for r in group):
            out["skipped"] = group[0]["skipped"]
        out["img_per_s_rounds"] = [r.get("img_per_s") for r in group]
        out["p50_ms_rounds"] = [r.get("p50_ms") for r in group]
        merged.append(out)
    return merged


def point_row(server: str, role: str, model: str, protocol: str, clients: int, stats: dict[str, Any]) -> dict[str, Any]:
    """One measured point: which server, model, protocol and clients, and the load's statistics."""
    keep = (
        "img_per_s",
        "requests_ok",
        "p50_ms",
        "p95_ms",
        "p99_ms",
        *CPU_STATS,
        "shed",
        "errors",
        "first_error",
        "skipped",
    )
    return {
        "server": server,
        "role": role,
        "model": model,
        "protocol": protocol,
        "clients": clients,
        **{k: stats.get(k) for k in keep if k in stats},
    }


def _measure_server(
    server: str,
    command: list[str],
    env: dict[str, str],
    log_path: Path,
    models: list[tuple[str, str]],
    ports: Ports,
    pixels_path: Path,
    options: PeerOptions,
) -> tuple[float | None, list[dict[str, Any]]]:
    """Start one server, measure every point against it, stop it: (seconds to ready, rows). A
    server that does not start (a lever's variant may not) is one row saying why, not the run's end."""
    rows: list[dict[str, Any]] = []
    try:
        with server_process(command, env, log_path, options.ready_timeout_s) as up:
            ready_s = up.ready_s
            print(f"  {server} ready in {ready_s} s", flush=True)
            for model, role in models:
                for protocol in options.protocols:
                    target = f"127.0.0.1:{ports.grpc if protocol == 'grpc' else ports.http}"
                    for n in dict.fromkeys((options.clients, 1)):
                        stats = _client_subprocess(
                            protocol, target, model, pixels_path, n, options.duration_s, options.warmup_s, up.pid
                        )
                        rows.append(point_row(server, role, model, protocol, n, stats))
                        print(_point_line(rows[-1]), flush=True)
    except RuntimeError as exc:
        print(f"  {server}: {exc}", flush=True)
        return None, [point_row(server, "model", models[0][0], "-", 0, {"img_per_s": None, "skipped": str(exc)})]
    return ready_s, rows


def result_name(options: PeerOptions) -> str:
    """``peer``; ``peer_<variant>_...`` for a run with Tessera variants (a lever's before/after), so
    that it does not replace the comparison the goal is judged on."""
    return "_".join([RESULT_NAME, *(name.replace("-", "_") for name, _ in options.variants)])


def busy_host_notes(load_before: float, load_after: float, cores: int) -> list[str]:
    """A note when the 1-minute load average exceeded the core count at either end of the run."""
    if max(load_before, load_after) <= cores:
        return []
    return [
        f"the host's 1-minute load average was {load_before:.1f} at the start and {load_after:.1f} at the end "
        f"on {cores} cores: other work shared the CPUs, so compare the two servers only as ratios"
    ]


def _point_line(row: dict[str, Any]) -> str:
    line = (
        f"  {row['server']:<8} {row['model']:<10} {row['protocol']:<4} {row['clients']:>3} clients "
        f"{row.get('img_per_s') or 0:8.1f} img/s  p50 {row.get('p50_ms')} ms"
    )
    if row.get("cpu_ms_per_img") is not None:
        line += f"  server CPU {row['cpu_ms_per_img']:.1f} ms/img"
    if row.get("skipped"):
        line += f"  {row['skipped']}"
    if row.get("errors"):
        line += f"  errors {row['errors']}: {row.get('first_error')}"
    return line


# -- the benchmark ------------------------------------------------------------------------------------------
def _server_env(server: str, tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("VIRTUAL_ENV", None)  # the Triton process runs in the throw-away environment
    if server == "tessera":
        env.setdefault("TESSERA_JOB_DIR", str(tmp / "jobs"))
    return env


def _prepare_peer_repo(options: PeerOptions, workdir: Path) -> Path:
    """The benchmark's own repository: the model linked in, the no-op model built there (once)."""
    repo_path = prepare_repo(options.model_repo, options.model, workdir, noop=options.noop)
    if options.noop:
        print(f"building the no-op model {NOOP_MODEL} in {repo_path} (once) ...", flush=True)
        build_noop(repo_path)
    return repo_path


def _tiles(cfg: Any) -> tuple[np.ndarray, np.ndarray]:
    """Normalised tissue tiles at the model's size: (the raw backend's full batch, one request's tile)."""
    from service.bench.service_vs_raw import normalised, tissue_jpegs

    tiles = normalised(tissue_jpegs(cfg.batching.max_batch_size, cfg.input.native_size), cfg.input.mean, cfg.input.std)
    return np.ascontiguousarray(tiles[: cfg.batching.max_batch_size]), np.ascontiguousarray(tiles[:1])


def _measure_servers(
    options: PeerOptions, workdir: Path, repo_path: Path, single: np.ndarray
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Each server start of ``options.runs()`` in turn, every point measured against it: (rows,
    seconds to ready per server that started). Triton's environment is installed first when asked for."""
    models = [(options.model, "model")] + ([(NOOP_MODEL, "noop")] if options.noop else [])
    rows: list[dict[str, Any]] = []
    ready: dict[str, float] = {}
    stub_python: Path | None = None
    if "triton" in options.servers:
        print(f"Triton's environment: {workdir / 'triton-env'} ({', '.join(TRITON_REQUIREMENTS)}) ...", flush=True)
        stub_python = write_stub_env(workdir / "triton-env")
        install_triton(workdir / "triton-env")
    with tempfile.TemporaryDirectory(prefix="tessera-peer-") as tmp:
        stub_dir = Path(tmp)
        pixels_path = stub_dir / "pixels.npy"
        np.save(pixels_path, single)
        previous_round = 0
        for round_, server, extra_env in options.schedule():
            if options.rounds > 1 and round_ != previous_round:
                print(f"round {round_} of {options.rounds}", flush=True)
            previous_round = round_
            ports = Ports.free()
            kind, _, label = server.partition(":")
            command = (
                triton_command(repo_path, [m for m, _ in models], ports, stub_python, int(label[1:] or 1))
                if kind == "triton"
                else tessera_command(repo_path, ports)
            )
            suffix = f"-round{round_}" if options.rounds > 1 else ""
            log_path = workdir / f"{server.replace(':', '-')}{suffix}.log"
            env = {**_server_env(kind, stub_dir), **extra_env}
            print(f"starting {server} {extra_env or ''} (log {log_path}) ...", flush=True)
            ready_s, measured = _measure_server(server, command, env, log_path, models, ports, pixels_path, options)
            rows += [{**row, "round": round_} for row in measured]
            if ready_s is not None:
                ready.setdefault(server, ready_s)
    return rows, ready


def run(options: PeerOptions) -> dict[str, Any]:
    """Raw before, each server in turn (Tessera, its variants, Triton), raw after; the result written and returned."""
    from service.bench.service_vs_raw import load_raw_backend, measure_raw, quiet_host_notes
    from service.models import ModelRepository
    from service.settings import ServerSettings

    options = options.validate()
    workdir = Path(options.workdir)
    repo_path = _prepare_peer_repo(options, workdir)
    repo = ModelRepository(repo_path)
    cfg = repo.config(options.model)
    settings = ServerSettings.from_env()
    backend = load_raw_backend(repo, options.model, settings)
    raw_batch, single = _tiles(cfg)
    print(f"raw {options.model} ({backend.describe()}) batch {raw_batch.shape[0]} ...", flush=True)
    load_before, times_before = os.getloadavg()[0], cpu_times()
    raw_before = measure_raw(backend, raw_batch, options.raw_duration_s)
    print(f"  raw before: {raw_before['img_per_s']:.1f} img/s", flush=True)

    round_rows, ready = _measure_servers(options, workdir, repo_path, single)
    rows = merge_rounds(round_rows)

    raw_after = measure_raw(backend, raw_batch, options.raw_duration_s)
    print(f"  raw after:  {raw_after['img_per_s']:.1f} img/s", flush=True)
    summary = summarize(rows, options.clients, options.protocols)
    summary["remarks"] = list(options.notes)
    summary["notes"] = [
        *quiet_host_notes(raw_before["img_per_s"], raw_after["img_per_s"], []),
        *busy_host_notes(load_before, os.getloadavg()[0], os.cpu_count() or 1),
        *steal_note(times_before, cpu_times()),
    ]
    name = result_name(options)
    result = {
        "benchmark": name,
        "goal": ">= 1.0x Triton's images/s over gRPC and REST binary; 1-client p50 within 3 ms of Triton's; "
        "no-op front-end ceiling >= Triton's",
        "model": options.model,
        "noop_model": NOOP_MODEL if options.noop else None,
        "size": cfg.input.native_size,
        "max_batch_size": cfg.batching.max_batch_size,
        "batch_wait_timeout_s": cfg.batching.batch_wait_timeout_s,
        "clients": options.clients,
        "duration_s": options.duration_s,
        "warmup_s": options.warmup_s,
        "rounds": options.rounds,
        "round_order": "alternating",
        "servers": [server for server, _ in options.runs()],
        "variants": {f"tessera:{name}": dict(env) for name, env in options.variants},
        "triton_instances": {f"triton:x{n}": n for n in options.triton_instances},
        "cpu_lanes": settings.cpu_lanes,
        "server_ready_s": ready,
        "backend": backend.describe(),
        "intra_op_threads": settings.intra_op_threads,
        "ort_spin": settings.ort_spin,
        "versions": _peer_versions(workdir / "triton-env"),
        "raw": {
            "before": raw_before,
            "after": raw_after,
            "img_per_s": round((raw_before["img_per_s"] + raw_after["img_per_s"]) / 2, 3),
        },
        "rows": rows,
        "round_rows": round_rows if options.rounds > 1 else [],
        "summary": summary,
    }
    print(f"wrote {write_result(name, result)}")
    return result


def _peer_versions(triton_env: Path) -> dict[str, str]:
    """Triton's side from its own environment, the client from this one."""
    from importlib import metadata

    out = {}
    for pkg, path in (
        ("nvidia-pytriton", [str(site_packages(triton_env))]),
        ("numpy (Triton's)", [str(site_packages(triton_env))]),
        ("tritonclient", None),
    ):
        name = pkg.split(" ")[0]
        found = next(
            iter(metadata.distributions(name=name, path=path) if path else metadata.distributions(name=name)), None
        )
        out[pkg] = found.version if found else "absent"
    return out


def _csv(values: list[str] | None, default: Sequence[str]) -> tuple[str, ...]:
    if not values:
        return tuple(default)
    return tuple(v.strip() for item in values for v in item.split(",") if v.strip())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="tessera bench peer", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-repo", default="model_repo")
    parser.add_argument("--model", default="vit_small", help="the built model both servers serve")
    parser.add_argument("--clients", type=int, default=16, help="closed-loop clients for throughput (1..256)")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds measured per point")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of load before each point's window")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure every server this many times in turn and report each point's median (a drifting host)",
    )
    parser.add_argument("--raw-duration", type=float, default=10.0, help="seconds of raw inference, before and after")
    parser.add_argument("--server", action="append", help=f"servers, in order (default {','.join(SERVERS)})")
    parser.add_argument("--protocol", action="append", help=f"protocols (default {','.join(PROTOCOLS)})")
    parser.add_argument("--no-noop", action="store_true", help="skip the no-op model (front-end ceiling)")
    parser.add_argument("--ready-timeout", type=float, default=300.0, help="seconds to wait for each server")
    parser.add_argument("--workdir", default=".tessera/peer", help="the benchmark's repository and server logs")
    parser.add_argument(
        "--tessera-variant",
        action="append",
        default=[],
        metavar="NAME:KEY=VALUE[,KEY=VALUE]",
        help="also run Tessera with these RAY_*/TESSERA_* variables, right after the plain run (a lever to compare)",
    )
    parser.add_argument(
        "--triton-instances",
        action="append",
        type=int,
        default=[],
        metavar="N",
        help="also run Triton with N model instances sharing the backend (with Tessera's CPU lanes), after the "
        "plain one-instance run; internal to the Triton server process otherwise",
    )
    parser.add_argument(
        "--note", action="append", default=[], help="a note on the run for the report (e.g. the host was shared)"
    )
    # internal: the Triton server and the load clients, each run in their own process
    parser.add_argument("--triton-server", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--serve-model", action="append", help=argparse.SUPPRESS)
    parser.add_argument("--ports", help=argparse.SUPPRESS)
    parser.add_argument("--client", choices=PROTOCOLS, help=argparse.SUPPRESS)
    parser.add_argument("--target", help=argparse.SUPPRESS)
    parser.add_argument("--pixels", help=argparse.SUPPRESS)
    parser.add_argument("--server-pid", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.triton_server:
        http, grpc, metrics = (int(p) for p in args.ports.split(","))
        instances = args.triton_instances[-1] if args.triton_instances else 1
        return serve_triton(args.model_repo, args.serve_model or [], Ports(http, grpc, metrics), instances)
    if args.client:
        stats = client_load(
            args.client,
            args.target,
            args.model,
            np.load(args.pixels),
            args.clients,
            args.duration,
            args.warmup,
            args.server_pid,
        )
        print("RESULT " + json.dumps(stats), flush=True)
        return 0
    try:
        options = PeerOptions(
            model_repo=args.model_repo,
            model=args.model,
            clients=args.clients,
            duration_s=args.duration,
            warmup_s=args.warmup,
            raw_duration_s=args.raw_duration,
            rounds=args.rounds,
            servers=_csv(args.server, SERVERS),
            protocols=_csv(args.protocol, PROTOCOLS),
            noop=not args.no_noop,
            ready_timeout_s=args.ready_timeout,
            workdir=args.workdir,
            notes=tuple(args.note),
            variants=tuple(parse_variant(v) for v in args.tessera_variant),
            triton_instances=tuple(args.triton_instances),
        ).validate()
    except ValueError as exc:
        parser.error(str(exc))
    run(options)
    return 0


if __name__ == "__main__":
    sys.exit(main())
