"""Prometheus metrics of the stream workers, served on each worker's faust web port at /metrics."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest

RECORDS = Counter("learn_records_total", "Records consumed, by worker and outcome", ["worker", "outcome"])
DEAD_LETTERS = Counter("learn_dead_letters_total", "Records sent to a dead-letter topic", ["worker"])
BATCH_SIZE = Histogram(
    "learn_batch_size", "Records per processed batch", ["worker"], buckets=(1, 4, 16, 64, 256, 1024, 4096)
)
OFFSET_REGRESSIONS = Counter(
    "learn_offset_regressions",
    "Times a partition's stored next offset no longer named the record applied last (topic recreated, "
    "broker restarted empty, records removed): consumption restarted from the log's start",
    ["worker", "topic"],
)
LATENCY = Histogram(
    "learn_event_latency_seconds",
    "From the record's broker timestamp to its effect being durable",
    ["worker"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
)


def register_pages(app, worker: str) -> None:
    """Add /metrics (Prometheus text) and /counts (JSON) pages to a faust app's web server."""

    @app.page("/metrics")
    async def metrics(web, request):
        # aiohttp refuses a charset inside content_type (the text is UTF-8 either way)
        return web.bytes(generate_latest(), content_type=CONTENT_TYPE_LATEST.split("; charset")[0])

    @app.page("/counts")
    async def counts(web, request):
        out = {}
        for metric in RECORDS.collect():
            for s in metric.samples:
                if s.name.endswith("_total") and s.labels.get("worker") == worker:
                    out[s.labels["outcome"]] = int(s.value)
        for metric in DEAD_LETTERS.collect():
            for s in metric.samples:
                if s.name.endswith("_total") and s.labels.get("worker") == worker:
                    out["dead_lettered"] = int(s.value)
        return web.json(out)
