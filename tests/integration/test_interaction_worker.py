"""A record produced with kafka-python reaches the faust interaction worker through a real broker;
malformed records go to the dead-letter topic with their reason."""

import time

import pytest

from deploy.broker import free_port
from deploy.stack import Stack
from store.state import StateReader
from streams.producer import EventProducer
from streams.schemas import Interaction
from tests.integration.helpers import dead_letters, state_settled, wait_for

pytestmark = pytest.mark.integration


def test_events_reach_the_state_and_bad_records_the_dlq(settings, tmp_path):
    now = time.time()
    with Stack(settings, tmp_path / "run") as stack:
        assert len(stack.create_topics()) == 6  # with interactions.repartition and .changelog
        assert stack.create_topics() == []  # idempotent
        stack.start_worker("interactions", free_port())
        with EventProducer(settings) as p:
            for i in range(40):
                p.send_interaction(Interaction(event_id=f"e{i}", user_id=f"u{i % 4}", item_id=f"i{i}",
                                               event_time=now + i))  # fmt: skip
            p.send_interaction(Interaction(event_id="e5", user_id="u1", item_id="i5", event_time=now + 5))
            p.send_raw(settings.topics.interactions, b"u9", b'{"event_id": "x", "user_id": "u9"}')
            p.send_raw(settings.topics.interactions, b"u9", b"\xff not json")
        reader = StateReader(settings.state_path, settings.topics.interactions)
        wait_for(state_settled(reader, 41))
        c = reader.counters()
        assert (c["applied"], c["duplicate"]) == (40, 1)
        assert [e.item_id for e in reader.sequence("u1")] == [f"i{i}" for i in range(1, 40, 4)]
        assert reader.sequence("u9") is None
        letters = dead_letters(settings.broker.bootstrap, settings.topics.interactions_dlq, 2)
        by_kind = {"UTF-8" in x["reason"]: x["reason"] for x in letters}
        assert "not UTF-8" in by_kind[True]
        assert "item_id" in by_kind[False] and "event_time" in by_kind[False]
        assert "Field required" in by_kind[False]
        assert all(x["source_topic"] == settings.topics.interactions for x in letters)
        reader.close()
