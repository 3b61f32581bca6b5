"""SIGKILL of Tansu (S3 engine, nanio) while a producer sends with acks=all, then a restart through the
stack's own start path: every acknowledged record is still readable, and records produced after the
restart get new offsets instead of overwriting old ones (nanio ignored PUT conditions: a restarted
Tansu handed out offsets from 0 again; deploy/s3_server.py)."""

import signal
import threading
import time

import pytest
from kafka import KafkaProducer

from bench.broker_kills import produce_until
from deploy.stack import Stack
from tests.integration.test_broker_durability import own_broker, produce, read_all

pytestmark = pytest.mark.integration


def test_acknowledged_records_survive_a_sigkill_of_tansu_during_produce(settings, tmp_path):
    s = own_broker(settings, "s3")
    topic, parts, bs = s.topics.interactions, s.topics.partitions, s.broker.bootstrap
    acked: set[bytes] = set()
    with Stack(s, tmp_path / "run") as stack:
        stack.start_broker()
        stack.create_topics()
        before = [b"before-%d" % i for i in range(100)]
        produce(bs, topic, before)
        stop = threading.Event()
        # Not idempotent: Tansu 0.6.0 stores a producer's sequence before the batch, so a kill in between
        # makes the retry a "duplicate" that kafka-python counts as written (see README, broker section).
        producer = threading.Thread(target=produce_until, args=(bs, topic, stop, acked, False))
        producer.start()
        deadline = time.monotonic() + 60
        while len(acked) < 40 and time.monotonic() < deadline:
            time.sleep(0.05)
        stack.kill("broker", signal.SIGKILL)
        stack.start_broker(names=("broker",))
        time.sleep(2)
        stop.set()
        producer.join(120)
        # new records before anything reads: the restarted Tansu must continue after the stored ones
        after = [b"after-%d" % i for i in range(100)]
        produce(bs, topic, after)
        expected = set(before) | set(acked) | set(after)
        log = read_all(bs, topic, parts, len(expected) + 1000, timeout_s=15)
    assert len(acked) >= 40
    missing = expected - set(log)
    assert not missing, f"{len(missing)} of {len(expected)} acknowledged records missing: {sorted(missing)[:10]}"


def produce_acked(bootstrap: str, topic: str, values: list[bytes], acked: list[bytes]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    futures = [(v, producer.send(topic, key=str(i % 7).encode(), value=v)) for i, v in enumerate(values)]
    for value, f in futures:
        try:
            f.get(60)
            acked.append(value)
        except Exception:  # not acknowledged: counted below
            pass
    producer.close()


def test_concurrent_producers_to_one_partition_lose_nothing(settings, tmp_path):
    """Two produces to one partition at once both reserve offsets with a conditional PUT of its
    watermark; one must get 412 and retry (nanio accepted both: 900 of 1,200 records lost), and the
    re-read must see a whole object (nanio could serve a new file cut to the old size)."""
    s = own_broker(settings, "s3")
    topic, parts, bs = s.topics.interactions, s.topics.partitions, s.broker.bootstrap
    values = {t: [b"c%d-%d" % (t, i) for i in range(150)] for t in range(4)}
    acked: list[bytes] = []
    with Stack(s, tmp_path / "run") as stack:
        stack.start_broker()
        stack.create_topics()
        threads = [threading.Thread(target=produce_acked, args=(bs, topic, v, acked)) for v in values.values()]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        log = read_all(bs, topic, parts, len(acked), timeout_s=15)
    missing = set(acked) - set(log)
    assert not missing, f"{len(missing)} of {len(acked)} acknowledged records missing"
    assert len(acked) == 600, f"{600 - len(acked)} of 600 produces failed"
