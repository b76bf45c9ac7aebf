"""``tessera loadtest``: (optionally) start the service, run Locust headless, report, check SLOs.

Loopback only: the HTTP host and the gRPC target must be 127.0.0.0/8, ::1 or ``localhost``.
Bounded: at most 256 users, 100 spawned per second, 30 minutes. Everything the run produced goes
to ``loadtest/reports/<timestamp>/``: Locust's CSV files and HTML report, its log, the service's
log when started here, and ``summary.json`` (statistics per endpoint, totals, every SLO check).

Exit status: 0 when every SLO holds, 1 when one fails, 2 when the run itself failed (the
service did not start, Locust crashed or wrote no statistics).

Also runnable as ``python -m loadtest.runner [options]`` from the repository root.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
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
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from loadtest.options import add_loadtest_arguments
from loadtest.slo import SloResult, evaluate, load_slo, read_failures, read_stats
from loadtest.workload import (
    DEFAULT_MIX,
    DEFAULT_PACE_S,
    DEFAULT_SIZES,
    USER_KINDS,
    Workload,
    parse_sizes,
    parse_weights,
    require_loopback_target,
    require_loopback_url,
)
from service.ports import free_port
from service.settings import LoadtestSettings, ServerSettings, load

__all__ = [
    "LoadtestOptions",
    "ServiceProcess",
    "end_process_group",
    "locust_command",
    "main",
    "options_from_args",
    "parse_duration",
    "print_summary",
    "run",
]

LOADTEST_DIR = Path(__file__).resolve().parent
ROOT = LOADTEST_DIR.parent
#: Locust user class for each kind in the mix.
USER_CLASSES = {"predict": "PredictUser", "oip": "OipUser", "grpc": "GrpcUser", "slide": "SlideUser"}
MAX_DURATION_S = 1800
_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s?)?$")


def parse_duration(text: str) -> int:
    """``"90"``, ``"90s"``, ``"2m"``, ``"1m30s"``, ``"1h"`` → seconds (1 .. 1800)."""
    match = _DURATION.match(text.strip().lower())
    if not text.strip() or match is None or not any(match.groups()):
        raise ValueError(f"duration must look like 30s, 2m or 1m30s, got {text!r}")
    hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
    total = hours * 3600 + minutes * 60 + seconds
    if not 1 <= total <= MAX_DURATION_S:
        raise ValueError(f"duration must be 1 s .. {MAX_DURATION_S // 60} min, got {text!r}")
    return total


class LoadtestOptions(BaseModel):
    """One load-test run, validated (bounds here are the runner's safety limits)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    start: bool = Field(default=False, description="Start `tessera serve` on loopback first and stop it after.")
    users: int = Field(default=8, ge=1, le=256, description="Concurrent Locust users.")
    spawn_rate: float = Field(default=4.0, gt=0, le=100, description="Users started per second.")
    duration_s: int = Field(default=180, ge=1, le=MAX_DURATION_S, description="Run time in seconds.")
    host: str | None = Field(default=None, description="Service URL; loopback only.")
    grpc_host: str | None = Field(default=None, description="gRPC HOST:PORT; loopback only.")
    mix: str = Field(default=DEFAULT_MIX, description="User weights: predict, oip, grpc, slide.")
    sizes: str = Field(default=DEFAULT_SIZES, description="Image sides for /v1/predict with weights.")
    model: str = Field(default="vit_small", description="Model of the OIP and gRPC users.")
    oip_batch: int = Field(default=1, ge=1, le=64, description="Images per OIP/gRPC request.")
    pace_s: float = Field(
        default=DEFAULT_PACE_S, ge=0, le=600, description="Seconds between one user's request starts; 0 = closed loop."
    )
    slo: Path = Field(default=LOADTEST_DIR / "slo.yaml", description="SLO file.")
    out: Path = Field(default=LOADTEST_DIR / "reports", description="Reports folder.")
    model_repo: str = Field(default="model_repo", description="Model repository for --start.")
    http_port: int | None = Field(default=None, ge=1, le=65535, description="--start: REST port.")
    grpc_port: int | None = Field(default=None, ge=1, le=65535, description="--start: gRPC port.")
    metrics_port: int | None = Field(default=None, ge=1, le=65535, description="--start: metrics port.")
    ready_timeout_s: float = Field(default=300.0, gt=0, le=1800, description="--start: wait for the ready line.")
    record: bool = Field(default=False, description="Also write the result to bench/results for the report.")
    stop_timeout_s: int = Field(default=10, ge=0, le=300, description="Seconds users get to finish at the end.")
    locustfile: Path = Field(default=LOADTEST_DIR / "locustfile.py", description="The Locust file.")

    @field_validator("host")
    @classmethod
    def _loopback_host(cls, value: str | None) -> str | None:
        return require_loopback_url(value) if value is not None else None

    @field_validator("grpc_host")
    @classmethod
    def _loopback_grpc(cls, value: str | None) -> str | None:
        return require_loopback_target(value) if value is not None else None

    @field_validator("mix")
    @classmethod
    def _mix(cls, value: str) -> str:
        parse_weights(value, allowed=USER_KINDS)
        return value

    @field_validator("sizes")
    @classmethod
    def _sizes(cls, value: str) -> str:
        parse_sizes(value)
        return value

    def workload(self, grpc_target: str | None) -> Workload:
        return Workload(
            mix=parse_weights(self.mix, allowed=USER_KINDS),
            sizes=parse_sizes(self.sizes),
            model=self.model,
            oip_batch=self.oip_batch,
            pace_s=self.pace_s,
            wait_s=load(LoadtestSettings).wait_s,
            grpc_target=grpc_target,
        )


def options_from_args(args: argparse.Namespace) -> LoadtestOptions:
    """The options from ``tessera loadtest``'s flags (``TESSERA_LT_MIX``/``_SIZES`` as defaults)."""
    lt = load(LoadtestSettings)
    pace_s = lt.pace_s if "pace_s" in lt.model_fields_set else DEFAULT_PACE_S  # the Locust file's default is 0
    values: dict[str, Any] = {
        "start": args.start,
        "users": args.users,
        "spawn_rate": args.spawn_rate,
        "duration_s": parse_duration(args.duration),
        "host": args.host,
        "grpc_host": args.grpc_host,
        "mix": args.mix or lt.mix,
        "sizes": args.sizes or lt.sizes,
        "model": args.model or lt.model,
        "oip_batch": args.oip_batch or lt.oip_batch,
        "pace_s": args.pace if args.pace is not None else pace_s,
        "model_repo": getattr(args, "model_repo", None) or ServerSettings.from_env().model_repo,
        "http_port": args.http_port,
        "grpc_port": args.grpc_port,
        "metrics_port": args.metrics_port,
        "ready_timeout_s": args.ready_timeout,
        "record": args.record,
    }
    if args.slo:
        values["slo"] = Path(args.slo)
    if args.out:
        values["out"] = Path(args.out)
    try:
        return LoadtestOptions.model_validate(values)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "options"
        message = str(first.get("msg", "invalid")).removeprefix("Value error, ")
        raise ValueError(f"loadtest: {where}: {message}") from None


# -- the service, started here -----------------------------------------------------------------------------
def _running_in_group(pgid: int) -> bool:
    """Whether a process of group ``pgid`` still runs (zombies, which only wait to be reaped, do
    not count). Read from /proc; where there is none, any member counts."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True
    for stat in proc.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def end_process_group(pgid: int, grace_s: float = 5.0) -> bool:
    """Once a process that led its own session has exited: give the rest of its process group
    ``grace_s`` to exit by itself, then SIGKILL what is left. Returns whether anything was left."""
    deadline = time.monotonic() + grace_s
    while _running_in_group(pgid):
        if time.monotonic() >= deadline:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            return True
        time.sleep(0.1)
    return False


class ServiceProcess:
    """``tessera serve`` on loopback as a subprocess on free ports (unless given): wait for its ready
    line, SIGTERM at the end. The one way the load test, the benchmarks and the end-to-end tests
    start it.

    Its output goes to ``log_path``, or is kept in memory (the last lines: :meth:`output`) without
    one; ``output``, when given, collects every line it prints. ``env`` is added to this process's
    environment, ``args`` are more ``tessera serve`` flags. With ``temp_job_dir``, slide jobs go to a
    temporary folder removed afterwards (unless ``TESSERA_JOB_DIR`` is set).
    """

    def __init__(
        self,
        model_repo: str | None,
        log_path: Path | None = None,
        *,
        http_port: int | None = None,
        grpc_port: int | None = None,
        metrics_port: int | None = None,
        ready_timeout_s: float = 300.0,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        args: Sequence[str] = (),
        temp_job_dir: bool = True,
        output: list[str] | None = None,
    ):
        self.model_repo = str(Path(model_repo).resolve()) if model_repo is not None else None
        self.log_path = log_path
        self.env = dict(env or {})
        self.cwd = cwd or ROOT
        self.args = tuple(args)
        self.temp_job_dir = temp_job_dir
        self._lines: collections.deque[str] | list[str] = collections.deque(maxlen=400) if output is None else output
        self.http_port = http_port or free_port()
        self.grpc_port = grpc_port or free_port()
        self.metrics_port = metrics_port or free_port()
        self.ready_timeout_s = ready_timeout_s
        self.ready_line: str | None = None
        self.ready_s: float | None = None
        self.exit_code: int | None = None
        #: whether stop() found processes of the service's group still running after it exited
        self.left_behind = False
        self._proc: subprocess.Popen[str] | None = None
        self._log: IO[str] | None = None
        self._drain: threading.Thread | None = None
        self._job_dir: str | None = None

    @property
    def ports(self) -> dict[str, int]:
        return {"http": self.http_port, "grpc": self.grpc_port, "metrics": self.metrics_port}

    @property
    def proc(self) -> subprocess.Popen[str]:
        if self._proc is None:
            raise RuntimeError("tessera serve is not started")
        return self._proc

    def output(self) -> str:
        """The last lines it printed (all of them go to ``log_path`` when there is one)."""
        return "".join(self._lines)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def command(self) -> list[str]:
        repo = ["--model-repo", self.model_repo] if self.model_repo is not None else []
        return [
            sys.executable,
            "-m",
            "service.cli",
            *repo,
            "serve",
            "--host",
            "127.0.0.1",
            "--http-port",
            str(self.http_port),
            "--grpc-port",
            str(self.grpc_port),
            "--metrics-port",
            str(self.metrics_port),
            *self.args,
        ]

    def start(self) -> ServiceProcess:
        env = {**os.environ, **self.env}
        if self.temp_job_dir and "TESSERA_JOB_DIR" not in env:
            self._job_dir = tempfile.mkdtemp(prefix="tessera-loadtest-jobs-")
            env["TESSERA_JOB_DIR"] = self._job_dir
        env["PYTHONUNBUFFERED"] = "1"
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        started = time.monotonic()
        # A session of its own: its process group then holds Ray's processes and HAProxy too, also
        # once they outlive it, and stop() can end whatever it leaves (end_process_group).
        self._proc = subprocess.Popen(
            self.command(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=self.cwd,
            start_new_session=True,
        )
        stdout = self._proc.stdout
        if stdout is None:  # pragma: no cover - PIPE always gives one
            raise RuntimeError("no stdout from tessera serve")
        ready = threading.Event()

        def drain() -> None:
            for line in stdout:
                self._lines.append(line)
                if self._log is not None and not self._log.closed:
                    self._log.write(line)
                    self._log.flush()
                if line.startswith("ready: ") and not ready.is_set():
                    self.ready_line = line.strip()
                    ready.set()

        self._drain = threading.Thread(target=drain, name="tessera-serve-log", daemon=True)
        self._drain.start()
        while not ready.wait(0.2):
            if self._proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"tessera serve exited with {self._proc.returncode}; {self._see()}")
            if time.monotonic() - started > self.ready_timeout_s:
                self.stop()
                raise RuntimeError(f"tessera serve not ready after {self.ready_timeout_s:.0f} s; {self._see()}")
        self.ready_s = round(time.monotonic() - started, 2)
        return self

    def _see(self) -> str:
        return f"see {self.log_path}" if self.log_path is not None else f"its output:\n{self.output()}"

    def stop(self, timeout_s: float = 90.0) -> int | None:
        """SIGTERM (the service drains), then SIGKILL after ``timeout_s``; then whatever is left of
        its process group is ended (``left_behind`` says whether anything was). Returns the exit
        status."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)
        if proc is not None:
            self.exit_code = proc.returncode
            self.left_behind = end_process_group(proc.pid) or self.left_behind
        if self._drain is not None:
            self._drain.join(timeout=5)
        if self._log is not None:
            self._log.close()
        if self._job_dir:
            shutil.rmtree(self._job_dir, ignore_errors=True)
            self._job_dir = None
        return self.exit_code

    def __enter__(self) -> ServiceProcess:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


# -- Locust ------------------------------------------------------------------------------------------------
def locust_command(options: LoadtestOptions, host: str, report_dir: Path, kinds: list[str]) -> list[str]:
    prefix = report_dir / "locust"
    return [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(options.locustfile),
        "--headless",
        "--users",
        str(options.users),
        "--spawn-rate",
        f"{options.spawn_rate:g}",
        "--run-time",
        f"{options.duration_s}s",
        "--host",
        host,
        "--csv",
        str(prefix),
        "--html",
        str(report_dir / "report.html"),
        "--only-summary",
        "--stop-timeout",
        str(options.stop_timeout_s),
        "--exit-code-on-error",
        "0",
        "--loglevel",
        "INFO",
        *(USER_CLASSES[k] for k in kinds),
    ]


def _run_locust(options: LoadtestOptions, host: str, grpc_target: str, report_dir: Path) -> int:
    workload = options.workload(grpc_target)
    kinds = workload.active_kinds()
    env = {**os.environ, **workload.to_env(), "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    command = locust_command(options, host, report_dir, kinds)
    limit = options.duration_s + options.stop_timeout_s + 180  # start-up (image cutting) and the reports
    with open(report_dir / "locust.log", "w") as log:
        log.write(" ".join(command) + "\n\n")
        log.flush()
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        try:
            return proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGINT)  # Locust writes its reports on SIGINT
            try:
                return proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                return -9
        except KeyboardInterrupt:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=30)
            raise


