"""Issue 17: a published version serves the EASE term (trainer/collab.py) on a real milvus-lite file.
The publisher's items are [content, Q[row]], the encoder worker's rows equal them, serving's user
vector carries w * sum_h P[h] of the history's rows, so the served inner product is the model's
full-sort score; an item the fit never saw is content alone (a zero EASE part)."""

import time

import numpy as np
import pytest
import torch

from encoder.item_tower import ItemTower
from serving.index import ModelFollower
from serving.recommend import Job, job_users, rank_in_memory
from store.collab import COLLAB_IDS, read_collab
from store.registry import ModelRegistry
from store.vectors import CONTENT, VectorStore
from trainer import collab
from trainer.checkpoint import save_checkpoint
from trainer.offline import train_step
from trainer.publish import Publisher, publish_run
from trainer.towers import LEARN, Features, TowerConfig, pad_sequences

N, D_RAW, FITTED, RANK = 40, 16, 30, 4  # the EASE term knows the first 30 items only
IDS = [f"item{j}" for j in range(N)]
SEQS = [[(3 * u + k) % FITTED for k in range(6)] for u in range(12)]
HISTORIES = [[1, 2, 3, 4, 5], [7], [9, 8, 7, 33]]  # 33: an item unknown to the fit


def model_with_term() -> tuple[LEARN, np.ndarray]:
    x = np.random.default_rng(0).normal(size=(N, D_RAW)) + 2.0
    raw = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    torch.manual_seed(0)
    cfg = TowerConfig(n_items=N, d_raw=D_RAW, d_llm=12, d_model=8, n_layers=1, n_heads=2, d_out=8, max_seq_len=10,
                      loss="full_softmax", history_in_loss="negatives", history_age_bias=True, history_knn=True,
                      collab_rank=RANK)  # fmt: skip
    model = LEARN(cfg, torch.from_numpy(raw), Features.fit(raw, dim=12))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(3):
        train_step(model, opt, SEQS, 10)
    model.eval()
    p, q = collab.low_rank(collab.fit_ease(collab.interaction_matrix(SEQS, FITTED), 1.0), RANK)
    with torch.no_grad():
        model.history.knn_weight.fill_(3.0)
        model.collab.set(p, q, 2.0, model.content[:FITTED])
    assert model.collab_active() and model.served_dim(ids=True) == 8 + 12 + RANK
    return model, raw


def expected_scores(model: LEARN) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's full-sort scores of HISTORIES and the mask of the items outside each history."""
    seq, lens = pad_sequences(HISTORIES, model.pad_id, 10)
    with torch.no_grad():
        expected = model.full_sort_predict({"item_seq": seq, "item_seq_len": lens})
    outside = torch.ones_like(expected, dtype=torch.bool)
    for b, h in enumerate(HISTORIES):
        outside[b, h] = False
    return expected, outside


def jobs(raw: np.ndarray, k: int = 5) -> list[Job]:
    return [Job(k, {IDS[i] for i in h}, history=raw[h], history_ids=[IDS[i] for i in h]) for h in HISTORIES]


@pytest.fixture
def store(tmp_path):
    with VectorStore(tmp_path / "vectors.db") as s:
        yield s


def test_served_vectors_give_the_models_scores_with_the_ease_term(tmp_path, store):
    model, raw = model_with_term()
    expected, outside = expected_scores(model)
    with torch.no_grad():
        model.collab.weight.zero_()
        without, _ = expected_scores(model)
        model.collab.weight.fill_(2.0)
    assert not torch.allclose(expected[outside], without[outside], atol=1e-3)  # the term is there
    registry = ModelRegistry(tmp_path / "registry")
    version = Publisher(registry, store).publish(model, IDS, raw, {"source": "test"})
    assert read_collab(version.path).ids == IDS[:FITTED] and version.config["collab"] == {"items": FITTED, "rank": RANK,
                                                                             "catalogue_items_with_a_row": FITTED}
    rows = store.get(version.collection, IDS, with_vectors=True)
    items = torch.from_numpy(np.stack([rows[i].vector for i in IDS]))
    assert items.shape[1] == 8 + 12 + RANK

    follower = ModelFollower(registry, store, in_memory=True)
    assert follower.poll()
    snap = follower.snapshot
    users = job_users(snap, jobs(raw))  # serving's user vectors: the history's EASE rows by id
    served = users @ items.T
    assert torch.allclose(served[outside], expected[outside], atol=1e-5)
    # the in-memory top-K (history excluded) is the model's, and the store's search agrees
    ranked = rank_in_memory(snap, jobs(raw))
    for b, r in enumerate(ranked):
        want = expected[b].masked_fill(~outside[b], -float("inf")).topk(5).indices.tolist()
        assert [i for i, _ in r.items] == [IDS[j] for j in want]
        hits = store.search(version.collection, users[b : b + 1].numpy(), 5, exclude=jobs(raw)[b].exclude)[0]
        assert [i for i, _ in hits] == [i for i, _ in r.items]
    # a history without its ids cannot be served by this version (the vectors would be too narrow)
    with pytest.raises(ValueError, match="EASE"):
        job_users(snap, [Job(5, set(), history=raw[[1, 2]])])


