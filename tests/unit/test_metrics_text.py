import httpx
from prometheus_client.parser import text_string_to_metric_families

from service.api.metrics_text import restore_contract_names
from service.serve.metrics_relay import MetricsRelay
from tests.helpers import free_port

RAY_TEXT = """# HELP ray_tessera_requests_total Requests.
# TYPE ray_tessera_requests_total counter
ray_tessera_requests_total{code="200",endpoint="/v1/predict",model="vit_small"} 3.0
# HELP ray_serve_num_http_requests_total Ray's own.
# TYPE ray_serve_num_http_requests_total counter
ray_serve_num_http_requests_total{route="/"} 5.0
"""


def test_only_the_tessera_family_is_renamed() -> None:
    text = restore_contract_names(RAY_TEXT)
    names = {f.name for f in text_string_to_metric_families(text)}
    assert names == {"tessera_requests", "ray_serve_num_http_requests"}
    assert "ray_tessera" not in text


def test_relay_serves_the_renamed_text() -> None:
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from threading import Thread

    class Upstream(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = RAY_TEXT.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            return

    upstream = ThreadingHTTPServer(("127.0.0.1", free_port()), Upstream)
    Thread(target=upstream.serve_forever, daemon=True).start()
    port = free_port()
    relay = MetricsRelay("127.0.0.1", port, f"http://127.0.0.1:{upstream.server_address[1]}/metrics").start()
    try:
        response = httpx.get(f"http://127.0.0.1:{port}/metrics")
        assert response.status_code == 200
        assert 'tessera_requests_total{code="200"' in response.text
        assert httpx.get(f"http://127.0.0.1:{port}/other").status_code == 404
    finally:
        relay.stop()
        upstream.shutdown()
