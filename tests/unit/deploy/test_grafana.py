"""The Grafana dashboard: valid JSON, well-formed panels, and PromQL over the metrics contract only."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from tests.unit.deploy.conftest import ROOT

DASHBOARD = ROOT / "deploy/grafana/tessera.json"

# DESIGN.md, "Metrics": the names Prometheus stores (after the PodMonitor strips Ray's `ray_`).
CONTRACT = {
    "tessera_requests_total": "counter",
    "tessera_request_duration_seconds": "histogram",
    "tessera_stage_duration_seconds": "histogram",
    "tessera_batch_size": "histogram",
    "tessera_inflight_requests": "gauge",
    "tessera_device_memory_bytes": "gauge",
    "tessera_host_memory_bytes": "gauge",
    "tessera_route_total": "counter",
    "tessera_rejected_total": "counter",
    "tessera_slide_tiles_total": "counter",
    "tessera_slide_jobs": "gauge",
}
SERIES = {
    *(name for name, kind in CONTRACT.items() if kind != "histogram"),
    *(
        f"{name}_{suffix}"
        for name, kind in CONTRACT.items()
        if kind == "histogram"
        for suffix in ("bucket", "sum", "count")
    ),
}
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}


def load() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text())
    assert isinstance(data, dict)
    return data


def targets(dashboard: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(panel["title"], target) for panel in dashboard["panels"] for target in panel.get("targets", [])]


def expressions(dashboard: dict[str, Any]) -> list[str]:
    return [target["expr"] for _, target in targets(dashboard)]


def promql(expr: str) -> str:
    """The expression with Grafana's interval variables replaced (``$model`` sits inside a regex)."""
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr


def metric_names(expr: str) -> set[str]:
    """Series names an expression selects: ``name{...}``, ``name[...]``, or a bare ``tessera_*``/``ray_*``."""
    unquoted = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    selected = set(re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*[{\[]", unquoted))
    bare = set(re.findall(r"\b((?:tessera|ray)_[a-zA-Z0-9_:]*)", unquoted))
    return selected | bare


def test_dashboard_is_well_formed() -> None:
    dashboard = load()
    assert dashboard["title"] and re.fullmatch(r"[a-zA-Z0-9_-]{1,40}", dashboard["uid"])
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
    # No two panels overlap on the grid.
    cells: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        area = {
            (x, y) for x in range(grid["x"], grid["x"] + grid["w"]) for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not area & cells, f"{panel['title']} overlaps another panel"
        cells |= area


def test_every_query_uses_contract_metrics_only() -> None:
    dashboard = load()
    exprs = expressions(dashboard)
    assert exprs
    for title, target in targets(dashboard):
        names = metric_names(target["expr"])
        assert names, f"{title}: selects no metric"
        assert names <= SERIES, f"{title}: {sorted(names - SERIES)} are not in the metrics contract"
    model_query = {v["name"]: v for v in dashboard["templating"]["list"]}["model"]["definition"]
    assert metric_names(model_query) <= SERIES


def test_queries_parse_as_promql() -> None:
    promql_parser = pytest.importorskip("promql_parser", reason="PromQL syntax: dev extra promql-parser")
    for title, target in targets(load()):
        expr = promql_parser.parse(promql(target["expr"]))
        selected: set[str] = set()

        def visit(node: Any, selected: set[str] = selected) -> bool:
            if isinstance(node, promql_parser.VectorSelector) and node.name:
                selected.add(node.name)
            return True

        promql_parser.walk(expr, visit)
        assert selected and selected <= SERIES, f"{title}: {selected}"
        assert selected <= metric_names(target["expr"]), f"{title}: the regex extraction missed a name"


def test_dashboard_covers_the_metrics_contract() -> None:
    dashboard = load()
    used = set().union(*(metric_names(e) for e in expressions(dashboard)))
    covered = {name for name in CONTRACT if any(series == name or series.startswith(f"{name}_") for series in used)}
    assert covered == set(CONTRACT), f"no panel for {sorted(set(CONTRACT) - covered)}"
    stage_quantiles = {
        match
        for expr in expressions(dashboard)
        if "tessera_stage_duration_seconds_bucket" in expr and "stage" in expr
        for match in re.findall(r"histogram_quantile\((0\.\d+)", expr)
    }
    assert {"0.5", "0.95", "0.99"} <= stage_quantiles
    assert any('stage="queue"' in expr for expr in expressions(dashboard)), "no queue-time panel"
    assert any("rate(tessera_slide_tiles_total" in expr for expr in expressions(dashboard)), "no tiles/s panel"
    by_model = [e for e in expressions(dashboard) if "tessera_requests_total" in e and "by (model)" in e]
    assert any('code=~"5.."' in e for e in by_model), "no error rate by model"


def test_metric_extraction_is_not_vacuous() -> None:
    assert metric_names('sum by (le) (rate(ray_tessera_x_bucket{model=~"a|b"}[5m])) / tessera_y') == {
        "ray_tessera_x_bucket",
        "tessera_y",
    }
    assert metric_names("rate(http_requests_total[5m])") == {"http_requests_total"}
    assert not metric_names('label_replace(vector(1), "dst", "$1", "src", "tessera_(.*)")') & SERIES
