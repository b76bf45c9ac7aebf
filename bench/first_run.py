"""A newcomer's first ``make serve``, timed from a clean clone: install, the ready line, every model.

    python bench/first_run.py [--keep DIR]

Clones this repository (its committed HEAD) into a temporary folder, runs ``make serve`` there on
free ports, and timestamps every line it prints. Records when the install finished (the Makefile's
stamp appears), when the ready line came, and when the last model settled (``all models
settled``); then stops the service with SIGINT (it drains and exits). Writes
``bench/results/<host>-<date>-first_run.json`` (a ``FirstRunResult``: ``tessera bench report``
renders it) with the times and the transcript, and prints them.
Standard library only: it runs before anything is installed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _host_facts(date: str) -> dict[str, object]:
    """``service.bench._common.host_facts`` without the packages (nothing is installed yet)."""
    cpu = platform.machine()
    with open("/proc/cpuinfo") as fh:
        cpu = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), cpu)
    return {
        "host": socket.gethostname(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "gpu": None,
        "python": platform.python_version(),
        "versions": {},
        "date": date,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", type=Path, help="clone here and keep it (default: a temporary folder, removed)")
    parser.add_argument("--timeout", type=float, default=7200.0, help="give up after this many seconds")
    parser.add_argument("--note", action="append", default=[], help="what the host was doing besides (repeat)")
    args = parser.parse_args()
    holder = None if args.keep else tempfile.TemporaryDirectory(prefix="tessera-first-run-")
    where = args.keep or Path(holder.name)  # type: ignore[union-attr]
    clone = where / "tessera"
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    env = {
        **os.environ,
        "TESSERA_HTTP_PORT": str(_free_port()),
        "TESSERA_GRPC_PORT": str(_free_port()),
        "TESSERA_METRICS_PORT": str(_free_port()),
    }
    env.pop("VIRTUAL_ENV", None)
    env["UV_CACHE_DIR"] = str(where / "uv-cache")  # a newcomer's machine has none: nothing installed is reused
    start = time.monotonic()
    proc = subprocess.Popen(
        ["make", "serve"],
        cwd=clone,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    transcript: list[tuple[float, str]] = []
    marks: dict[str, float] = {}

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            now = round(time.monotonic() - start, 1)
            text = line.rstrip("\n").split("\r")[-1]
            transcript.append((now, text))
            print(f"{now:8.1f}  {text}", flush=True)
            if text.startswith("ready: "):
                marks.setdefault("ready_s", now)
            if "all models settled" in text:
                marks.setdefault("all_settled_s", now)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    stamp = clone / ".venv" / ".installed-stamp"
    while proc.poll() is None and "all_settled_s" not in marks and time.monotonic() - start < args.timeout:
        if "install_s" not in marks and stamp.exists():
            marks["install_s"] = round(time.monotonic() - start, 1)
        time.sleep(0.5)
    exited = proc.poll()
    if exited is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    reader.join(timeout=10)
    date = datetime.now(UTC).isoformat(timespec="seconds")
    result = {
        "benchmark": "first_run",
        "host": _host_facts(date),
        "goal": "ready line within 180 s of a clean clone, install included",
        "notes": args.note,
        "commit": commit.stdout.strip(),
        "command": "make serve (clean clone, fresh .venv, empty uv cache)",
        **marks,
        "exit_before_settled": exited,
        "transcript": [{"t_s": t, "line": line} for t, line in transcript][-400:],
    }
    out = ROOT / "bench" / "results" / f"{socket.gethostname()}-{date[:10]}-first_run.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    summary = {k: v for k, v in result.items() if k.endswith("_s")}
    print(json.dumps(summary), f"-> {out}", file=sys.stderr)
    if holder is not None:
        holder.cleanup()
    return 0 if "ready_s" in marks else 1


if __name__ == "__main__":
    raise SystemExit(main())
