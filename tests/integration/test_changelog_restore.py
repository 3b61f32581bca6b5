"""A partition's state travels through the changelog topic: a worker whose database is missing, or
behind, restores it from the changelog before it applies new events, on the memory and the S3
engines of Tansu (whose end offsets the restore must not trust). Events come through kafka-python
(murmur2 of the user id), confluent-kafka (librdkafka's CRC32) and with no key, so some are forwarded.
The final state must equal the sequence rule applied to the events, with every event applied once."""

import contextlib
import random
import shutil

import pytest
from confluent_kafka import Producer as ConfluentProducer
from kafka import KafkaProducer

from deploy.broker import free_port
from deploy.stack import Stack
from store.state import StateReader
from streams.schemas import encode
from tests.integration.helpers import produce_acked, state_settled, wait_for
from tests.integration.test_exactly_once import expected_state, make_events

pytestmark = pytest.mark.integration


def own_broker(settings, storage: str):
    b = settings.broker.model_copy(update={"storage": storage, "port": free_port(), "s3_port": free_port(),
                                           "bootstrap_servers": ""})  # fmt: skip
    return settings.model_copy(update={"broker": b})


def on_dir(settings, data_dir):
    """The same deployment (broker, topics, consumer group) on another machine's data directory."""
    return settings.model_copy(update={"data_dir": data_dir})


def stored(settings) -> tuple[dict, dict]:
    reader = StateReader(settings.state_path, settings.topics.interactions)
    try:
        users = reader.sequences()
        return users, reader.counters()
    finally:
        reader.close()


def settled(settings, n: int) -> bool:
    if not settings.state_path.exists():
        return False
    reader = StateReader(settings.state_path, settings.topics.interactions)
    try:
        return state_settled(reader, n)()
    finally:
        reader.close()


@pytest.mark.parametrize("storage", ["memory", "s3"])
def test_a_missing_or_stale_database_is_restored_from_the_changelog(settings, tmp_path, storage):
    s = own_broker(settings.model_copy(update={"topics": settings.topics.model_copy(update={"partitions": 2})}), storage)
    events = make_events(n_users=30, per_user=8, rng=random.Random(11))
    waves = [events[i::3] for i in range(3)]  # interleaved: every wave touches most users
    t = s.topics.interactions
    machine = {name: on_dir(s, tmp_path / name) for name in ("a", "b", "c")}
    sent = 0

    def produce(wave):
        nonlocal sent
        kp = KafkaProducer(bootstrap_servers=s.broker.bootstrap, acks="all", linger_ms=5)
        cp = ConfluentProducer({"bootstrap.servers": s.broker.bootstrap})
        sends = [((kp, cp, kp)[k % 3], t, None if k % 3 == 2 else ev.user_id.encode(), encode(ev))
                 for k, ev in enumerate(wave)]  # fmt: skip
        produce_acked(sends)
        kp.close()
        sent += len(wave)

    def run_until_settled(stack, name, on):
        stack.start_worker(name, free_port(), module="streams.interaction_worker")
        wait_for(lambda: settled(on, sent), timeout_s=180)

    with contextlib.ExitStack() as cleanup:
        stack = cleanup.enter_context(Stack(s, tmp_path / "run"))
        stack.start_broker()
        stack.create_topics()
        workers = {n: cleanup.enter_context(Stack(m, tmp_path / "run")) for n, m in machine.items()}
        # machine a applies wave 1; a copy of its database is kept (it will be behind), then wave 2
        produce(waves[0])
        run_until_settled(workers["a"], "worker-a", machine["a"])
        workers["a"].kill("worker-a")
        shutil.copytree(machine["a"].state_path, machine["c"].state_path)
        run_until_settled(workers["a"], "worker-a", machine["a"])
        produce(waves[1])
        wait_for(lambda: settled(machine["a"], sent), timeout_s=180)
        workers["a"].kill("worker-a")  # machine a is gone, its disk with it

        # machine b has no database: it restores both partitions from the changelog, then wave 3 half
        produce(waves[2][: len(waves[2]) // 2])
        run_until_settled(workers["b"], "worker-b", machine["b"])
        workers["b"].kill("worker-b")
        # machine c has the copy from after wave 1: behind the changelog, restored from its tail
        produce(waves[2][len(waves[2]) // 2 :])
        run_until_settled(workers["c"], "worker-c", machine["c"])
        logs = {n: stack.log_path(f"worker-{n}").read_text() for n in machine}

    seqs, counts = expected_state(events, s.state.max_seq_len, s.state.allowed_lateness_s)
    final, counters = stored(machine["c"])
    restored_b, _ = stored(machine["b"])
    assert counts["duplicate"] > 0
    assert final == seqs  # the sequence rule applied to every event
    assert counters["applied"] == counts["applied"] == len({ev.event_id for ev in events})  # each once
    # b held what a had applied, restored, plus what it applied itself (the order of waves does not
    # change the rule's result here: lateness and length are larger than any user's history)
    assert restored_b == expected_state(waves[0] + waves[1] + waves[2][: len(waves[2]) // 2],
                                        s.state.max_seq_len, s.state.allowed_lateness_s)[0]  # fmt: skip
    assert logs["b"].count("restored ") == 2 and " 0 left out" in logs["b"]  # both partitions, from offset 0
    assert logs["c"].count("restored ") == 2 and "from offset 0:" not in logs["c"]  # from the copy's position
    assert "offset regression" not in "".join(logs.values())
