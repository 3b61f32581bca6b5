"""The encoder worker on a real broker, a real milvus-lite file and a real (small) model: items become
searchable content rows and item-tower vectors; repeats, changes and tombstones are idempotent; bad
records go to items.dlq; a SIGKILL at random moments loses no item and leaves no duplicate row."""

import json
import random
import time

import confluent_kafka
import httpx
import numpy as np
import pytest
import torch
from kafka.admin import KafkaAdminClient

from deploy.broker import free_port
from deploy.stack import Stack
from encoder.worker import EXIT_STOPPED, WORKER
from store.registry import ModelRegistry
from store.titles import TitleReader
from store.vectors import CONTENT, VectorStore, items_collection
from streams.producer import EventProducer
from streams.schemas import ItemRecord, encode
from tests.integration.helpers import dead_letters, read_topic, wait_for

pytestmark = pytest.mark.integration

D_LLM, D_OUT = 384, 8  # MiniLM's hidden size; a tiny item tower


@pytest.fixture
def settings(settings):
    """The packaged MiniLM (fast on CPU), small batches so that a run has many of them."""
    return settings.model_copy(update={"encoder": settings.encoder.model_copy(
        update={"model": "minilm", "batch_size": 16, "flush_ms": 100})})  # fmt: skip


def publish_tower(settings) -> tuple[str, object]:
    """An untrained model over an empty catalogue, published and promoted by trainer/publish.py: the
    worker fills its collection with the exported item tower as items arrive."""
    from trainer.publish import Publisher
    from trainer.towers import LEARN, TowerConfig

    torch.manual_seed(0)
    cfg = TowerConfig(n_items=0, d_llm=D_LLM, d_model=8, n_layers=1, n_heads=2, d_out=D_OUT, item_tower="b")
    model = LEARN(cfg).eval()
    with VectorStore(settings.vector_uri) as store:
        version = Publisher(ModelRegistry(settings.registry_path), store).publish(model, [], np.zeros((0, D_LLM)))
    return version.name, model.encode_items


def item(i, title=None, **kw) -> ItemRecord:
    return ItemRecord(item_id=f"item-{i}", title=title or f"Lab beaker {i} ml", brand="Pyrex",
                      categories=["Industrial & Scientific", "Labware"], event_time=time.time(), **kw)  # fmt: skip


def rows(settings, ids):
    with VectorStore(settings.vector_uri) as s:
        return s.get(CONTENT, ids, with_vectors=True)


def count(settings, name=CONTENT) -> int:
    with VectorStore(settings.vector_uri) as s:
        return s.count(name) if s.has(name) else 0


BAD = {
    "malformed JSON": b'{"item_id": "b1", "title": ',
    "Field required": b'{"title": "no id", "event_time": 1700000000}',
    "needs some text": b'{"item_id": "b3", "title": "   ", "description": "\\t ", "event_time": 1700000000}',
    "not UTF-8": b'{"item_id": "b4", "title": "caf\xe9", "event_time": 1700000000}',
    "NaN": b'{"item_id": "b5", "title": "x", "event_time": NaN}',
}


