"""A read replica on another machine (its own data directory, only the broker shared) follows a live
interaction worker through the changelog topic and answers like the worker's own databases read as
secondaries: the same users and sequences, users changed per window, counters and watermark; closed
and opened again, it resumes from its own databases."""

import random

import pytest

from deploy.broker import free_port
from deploy.stack import Stack
from store.state import StateReader
from streams.producer import EventProducer
from streams.replica import ChangelogReplica, state_reader
from tests.integration.helpers import state_settled, wait_for
from tests.integration.test_exactly_once import make_events

pytestmark = pytest.mark.integration


def view(reader) -> tuple:
    reader.catch_up()
    users = {u: [e.event_id for e in seq] for u, seq in reader.users()}
    return users, reader.changed_users(0, 2e9), dict(reader.counters()), reader.watermark()


def test_a_replica_follows_a_live_worker(settings, tmp_path):
    events = make_events(n_users=25, per_user=12, rng=random.Random(5))
    waves = [events[: len(events) // 3], events[len(events) // 3 : 2 * len(events) // 3], events[2 * len(events) // 3 :]]
    other = settings.model_copy(update={"data_dir": tmp_path / "machine-c",
                                        "state": settings.state.model_copy(update={"reader": "changelog"})})  # fmt: skip
    sent = 0

    def produce(wave):
        nonlocal sent
        with EventProducer(settings) as p:
            for k, ev in enumerate(wave):
                p.send_interaction(ev) if k % 2 else p.send_raw(settings.topics.interactions, None, ev.model_dump_json().encode())
        sent += len(wave)

    with Stack(settings, tmp_path / "run") as stack:
        stack.create_topics()
        stack.start_worker("interactions", free_port())
        primary = StateReader(settings.state_path, settings.topics.interactions)
        produce(waves[0])
        wait_for(state_settled(primary, sent), timeout_s=120)
        replica = state_reader(other, "test")
        assert isinstance(replica, ChangelogReplica)
        try:
            wait_for(lambda: view(replica) == view(primary), timeout_s=60)
            produce(waves[1])  # while it follows
            wait_for(state_settled(primary, sent), timeout_s=120)
            wait_for(lambda: view(replica) == view(primary), timeout_s=60)
            replica.close()
            produce(waves[2])  # while it is closed
            wait_for(state_settled(primary, sent), timeout_s=120)
            replica = state_reader(other, "test")
            assert all(replica.position(p) > 0 for p in range(settings.topics.partitions))  # its own databases
            wait_for(lambda: view(replica) == view(primary), timeout_s=60)
            users, changed, counters, _ = view(replica)
            assert len(users) == 25 and changed == set(users) and counters["applied"] == len({e.event_id for e in events})
            assert replica.sequence("u3") == primary.sequence("u3") and replica.first_slot() == primary.first_slot()
            second = state_reader(other, "second")  # another process on the same machine: its own replica
            try:
                assert view(second) == view(primary)
            finally:
                second.close()
        finally:
            replica.close()
            primary.close()
