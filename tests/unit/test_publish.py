"""trainer/publish.py on a real milvus-lite file: what serving and the encoder worker compute from a
published version is what the trained model computes, for every item tower; recovery after a crashed
publish; an offline run published with `learn model publish`."""

import json

import numpy as np
import pytest
import torch

from encoder.item_tower import ItemTower, load_program
from serving.index import ModelFollower
from serving.recommend import user_vectors
from config import load_settings
from store.registry import ModelRegistry, open_registry
from store.vectors import CONTENT, VectorStore, items_collection
from trainer.checkpoint import save_checkpoint
from trainer.offline import train_step
from trainer.publish import Publisher, export_item_tower, publish_run
from trainer.towers import ITEM_TOWERS, LEARN, Features, TowerConfig, pad_sequences

N, D_RAW = 40, 16
IDS = [f"item{j}" for j in range(N)]


def raw_catalogue(seed=0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(N, D_RAW)) + 2.0  # anisotropic, like LLM vectors
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def trained(variant: str, raw: np.ndarray) -> LEARN:
    """A few optimiser steps, so the weights are not the initial ones."""
    torch.manual_seed(0)
    cfg = TowerConfig(n_items=N, d_raw=D_RAW, d_llm=12, d_model=8, n_layers=1, n_heads=2, d_out=8,
                      max_seq_len=10, item_tower=variant, loss="dense_all_action", target_window=2)  # fmt: skip
    model = LEARN(cfg, torch.from_numpy(raw), Features.fit(raw, dim=12))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    seqs = [[(3 * u + k) % N for k in range(6)] for u in range(12)]
    for _ in range(5):
        train_step(model, opt, seqs, 10)
    return model.eval()


@pytest.fixture
def store(tmp_path):
    with VectorStore(tmp_path / "vectors.db") as s:
        yield s


@pytest.mark.parametrize("variant", sorted(ITEM_TOWERS))
def test_served_vectors_are_the_trained_vectors(tmp_path, store, variant):
    raw = raw_catalogue()
    model = trained(variant, raw)
    registry = ModelRegistry(tmp_path / "registry")
    version = Publisher(registry, store).publish(model, IDS, raw, {"source": "test"})
    assert registry.current().name == version.name and version.published
    with torch.no_grad():
        items = model.item_vectors().numpy()  # what training and evaluation score with
        seq, lens = pad_sequences([[1, 2, 3], [7], [4, 9, 11, 2, 5]], model.pad_id, 10)
        users = model.user_vectors(seq, lens).numpy()

    # the version's collection (searched by serving) holds the trained item vectors
    rows = store.get(version.collection, IDS, with_vectors=True)
    np.testing.assert_allclose(np.stack([rows[i].vector for i in IDS]), items, atol=1e-5)
    # the encoder worker's exported item tower computes them too
    tower = ItemTower(registry)
    assert tower.refresh() and tower.version.name == version.name and not tower.refresh()
    np.testing.assert_allclose(tower(raw), items, atol=1e-5)
    # serving's user tower (the model module over the safetensors weights) gives the trained users
    follower = ModelFollower(registry, store, in_memory=True)
    assert follower.poll() and not follower.poll()
    snap = follower.snapshot
    histories = [raw[[1, 2, 3]], raw[[7]], raw[[4, 9, 11, 2, 5]]]
    np.testing.assert_allclose(user_vectors(snap.model, histories).numpy(), users, atol=1e-5)
    np.testing.assert_allclose(snap.index.vectors.numpy()[[snap.index.row_of[i] for i in IDS]], items, atol=1e-5)


