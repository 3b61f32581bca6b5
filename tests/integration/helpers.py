"""Helpers for tests that talk to the real broker and stores."""

from __future__ import annotations

import json
import time

from kafka import KafkaConsumer

from store.state import StateReader


def read_topic(bootstrap: str, topic: str, expected: int, timeout_s: float = 20.0) -> list:
    """All records of a topic (no consumer group), stopping at `expected` or after the timeout."""
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None,
                             auto_offset_reset="earliest", consumer_timeout_ms=int(timeout_s * 1000))  # fmt: skip
    out = []
    for m in consumer:
        out.append(m)
        if len(out) >= expected:
            break
    consumer.close()
    return out


def dead_letters(bootstrap: str, topic: str, expected: int) -> list[dict]:
    return [json.loads(m.value) for m in read_topic(bootstrap, topic, expected)]


def wait_for(predicate, timeout_s: float = 60.0, every_s: float = 0.2):
    """Poll until `predicate()` returns a truthy value; return it, or fail with the last value."""
    deadline = time.monotonic() + timeout_s
    value = None
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"condition not met within {timeout_s}s (last value: {value!r})")


def state_settled(reader: StateReader, expected: int):
    """A predicate: the state store accounts for `expected` events (applied, duplicate or late)."""

    def check():
        reader.catch_up()
        c = reader.counters()
        return (c["applied"] + c["duplicate"] + c["late_dropped"]) >= expected

    return check



def produce_acked(sends: list, rounds: int = 5) -> int:
    """Produce (client, topic, key, value) records, the client a kafka-python KafkaProducer or a
    confluent-kafka Producer, until the broker acknowledged each one: a producer with retries, at
    least once (the state's event-id dedup absorbs a repeat). Returns how many were sent again."""
    pending, repeated = list(range(len(sends))), 0
    for _ in range(rounds):
        acked: set[int] = set()
        futures = []
        for i in pending:
            client, topic, key, value = sends[i]
            if hasattr(client, "produce"):  # confluent-kafka
                client.produce(topic, key=key, value=value,
                               on_delivery=lambda err, msg, i=i: err is None and acked.add(i))  # fmt: skip
                client.poll(0)
            else:
                futures.append((i, client.send(topic, key=key, value=value)))
        for client in {id(sends[i][0]): sends[i][0] for i in pending}.values():
            client.flush(60)
        acked.update(i for i, f in futures if f.succeeded())
        failed = [i for i in pending if i not in acked]
        if not failed:
            return repeated
        repeated += len(failed)
        pending = failed
    raise AssertionError(f"{len(pending)} records not acknowledged after {rounds} rounds")
