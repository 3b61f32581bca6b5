"""Exactly-once effect on the state under real SIGKILLs, with partitions moving between two workers.

Events (with duplicates and out-of-order deliveries) are produced in waves, a third each through
kafka-python (murmur2 of the user id), confluent-kafka at its default settings (librdkafka: CRC32)
and with no key at all, while two interaction workers in one consumer group are killed with SIGKILL at
random and restarted. At the end every user's stored sequence must equal the one computed directly
from the events with the same rule, in exactly one partition database (its user's), and every
distinct event must have been applied exactly once (a forward re-sent after a kill is a duplicate).
"""

import random
import re
import threading
import time
from collections import Counter

import pytest
from confluent_kafka import Producer as ConfluentProducer

from deploy.broker import free_port
from deploy.stack import Stack
from store.state import Entry, StateReader, apply_event
from streams.producer import EventProducer
from streams.repartition import canonical_partition
from streams.schemas import Interaction, encode
from tests.integration.helpers import state_settled, wait_for

pytestmark = pytest.mark.integration

WORKERS = ("interactions-a", "interactions-b")


def make_events(n_users: int, per_user: int, rng: random.Random) -> list[Interaction]:
    """Each user's events in time order, then shuffled across users, with ~5% duplicates and some
    events delivered late (swapped with their predecessor)."""
    now = time.time() - 3600
    per = {u: [Interaction(event_id=f"u{u}-{k}", user_id=f"u{u}", item_id=f"i{rng.randrange(500)}",
                           event_time=now + k * 10 + rng.random()) for k in range(per_user)]
           for u in range(n_users)}  # fmt: skip
    for seq in per.values():
        for k in range(1, len(seq)):
            if rng.random() < 0.05:
                seq[k - 1], seq[k] = seq[k], seq[k - 1]  # out of order, within lateness
    events = []
    cursors = {u: 0 for u in per}
    while cursors:
        u = rng.choice(list(cursors))
        events.append(per[u][cursors[u]])
        if rng.random() < 0.05:
            events.append(per[u][cursors[u]])  # a duplicate delivery
        cursors[u] += 1
        if cursors[u] == len(per[u]):
            del cursors[u]
    return events


def assignments(stack: Stack, name: str) -> int:
    """How many partitions the worker `name` has been assigned so far (its log, across restarts)."""
    return stack.log_path(name).read_text().count("resuming at stored offset")


def expected_state(events: list[Interaction], max_len: int, lateness: float):
    seqs: dict[str, list] = {}
    counts: Counter = Counter()
    for ev in events:  # same user -> same partition, so per-user order is the send order
        seq = seqs.setdefault(ev.user_id, [])
        counts[apply_event(seq, Entry(ev.event_time, ev.item_id, ev.action.value, ev.event_id), max_len, lateness)] += 1
    return seqs, counts


def test_state_is_exact_after_random_kills_and_rebalances(settings, tmp_path):
    rng = random.Random(7)
    # longer than any user's history, so a duplicate is always recognised by its event id
    settings = settings.model_copy(update={"state": settings.state.model_copy(update={"max_seq_len": 64})})
    events = make_events(n_users=150, per_user=40, rng=rng)
    produced = threading.Event()
    topic = settings.topics.interactions

    def produce_slowly():  # ~6k events over ~20 s, so kills land while batches are being written
        foreign = ConfluentProducer({"bootstrap.servers": settings.broker.bootstrap})  # default settings
        with EventProducer(settings) as producer:
            for i in range(0, len(events), 50):
                for k, ev in enumerate(events[i : i + 50], i):
                    if k % 3 == 0:
                        producer.send_interaction(ev)  # murmur2 of the user id
                    elif k % 3 == 1:
                        foreign.produce(topic, key=ev.user_id.encode(), value=encode(ev))  # CRC32
                    else:
                        producer.send_raw(topic, None, encode(ev))  # no key
                producer.flush()
                foreign.flush(30)
                time.sleep(0.15)
        produced.set()

    kills = 0
    # A memory-engine Tansu of its own: the suite's s3-engine broker fails concurrent produce requests to
    # one partition (ObjectStore AlreadyExists), and three producers plus two workers' forwards race here.
    b = settings.broker.model_copy(update={"storage": "memory", "port": free_port(), "bootstrap_servers": ""})
    settings = settings.model_copy(update={"broker": b})
    with Stack(settings, tmp_path / "run") as stack:
        stack.start_broker()
        stack.create_topics()
        for name in WORKERS:
            stack.start_worker(name, free_port(), module="streams.interaction_worker")
        seen = {name: 0 for name in WORKERS}
        thread = threading.Thread(target=produce_slowly)
        thread.start()
        while not produced.is_set() or kills < 4:
            victim = rng.choice(WORKERS)
            # kill a worker that holds partitions: wait for its assignment since it (re)started
            wait_for(lambda: assignments(stack, victim) > seen[victim], timeout_s=90)
            time.sleep(rng.uniform(0.1, 1.5))  # ... and has applied some events
            stack.kill(victim)  # SIGKILL, whatever it is doing
            kills += 1
            seen[victim] = assignments(stack, victim)
            stack.start_worker(victim, free_port(), module="streams.interaction_worker")
        thread.join()
        seqs, counts = expected_state(events, settings.state.max_seq_len, settings.state.allowed_lateness_s)
        reader = StateReader(settings.state_path, topic)

        def stored():
            reader.catch_up()
            return reader.sequences()

        wait_for(state_settled(reader, len(events)), timeout_s=120)
        wait_for(lambda: stored() == seqs, timeout_s=120)
        time.sleep(1.0)  # anything applied twice would show up now
        final = stored()
        counters = reader.counters()
        owners = {}
        for path, db in reader.dbs.items():
            for key in db.keys(from_key=b"u/"):
                if not key.startswith(b"u/"):
                    break
                owners.setdefault(key[2:].decode(), []).append(path.name)
        reader.close()
        logs = "".join(stack.log_path(n).read_text() for n in WORKERS)

    resumed = [int(x) for x in re.findall(r"resuming at stored offset (\d+)", logs)]
    assert kills >= 4 and counts["duplicate"] > 0
    assert sum(o > 0 for o in resumed) >= 2, "partitions never resumed from a stored offset"
    assert final == seqs
    assert "offset regression" not in logs  # kills and rebalances are not regressions
    n = settings.topics.partitions
    assert all(dbs == [f"{topic}-p{canonical_partition(u, n)}"] for u, dbs in owners.items()), "a user split"
    assert counters["applied"] == counts["applied"] == len({ev.event_id for ev in events})
    # every delivery accounted for: the duplicates produced, plus forwards re-sent after a kill
    assert counters["duplicate"] >= counts["duplicate"] and counters["late_dropped"] == 0