@pytest.mark.parametrize("variant", sorted(ITEM_TOWERS))
def test_served_knn_term_gives_the_models_scores(tmp_path, store, variant):
    # trainer/history.py's content-kNN term travels as extra dimensions (items [v, f], users
    # [u, tau * w * z]): one inner product of served vectors = the model's full-sort score outside
    # the history (serving never returns history items; the age bias acts only there)
    raw = raw_catalogue()
    torch.manual_seed(0)
    cfg = TowerConfig(n_items=N, d_raw=D_RAW, d_llm=12, d_model=8, n_layers=1, n_heads=2, d_out=8, max_seq_len=10,
                      item_tower=variant, loss="full_softmax", history_in_loss="negatives", history_age_bias=True,
                      history_knn=True)  # fmt: skip
    model = LEARN(cfg, torch.from_numpy(raw), Features.fit(raw, dim=12))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(3):
        train_step(model, opt, [[(3 * u + k) % N for k in range(6)] for u in range(12)], 10)
    model.eval()
    with torch.no_grad():
        model.history.knn_weight.fill_(3.0)
        model.history.age_bias.fill_(-1.0)
    assert model.served_dim() == 8 + 12
    registry = ModelRegistry(tmp_path / "registry")
    version = Publisher(registry, store).publish(model, IDS, raw, {"source": "test"})
    histories = [[1, 2, 3, 4, 5], [7], [9, 8, 7]]
    seq, lens = pad_sequences(histories, model.pad_id, 10)
    with torch.no_grad():
        expected = model.full_sort_predict({"item_seq": seq, "item_seq_len": lens})
        plain = model.user_vectors(seq, lens) @ model.item_vectors().T
    outside = torch.ones_like(expected, dtype=torch.bool)
    for b, h in enumerate(histories):
        outside[b, h] = False
    assert not torch.allclose(expected[outside], plain[outside], atol=1e-3)  # the kNN term is there

    rows = store.get(version.collection, IDS, with_vectors=True)
    items = torch.from_numpy(np.stack([rows[i].vector for i in IDS]))  # what serving searches
    tower = ItemTower(registry)  # the encoder worker's exported item tower
    assert tower.refresh()
    np.testing.assert_allclose(tower(raw), items.numpy(), atol=1e-5)
    follower = ModelFollower(registry, store, in_memory=True)
    assert follower.poll()
    users = user_vectors(follower.snapshot.model, [raw[h] for h in histories])  # serving's user tower
    served = users @ items.T
    assert served.shape == expected.shape
    assert torch.allclose(served[outside], expected[outside], atol=1e-5)


def test_a_zero_knn_weight_serves_the_plain_towers(tmp_path, store):
    # a blend never chosen (the incremental trainer's models) publishes d_out wide vectors
    raw = raw_catalogue()
    cfg = TowerConfig(n_items=N, d_raw=D_RAW, d_llm=12, d_model=8, n_layers=1, n_heads=2, d_out=8, max_seq_len=10,
                      loss="full_softmax", history_age_bias=True, history_knn_blend=True)  # fmt: skip
    model = LEARN(cfg, torch.from_numpy(raw), Features.fit(raw, dim=12)).eval()
    assert model.history.knn_weight is not None and model.served_dim() == 8
    version = Publisher(ModelRegistry(tmp_path / "registry"), store).publish(model, IDS, raw)
    rows = store.get(version.collection, IDS, with_vectors=True)
    with torch.no_grad():
        np.testing.assert_allclose(np.stack([rows[i].vector for i in IDS]), model.item_vectors().numpy(), atol=1e-5)


@pytest.mark.parametrize("backend", ["folder", "s3"])
def test_a_crashed_publish_is_cleaned_and_serving_stays_on_the_complete_version(tmp_path, store, backend, request):
    raw = raw_catalogue()
    if backend == "folder":
        registry = ModelRegistry(tmp_path / "registry")
    else:  # the same on the local S3 server (tests/s3_server.py), from its own data dir
        s3 = request.getfixturevalue("s3_server").registry(request.getfixturevalue("s3_bucket"))
        registry = open_registry(load_settings(data_dir=tmp_path / "data", registry=s3))

    def crash(point):
        if point == "mid_vectors":
            raise KeyboardInterrupt  # the process dies half-way through the vectors

    first = Publisher(registry, store).publish(trained("b", raw), IDS, raw)
    with pytest.raises(KeyboardInterrupt):
        Publisher(registry, store, pause=crash).publish(trained("c", raw), IDS, raw)
    half = registry.versions()[-1]
    assert not half.published and registry.current().name == first.name
    assert store.has(half.collection)
    store.ensure_collection(items_collection("v999999"), 8)  # vectors of a version never committed
    complete = Publisher(registry, store).recover()
    assert [v.name for v in complete] == [first.name] == [v.name for v in registry.versions()]
    assert not store.has(half.collection) and not store.has(items_collection("v999999"))
    assert store.has(first.collection)


