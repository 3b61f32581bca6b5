"""The in-memory index, the ranking of batched jobs, the content cache and the micro-batcher."""

import asyncio
import threading
import time

import numpy as np
import pytest
import torch

from serving.batching import MicroBatcher
from serving.content import ContentCache
from serving.index import ItemIndex, ModelSnapshot
from serving.recommend import Job, count_popularity, rank_in_memory, user_vectors
from bench.seed import random_unit
from store.state import Entry


def make_index(n=50, d=8, seed=0) -> ItemIndex:
    return ItemIndex.build([f"i{j}" for j in range(n)], random_unit(n, d, seed), np.arange(n, dtype=float))


def brute_force(index: ItemIndex, q: np.ndarray, k: int, exclude=(), allow=None):
    scores = index.vectors.numpy() @ q
    order = [int(r) for r in np.argsort(-scores)]
    ids = [index.ids[r] for r in order if index.ids[r] not in exclude and (allow is None or index.ids[r] in allow)]
    return ids[:k]


def test_search_matches_brute_force_with_exclusions_and_allow_lists():
    index = make_index()
    q = torch.from_numpy(random_unit(3, 8, seed=1))
    allow = [None, None, ["i3", "i7", "i9", "i11", "nope"]]
    exclude = [set(), {"i1", "i2", "i3"}, {"i7"}]
    got = index.search(q, [5, 5, 10], exclude, allow)
    for b in range(3):
        assert [i for i, _ in got[b]] == brute_force(index, q[b].numpy(), [5, 5, 10][b], exclude[b], allow[b])
    scores = [s for _, s in got[0]]
    assert scores == sorted(scores, reverse=True)
    assert len(got[2]) == 3  # only three allowed ids exist and one is excluded


def test_search_when_k_exceeds_the_catalogue_and_on_an_empty_index():
    index = make_index(n=4)
    assert len(index.search(torch.ones(1, 8), [10], [{"i0"}])[0]) == 3
    empty = ItemIndex.build([], np.zeros((0, 8), np.float32), np.zeros(0))
    assert empty.search(torch.ones(1, 8), [10], [set()]) == [[]]


def test_with_changes_upserts_appends_and_deletes_without_touching_the_original():
    index = make_index(n=5)
    before = index.vectors.clone()
    v = np.full(8, 0.5, np.float32)
    new = index.with_changes([{"item_id": "i1", "vector": v, "written_at": 99.0},
                              {"item_id": "x", "vector": v, "written_at": 100.0}], {"i3"})  # fmt: skip
    assert new.ids == ["i0", "i1", "i2", "i4", "x"]
    assert np.allclose(new.vector("i1").numpy(), v) and np.allclose(new.vector("x").numpy(), v)
    assert new.vector("i3") is None and new.newest == 100.0
    assert all(new.ids[r] == i for i, r in new.row_of.items())
    assert torch.equal(index.vectors, before) and len(index) == 5  # immutable: requests in flight keep theirs


def tiny_snapshot(n=30, d_raw=16):
    from trainer.towers import LEARN, TowerConfig

    torch.manual_seed(0)
    content = random_unit(n, d_raw)
    cfg = TowerConfig(n_items=n, d_llm=d_raw, d_model=8, n_layers=1, n_heads=2, d_out=8, max_seq_len=10)
    model = LEARN(cfg).eval()
    with torch.no_grad():
        items = model.encode_items(torch.from_numpy(content)).numpy()
    index = ItemIndex.build([f"i{j}" for j in range(n)], items, np.zeros(n))
    return ModelSnapshot("v1", "items_v1", model, index, time.time(), 10), content