def test_items_become_searchable_idempotently_and_bad_records_are_dead_lettered(settings, tmp_path):
    version, tower = publish_tower(settings)
    port = free_port()
    with Stack(settings, tmp_path / "run") as stack:
        stack.create_topics()
        stack.start_worker("encoder", port)
        with EventProducer(settings) as p:
            for i in range(20):
                p.send_item(item(i))
            for raw in BAD.values():
                p.send_raw(settings.topics.items, b"bad", raw)
            huge = item("huge", description="sodium chloride " * 70_000)  # ~1.1 MB of text
            p.send_item(huge)
        wait_for(lambda: count(settings) == 21, timeout_s=90)
        ids = [f"item-{i}" for i in range(20)] + ["item-huge"]
        first = rows(settings, ids)
        assert first["item-huge"].truncated and not first["item-3"].truncated
        assert first["item-3"].model_id.startswith("minilm:")
        assert np.allclose(np.linalg.norm(first["item-3"].vector), 1.0, atol=1e-4)

        # The current model version's collection got the item tower's vectors at once.
        assert count(settings, items_collection(version)) == 21
        with VectorStore(settings.vector_uri) as s:
            got = s.get(items_collection(version), ["item-3"], with_vectors=True)["item-3"].vector
            expected = tower(torch.from_numpy(first["item-3"].vector[None]))[0].detach().numpy()
            np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
            every = s.get(items_collection(version), ids, with_vectors=True)
            scores = {i: float(r.vector @ expected) for i, r in every.items()}  # inner product
            (hits,) = s.search(items_collection(version), expected, k=3, exclude=["item-3"])
            assert [h[0] for h in hits] == sorted(set(scores) - {"item-3"}, key=scores.get, reverse=True)[:3]

        letters = dead_letters(settings.broker.bootstrap, settings.topics.items_dlq, len(BAD) + 1)
        reasons = [x["reason"] for x in letters]
        for needle in BAD:
            assert sum(needle in r for r in reasons) == 1, (needle, reasons)
        (notice,) = [x for x in letters if x["reason"].startswith("truncated")]
        assert notice["key"] == "item-huge" and notice["payload_bytes"] > 1_000_000
        assert notice["payload_truncated"] and '"item_id":"item-huge"' in notice["payload"]

        # Same text again: a cache hit, one row. A changed text replaces the row. A tombstone deletes.
        with EventProducer(settings) as p:
            p.send_item(item(1))
            p.send_item(item(2, title="Erlenmeyer flask, borosilicate"))
            p.send_item(ItemRecord(item_id="item-4", deleted=True, event_time=time.time()))
        wait_for(lambda: "item-4" not in rows(settings, ["item-4"]), timeout_s=60)
        wait_for(lambda: rows(settings, ["item-2"])["item-2"].text_hash != first["item-2"].text_hash)
        assert count(settings) == 20 and count(settings, items_collection(version)) == 20
        again = rows(settings, ["item-1", "item-2"])
        assert again["item-1"].text_hash == first["item-1"].text_hash
        np.testing.assert_allclose(again["item-1"].vector, first["item-1"].vector)
        assert float(again["item-2"].vector @ first["item-2"].vector) < 0.99

        counts = httpx.get(f"http://127.0.0.1:{port}/counts").json()
        assert counts["cache_hit"] >= 1 and counts["encoded"] == 22 and counts["deleted"] == 1
        assert counts["dead_lettered"] == len(BAD) + 1
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        for name in ("learn_encoder_items_encoded_total", "learn_encoder_cache_hits_total",
                     "learn_encoder_encode_seconds_bucket", "learn_encoder_freshness_seconds_bucket",
                     'learn_batch_size_count{worker="encoder"}', "learn_encoder_truncated_total 1.0"):  # fmt: skip
            assert name in metrics, name


def test_sigkill_at_random_moments_loses_nothing_and_duplicates_nothing(settings, tmp_path):
    n = 600
    rng = random.Random(4)
    with Stack(settings, tmp_path / "run") as stack:
        stack.create_topics()
        with EventProducer(settings) as p:
            for i in range(n):
                p.send_item(item(i, title=f"Specimen jar {i}, {rng.choice(['glass', 'PET', 'HDPE'])}"))
        kills = 0
        for _ in range(3):
            stack.start_worker("encoder", free_port())
            before = count(settings)
            wait_for(lambda: count(settings) > before or count(settings) == n, timeout_s=60, every_s=0.05)
            time.sleep(rng.uniform(0.0, 0.5))
            if count(settings) == n:
                break
            stack.kill("encoder")  # SIGKILL, mid-batch or between batches
            kills += 1
        assert kills >= 1
        stack.start_worker("encoder", free_port())
        wait_for(lambda: count(settings) == n, timeout_s=120)
        time.sleep(1.0)  # anything re-delivered after the last restart lands as an upsert, not a row
        with VectorStore(settings.vector_uri) as s:
            ids = s.ids(CONTENT)
            assert s.count(CONTENT) == len(ids) == len(set(ids)) == n
            assert set(ids) == {f"item-{i}" for i in range(n)}