def test_models_with_item_ids_and_mismatched_catalogues_are_refused(tmp_path, store):
    raw = raw_catalogue()
    publisher = Publisher(ModelRegistry(tmp_path / "registry"), store)
    with pytest.raises(ValueError, match="ID"):
        export_item_tower(LEARN(TowerConfig(n_items=3, d_llm=4, d_model=4, n_heads=1, d_out=4,
                                            use_id_embedding=True)), tmp_path / "x.pt2")  # fmt: skip
    with pytest.raises(ValueError, match="another encoder"):
        publisher.publish(trained("b", raw), IDS, raw[:, :8])


def test_an_offline_run_is_published_over_the_live_catalogue(tmp_path, store):
    raw = raw_catalogue()
    model = trained("a", raw)
    run = tmp_path / "run"
    save_checkpoint(model, run / "checkpoint", metrics={"ndcg@10": 0.1}, extra={"dataset": "x"})
    registry = ModelRegistry(tmp_path / "registry")
    with pytest.raises(RuntimeError, match="no content"):
        publish_run(run, registry, store)
    with pytest.raises(FileNotFoundError, match="no model artefact"):
        publish_run(tmp_path, registry, store)
    store.ensure_collection(CONTENT, D_RAW)
    store.upsert(CONTENT, IDS[::-1], raw[::-1])  # the store's order is its own
    version = publish_run(run, registry, store)
    assert registry.current().name == version.name
    config = json.loads((version.path / "config.json").read_text())
    assert config["source"] == "offline" and config["items"] == N and config["metrics"] == {"ndcg@10": 0.1}
    rows = store.get(version.collection, IDS, with_vectors=True)
    with torch.no_grad():
        np.testing.assert_allclose(np.stack([rows[i].vector for i in IDS]), model.item_vectors().numpy(), atol=1e-5)


class Payload:
    """Unpickling this would run this module's code."""


def test_the_item_tower_loader_refuses_archives_that_pickle_more_than_tensors(tmp_path):
    import zipfile

    raw = raw_catalogue()
    path = export_item_tower(trained("c", raw), tmp_path / "item_tower.pt2")
    x = torch.from_numpy(raw)
    assert torch.allclose(load_program(path)(x), trained("c", raw).encode_items(x), atol=1e-5)
    bad = tmp_path / "bad.pt2"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(bad, "w") as dst:
        for name in src.namelist():
            data = src.read(name)
            if name.endswith(".pt"):
                import io

                buf = io.BytesIO()
                torch.save({"x": Payload()}, buf)  # an arbitrary object: needs a full unpickle
                data = buf.getvalue()
            dst.writestr(name, data)
    with pytest.raises(Exception, match="(?i)weights only|weights_only|unsupported"):
        load_program(bad)


def test_learn_model_publish_serves_an_offline_run_and_lists_it(tmp_path):
    from typer.testing import CliRunner

    from deploy.cli import app

    raw = raw_catalogue()
    save_checkpoint(trained("b", raw), tmp_path / "run" / "checkpoint")
    data = tmp_path / "data"
    settings = load_settings(data_dir=data)
    runner = CliRunner()
    refused = runner.invoke(app, ["model", "publish", str(tmp_path / "run"), "--data-dir", str(data)])
    assert refused.exit_code == 1 and "no content embeddings" in refused.output  # a clear error, no traceback
    with VectorStore(settings.vector_uri) as s:
        s.ensure_collection(CONTENT, D_RAW)
        s.upsert(CONTENT, IDS, raw)
    done = runner.invoke(app, ["model", "publish", str(tmp_path / "run"), "--data-dir", str(data)])
    assert done.exit_code == 0, done.output
    current = ModelRegistry(settings.registry_path).current()
    assert current is not None and current.name in done.output and current.config["source"] == "offline"
    listed = runner.invoke(app, ["model", "list", "--data-dir", str(data)])
    assert listed.exit_code == 0 and current.name in listed.output and "offline" in listed.output


def test_the_encoder_item_tower_skips_a_version_without_an_exported_tower(tmp_path, store):
    raw = raw_catalogue()
    registry = ModelRegistry(tmp_path / "registry")
    version = Publisher(registry, store).publish(trained("b", raw), IDS, raw)
    tower = ItemTower(registry)
    assert tower.refresh() and tower.version.name == version.name
    newer = Publisher(registry, store).publish(trained("c", raw), IDS, raw)
    newer.item_tower_path.unlink()  # as a version written by an older release
    assert not tower.refresh() and tower.version is None  # no vectors written for it, no retry loop
    assert not tower.refresh()
