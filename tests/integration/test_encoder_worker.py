"""The encoder worker on a real broker, a real milvus-lite file and a real (small) model: items become
searchable content rows and item-tower vectors; repeats, changes and tombstones are idempotent; bad
records go to items.dlq; a SIGKILL at random moments loses no item and leaves no duplicate row."""

import json
import random
import time

import httpx
import numpy as np
import pytest
import torch

from deploy.broker import free_port
from deploy.stack import Stack
from store.registry import ModelRegistry
from store.titles import TitleReader
from store.vectors import CONTENT, VectorStore, items_collection
from streams.producer import EventProducer
from streams.schemas import ItemRecord
from tests.integration.helpers import dead_letters, wait_for

pytestmark = pytest.mark.integration

D_LLM, D_OUT = 384, 8  # MiniLM's hidden size; a tiny item tower


@pytest.fixture
def settings(settings):
    """The packaged MiniLM (fast on CPU), small batches so that a run has many of them."""
    return settings.model_copy(update={"encoder": settings.encoder.model_copy(
        update={"model": "minilm", "batch_size": 16, "flush_ms": 100})})  # fmt: skip


class Projection(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(D_LLM, D_OUT, generator=torch.Generator().manual_seed(0)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.w  # (N, d_llm) -> (N, d_out)


def publish_tower(settings) -> tuple[str, torch.nn.Module]:
    """A model version whose item tower is a fixed projection, promoted through the registry API."""
    reg = ModelRegistry(settings.registry_path)
    name = reg.next_name()
    path = reg.stage(name)
    tower = torch.jit.script(Projection())
    tower.save(str(path / "item_tower.pt"))
    (path / "weights.safetensors").write_bytes(b"")
    (path / "config.json").write_text(json.dumps({"test": True}))
    reg.commit_version(name)
    reg.mark_published(name)  # an empty collection is complete: the worker fills it as items arrive
    reg.promote(name)
    return name, tower


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
        assert json.loads(notice["payload"])["item_id"] == "item-huge"

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
def titles(settings, ids) -> dict:
    reader = TitleReader(settings.titles_path)
    try:
        return {i: reader.get(i) for i in ids}
    finally:
        reader.close()


def test_null_values_delete_keyed_items_and_dead_letter_keyless_ones_without_losing_the_batch(settings, tmp_path):
    """Issue 14's reproduction: 10 valid items with one null value among them were all lost."""
    version, _ = publish_tower(settings)
    with Stack(settings, tmp_path / "run") as stack:
        stack.create_topics()
        stack.start_worker("encoder", free_port())
        with EventProducer(settings) as p:
            for i in range(10):
                p.send_item(item(i))
                if i == 4:
                    p.send_raw(settings.topics.items, None, None)  # a tombstone without a key
        wait_for(lambda: count(settings) == 10, timeout_s=90)
        (x,) = dead_letters(settings.broker.bootstrap, settings.topics.items_dlq, 1)
        assert "null value" in x["reason"] and "without a key" in x["reason"] and x["payload_bytes"] == 0
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