def test_consumption_resumes_after_the_group_evicted_a_paused_worker(settings, tmp_path):
    """A worker frozen past the session timeout (SIGSTOP: a long GC, a swapped-out host) is evicted from
    its consumer group; once it runs again it must rejoin and go on consuming, not idle forever."""
    n = 1200
    rng = random.Random(7)
    timeout_s = settings.broker.session_timeout_ms / 1000
    with Stack(settings, tmp_path / "run") as stack:
        stack.create_topics()
        with EventProducer(settings) as p:
            for i in range(n):
                p.send_item(item(i))
        stack.start_worker("encoder", free_port())
        pauses = 0
        for _ in range(3):
            before = count(settings)
            wait_for(lambda: count(settings) > before + 50 or count(settings) == n, timeout_s=60, every_s=0.05)
            if count(settings) == n:
                break
            stack.pause("encoder", seconds=rng.uniform(1.5, 3.0) * timeout_s)  # mid-backlog: evicted
            pauses += 1
        assert pauses >= 2 and count(settings) < n  # the backlog outlived the evictions
        wait_for(lambda: count(settings) == n, timeout_s=120)


# ---- tombstones, poison records, a foreign client (issue 14) -------------------------------------
def foreign_producer(settings) -> confluent_kafka.Producer:
    """confluent-kafka (librdkafka) at its default settings: CRC32 key hashing, 1 MB messages."""
    return confluent_kafka.Producer({"bootstrap.servers": settings.broker.bootstrap})


def titles(settings, ids) -> dict:
    reader = TitleReader(settings.titles_path)
    try:
        return {i: reader.get(i) for i in ids}
    finally:
        reader.close()


def committed(settings) -> int:
    """How many `items` records the encoder's consumer group has committed, over all partitions."""
    group = f"{settings.worker.app_prefix}-{WORKER}"
    admin = KafkaAdminClient(bootstrap_servers=settings.broker.bootstrap)
    try:
        offsets = admin.list_group_offsets(group).get(group, {})
    finally:
        admin.close()
    return sum(o.offset for tp, o in offsets.items() if tp.topic == settings.topics.items and o.offset > 0)


def all_dead_letters(settings) -> list[dict]:
    """Every record on items.dlq so far (read until 5 s pass without a new one)."""
    got = read_topic(settings.broker.bootstrap, settings.topics.items_dlq, 1_000_000, timeout_s=5)
    return [json.loads(m.value) for m in got]


def test_null_values_delete_keyed_items_and_dead_letter_keyless_ones_without_losing_the_batch(settings, tmp_path):
    """Issue 14's reproduction: 10 valid items with one null value among them were all lost."""
    version, _ = publish_tower(settings)
    with Stack(settings, tmp_path / "run") as stack:
        stack.create_topics()
        stack.start_worker("encoder", free_port())
        p = foreign_producer(settings)  # kafka-python refuses a record with neither key nor value
        for i in range(10):
            p.produce(settings.topics.items, key=f"item-{i}", value=encode(item(i)))
            if i == 4:
                p.produce(settings.topics.items, value=None)  # a tombstone without a key
        assert p.flush(30) == 0
        wait_for(lambda: count(settings) == 10, timeout_s=90)
        wait_for(lambda: committed(settings) == 11, timeout_s=30)  # acknowledged, the null value included
        (x,) = dead_letters(settings.broker.bootstrap, settings.topics.items_dlq, 1)
        assert "null value" in x["reason"] and "without a key" in x["reason"] and x["payload_bytes"] == 0
        assert x["null_value"]
        assert count(settings, items_collection(version)) == 10
        assert titles(settings, ["item-3"])["item-3"] == "Lab beaker 3 ml"

        with EventProducer(settings) as p:  # the Kafka convention: a null value deletes the key's item
            p.send_raw(settings.topics.items, b"item-3", None)
            p.send_raw(settings.topics.items, b"item-5", None)
            p.send_item(item(5, title="Lab beaker 5 ml, again"))  # same key after its tombstone: back
        expected = {"item-3": None, "item-5": "Lab beaker 5 ml, again"}
        wait_for(lambda: titles(settings, expected) == expected and count(settings) == 9, timeout_s=60)
        assert count(settings, items_collection(version)) == 9
        assert "item-3" not in rows(settings, ["item-3"]) and "item-5" in rows(settings, ["item-5"])
        with VectorStore(settings.vector_uri) as s:
            assert "item-3" not in s.ids(items_collection(version))


