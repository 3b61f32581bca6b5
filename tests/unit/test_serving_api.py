"""API pieces that need no stores: exposure rules, the OpenAPI schema's bounds and error answers,
the 422 body, the CLI's table."""

import pytest
from pydantic import ValidationError
from rich.console import Console

from config import load_settings
from serving.api import check_exposure, create_app, is_loopback, validation_body
from serving.client import recommendations_table
from serving.schemas import ErrorBody, HistoryItem, Recommendations, ScoredItem, history_request


@pytest.mark.parametrize("host,loopback", [("127.0.0.1", True), ("::1", True), ("localhost", True),
                                           ("0.0.0.0", False), ("10.1.2.3", False), ("example.org", False)])  # fmt: skip
def test_loopback(host, loopback):
    assert is_loopback(host) is loopback


def test_binding_elsewhere_needs_a_token():
    check_exposure(load_settings())  # 127.0.0.1 by default
    with pytest.raises(ValueError, match="LEARN_SERVING__TOKEN"):
        check_exposure(load_settings(serving={"host": "0.0.0.0"}))
    check_exposure(load_settings(serving={"host": "0.0.0.0", "token": "t"}))


def test_the_schema_states_the_bounds_the_api_applies():
    spec = create_app(load_settings(serving={"max_k": 37})).openapi()
    for path in ("/users/{user_id}/recommendations", "/items/{item_id}/similar"):
        params = {p["name"]: p["schema"] for p in spec["paths"][path]["get"]["parameters"]}
        assert params["k"]["minimum"] == 1 and params["k"]["maximum"] == 37
        ident = params["user_id" if "users" in path else "item_id"]
        assert ident["minLength"] == 1 and ident["maxLength"] == 128 and ident["pattern"]
    body = spec["components"]["schemas"]["HistoryRequest"]["properties"]
    assert body["k"]["maximum"] == 37 and body["history"]["minItems"] == 1 and body["history"]["maxItems"] == 1000
    Body = history_request(37)
    assert Body(history=["a"], k=37).k == 37
    for bad in ({"history": ["a"], "k": 38}, {"history": []}, {"history": ["a\x00"]}, {"history": ["x" * 129]},
                {"history": ["\ud800"]}, {"history": ["a"], "filter": {"only": [""]}}):  # fmt: skip
        with pytest.raises(ValidationError):
            Body.model_validate(bad)


def test_every_error_answer_is_documented_as_the_one_error_body():
    spec = create_app(load_settings()).openapi()
    expected = {("get", "/users/{user_id}/recommendations"): {"401", "404", "422", "503"},
                ("post", "/recommendations"): {"400", "401", "422", "503"},
                ("get", "/items/{item_id}/similar"): {"401", "404", "422", "503"},
                ("get", "/metrics"): {"401"}, ("get", "/ready"): {"422"}}  # fmt: skip
    for (method, path), statuses in expected.items():
        responses = spec["paths"][path][method]["responses"]
        for status in statuses:
            ref = responses[status]["content"]["application/json"]["schema"]["$ref"]
            assert ref == "#/components/schemas/ErrorBody", (method, path, status)
    assert "HTTPValidationError" not in spec["components"]["schemas"]  # FastAPI's own shape is not answered
    assert spec["components"]["schemas"]["ErrorBody"]["properties"]["detail"]["type"] == "string"


def test_the_422_body_names_each_field_and_drops_raw_inputs():
    errors = [{"type": "less_than_equal", "loc": ("query", "k"), "msg": "Input should be less than or equal to 100",
               "input": 101, "ctx": {"le": 100}},
              {"type": "string_pattern_mismatch", "loc": ("body", "history", 0), "msg": "String should match",
               "input": "a\x00", "ctx": {"error": ValueError("x")}}]  # fmt: skip
    body = validation_body(errors)
    assert body.detail == "invalid request: query.k: Input should be less than or equal to 100; body.history.0: String should match"
    assert body.errors[1].loc == ["body", "history", 0] and body.errors[1].type == "string_pattern_mismatch"
    ErrorBody.model_validate_json(body.model_dump_json())  # serialisable: no raw input or exception inside


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
