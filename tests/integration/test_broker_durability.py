"""The durable embedded broker (Tansu on the local S3 server) keeps records and committed consumer-group
offsets across SIGTERM and SIGKILL of Tansu and of the S3 server; the memory engine does not (the
control that shows the check can fail)."""

import signal

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata

from deploy.broker import free_port
from deploy.stack import Stack

pytestmark = pytest.mark.integration

GROUP = "durability"


def own_broker(settings, storage: str):
    """These settings with a broker of their own (these tests kill it), on fresh ports."""
    b = settings.broker.model_copy(update={"storage": storage, "port": free_port(), "s3_port": free_port(),
                                           "bootstrap_servers": ""})  # fmt: skip
    return settings.model_copy(update={"broker": b})


def produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    for i, v in enumerate(values):
        producer.send(topic, key=str(i % 7).encode(), value=v)
    producer.flush()
    producer.close()


def read_all(bootstrap: str, topic: str, partitions: int, expected: int, timeout_s: float = 30.0) -> list[bytes]:
    """Every record of the topic from offset 0 (no group), stopping at `expected` or after a quiet wait."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                             consumer_timeout_ms=int(timeout_s * 1000))  # fmt: skip
    consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
    consumer.seek_to_beginning()
    out = []
    for m in consumer:
        out.append(m.value)
        if len(out) >= expected:
            break
    consumer.close()
    return out


def commit(bootstrap: str, topic: str, offsets: dict[int, int]) -> None:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=GROUP, enable_auto_commit=False)
    consumer.commit({TopicPartition(topic, p): OffsetAndMetadata(o, "", -1) for p, o in offsets.items()})
    consumer.close()


def committed(bootstrap: str, topic: str, partitions: int) -> dict[int, int | None]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=GROUP, enable_auto_commit=False)
    out = {p: consumer.committed(TopicPartition(topic, p)) for p in range(partitions)}
    consumer.close()
    return out


# (which process, which signal): each kill is followed by a restart of what was killed
KILLS = [
    (("broker",), signal.SIGTERM),
    (("broker",), signal.SIGKILL),
    (("s3",), signal.SIGTERM),
    (("s3",), signal.SIGKILL),
    (("s3", "broker"), signal.SIGKILL),
]


def test_records_and_group_offsets_survive_kills_of_tansu_and_the_s3_server(settings, tmp_path):
    s = own_broker(settings, "s3")
    topic, parts = s.topics.interactions, s.topics.partitions
    bs = s.broker.bootstrap
    sent: list[bytes] = []
    with Stack(s, tmp_path / "run") as stack:
        stack.start_broker()
        assert set(stack.procs) == {"s3", "broker"}
        stack.create_topics()
        for round_, (names, sig) in enumerate(KILLS):
            batch = [f"r{round_}-{i}".encode() for i in range(200)]
            produce(bs, topic, batch)
            sent += batch
            offsets = {p: 10 * round_ + p + 1 for p in range(parts)}
            commit(bs, topic, offsets)
            for name in names:
                stack.kill(name, sig)
            stack.start_broker(names=tuple(n for n in ("s3", "broker") if n in names))
            assert sorted(read_all(bs, topic, parts, len(sent))) == sorted(sent), f"after {sig!r} of {names}"
            assert committed(bs, topic, parts) == offsets, f"after {sig!r} of {names}"
            assert stack.create_topics() == []  # the topics themselves are kept too


def test_the_memory_engine_forgets_everything_on_a_restart(settings, tmp_path):
    s = own_broker(settings, "memory")
    topic, parts = s.topics.interactions, s.topics.partitions
    with Stack(s, tmp_path / "run") as stack:
        stack.start_broker()
        assert set(stack.procs) == {"broker"}
        stack.create_topics()
        produce(s.broker.bootstrap, topic, [b"a", b"b"])
        commit(s.broker.bootstrap, topic, {0: 1})
        stack.kill("broker", signal.SIGTERM)
        stack.start_broker()
        assert stack.create_topics() == [s.topics.items, topic, s.topics.items_dlq, s.topics.interactions_dlq]
        assert read_all(s.broker.bootstrap, topic, parts, 1, timeout_s=3) == []
        assert committed(s.broker.bootstrap, topic, parts)[0] is None
