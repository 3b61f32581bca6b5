"""API pieces that need no stores: exposure rules, k limits, the CLI's table."""

import pytest
from fastapi.exceptions import RequestValidationError
from rich.console import Console

from config import load_settings
from serving.api import check_exposure, check_k, is_loopback
from serving.client import recommendations_table
from serving.schemas import HistoryItem, Recommendations, ScoredItem


@pytest.mark.parametrize("host,loopback", [("127.0.0.1", True), ("::1", True), ("localhost", True),
                                           ("0.0.0.0", False), ("10.1.2.3", False), ("example.org", False)])  # fmt: skip
def test_loopback(host, loopback):
    assert is_loopback(host) is loopback


def test_binding_elsewhere_needs_a_token():
    check_exposure(load_settings())  # 127.0.0.1 by default
    with pytest.raises(ValueError, match="LEARN_SERVING__TOKEN"):
        check_exposure(load_settings(serving={"host": "0.0.0.0"}))
    check_exposure(load_settings(serving={"host": "0.0.0.0", "token": "t"}))


def test_k_above_the_limit_is_a_validation_error():
    check_k(100, 100, ("query", "k"))
    with pytest.raises(RequestValidationError):
        check_k(101, 100, ("query", "k"))


def test_the_table_shows_titles_history_and_unknown_items():
    rec = Recommendations(user_id="u1", model_version="v000003", items=[ScoredItem(item_id="B01", score=0.91,
                          title="Lab goggles")], recent_items=[HistoryItem(item_id="A7", title="Nitrile gloves")],
                          unknown_items=["zzz"])  # fmt: skip
    console = Console(width=120, record=True)
    console.print(recommendations_table(rec))
    text = console.export_text()
    for s in ("Lab goggles", "Nitrile gloves", "v000003", "0.910", "zzz"):
        assert s in text


def test_workers_metrics_are_re_exported_with_an_instance_label():
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from prometheus_client import CollectorRegistry, Counter, generate_latest

    from serving.metrics import ApiMetrics

    worker = CollectorRegistry()
    Counter("learn_records_total", "Records", ["worker", "outcome"], registry=worker).labels("encoder", "encoded").inc(7)
    Counter("process_things_total", "not ours", registry=worker).inc()
    page = generate_latest(worker)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        metrics = ApiMetrics([f"http://127.0.0.1:{port}/metrics", "http://127.0.0.1:9/metrics"])  # one is down
        text = generate_latest(metrics.registry).decode()
    finally:
        server.shutdown()
    assert f'learn_records_total{{instance="127.0.0.1:{port}",outcome="encoded",worker="encoder"}} 7.0' in text
    assert "process_things" not in text and "learn_api_request_seconds" in text
