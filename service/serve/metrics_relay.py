"""The metrics port of ``tessera serve``: Ray's node metrics with the contract's names.

Ray's metrics agent listens on an internal port; this small HTTP server on the public metrics
port fetches it per scrape and serves it with ``ray_tessera_*`` renamed to ``tessera_*``.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

from service.api.metrics_text import CONTENT_TYPE, restore_contract_names

__all__ = ["MetricsRelay", "fetch_metrics", "node_metrics_url"]


def node_metrics_url() -> str:
    """Where this node's Ray metrics agent exports (the internal port behind the relay)."""
    import ray

    node_id = ray.get_runtime_context().get_node_id()
    for node in ray.nodes():
        if node["NodeID"] == node_id:
            return f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
    raise RuntimeError("this Ray node is not in ray.nodes()")


def fetch_metrics(url: str, timeout_s: float = 5.0) -> str:
    response = httpx.get(url, timeout=timeout_s)
    response.raise_for_status()
    return restore_contract_names(response.text)


class MetricsRelay:
    def __init__(self, host: str, port: int, upstream: str):
        upstream_url = upstream

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?", 1)[0] not in ("/metrics", "/"):
                    self.send_error(404, "only /metrics is served here")
                    return
                try:
                    body = fetch_metrics(upstream_url).encode()
                except httpx.HTTPError as exc:
                    self.send_error(503, f"metrics agent unavailable: {exc}")
                    return
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # scrapes are not news
                return

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, name="metrics-relay", daemon=True)

    def start(self) -> MetricsRelay:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
