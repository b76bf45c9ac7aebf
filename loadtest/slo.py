"""Service-level objectives: read Locust's CSV statistics and check them against ``slo.yaml``.

Endpoints are Locust's rows, named ``"<type> <name>"`` (``POST /v1/predict 224px``,
``grpc ModelInfer vit_small``). A shed request (503 over HTTP, RESOURCE_EXHAUSTED over gRPC) is
reported by the Locust file under its endpoint's name plus :data:`SHED_SUFFIX`, so it has its own
row: it never counts in the endpoint's latency percentiles, and it is not an error while the shed
share of all requests stays within ``max_shed_share``; above that share every shed request counts
as an error as well.
"""

from __future__ import annotations

import csv
import fnmatch
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from service.settings import load_yaml

__all__ = [
    "SHED_SUFFIX",
    "Check",
    "EndpointStats",
    "SloConfig",
    "SloResult",
    "evaluate",
    "load_slo",
    "read_failures",
    "read_stats",
]

#: Appended to an endpoint's name for the requests the service shed (Locust's request name).
SHED_SUFFIX = " [shed]"
PERCENTILES = (50, 95, 99)


class EndpointSlo(BaseModel):
    """Targets for the endpoints whose ``"<type> <name>"`` matches ``match`` (a glob)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    match: str = Field(min_length=1, description="Glob over '<type> <name>', e.g. 'POST /v1/predict 224px'.")
    p50_ms: float | None = Field(default=None, gt=0, description="Largest median response time, ms.")
    p95_ms: float | None = Field(default=None, gt=0, description="Largest 95th percentile, ms.")
    p99_ms: float | None = Field(default=None, gt=0, description="Largest 99th percentile, ms.")
    max_error_rate: float | None = Field(
        default=None, ge=0, le=1, description="Largest share of this endpoint's requests that fail (sheds excluded)."
    )


class SloConfig(BaseModel):
    """The whole of ``slo.yaml``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int = Field(default=1, ge=1, le=1, description="Schema version.")
    max_error_rate: float = Field(
        default=0.01,
        ge=0,
        le=1,
        description="Largest share of all requests that fail (sheds within the share excluded).",
    )
    max_shed_share: float = Field(
        default=0.05, ge=0, le=1, description="Share of all requests that may be shed (503) without counting as errors."
    )
    min_requests: int = Field(default=1, ge=0, description="Fewest requests for the run to count at all.")
    endpoints: list[EndpointSlo] = Field(default_factory=list, description="Latency and error targets per endpoint.")

    @model_validator(mode="after")
    def _unique_matches(self) -> SloConfig:
        seen = [e.match for e in self.endpoints]
        if len(seen) != len(set(seen)):
            raise ValueError("each endpoint 'match' may appear once")
        return self


def load_slo(path: str | Path) -> SloConfig:
    return load_yaml(path, SloConfig)


@dataclass
class EndpointStats:
    """One row of Locust's ``*_stats.csv``."""

    type: str
    name: str
    requests: int
    failures: int
    median_ms: float | None
    average_ms: float | None
    min_ms: float | None
    max_ms: float | None
    rps: float
    percentiles: dict[int, float | None] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.type} {self.name}".strip()

    @property
    def is_shed(self) -> bool:
        return self.name.endswith(SHED_SUFFIX)

    @property
    def is_aggregate(self) -> bool:
        return self.name == "Aggregated" and not self.type


def _number(value: str | None) -> float | None:
    if value is None or value.strip() in ("", "N/A"):
        return None
    number = float(value)
    return None if math.isnan(number) else number


def read_stats(path: str | Path) -> list[EndpointStats]:
    """The rows of Locust's ``<prefix>_stats.csv`` (the ``Aggregated`` row included)."""
    rows = []
    with open(path, newline="") as fh:
        for raw in csv.DictReader(fh):
            rows.append(
                EndpointStats(
                    type=raw.get("Type") or "",
                    name=raw["Name"],
                    requests=int(raw["Request Count"]),
                    failures=int(raw["Failure Count"]),
                    median_ms=_number(raw.get("Median Response Time")),
                    average_ms=_number(raw.get("Average Response Time")),
                    min_ms=_number(raw.get("Min Response Time")),
                    max_ms=_number(raw.get("Max Response Time")),
                    rps=_number(raw.get("Requests/s")) or 0.0,
                    percentiles={p: _number(raw.get(f"{p}%")) for p in PERCENTILES},
                )
            )
    return rows


