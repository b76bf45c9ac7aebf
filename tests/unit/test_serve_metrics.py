"""The ingress's Ray metrics: what reaches Ray's metric API, and when."""

from __future__ import annotations

import asyncio
from typing import Any

from service.serve.metrics import INFLIGHT_PERIOD_S, RayTelemetry


class _Gauge:
    def __init__(self) -> None:
        self.sets: list[tuple[float, dict[str, Any]]] = []

    def set(self, value: float, tags: dict[str, Any]) -> None:
        self.sets.append((value, tags))


def test_inflight_requests_reach_ray_once_per_period_with_the_last_count() -> None:
    telemetry = RayTelemetry()
    gauge = telemetry._inflight = _Gauge()  # type: ignore[assignment]

    async def traffic() -> list[tuple[float, dict[str, Any]]]:
        for _ in range(50):  # 50 requests in and 48 answered within one period: one set, the count
            telemetry.inflight("vit_small", 1)
        telemetry.inflight("swin_tiny", 1)
        for _ in range(48):
            telemetry.inflight("vit_small", -1)
        assert gauge.sets == []
        await asyncio.sleep(INFLIGHT_PERIOD_S * 2)
        first = list(gauge.sets)
        telemetry.inflight("vit_small", -2)  # the last answers: the gauge reads 0 a period later
        await asyncio.sleep(INFLIGHT_PERIOD_S * 2)
        return first

    first = asyncio.run(traffic())
    assert sorted(first, key=lambda s: s[1]["model"]) == [(1, {"model": "swin_tiny"}), (2, {"model": "vit_small"})]
    assert gauge.sets[-2:] == [(0, {"model": "vit_small"}), (1, {"model": "swin_tiny"})]
    assert len(gauge.sets) == 4


def test_inflight_off_an_event_loop_is_set_at_once() -> None:
    telemetry = RayTelemetry()
    gauge = telemetry._inflight = _Gauge()  # type: ignore[assignment]
    telemetry.inflight("vit_small", 3)
    assert gauge.sets == [(3, {"model": "vit_small"})]