def test_a_record_that_cannot_be_dead_lettered_stops_the_worker_unacknowledged(settings, tmp_path):
    """The DLQ refuses every send (an invalid topic name): the worker must exit non-zero, and the record
    must be read again, and dead-lettered, by the next worker (its offset was never committed)."""
    broken = settings.model_copy(update={
        "topics": settings.topics.model_copy(update={"items_dlq": "no such topic!"}),
        "worker": settings.worker.model_copy(update={"send_timeout_ms": 3000})})  # fmt: skip
    with Stack(broken, tmp_path / "run") as stack:
        Stack(settings, tmp_path / "run").create_topics()  # the real DLQ; the broken name never exists
        stack.start_worker("encoder", free_port())
        with EventProducer(settings) as p:
            for i in range(5):
                p.send_item(item(i))
            p.send_raw(settings.topics.items, b"bad", b'{"item_id": "bad", "title": ')
        proc = stack.procs["encoder"]
        wait_for(lambda: proc.poll() is not None, timeout_s=120)
        assert proc.returncode == EXIT_STOPPED
        log = stack.log_path("encoder").read_text()
        assert "CRITICAL" in log and "could not be sent" in log and "no such topic!" in log

    with Stack(settings, tmp_path / "run") as stack:  # same consumer group, a working DLQ
        stack.start_worker("encoder", free_port())
        wait_for(lambda: count(settings) == 5, timeout_s=120)
        (x,) = wait_for(lambda: all_dead_letters(settings), timeout_s=120)
        assert "malformed JSON" in x["reason"] and x["key"] == "bad"


NESTED = b'{"item_id": "deep", "title": "t", "event_time": 1700000000, "attributes": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
FOREIGN_BAD = [  # (key, value, what its reason says)
    (None, b'{"item_id": "b1", "title": ', "malformed JSON"),
    (b"b2", b'{"item_id": "b2", "title": "caf\xe9", "event_time": 1700000000}', "not UTF-8"),
    (None, b'{"title": "no id", "event_time": 1700000000}', "Field required"),
    (b"b4", b'{"item_id": "b4", "title": 123, "event_time": 1700000000}', "valid string"),
    (b"b5", b'{"item_id": "b5", "title": "x", "event_time": NaN}', "JSON constant NaN"),
    (None, b'{"item_id": "b6", "title": "x", "event_time": -Infinity}', "JSON constant -Infinity"),
    (b"b7", b'{"item_id": "b7", "title": "x", "event_time": "yesterday"}', "event_time"),
    (None, b'{"item_id": "b8", "brand": " ", "event_time": 1700000000}', "needs some text"),
    (b"deep", NESTED, ""),  # json raises RecursionError (any reason will do)
    (None, b"[1, 2, 3]", "JSON object"),
    (None, None, "without a key"),
    (b"caf\xe9", None, "not UTF-8"),
    (b"bad\nid", None, "not an item id"),
]