# -- the run -----------------------------------------------------------------------------------------------
def _timestamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%d-%H%M%S")


def _report_dir(out: Path) -> Path:
    base = out / _timestamp()
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    path.mkdir(parents=True)
    return path


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def run(options: LoadtestOptions, *, echo: Any = print) -> int:
    """Run one load test as ``options`` say; returns the exit status (0 pass, 1 SLO failed, 2 error)."""
    slo = load_slo(options.slo)  # a bad SLO file fails before anything starts
    if not options.locustfile.is_file():
        raise FileNotFoundError(f"no Locust file at {options.locustfile}")
    report_dir = _report_dir(options.out)
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    service: ServiceProcess | None = None
    summary: dict[str, Any] = {
        "started_at": started_at,
        "report_dir": str(report_dir),
        "users": options.users,
        "spawn_rate": options.spawn_rate,
        "duration_s": options.duration_s,
        "mix": parse_weights(options.mix, allowed=USER_KINDS),
        "sizes": {str(k): v for k, v in parse_sizes(options.sizes).items()},
        "model": options.model,
        "oip_batch": options.oip_batch,
        "pace_s": options.pace_s,
        "offered_rps": round(options.users / options.pace_s, 3) if options.pace_s > 0 else None,
        "slo_file": str(options.slo),
    }
    locust_rc: int | None = None
    try:
        if options.start:
            echo(f"starting tessera serve (model repo {options.model_repo}) ...")
            service = ServiceProcess(
                options.model_repo,
                report_dir / "service.log",
                http_port=options.http_port,
                grpc_port=options.grpc_port,
                metrics_port=options.metrics_port,
                ready_timeout_s=options.ready_timeout_s,
            )
            try:
                service.start()
            except RuntimeError as exc:
                echo(f"loadtest: {exc}\n{_tail(report_dir / 'service.log')}")
                summary["error"] = str(exc)
                _write_summary(report_dir, summary)
                return 2
            echo(f"{service.ready_line} (after {service.ready_s} s)")
            host, grpc_target = service.url, service.grpc_target
        else:
            host = options.host or "http://127.0.0.1:8000"
            grpc_target = options.grpc_host or f"{_hostname(host)}:9000"
        require_loopback_url(host)
        require_loopback_target(grpc_target)
        summary.update(host=host, grpc_target=grpc_target)
        echo(
            f"locust: {options.users} users, {options.spawn_rate:g}/s, {options.duration_s} s against {host} "
            f"(mix {options.mix}) -> {report_dir}"
        )
        locust_rc = _run_locust(options, host, grpc_target, report_dir)
    finally:
        if service is not None:
            code = service.stop()
            summary["service"] = {
                "started": True,
                "ready_line": service.ready_line,
                "ready_s": service.ready_s,
                "exit_code": code,
                "log": str(service.log_path),
            }
    summary["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    summary["locust"] = {"exit_code": locust_rc, "version": _version("locust")}
    stats_path = report_dir / "locust_stats.csv"
    if not stats_path.exists():
        summary["error"] = "Locust wrote no statistics"
        _write_summary(report_dir, summary)
        echo(f"loadtest: Locust wrote no statistics (exit {locust_rc}); its log:\n{_tail(report_dir / 'locust.log')}")
        return 2
    result = evaluate(read_stats(stats_path), slo)
    summary["slo"] = result.to_dict()
    summary["failures"] = read_failures(report_dir / "locust_failures.csv")
    summary["files"] = [*sorted(p.name for p in report_dir.iterdir()), "summary.json"]
    _write_summary(report_dir, summary)
    print_summary(result, echo=echo)
    echo(f"reports: {report_dir}")
    if options.record and locust_rc == 0:
        echo(f"recorded for the performance report: {record_result(summary)}")
    if locust_rc != 0:
        echo(f"loadtest: Locust exited with {locust_rc}; its log:\n{_tail(report_dir / 'locust.log')}")
        return 2
    return 0 if result.passed else 1


def record_result(summary: dict[str, Any]) -> Path:
    """The run as a benchmark result (``bench/results/<host>-<date>-loadtest.json``) for the report."""
    from service.bench._common import host_facts, write_result

    keys = ("users", "spawn_rate", "duration_s", "pace_s", "offered_rps", "mix", "sizes", "model", "oip_batch")
    slo = summary["slo"]
    payload = {
        "benchmark": "loadtest",
        "host": summary.get("host_facts") or host_facts(),
        "load": {k: summary.get(k) for k in keys},
        "started": bool(summary.get("service", {}).get("started")),
        "endpoints": slo["endpoints"],
        "totals": slo["totals"],
        "checks": slo["checks"],
        "summary": {
            "passed": slo["passed"],
            "checks": len([c for c in slo["checks"] if c["ok"] is not None]),
            "failed": len([c for c in slo["checks"] if c["ok"] is False]),
            "requests": slo["totals"]["requests"],
            "error_rate": slo["totals"]["error_rate"],
            "shed_share": slo["totals"]["shed_share"],
            "report_dir": summary.get("report_dir"),
        },
    }
    return write_result("loadtest", payload)


def _write_summary(report_dir: Path, summary: dict[str, Any]) -> None:
    try:
        from service.bench._common import host_facts

        summary.setdefault("host_facts", host_facts())
    except ImportError:  # pragma: no cover - the service package is beside this folder
        pass
    (report_dir / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n")


def _hostname(url: str) -> str:
    from urllib.parse import urlsplit

    host = urlsplit(url).hostname or "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def _version(package: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "absent"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def print_summary(result: SloResult, *, echo: Any = print) -> None:
    """The per-endpoint table and every SLO check, then one verdict line."""
    echo(f"{'endpoint':<44} {'reqs':>6} {'fail':>5} {'shed':>5} {'req/s':>7} {'p50':>6} {'p95':>6} {'p99':>6}")
    for e in result.endpoints:
        echo(
            f"{e['endpoint'][:44]:<44} {e['requests']:>6} {e['failures']:>5} {e['shed']:>5} {e['rps']:>7.2f} "
            f"{_ms(e['p50_ms']):>6} {_ms(e['p95_ms']):>6} {_ms(e['p99_ms']):>6}"
        )
    t = result.totals
    echo(
        f"{'total':<44} {t['requests']:>6} {t['errors']:>5} {t['shed']:>5} {t['rps']:>7.2f}   "
        f"error rate {t['error_rate']:.2%}, shed {t['shed_share']:.2%}"
        + (" (over the allowed share: counted as errors)" if t["shed_counted_as_errors"] else "")
    )
    echo("SLO checks:")
    for c in result.checks:
        verdict = {True: "pass", False: "FAIL", None: "n/a "}[c.ok]
        value = "not exercised" if c.value is None else f"{c.value:g}"
        echo(f"  {verdict}  {c.check:<15} {c.endpoint[:48]:<48} {value} (target <= {c.target:g})")
    failed = [c for c in result.checks if c.ok is False]
    echo("SLO: PASS" if not failed else f"SLO: FAIL ({len(failed)} of {len(result.checks)} checks)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.runner", description=__doc__)
    parser.add_argument("--model-repo", default=None, help="model repository for --start (default model_repo)")
    add_loadtest_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(options_from_args(args))
    except (ValueError, FileNotFoundError) as exc:
        print(f"loadtest: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