def read_failures(path: str | Path) -> list[dict[str, Any]]:
    """Locust's ``<prefix>_failures.csv``: method, name, error, occurrences (empty when absent)."""
    if not Path(path).exists():
        return []
    with open(path, newline="") as fh:
        return [
            {
                "method": raw.get("Method", ""),
                "name": raw.get("Name", ""),
                "error": raw.get("Error", ""),
                "occurrences": int(raw.get("Occurrences") or 0),
            }
            for raw in csv.DictReader(fh)
        ]


@dataclass
class Check:
    """One objective: ``value <= target`` (``ok`` None when the endpoint was not exercised)."""

    check: str
    endpoint: str
    target: float
    value: float | None
    ok: bool | None


@dataclass
class SloResult:
    endpoints: list[dict[str, Any]]
    totals: dict[str, Any]
    checks: list[Check]

    @property
    def passed(self) -> bool:
        return all(c.ok is not False for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "endpoints": self.endpoints,
            "totals": self.totals,
            "checks": [asdict(c) for c in self.checks],
            "failed": [asdict(c) for c in self.checks if c.ok is False],
        }


def evaluate(rows: list[EndpointStats], slo: SloConfig) -> SloResult:
    """Per-endpoint statistics, totals with sheds apart from errors, and every objective checked."""
    served = [r for r in rows if not r.is_aggregate and not r.is_shed]
    shed_rows = {r.key[: -len(SHED_SUFFIX)]: r for r in rows if not r.is_aggregate and r.is_shed}
    endpoints: list[dict[str, Any]] = []
    keys = [r.key for r in served] + [k for k in shed_rows if k not in {r.key for r in served}]
    by_key = {r.key: r for r in served}
    for key in keys:
        row = by_key.get(key)
        shed = shed_rows[key].requests if key in shed_rows else 0
        requests = row.requests if row else 0
        failures = row.failures if row else 0
        endpoints.append(
            {
                "endpoint": key,
                "requests": requests,
                "failures": failures,
                "shed": shed,
                "error_rate": round(failures / requests, 6) if requests else 0.0,
                "rps": round(row.rps, 3) if row else 0.0,
                "p50_ms": row.percentiles.get(50) if row else None,
                "p95_ms": row.percentiles.get(95) if row else None,
                "p99_ms": row.percentiles.get(99) if row else None,
                "average_ms": round(row.average_ms, 3) if row and row.average_ms is not None else None,
                "max_ms": row.max_ms if row else None,
            }
        )

    answered = sum(e["requests"] for e in endpoints)
    errors = sum(e["failures"] for e in endpoints)
    shed = sum(e["shed"] for e in endpoints)
    total = answered + shed
    shed_share = shed / total if total else 0.0
    shed_over = shed_share > slo.max_shed_share
    counted_errors = errors + (shed if shed_over else 0)
    error_rate = counted_errors / total if total else 0.0
    totals = {
        "requests": total,
        "answered": answered,
        "errors": errors,
        "shed": shed,
        "shed_share": round(shed_share, 6),
        "shed_counted_as_errors": shed_over,
        "error_rate": round(error_rate, 6),
        "rps": round(sum(e["rps"] for e in endpoints), 3),
    }

    checks = [
        Check("min_requests", "all", slo.min_requests, float(total), total >= slo.min_requests),
        Check("max_error_rate", "all", slo.max_error_rate, round(error_rate, 6), error_rate <= slo.max_error_rate),
        Check("max_shed_share", "all", slo.max_shed_share, round(shed_share, 6), not shed_over),
    ]
    for target in slo.endpoints:
        matched = [e for e in endpoints if fnmatch.fnmatchcase(e["endpoint"], target.match)]
        limits = (("p50_ms", target.p50_ms), ("p95_ms", target.p95_ms), ("p99_ms", target.p99_ms))
        if not matched:
            for name, limit in limits:
                if limit is not None:
                    checks.append(Check(name, target.match, limit, None, None))
            continue
        for entry in matched:
            for name, limit in limits:
                if limit is None:
                    continue
                value = entry[name]
                # an endpoint whose every request was shed has no latency to judge
                checks.append(Check(name, entry["endpoint"], limit, value, None if value is None else value <= limit))
            if target.max_error_rate is not None:
                rate = entry["error_rate"]
                checks.append(
                    Check(
                        "max_error_rate", entry["endpoint"], target.max_error_rate, rate, rate <= target.max_error_rate
                    )
                )
    return SloResult(endpoints=endpoints, totals=totals, checks=checks)