def test_an_item_unknown_to_the_fit_is_served_as_content_alone(tmp_path, store):
    model, raw = model_with_term()
    version = Publisher(ModelRegistry(tmp_path / "registry"), store).publish(model, IDS, raw)
    rows = store.get(version.collection, IDS, with_vectors=True)
    with torch.no_grad():
        content_only = model.encode_items(torch.from_numpy(raw)).numpy()  # no ids: [v, f]
    for j in (FITTED, 33, N - 1):
        np.testing.assert_allclose(rows[IDS[j]].vector, np.concatenate([content_only[j], np.zeros(RANK)]), atol=1e-5)
    q = model.collab.item_factor.numpy()
    np.testing.assert_allclose(rows[IDS[5]].vector, np.concatenate([content_only[5], q[5]]), atol=1e-5)


def test_the_encoder_worker_writes_the_publishers_rows(tmp_path, store):
    model, raw = model_with_term()
    registry = ModelRegistry(tmp_path / "registry")
    version = Publisher(registry, store).publish(model, IDS, raw)
    rows = store.get(version.collection, IDS, with_vectors=True)
    tower = ItemTower(registry)
    assert tower.refresh() and tower.collab is not None
    order = IDS[::-1]  # any order: rows are looked up by id
    np.testing.assert_allclose(tower(raw[::-1], order), np.stack([rows[i].vector for i in order]), atol=1e-5)
    new = tower(raw[:2], ["brand-new", "item3"])  # an item the version never saw: content + zeros
    assert np.all(new[0, -RANK:] == 0) and np.any(new[1, -RANK:] != 0)
    with pytest.raises(ValueError, match="ids"):
        tower(raw)


def test_an_offline_run_serves_the_term_over_the_live_catalogues_order(tmp_path, store):
    model, raw = model_with_term()
    reference = Publisher(ModelRegistry(tmp_path / "ref"), store).publish(model, IDS, raw)
    want = store.get(reference.collection, IDS, with_vectors=True)
    registry = ModelRegistry(tmp_path / "registry")
    with pytest.raises(ValueError, match="collab_ids"):  # another order, and nobody said which rows are which
        Publisher(registry, store).publish(model, IDS[::-1], raw[::-1])
    save_checkpoint(model, tmp_path / "run" / "checkpoint", extra={"collab_item_ids": IDS[:FITTED]})
    store.ensure_collection(CONTENT, D_RAW)
    store.upsert(CONTENT, IDS[::-1], raw[::-1])  # the store's order is its own
    version = publish_run(tmp_path / "run", registry, store)
    assert (version.path / COLLAB_IDS).exists()
    got = store.get(version.collection, IDS, with_vectors=True)
    np.testing.assert_allclose(np.stack([got[i].vector for i in IDS]), np.stack([want[i].vector for i in IDS]), atol=1e-5)


def test_a_version_without_the_term_carries_no_ease_files(tmp_path, store):
    model, raw = model_with_term()
    with torch.no_grad():
        model.collab.weight.zero_()  # a term never chosen
    registry = ModelRegistry(tmp_path / "registry")
    version = Publisher(registry, store).publish(model, IDS, raw)
    assert read_collab(version.path) is None and version.config["collab"] is None
    assert store.dim(version.collection) == model.served_dim() == 8 + 12
    follower = ModelFollower(registry, store, in_memory=True)
    assert follower.poll() and follower.snapshot.collab is None
    tower = ItemTower(registry)
    assert tower.refresh() and tower(raw).shape == (N, 8 + 12)


@pytest.mark.parametrize("search", ["memory", "store"])
def test_the_api_path_recommends_the_models_top_k(tmp_path, search):
    # the API's own objects (serving/runtime.py) over a real data dir: state store, content, registry
    import asyncio

    from bench.seed import write_catalogue, write_sequences
    from config import load_settings
    from serving.metrics import ApiMetrics
    from serving.runtime import Runtime
    from serving.schemas import HistoryRequest

    model, raw = model_with_term()
    expected, outside = expected_scores(model)
    settings = load_settings(data_dir=tmp_path / "data", serving={"search": search, "poll_s": 0.1})
    with VectorStore(settings.vector_uri) as store:
        write_catalogue(settings, store, IDS, raw)
        write_sequences(settings, {f"u{b}": [IDS[i] for i in h] for b, h in enumerate(HISTORIES)})
        Publisher(ModelRegistry(settings.registry_path), store).publish(model, IDS, raw)
    runtime = Runtime(settings, ApiMetrics()).start()
    try:
        deadline = time.monotonic() + 60
        while runtime.follower.snapshot is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert runtime.follower.snapshot.collab is not None, runtime.follower.error

        async def ask():
            users = [await runtime.recommender.for_user(f"u{b}", 5) for b in range(len(HISTORIES))]
            posted = [await runtime.recommender.for_history(HistoryRequest(history=[IDS[i] for i in h], k=5))
                      for h in HISTORIES]  # fmt: skip
            return users, posted

        users, posted = asyncio.run(ask())
    finally:
        runtime.close()
    for b in range(len(HISTORIES)):
        want = [IDS[j] for j in expected[b].masked_fill(~outside[b], -float("inf")).topk(5).indices.tolist()]
        assert [x.item_id for x in users[b].items] == want == [x.item_id for x in posted[b].items]
        np.testing.assert_allclose([x.score for x in users[b].items], expected[b, [IDS.index(i) for i in want]], atol=1e-4)