def test_a_foreign_client_with_tombstones_and_every_bad_record_class_across_sigkills(settings, tmp_path):
    """confluent-kafka at its defaults (keyed and keyless records, CRC32 partitioning), duplicates,
    tombstones of both kinds and every class of bad record, while the worker is SIGKILLed twice: every
    valid item is stored exactly once, deleted ones are absent, every bad record is dead-lettered."""
    version, _ = publish_tower(settings)
    rng = random.Random(14)
    n, topic = 300, settings.topics.items
    stream = [(f"item-{i}".encode() if i % 2 == 0 else None, encode(item(i)), None) for i in range(n)]
    stream += [stream[i] for i in range(0, 60, 6)]  # exact duplicates, keyed and keyless
    huge = item("huge", description="sodium chloride " * 55_000)  # ~0.9 MB: under librdkafka's 1 MB default
    stream.append((b"item-huge", encode(huge), None))
    deleted = {f"item-{i}" for i in range(0, 200, 20)}  # keyed items: a tombstone follows on their partition
    for k, item_id in enumerate(sorted(deleted)):
        at = max(j for j, x in enumerate(stream) if x[0] == item_id.encode()) + 1  # after its duplicate too
        gone = None if k % 2 else encode(ItemRecord(item_id=item_id, deleted=True, event_time=time.time()))
        stream.insert(rng.randint(at, len(stream)), (item_id.encode(), gone, None))
    stream.insert(rng.randint(0, len(stream)), (b"never-seen", None, None))  # deleting nothing is fine
    for bad in FOREIGN_BAD:
        stream.insert(rng.randint(0, len(stream)), bad)

    reported, bad_at = [], {}  # delivery reports; (partition, offset) -> expected reason

    def on_delivery(needle):
        def report(err, msg):
            reported.append(err)
            if needle is not None:
                bad_at[(msg.partition(), msg.offset())] = needle
        return report

    p = foreign_producer(settings)
    for key, value, needle in stream:
        p.produce(topic, key=key, value=value, on_delivery=on_delivery(needle))
    assert p.flush(60) == 0 and len(reported) == len(stream) and not any(reported), reported
    live = {f"item-{i}" for i in range(n)} | {"item-huge"}
    live -= deleted

    def stored(name=CONTENT) -> set:
        with VectorStore(settings.vector_uri) as s:
            return set(s.ids(name)) if s.has(name) else set()

    with Stack(settings, tmp_path / "run") as stack:
        stack.create_topics()
        kills = 0
        for _ in range(2):
            stack.start_worker("encoder", free_port())
            before = len(stored())
            wait_for(lambda: len(stored()) > before or stored() == live, timeout_s=90, every_s=0.05)
            time.sleep(rng.uniform(0.0, 0.5))
            if stored() == live:
                break
            stack.kill("encoder")
            kills += 1
        assert kills >= 1
        stack.start_worker("encoder", free_port())
        wait_for(lambda: stored() == live, timeout_s=180)
        time.sleep(1.0)  # anything re-delivered lands as an upsert (or a repeated delete), not a row
        with VectorStore(settings.vector_uri) as s:
            for name in (CONTENT, items_collection(version)):
                ids = s.ids(name)
                assert s.count(name) == len(ids) == len(set(ids)) == len(live) and set(ids) == live, name
            assert s.get(CONTENT, ["item-huge"])["item-huge"].truncated
        assert all(v is None for v in titles(settings, deleted).values())
        assert titles(settings, ["item-2"])["item-2"] == "Lab beaker 2 ml"

        def places() -> set:
            return {(x["partition"], x["offset"]) for x in all_dead_letters(settings)}

        wait_for(lambda: set(bad_at) <= places(), timeout_s=60)
        by_place = {}
        for x in all_dead_letters(settings):  # a kill can repeat a dead letter: each place must give the same reason
            by_place.setdefault((x["partition"], x["offset"]), set()).add(x["reason"])
        (notice,) = [r for r in by_place.values() if any(x.startswith("truncated") for x in r)]
        assert set(by_place) == set(bad_at) | {next(k for k, r in by_place.items() if r is notice)}
        for place, needle in bad_at.items():
            (reason,) = by_place[place]
            assert needle in reason, (needle, reason)
        assert stack.procs["encoder"].poll() is None  # no record crashed the worker
