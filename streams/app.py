"""The faust application factory: one app (= one consumer group) per kind of worker.

Settings that matter on Tansu and stay right on Apache Kafka:
- a short session timeout (Tansu's first group join waits half of it);
- topics are never declared by faust (deploy/ creates them with explicit partition counts);
- no leader-assignor topic and no changelog-backed tables: Tansu reports end offsets as the start of the
  last batch + 1, which breaks faust's changelog recovery; durable state lives in rocksdict (store/).
"""

from __future__ import annotations

import faust

from config import Settings
from streams.kafka_options import client_options


def make_app(name: str, settings: Settings, has_agents: bool = True) -> faust.App:
    """A faust App for the worker `name`, wired to the configured broker.

    A worker whose consumption is not a faust agent (`has_agents=False`) keeps faust's small internal
    leader topic, so faust's own consumer has something to subscribe to (it crashes on no topics).
    """
    w = settings.worker
    datadir = settings.data_dir / "faust" / name
    datadir.mkdir(parents=True, exist_ok=True)
    return faust.App(
        f"{w.app_prefix}-{name}",
        **client_options(settings.broker, "faust"),  # broker list, SASL / TLS credentials
        store="memory://",
        datadir=str(datadir),
        broker_session_timeout=settings.broker.session_timeout_ms / 1000,
        broker_heartbeat_interval=settings.broker.heartbeat_interval_ms / 1000,
        consumer_auto_offset_reset="earliest",
        topic_allow_declare=not has_agents,  # faust declares internal topics only, never ours
        topic_disable_leader=has_agents,
        producer_acks=-1,
        web_enabled=True,
        web_bind=w.web_host,
        web_host=w.web_host,
        web_port=w.web_port,
    )


def raw_topic(app: faust.App, name: str):
    """A topic whose keys and values reach agents as bytes: validation is ours (streams/schemas.py)."""
    return app.topic(name, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
