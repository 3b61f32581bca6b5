"""A record whose state update raises (not a RecordError) is dead-lettered on its own; the rest of its
batch is applied and the offset moves past all of them."""

import asyncio
import json
import time
from types import SimpleNamespace

import store.state as state_module
from config import load_settings
from store.changelog import fold
from streams.interaction_worker import InteractionWorker
from streams.repartition import route
from streams.schemas import Interaction, encode


class RecordingProducer:
    """Stands in for the broker's acknowledgement: every send succeeds and is recorded."""

    def __init__(self):
        self.sent, self.keys = [], []

    async def send(self, topic, value, key=None, partition=None, timestamp_ms=None):
        self.sent.append((topic, value))
        self.keys.append(key)
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(SimpleNamespace(offset=len(self.sent) - 1))  # the record's metadata, as the broker's
        return fut


def test_a_record_whose_update_raises_is_dead_lettered_alone(tmp_path, monkeypatch):
    real = state_module.apply_event

    def apply_event(seq, e, max_len, lateness_s):
        if e.event_id == "bad":
            raise RuntimeError("state update failed")
        return real(seq, e, max_len, lateness_s)

    monkeypatch.setattr(state_module, "apply_event", apply_event)
    settings = load_settings(data_dir=tmp_path, topics={"partitions": 1})
    producer = RecordingProducer()
    worker = InteractionWorker(settings, consumer=None, producer=producer, n_partitions=1)
    records = [SimpleNamespace(topic="interactions", partition=0, offset=o, key=b"u1", timestamp=1, value=encode(
        Interaction(event_id=eid, user_id="u1", item_id=f"i{o}", event_time=time.time())))
        for o, eid in enumerate(["a", "bad", "c"])]  # fmt: skip
    part = worker.state.partition(0)  # the worker's own database of partition 0
    routed = route(records, "interactions", 0, 1)
    counts = asyncio.run(worker.apply(part, "", routed.rows, records))
    assert counts["applied"] == 2 and counts["dead_lettered"] == 1
    assert part.next_offset == 3
    (topic, value), = [x for x in producer.sent if x[0] != settings.topics.changelog_topic]
    letter = json.loads(value)
    assert topic == settings.topics.interactions_dlq and letter["offset"] == 1
    assert "unexpected RuntimeError" in letter["reason"] and "state update failed" in letter["reason"]
    # the changelog got each row's outcome, acknowledged before the local write: its last record holds
    # the offsets the database holds, the user's last value the stored sequence
    logged = fold((k, v) for (t, v), k in zip(producer.sent, producer.keys) if t == settings.topics.changelog_topic)
    assert logged.offsets.next_offsets[""] == 3 and logged.offsets.counters["applied"] == 2
    assert [x[3] for x in json.loads(logged.users["u1"])] == ["a", "c"]
    assert part.changelog_next == len(producer.sent)
    worker.state.close()


def test_co_partitioned_topics_must_exist_with_one_partition_count():
    import pytest

    from streams.interaction_worker import FatalError, check_partition_counts

    assert check_partition_counts({"a": 4, "a.r": 4}, ["a", "a.r"]) == 4
    with pytest.raises(FatalError, match="do not exist"):
        check_partition_counts({"a": 4, "a.r": 0}, ["a", "a.r"])
    with pytest.raises(FatalError, match="one partition count"):
        check_partition_counts({"a": 4, "a.r": 2}, ["a", "a.r"])


def test_a_batch_whose_partition_is_revoked_while_its_sends_are_in_flight_is_not_written(tmp_path):
    """The rebalance listener closes (and may reopen and restore) a partition's database while a batch
    of it waits for the broker: that batch must not be written to the closed database object (it
    crashed the worker: DbClosedError); the partition's owner applies it again from its offsets."""
    from aiokafka import TopicPartition

    settings = load_settings(data_dir=tmp_path, topics={"partitions": 1})

    class SlowProducer(RecordingProducer):
        def __init__(self):
            super().__init__()
            self.futures = []

        async def send(self, topic, value, key=None, partition=None, timestamp_ms=None):
            self.sent.append((topic, value))
            fut = asyncio.get_running_loop().create_future()
            self.futures.append(fut)
            return fut

    async def scenario():
        producer = SlowProducer()
        worker = InteractionWorker(settings, consumer=None, producer=producer, n_partitions=1)
        part = worker.state.partition(0)
        records = [SimpleNamespace(topic="interactions", partition=0, offset=0, key=b"u1", timestamp=1,
                                   value=encode(Interaction(event_id="a", user_id="u1", item_id="i", event_time=time.time())))]  # fmt: skip
        routed = route(records, "interactions", 0, 1)
        task = asyncio.create_task(worker.apply(part, "", routed.rows, records))
        while not producer.futures:
            await asyncio.sleep(0)
        worker.on_revoked([TopicPartition(settings.topics.interactions, 0)])  # closes the database
        again = worker.state.partition(0)  # assigned again: a new database object
        for i, fut in enumerate(producer.futures):
            fut.set_result(SimpleNamespace(offset=i))
        counts = await task
        assert counts["applied"] == 1 and again.next_offset == 0  # computed, acknowledged, not written
        worker.state.close()

    asyncio.run(scenario())
