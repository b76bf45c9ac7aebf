"""Metrics the serving core records, behind one small interface.

Inside Ray replicas the implementation is Ray Serve's metrics API (``service.serve.metrics``),
so one scrape of the node's metrics port sees every replica; in a plain process it is
prometheus-client (``PrometheusTelemetry``). The names are the contract's.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["LATENCY_BUCKETS_S", "NullTelemetry", "PrometheusTelemetry", "Telemetry"]

LATENCY_BUCKETS_S = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]
BATCH_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]


class Telemetry(Protocol):
    def request(self, endpoint: str, model: str, code: int, seconds: float) -> None: ...
    def stage(self, model: str, stage: str, seconds: float) -> None: ...
    def route(self, model: str, reason: str) -> None: ...
    def rejected(self, reason: str) -> None: ...
    def inflight(self, model: str, delta: int) -> None: ...


class NullTelemetry:
    def request(self, endpoint: str, model: str, code: int, seconds: float) -> None: ...
    def stage(self, model: str, stage: str, seconds: float) -> None: ...
    def route(self, model: str, reason: str) -> None: ...
    def rejected(self, reason: str) -> None: ...
    def inflight(self, model: str, delta: int) -> None: ...


class PrometheusTelemetry:
    """prometheus-client metrics in a registry of their own (one per instance, no globals)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self._requests = Counter(
            "tessera_requests",
            "Requests by endpoint, model and status code.",
            ["endpoint", "model", "code"],
            registry=self.registry,
        )
        self._duration = Histogram(
            "tessera_request_duration_seconds",
            "Request latency.",
            ["endpoint", "model"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self._stage = Histogram(
            "tessera_stage_duration_seconds",
            "Time per request stage.",
            ["model", "stage"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self._route = Counter("tessera_route", "Routing decisions.", ["model", "reason"], registry=self.registry)
        self._rejected = Counter("tessera_rejected", "Requests shed or refused.", ["reason"], registry=self.registry)
        self._inflight = Gauge("tessera_inflight_requests", "Requests in flight.", ["model"], registry=self.registry)

    def request(self, endpoint: str, model: str, code: int, seconds: float) -> None:
        self._requests.labels(endpoint, model, str(code)).inc()
        self._duration.labels(endpoint, model).observe(seconds)

    def stage(self, model: str, stage: str, seconds: float) -> None:
        self._stage.labels(model, stage).observe(seconds)

    def route(self, model: str, reason: str) -> None:
        self._route.labels(model, reason).inc()

    def rejected(self, reason: str) -> None:
        self._rejected.labels(reason).inc()

    def inflight(self, model: str, delta: int) -> None:
        self._inflight.labels(model).inc(delta)
