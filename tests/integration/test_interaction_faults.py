"""The interaction worker against what real producers and brokers do: tombstones, foreign
partitioners (librdkafka's CRC32 default, keyless records), a dead-letter topic that refuses
letters, a topic recreated under the worker and a memory broker that restarts empty."""

import re
import time
import uuid

import httpx
import pytest
from confluent_kafka import Producer as ConfluentProducer
from kafka.admin import KafkaAdminClient

from deploy.broker import free_port
from deploy.stack import Stack
from store.state import StateReader
from streams.producer import EventProducer
from streams.repartition import canonical_partition
from streams.schemas import Interaction, encode
from streams.topics import ensure_topics, topic_specs
from tests.integration.helpers import dead_letters, wait_for

pytestmark = pytest.mark.integration

NOW = time.time()


def events(n_users: int, per_user: int, tag: str) -> list[Interaction]:
    return [Interaction(event_id=f"{tag}-u{u}-{k}", user_id=f"u{u}", item_id=f"i{k}", event_time=NOW - 600 + k)
            for k in range(per_user) for u in range(n_users)]  # fmt: skip


def stored(reader: StateReader) -> dict[str, list[str]]:
    reader.catch_up()
    return {u: [e.event_id for e in seq] for u, seq in reader.users()}


def owners(reader: StateReader) -> dict[str, list[str]]:
    """user -> the partition databases that hold a sequence for it."""
    reader.catch_up()
    out: dict[str, list[str]] = {}
    for path, db in reader.dbs.items():
        for k in db.keys(from_key=b"u/"):
            if not k.startswith(b"u/"):
                break
            out.setdefault(k[2:].decode(), []).append(path.name)
    return out


