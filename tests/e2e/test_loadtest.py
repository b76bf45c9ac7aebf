"""End to end: ``tessera loadtest --start`` against a tiny model repository, a short bounded run.

The runner starts ``tessera serve`` on free loopback ports, runs Locust headless (4 users, 15 s,
REST predict and OIP binary tensors), stops the service with SIGTERM and writes Locust's CSV and
HTML, the service's log and ``summary.json`` with the SLO evaluation.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT, make_vit_only_repo

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = make_vit_only_repo(tmp_path_factory.mktemp("loadtest_repo"))
    return root


def test_loadtest_start_writes_reports_and_checks_slos(tiny_repo: Path, tmp_path: Path) -> None:
    out = tmp_path / "reports"
    command = [
        sys.executable,
        "-m",
        "loadtest.runner",
        "--model-repo",
        str(tiny_repo),
        "--start",
        "--users",
        "4",
        "--spawn-rate",
        "4",
        "--duration",
        "15s",
        "--mix",
        "predict=3,oip=1",
        "--sizes",
        "224=1",
        "--pace",
        "1",
        "--out",
        str(out),
    ]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    printed = done.stdout + done.stderr
    assert done.returncode in (0, 1), printed  # 1 would be an SLO miss on a loaded machine, not a broken run
    (report_dir,) = out.iterdir()
    for name in ("locust_stats.csv", "locust_failures.csv", "report.html", "locust.log", "service.log"):
        assert (report_dir / name).stat().st_size > 0, name
    summary = json.loads((report_dir / "summary.json").read_text())
    assert summary["service"]["started"] and summary["service"]["exit_code"] == 0
    assert summary["service"]["ready_line"].startswith("ready: http://127.0.0.1:")
    assert summary["locust"]["exit_code"] == 0
    assert summary["users"] == 4 and summary["duration_s"] == 15
    assert summary["pace_s"] == 1 and summary["offered_rps"] == 4

    slo = summary["slo"]
    endpoints = {e["endpoint"]: e for e in slo["endpoints"]}
    assert set(endpoints) == {"POST /v1/predict 224px", "POST /v2/models/vit_small/infer"}
    assert all(e["requests"] > 0 for e in endpoints.values())
    # Paced users start a request at most once a second each: a closed loop would send far more.
    assert slo["totals"]["requests"] <= 4 * (15 + 2), slo["totals"]
    assert slo["totals"]["errors"] == 0, summary["failures"]
    checked = {(c["check"], c["endpoint"]) for c in slo["checks"] if c["ok"] is not None}
    assert {("p95_ms", "POST /v1/predict 224px"), ("p99_ms", "POST /v2/models/vit_small/infer")} <= checked
    assert ("max_shed_share", "all") in checked
    assert slo["passed"] == (done.returncode == 0)
    assert ("SLO: PASS" if slo["passed"] else "SLO: FAIL") in printed
