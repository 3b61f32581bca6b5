"""The approximate index (serving/ann.py) against the exact one, its changes, and the switch."""

import numpy as np
import pytest
import torch

from bench.seed import random_unit
from config.settings import ServingSettings
from serving.ann import AnnIndex, AnnParams, choose_index, index_chooser
from serving.index import ItemIndex


def exact_index(vectors: np.ndarray) -> ItemIndex:
    n = len(vectors)
    return ItemIndex.build([f"i{j}" for j in range(n)], vectors, np.arange(n, dtype=float))


def ids_of(hits):
    return [[i for i, _ in h] for h in hits]


def clustered(n: int, centres: np.ndarray, seed: int) -> np.ndarray:
    """Unit vectors around the `centres` (noise of norm ~0.5, the signal's being 1)."""
    rng = np.random.default_rng(seed)
    d = centres.shape[1]
    v = centres[rng.integers(0, len(centres), n)] + 0.5 * rng.standard_normal((n, d)).astype(np.float32) / np.sqrt(d)
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


WIDE = {"ivf": AnnParams(kind="ivf", nlist=16, nprobe=16), "hnsw": AnnParams(kind="hnsw", m=16, ef_search=2000)}


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_a_search_as_wide_as_the_catalogue_equals_exact_search_with_exclusions_and_allow_lists(kind):
    exact = exact_index(random_unit(2000, 16, seed=0))
    ann = AnnIndex.of(exact, WIDE[kind])  # every cell scored / every candidate kept
    q = torch.from_numpy(random_unit(6, 16, seed=1))
    ks = [10, 5, 10, 3, 10, 20]
    exclude = [set(), {"i1", "i2", "i3"}, set(), {f"i{j}" for j in range(0, 2000, 3)}, set(), set()]
    allow = [None, None, ["i3", "i7", "i9", "nope"], None, None, None]
    for b, h in enumerate(exact.search(q, ks, exclude)):  # exclude each query's top few too
        if b in (4, 5):
            exclude[b] = {i for i, _ in h[:4]}
    want, got = exact.search(q, ks, exclude, allow), ann.search(q, ks, exclude, allow)
    assert ids_of(got) == ids_of(want)
    assert np.allclose([s for h in got for _, s in h], [s for h in want for _, s in h], atol=1e-5)
    assert len(got[2]) == 3  # the allow-list path: three allowed ids exist


@pytest.mark.parametrize("params", [AnnParams(kind="ivf", nlist=100, nprobe=4), AnnParams(kind="hnsw", ef_search=16)],
                         ids=["ivf", "hnsw"])  # fmt: skip
def test_recall_at_10_on_clustered_vectors_with_a_narrow_search(params):
    centres = random_unit(50, 32, seed=2)
    vecs = clustered(20_000, centres, seed=2)
    exact = exact_index(vecs)
    ann = AnnIndex.of(exact, params)
    queries = torch.from_numpy(clustered(200, centres, seed=3))
    none = [set()] * len(queries)
    truth, got = exact.search(queries, [10] * len(queries), none), ann.search(queries, [10] * len(queries), none)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids_of(truth), ids_of(got))])
    assert recall >= 0.95, recall  # ivf: 4 of 100 cells scored (1 cell: ~0.76); hnsw: 16 candidates


@pytest.mark.parametrize("params", [AnnParams(kind="ivf", nprobe=64, rebuild_fraction=0.5),
                                    AnnParams(kind="hnsw", ef_search=500, rebuild_fraction=0.5)], ids=["ivf", "hnsw"])  # fmt: skip
def test_upserts_and_deletes_are_in_the_next_snapshot_and_not_in_the_old_one(params):
    exact = exact_index(random_unit(500, 8, seed=4))
    ann = AnnIndex.of(exact, params)  # searching wide: the answers are the exact ones
    q = torch.from_numpy(random_unit(1, 8, seed=5))
    top = ids_of(ann.search(q, [3], [set()]))[0]
    rows = [{"item_id": "new", "vector": q[0].numpy(), "written_at": 1e9},  # the best possible item
            {"item_id": top[1], "vector": -q[0].numpy(), "written_at": 1e9}]  # rewritten: now the worst
    new = ann.with_changes(rows, {top[0]})
    assert new.base is ann.base and new.fresh.ids == ["new", top[1]]  # shared base, nothing rebuilt
    got = ids_of(new.search(q, [3], [set()]))[0]
    assert got[0] == "new" and top[0] not in got and top[1] not in got
    assert got[1:] == [i for i in ids_of(exact.search(q, [5], [set()]))[0] if i not in top[:2]][:2]
    assert new.vector(top[0]) is None and np.allclose(new.vector(top[1]).numpy(), -q[0].numpy())
    assert len(new) == 500 and new.newest == 1e9
    assert ids_of(ann.search(q, [3], [set()]))[0] == top  # the old snapshot still answers as before
    assert ids_of(new.search(q, [3], [{"new"}]))[0] == got[1:] + [ids_of(new.exact.search(q, [3], [{"new"}]))[0][2]]
    gone = new.with_changes([], {"new"})
    assert "new" not in ids_of(gone.search(q, [3], [set()]))[0] and len(gone.fresh) == 1


def test_many_changes_rebuild_the_base_and_search_stays_exact():
    exact = exact_index(random_unit(400, 8, seed=6))
    ann = AnnIndex.of(exact, AnnParams(kind="ivf", nprobe=64, rebuild_fraction=0.05))  # every cell scored
    rows = [{"item_id": f"n{j}", "vector": v, "written_at": 5e8} for j, v in enumerate(random_unit(30, 8, seed=7))]
    new = ann.with_changes(rows, {"i0", "i1"})
    assert new.base is not ann.base and len(new.fresh) == 0 and not new.stale and new.base.ntotal == 428
    q = torch.from_numpy(random_unit(4, 8, seed=8))
    assert ids_of(new.search(q, [10] * 4, [set()] * 4)) == ids_of(new.exact.search(q, [10] * 4, [set()] * 4))


def test_the_switch_exact_ann_auto():
    exact = exact_index(random_unit(300, 8, seed=9))
    p = AnnParams()
    assert choose_index(exact, "exact", 0, p) is exact
    assert choose_index(exact, "auto", 301, p) is exact
    ann = choose_index(exact, "auto", 300, p)
    assert isinstance(ann, AnnIndex) and choose_index(ann, "ann", 0, p) is ann
    assert choose_index(ann, "exact", 0, p) is exact  # switched off again: back to the record
    empty = exact_index(np.zeros((0, 8), np.float32))
    assert choose_index(empty, "ann", 0, p) is empty
    ivf = index_chooser(ServingSettings(index="ann", ann_kind="ivf", ann_nprobe=3, ann_nlist=5))(exact)
    assert ivf.base.nlist == 5 and ivf.base.nprobe == 3
    hnsw = index_chooser(ServingSettings(index="ann", ann_kind="hnsw", ann_m=8, ann_ef_search=33))(exact)
    assert hnsw.base.hnsw.efSearch == 33 and hnsw.base.ntotal == 300
