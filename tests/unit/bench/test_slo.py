"""The SLO checker on Locust CSV statistics: pass, fail, and sheds counted apart from errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from loadtest.slo import SHED_SUFFIX, SloConfig, evaluate, load_slo, read_failures, read_stats

HEADER = (
    "Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,Min Response Time,"
    "Max Response Time,Average Content Size,Requests/s,Failures/s,50%,66%,75%,80%,90%,95%,98%,99%,99.9%,99.99%,100%"
)


def _row(kind: str, name: str, requests: int, failures: int, p50: float, p95: float, p99: float, rps: float) -> str:
    pct = [p50, p50, p50, p95, p95, p95, p99, p99, p99, p99, p99]
    cells = [kind, name, requests, failures, p50, p50 * 1.1, p50 / 2, p99, 1200.0, rps, failures / 10, *pct]
    return ",".join(str(c) for c in cells)


def _write_stats(tmp_path: Path, rows: list[str]) -> Path:
    path = tmp_path / "locust_stats.csv"
    total = sum(int(r.split(",")[2]) for r in rows)
    aggregated = f",Aggregated,{total},0,100,110,5,900,1000,9.5,0.0,100,100,100,100,200,300,400,500,600,600,600"
    path.write_text("\n".join([HEADER, *rows, aggregated]) + "\n")
    return path


SLO = SloConfig.model_validate(
    {
        "max_error_rate": 0.01,
        "max_shed_share": 0.05,
        "endpoints": [
            {"match": "POST /v1/predict 224px", "p50_ms": 300, "p95_ms": 800, "p99_ms": 1200},
            {"match": "POST /v2/models/*/infer", "p95_ms": 800},
            {"match": "grpc ModelInfer *", "p99_ms": 1000},
            {"match": "JOB slide job", "p95_ms": 60000, "max_error_rate": 0.0},
        ],
    }
)


def test_passing_run(tmp_path: Path) -> None:
    stats = _write_stats(
        tmp_path,
        [
            _row("POST", "/v1/predict 224px", 400, 0, 200, 600, 900, 6.5),
            _row("POST", "/v2/models/vit_small/infer", 300, 1, 150, 500, 700, 5.0),
            _row("grpc", "ModelInfer vit_small", 300, 0, 140, 450, 650, 5.0),
        ],
    )
    result = evaluate(read_stats(stats), SLO)
    assert result.passed
    assert result.totals == {
        "requests": 1000,
        "answered": 1000,
        "errors": 1,
        "shed": 0,
        "shed_share": 0.0,
        "shed_counted_as_errors": False,
        "error_rate": 0.001,
        "rps": 16.5,
    }
    names = [e["endpoint"] for e in result.endpoints]
    assert names == ["POST /v1/predict 224px", "POST /v2/models/vit_small/infer", "grpc ModelInfer vit_small"]
    checked = {(c.check, c.endpoint): c for c in result.checks}
    assert checked[("p95_ms", "POST /v2/models/vit_small/infer")].value == 500
    assert checked[("p99_ms", "grpc ModelInfer vit_small")].ok is True
    # the slide job was not in this run: its objectives are reported as not exercised, not failed
    assert checked[("p95_ms", "JOB slide job")].ok is None
    assert result.to_dict()["failed"] == []


def test_latency_and_error_failures(tmp_path: Path) -> None:
    stats = _write_stats(
        tmp_path,
        [
            _row("POST", "/v1/predict 224px", 100, 0, 250, 1900, 2500, 2.0),
            _row("grpc", "ModelInfer vit_small", 100, 5, 100, 200, 300, 2.0),
        ],
    )
    result = evaluate(read_stats(stats), SLO)
    assert not result.passed
    failed = {(c["check"], c["endpoint"]) for c in result.to_dict()["failed"]}
    assert failed == {
        ("p95_ms", "POST /v1/predict 224px"),
        ("p99_ms", "POST /v1/predict 224px"),
        ("max_error_rate", "all"),  # 5 of 200 = 2.5% > 1%
    }
    assert result.totals["error_rate"] == pytest.approx(0.025)


def test_sheds_within_the_share_are_not_errors(tmp_path: Path) -> None:
    stats = _write_stats(
        tmp_path,
        [
            _row("POST", "/v1/predict 224px", 960, 0, 200, 600, 900, 9.0),
            # shed rows are failures in Locust's eyes, fast, and kept out of the endpoint's percentiles
            _row("POST", "/v1/predict 224px" + SHED_SUFFIX, 40, 40, 3, 5, 9, 0.4),
        ],
    )
    result = evaluate(read_stats(stats), SLO)
    assert result.passed
    entry = result.endpoints[0]
    assert (entry["requests"], entry["failures"], entry["shed"], entry["p95_ms"]) == (960, 0, 40, 600)
    assert result.totals["shed"] == 40 and result.totals["shed_share"] == pytest.approx(0.04)
    assert result.totals["errors"] == 0 and result.totals["error_rate"] == 0.0


def test_sheds_over_the_share_fail_and_count_as_errors(tmp_path: Path) -> None:
    stats = _write_stats(
        tmp_path,
        [
            _row("POST", "/v2/models/vit_small/infer", 900, 0, 150, 500, 700, 9.0),
            _row("POST", "/v2/models/vit_small/infer" + SHED_SUFFIX, 100, 100, 2, 4, 6, 1.0),
            _row("grpc", "ModelInfer vit_small" + SHED_SUFFIX, 20, 20, 2, 4, 6, 0.2),
        ],
    )
    result = evaluate(read_stats(stats), SLO)
    assert not result.passed
    assert result.totals["shed"] == 120
    assert result.totals["shed_counted_as_errors"] is True
    assert result.totals["error_rate"] == pytest.approx(120 / 1020)
    failed = {c["check"] for c in result.to_dict()["failed"]}
    assert failed == {"max_shed_share", "max_error_rate"}
    # an endpoint whose every request was shed has a row, and no latency to judge
    grpc = next(e for e in result.endpoints if e["endpoint"] == "grpc ModelInfer vit_small")
    assert grpc["requests"] == 0 and grpc["shed"] == 20 and grpc["p99_ms"] is None
    grpc_check = next(c for c in result.checks if c.endpoint == "grpc ModelInfer vit_small")
    assert grpc_check.ok is None


def test_per_endpoint_error_rate_and_empty_run(tmp_path: Path) -> None:
    stats = _write_stats(tmp_path, [_row("JOB", "slide job", 4, 1, 5000, 9000, 9000, 0.1)])
    result = evaluate(read_stats(stats), SLO)
    failed = {(c["check"], c["endpoint"]) for c in result.to_dict()["failed"]}
    assert ("max_error_rate", "JOB slide job") in failed

    empty = evaluate(read_stats(_write_stats(tmp_path, [])), SLO)
    assert not empty.passed
    assert [c.check for c in empty.checks if c.ok is False] == ["min_requests"]


def test_na_percentiles_and_failures_csv(tmp_path: Path) -> None:
    path = tmp_path / "locust_stats.csv"
    path.write_text(HEADER + "\nPOST,/v1/predict 224px,0,0,0,0,0,0,0,0,0," + ",".join(["N/A"] * 11) + "\n")
    (row,) = read_stats(path)
    assert row.requests == 0 and row.percentiles[95] is None
    failures = tmp_path / "locust_failures.csv"
    failures.write_text('Method,Name,Error,Occurrences\nPOST,/v1/predict 224px [shed],"shed: 503 (Retry-After 1)",7\n')
    assert read_failures(failures) == [
        {"method": "POST", "name": "/v1/predict 224px [shed]", "error": "shed: 503 (Retry-After 1)", "occurrences": 7}
    ]
    assert read_failures(tmp_path / "absent.csv") == []


def test_slo_file_schema(tmp_path: Path) -> None:
    shipped = load_slo(Path(__file__).resolve().parents[3] / "loadtest" / "slo.yaml")
    assert shipped.max_shed_share > 0 and shipped.endpoints
    typo = tmp_path / "slo.yaml"
    typo.write_text("max_eror_rate: 0.1\n")
    with pytest.raises(ValidationError):
        load_slo(typo)
    twice = tmp_path / "twice.yaml"
    twice.write_text("endpoints:\n  - {match: 'a', p50_ms: 1}\n  - {match: 'a', p95_ms: 2}\n")
    with pytest.raises(ValidationError):
        load_slo(twice)
