"""The API's Prometheus metrics, plus the workers' `learn_*` metrics re-exported from their /metrics pages.

Each app has its own registry (several apps live in one test process). Scraped families keep their
names and gain an `instance` label (host:port of the page scraped), so one Prometheus target shows
the whole pipeline; a page that does not answer within a second is skipped.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from urllib.parse import urlparse

import httpx
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class ApiMetrics:
    def __init__(self, scrape_urls: Iterable[str] = ()):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Histogram("learn_api_request_seconds", "HTTP request latency, by route and status",
                                  ["method", "route", "status"], buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.search = Histogram("learn_api_search_seconds", "Ranking alone: one batch in memory, or one "
                                "vector-store search call", buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.batch = Histogram("learn_api_batch_size", "Requests ranked together", buckets=(1, 2, 4, 8, 16, 32, 64),
                               registry=r)  # fmt: skip
        self.switches = Counter("learn_api_model_switches_total", "Model versions switched to", registry=r)
        self.load_seconds = Gauge("learn_api_model_load_seconds", "Time to load the served version", registry=r)
        self.index_items = Gauge("learn_api_index_items", "Item vectors in the in-memory index", registry=r)
        self.sync_seconds = Gauge("learn_api_sync_seconds", "Time of the last check of the index against the store",
                                  registry=r)  # fmt: skip
        self.content_cached = Gauge("learn_api_content_cached", "Content embeddings cached", registry=r)
        self.served_at = Gauge("learn_api_model_loaded_timestamp_seconds", "When the served version was loaded",
                               registry=r)  # fmt: skip
        if scrape_urls:
            r.register(ScrapedMetrics(list(scrape_urls)))


class ScrapedMetrics:
    """A collector that reads other processes' /metrics pages when the API's page is read."""

    def __init__(self, urls: list[str], prefix: str = "learn_", timeout_s: float = 1.0):
        self.urls, self.prefix, self.timeout_s = urls, prefix, timeout_s

    def describe(self):
        return []  # unknown until scraped

    def collect(self) -> Iterable[Metric]:
        families: dict[str, Metric] = {}
        for url in self.urls:
            try:
                text = httpx.get(url, timeout=self.timeout_s).text
            except httpx.HTTPError:
                continue
            instance = urlparse(url).netloc
            for fam in text_string_to_metric_families(text):
                if not fam.name.startswith(self.prefix) or fam.name.startswith("learn_api_"):
                    continue
                out = families.setdefault(fam.name, Metric(fam.name, fam.documentation, fam.type, fam.unit))
                out.samples += [Sample(s.name, {**s.labels, "instance": instance}, s.value, s.timestamp, s.exemplar)
                                for s in fam.samples]  # fmt: skip
        return list(families.values())


class LatencyMiddleware:
    """Observes every HTTP request's latency by route template (pure ASGI: no per-request task)."""

    def __init__(self, app, metrics: ApiMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        status = 500

        async def send_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path_format", "unmatched")  # "/users/{user_id}/...", no convertor
            self.metrics.requests.labels(scope["method"], route, str(status)).observe(time.perf_counter() - t0)