def worker_metric(port: int, name: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return sum(float(v) for v in re.findall(rf"^{name}\{{[^}}]*\}} (\S+)$", text, re.M))


def confluent(settings) -> ConfluentProducer:
    return ConfluentProducer({"bootstrap.servers": settings.broker.bootstrap})  # default partitioner


def test_foreign_partitioners_keyless_records_and_tombstones(settings, tmp_path):
    """Each user's sequence ends complete in exactly one partition database, its own; tombstones are
    dead-lettered with their reason and stop nothing."""
    evs = events(n_users=24, per_user=9, tag="p")
    t = settings.topics.interactions
    # idle partitions are probed every second: intact logs must never count as regressed
    settings = settings.model_copy(update={"worker": settings.worker.model_copy(update={"regression_probe_s": 1.0})})
    port = free_port()
    with Stack(settings, tmp_path / "run") as stack:
        stack.create_topics()
        stack.start_worker("interactions", port)
        cp = confluent(settings)
        with EventProducer(settings) as kp:
            for i, ev in enumerate(evs):
                kind = i % 3
                if kind == 0:  # librdkafka: CRC32 of the key
                    cp.produce(t, key=ev.user_id.encode(), value=encode(ev))
                elif kind == 1:  # no key at all
                    kp.send_raw(t, None, encode(ev))
                else:  # kafka-python: murmur2 of the key
                    kp.send_interaction(ev)
                if i == 50:
                    kp.send_raw(t, b"u1", None)  # tombstones, one through each client
                    cp.produce(t, key=b"u2", value=None)
        cp.flush(30)
        expected = {}
        for ev in evs:
            expected.setdefault(ev.user_id, []).append(ev.event_id)
        reader = StateReader(settings.state_path, t)
        wait_for(lambda: stored(reader) == expected, timeout_s=90)
        where = owners(reader)
        n = settings.topics.partitions
        assert all(dbs == [f"{t}-p{canonical_partition(u, n)}"] for u, dbs in where.items()), where
        assert sum(1 for _ in reader.users()) == 24
        counts = httpx.get(f"http://127.0.0.1:{port}/counts", timeout=5).json()
        assert counts["forwarded"] > 0 and counts["applied"] == len(evs)
        letters = dead_letters(settings.broker.bootstrap, settings.topics.interactions_dlq, 2)
        assert sorted(x["key"] for x in letters) == ["u1", "u2"]
        assert all(x["null_value"] and x["payload"] == "" and "tombstone" in x["reason"] for x in letters)
        time.sleep(3.0)  # a few idle probes
        assert worker_metric(port, "learn_offset_regressions_total") == 0
        assert stored(reader) == expected
        assert stack.procs["interactions"].poll() is None  # still running
        reader.close()


def test_a_record_that_cannot_be_dead_lettered_stops_the_worker_and_is_not_skipped(settings, tmp_path):
    good = settings
    bad = settings.model_copy(update={
        "topics": settings.topics.model_copy(update={"interactions_dlq": "not a valid topic!"}),
        "worker": settings.worker.model_copy(update={"send_timeout_ms": 3000}),
    })  # fmt: skip
    ensure_topics(good.broker.bootstrap, topic_specs(good))
    t = good.topics.interactions
    user = next(f"u{i}" for i in range(100) if canonical_partition(f"u{i}", good.topics.partitions) == 0)
    with EventProducer(good) as p:
        for k in range(5):
            p.send_interaction(Interaction(event_id=f"a{k}", user_id=user, item_id="i", event_time=NOW + k))
        p.send_raw(t, user.encode(), b"{not json")
        for k in range(5):
            p.send_interaction(Interaction(event_id=f"b{k}", user_id=user, item_id="i", event_time=NOW + 10 + k))
    with Stack(bad, tmp_path / "run") as stack:
        try:
            stack.start_worker("interactions", free_port())
        except RuntimeError:
            pass  # it may stop before its web server answers
        proc = stack.procs["interactions"]
        proc.wait(timeout=180)
        log = stack.log_path("interactions").read_text()
    assert proc.returncode != 0
    assert "interaction worker stops" in log and "dead letter to not a valid topic!" in log
    reader = StateReader(good.state_path, t)
    p0 = reader.next_offsets().get(f"{t}-p0", 0)
    assert p0 <= 5, f"the offset moved past the record that was not dead-lettered ({p0})"
    reader.close()
    # With a dead-letter topic that works, a restart handles the record and everything after it.
    with Stack(good, tmp_path / "run2") as stack:
        stack.start_worker("interactions", free_port())
        reader = StateReader(good.state_path, t)
        wait_for(lambda: stored(reader).get(user) == [f"a{k}" for k in range(5)] + [f"b{k}" for k in range(5)])
        (letter,) = dead_letters(good.broker.bootstrap, good.topics.interactions_dlq, 1)
        assert letter["offset"] == 5 and "malformed JSON" in letter["reason"]
        reader.close()


def produce_and_wait(settings, evs, reader, expected_total):
    with EventProducer(settings) as p:
        for ev in evs:
            p.send_interaction(ev)
    wait_for(lambda: sum(len(s) for s in stored(reader).values()) == expected_total, timeout_s=120)


def test_a_topic_recreated_under_a_running_worker_is_consumed_again(settings, tmp_path):
    first, second = events(8, 5, "old"), events(8, 3, "new")  # the new log is shorter than the old one
    port = free_port()
    with Stack(settings, tmp_path / "run") as stack:
        stack.create_topics()
        stack.start_worker("interactions", port)
        reader = StateReader(settings.state_path, settings.topics.interactions)
        produce_and_wait(settings, first, reader, 40)
        admin = KafkaAdminClient(bootstrap_servers=settings.broker.bootstrap)
        admin.delete_topics([settings.topics.interactions])
        admin.close()
        time.sleep(2.0)
        stack.create_topics()
        produce_and_wait(settings, second, reader, 64)
        assert all(len(seq) == 8 for seq in stored(reader).values())
        assert worker_metric(port, "learn_offset_regressions_total") >= 1
        assert "offset regression on" in stack.log_path("interactions").read_text()
        reader.close()


def test_a_memory_broker_restarting_empty_under_a_running_worker(settings, tmp_path):
    own = settings.model_copy(update={
        "broker": settings.broker.model_copy(update={"port": free_port()}),
        "worker": settings.worker.model_copy(update={"app_prefix": f"learn-{uuid.uuid4().hex[:8]}"}),
    })  # fmt: skip
    first, second = events(8, 6, "before"), events(8, 4, "after")
    port = free_port()
    with Stack(own, tmp_path / "run") as stack:
        stack.start_broker()  # Tansu, memory:// engine: a restart starts every log at offset 0 again
        stack.create_topics()
        stack.start_worker("interactions", port)
        reader = StateReader(own.state_path, own.topics.interactions)
        produce_and_wait(own, first, reader, 48)
        stack.stop("broker")
        time.sleep(1.0)
        stack.start_broker()
        stack.create_topics()
        produce_and_wait(own, second, reader, 80)
        assert all(len(seq) == 10 for seq in stored(reader).values())
        assert worker_metric(port, "learn_offset_regressions_total") >= 1
        assert stack.procs["interactions"].poll() is None
        reader.close()
