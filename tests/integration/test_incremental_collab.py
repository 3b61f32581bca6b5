"""Issue 17 in the stream: the incremental trainer fits the EASE term (trainer/collab.py) per window on
the sequences it holds, chooses its weight on the held-out events, and publishes it with the version,
on a real state store and a real milvus-lite file. The items' content is random, so only co-occurrence
predicts the next item: the term must be what ranks it."""

import random

import numpy as np
import pytest
import torch

from config import load_settings
from store.registry import ModelRegistry
from store.state import Entry, PartitionState
from store.vectors import CONTENT, VectorStore
from trainer.incremental import IncrementalTrainer, Window
from trainer.publish import load_version

pytestmark = pytest.mark.integration

T0 = 1_700_000_000.0
N_ITEMS, D_RAW, GROUPS = 60, 16, 12  # 12 groups of 5 items; a user browses one group


def group_of(item: int) -> int:
    return item % GROUPS  # content is random: the group is no neighbourhood in content space


def write_events(settings, n_users: int, start: float, rng: random.Random) -> None:
    part = PartitionState(settings.state_path / f"{settings.topics.interactions}-p0")
    rows = []
    for u in range(n_users):
        members = [i for i in range(N_ITEMS) if group_of(i) == u % GROUPS]
        session = start + 60 * (u % 3)  # each user browses within one of the 3 windows
        for k, item in enumerate(rng.sample(members, 5)):
            t = session + 1 + 11 * k + rng.random()
            rows.append((Entry(t, f"item{item}", "view", f"{u}-{k}"), f"user{u}"))
    rows.append((Entry(start + 185, "item0", "view", "sentinel"), "sentinel"))  # closes the 3rd window
    rows.sort(key=lambda r: r[0].event_time)
    part.apply([(i, e, u) for i, (e, u) in enumerate(rows)], 50, 3600, settings.state.slot_s)
    part.close()


def test_each_window_fits_the_ease_term_and_publishes_it(tmp_path):
    s = load_settings(
        data_dir=tmp_path / "data",
        model={"d_model": 16, "n_heads": 2, "n_layers": 1, "d_out": 16, "batch_size": 32, "seed": 1},
        trainer={"window_s": 60, "steps_per_window": 5, "max_train_s": 5.0, "promote_margin": 1.0,
                 "collab_rank": 16, "collab_lambda": 5.0},  # fmt: skip
        state={"slot_s": 10},
    )
    raw = np.random.default_rng(0).normal(size=(N_ITEMS, D_RAW)).astype(np.float32)
    with VectorStore(s.vector_uri).open() as store:
        store.ensure_collection(CONTENT, D_RAW)
        store.upsert(CONTENT, [f"item{i}" for i in range(N_ITEMS)], raw)
    write_events(s, 120, T0, random.Random(0))  # windows close at +60, +120, +180
    with VectorStore(s.vector_uri).open() as store:
        trainer = IncrementalTrainer(s, store)
        results = list(trainer.run(poll_s=0.1, idle_exit_s=1.0))
        assert [r.window for r in results] == [0, 1, 2]
        for r in results:
            chosen = r.train["collab_blend"]
            assert chosen["rank"] == 16 and chosen["lambda"] == 5.0 and chosen["collab_weight"] > 0
            # the fit is bounded, and its time comes out of the next window's training budget
            assert r.train["collab_s"] < 30 and r.train_s < 5.0 + 60
        # EASE sees every user so far, not only the window's: more users each window
        assert results[0].train["collab_users"] < results[2].train["collab_users"] == 120
        current = ModelRegistry(s.registry_path).current()
        assert current.name == results[-1].version
        assert current.config["collab_item_ids"] == trainer.catalogue_ids[: N_ITEMS]
        model, _ = load_version(current)
        assert model.collab_active() and model.cfg.collab_rank == 16  # the trainer's rank, not offline's
        model.set_catalogue(torch.from_numpy(raw))
        assert model.collab_active()  # its ids index this catalogue
        idle = Window(T0 + 180, T0 + 240, {}, [], {}, [])
        assert trainer.refit_collab(idle)
        trainer.ts.collab_max_cells = 120 * N_ITEMS - 1  # 120 users x 60 items: too large now
        assert not trainer.refit_collab(idle)
        again = IncrementalTrainer(s, store)  # a restarted trainer resumes with the same EASE data
        again.recover()
        assert again.histories == trainer.histories and len(again.histories) == 120
        again.reader.close()

    # fresh users of each group: the term ranks their next item far better than the towers alone
    rng, index = random.Random(5), {item: i for i, item in enumerate(trainer.catalogue_ids)}
    examples = []
    for g in range(GROUPS):
        members = [index[f"item{i}"] for i in range(N_ITEMS) if group_of(i) == g]
        for _ in range(3):
            picked = rng.sample(members, 3)
            examples.append((picked[:2], picked[2]))
    trainer.learner.model.load_state_dict(model.state_dict())
    with_term = trainer.learner.evaluate(examples)["ndcg@10"]
    with torch.no_grad():
        trainer.learner.model.collab.weight.fill_(0.0)
    without = trainer.learner.evaluate(examples)["ndcg@10"]
    print("ndcg@10 with the term", with_term, "without", without)
    assert with_term > without + 0.2, (with_term, without)