def test_a_batch_ranks_each_job_as_if_it_were_alone(tmp_path):
    snap, content = tiny_snapshot()
    jobs = [Job(5, {"i1", "i2"}, history=content[[1, 2]]), Job(3, {"i4"}, item_id="i4"),
            Job(4, set(), history=content[[7, 3, 9, 11, 0]]), Job(2, set(), item_id="missing")]  # fmt: skip
    together = rank_in_memory(snap, jobs)
    for job, got in zip(jobs, together):
        alone = rank_in_memory(snap, [job])[0]
        if isinstance(alone, Exception):
            assert type(got) is type(alone) and "missing" in str(got)
        else:
            assert [i for i, _ in got.items] == [i for i, _ in alone.items]
            assert np.allclose([s for _, s in got.items], [s for _, s in alone.items], atol=1e-5)
            assert got.version == "v1" and not set(job.exclude) & {i for i, _ in got.items}


def test_user_vectors_ignore_padding(tmp_path):
    snap, content = tiny_snapshot()
    short, long = content[[1, 2]], content[[3, 4, 5, 6, 7]]
    both = user_vectors(snap.model, [short, long])
    assert torch.allclose(both[0], user_vectors(snap.model, [short])[0], atol=1e-5)
    assert torch.allclose(both[1], user_vectors(snap.model, [long])[0], atol=1e-5)


class FakeStore:
    def __init__(self, vectors: dict):
        self.vectors, self.calls = vectors, []

    def get(self, name, ids, with_vectors=False):
        self.calls.append(list(ids))
        return {i: type("Row", (), {"vector": self.vectors[i]})() for i in ids if i in self.vectors}

    def has(self, name):
        return True


def test_content_cache_fetches_once_evicts_the_least_recent_and_forgets_rewritten_items():
    store = FakeStore({f"i{j}": np.full(2, j, np.float32) for j in range(5)})
    cache = ContentCache(store, capacity=3)
    assert set(cache.fetch(["i0", "i1", "zzz"])) == {"i0", "i1"}
    found, missing = cache.lookup(["i1", "i0", "i2"])
    assert set(found) == {"i0", "i1"} and missing == ["i2"]
    cache.fetch(["i2", "i3"])  # i0 was used more recently than i1: i1 goes
    assert cache.lookup(["i0", "i1", "i2", "i3"])[1] == ["i1"]
    cache.invalidate(["i0"])
    assert cache.lookup(["i0"])[1] == ["i0"]
    per_job = cache.fetch_many([["i4"], ["i4", "i0"], ["nope"]])
    assert [set(x) for x in per_job] == [{"i4"}, {"i4", "i0"}, set()] and store.calls[-1] == ["i4", "i0", "nope"]
    cache.invalidate(None)
    assert len(cache) == 0


def test_micro_batcher_batches_concurrent_jobs_and_isolates_failures():
    sizes, gate = [], threading.Event()

    def fn(jobs):
        gate.wait(5)
        sizes.append(len(jobs))
        return [ValueError("bad job") if j == "bad" else j * 2 for j in jobs]

    batcher = MicroBatcher(fn, max_batch=8, name="test")

    async def go():
        first = asyncio.ensure_future(batcher.submit(0))
        await asyncio.sleep(0.05)  # the first job is being computed: the next ones queue up behind it
        rest = [asyncio.ensure_future(batcher.submit(j)) for j in [1, 2, "bad", 3]]
        await asyncio.sleep(0.05)
        gate.set()
        return await asyncio.gather(first, *rest, return_exceptions=True)

    try:
        out = asyncio.run(go())
    finally:
        batcher.close()
    assert out[:3] == [0, 2, 4] and isinstance(out[3], ValueError) and out[4] == 6
    assert sizes == [1, 4]


def test_micro_batcher_hands_a_failed_batch_to_every_request():
    batcher = MicroBatcher(lambda jobs: 1 / 0, max_batch=4, name="test")
    try:
        with pytest.raises(ZeroDivisionError):
            asyncio.run(batcher.submit(1))
    finally:
        batcher.close()


def test_popularity_counts_users_not_repeats():
    seqs = [("u1", [Entry(1, "a", "x", "1"), Entry(2, "a", "x", "2"), Entry(3, "b", "x", "3")]),
            ("u2", [Entry(1, "b", "x", "4")])]  # fmt: skip
    assert count_popularity(seqs) == {"a": 1, "b": 2}
