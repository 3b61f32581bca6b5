"""The cluster settings against the real broker: topics created and described through the admin client
built from BrokerSettings (a bootstrap LIST whose first address is dead, replication factor from
TopicSettings), and the faust app factory wired to the same list."""

import pytest

from config import load_settings
from deploy.broker import free_port
from streams.app import make_app
from streams.topics import TopicSpec, ensure_topics, partition_counts, topic_specs

pytestmark = pytest.mark.integration


def test_admin_and_faust_follow_the_bootstrap_list(settings):
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there: the client must go on to the next
    real = settings.broker.bootstrap  # the test run's broker
    s = load_settings(**{**settings.model_dump(), "broker": {"bootstrap_servers": f"{dead},{real}"},
                         "topics": {**settings.topics.model_dump(), "partitions": 3, "replication_factor": 1}})  # fmt: skip
    specs = topic_specs(s)
    assert sorted(ensure_topics(s.broker, specs)) == sorted(x.name for x in specs)
    assert ensure_topics(s.broker, specs) == []  # idempotent
    counts = partition_counts(s.broker, [s.topics.items, s.topics.interactions_dlq])
    assert counts == {s.topics.items: 3, s.topics.interactions_dlq: 1}
    app = make_app("options-check", s)
    assert [f"{u.host}:{u.port}" for u in app.conf.broker] == [dead, real]
    assert app.conf.broker_credentials is None


def test_producer_follows_the_bootstrap_list(settings):
    """streams/producer.py's producer is built from the same options: a dead first address is skipped."""
    from streams.producer import make_producer

    dead = f"127.0.0.1:{free_port()}"
    s = load_settings(**{**settings.model_dump(), "broker": {"bootstrap_servers": f"{dead},{settings.broker.bootstrap}"}})
    ensure_topics(s.broker, [TopicSpec("options-check", 1)])
    producer = make_producer(s)
    try:
        assert producer.config["bootstrap_servers"] == [dead, settings.broker.bootstrap]
        assert producer.config["security_protocol"] == "PLAINTEXT"
        producer.send("options-check", b"options-check").get(timeout=30)
    finally:
        producer.close()
