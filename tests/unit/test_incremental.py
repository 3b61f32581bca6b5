"""The incremental trainer's pure helpers, on lists of events (no broker, no store)."""

import numpy as np
import torch

from config.settings import ModelSettings
from store.state import Entry
from trainer.incremental import (
    OnlineLearner,
    add_counts,
    ease_cells,
    gate,
    split_holdout,
    training_sequence,
    wait_for_window,
    window_examples,
    window_items,
)
from trainer.towers import Features, TowerConfig

INDEX = {"a": 0, "b": 1, "c": 2, "d": 3}


def seq(*pairs) -> list[Entry]:
    return [Entry(t, item, "purchase", f"e{t}") for t, item in pairs]


def test_window_examples_test_each_event_of_the_window_on_the_history_before_it():
    seqs = {"u1": seq((1, "a"), (5, "b"), (12, "c"), (15, "zzz"), (16, "d")), "u2": seq((11, "d"))}
    got = window_examples(seqs, 10, 20, INDEX, max_len=2)
    # u1's c (history a, b), d (history b, c: max_len 2, the unknown item skipped); u2's d has no history
    assert got == [([0, 1], 2), ([1, 2], 3)]


def test_training_sequences_never_see_the_future_and_holdout_keeps_two_for_training():
    s = seq((1, "a"), (5, "b"), (9, "zzz"), (12, "c"), (20, "d"))
    assert training_sequence(s, 13, INDEX, max_len=10) == [0, 1, 2]
    assert training_sequence(s, 13, INDEX, max_len=2) == [1, 2]
    train, held = split_holdout([[0, 1, 2], [0, 1]])
    assert train == [[0, 1], [0, 1]] and held == [([0, 1], 2)]


def test_gate_promotes_unless_the_candidate_regresses_by_more_than_the_margin():
    assert gate(None, {"ndcg@10": 0.0}, 0.02)  # no current version
    assert gate({}, {"ndcg@10": 0.0}, 0.02)  # nothing held out
    assert gate({"ndcg@10": 0.30}, {"ndcg@10": 0.285}, 0.02)
    assert not gate({"ndcg@10": 0.30}, {"ndcg@10": 0.27}, 0.02)


def test_window_item_counts():
    seqs = {"u1": seq((1, "a"), (12, "b"), (13, "b")), "u2": seq((15, "a"), (25, "c"))}
    counts = window_items(seqs, 10, 20)
    assert counts == {"b": 2, "a": 1}
    total = {"a": 4}
    add_counts(total, counts)
    assert total == {"a": 5, "b": 2}


def test_wait_for_window_polls_until_a_window_closes_or_gives_up():
    answers = iter([None, None, (0.0, 60.0)])
    assert wait_for_window(lambda: next(answers), poll_s=0.01, idle_exit_s=30) == (0.0, 60.0)
    assert wait_for_window(lambda: None, poll_s=0.01, idle_exit_s=0.05) is None


def test_online_learner_trains_in_bounded_steps_and_restores_a_snapshot():
    rng = np.random.default_rng(0)
    raw = rng.normal(size=(30, 8)).astype(np.float32)
    cfg = TowerConfig.from_settings(ModelSettings(d_model=8, n_heads=2, d_out=8, n_layers=1), 30, 8)
    learner = OnlineLearner(cfg, Features.fit(raw), lr=1e-2, weight_decay=0.0, seed=0)
    learner.set_catalogue(raw)
    seqs = [[(u + k) % 30 for k in range(5)] for u in range(20)]
    before = learner.snapshot()
    out = learner.train(seqs + [[1]], steps=3, batch_size=8)  # a one-item sequence has nothing to learn
    assert out["steps"] == 3 and out["samples"] == 20 and np.isfinite(out["loss"])  # batches of 8, 8, 4
    assert learner.train(seqs, steps=0, batch_size=8)["steps"] == 0
    moved = learner.model.state_dict()["pcm.in_proj.weight"].clone()
    learner.restore(before)
    assert not torch.equal(moved, learner.model.state_dict()["pcm.in_proj.weight"])
    assert torch.equal(before[0]["pcm.in_proj.weight"], learner.model.state_dict()["pcm.in_proj.weight"])
    assert set(learner.evaluate([([0, 1], 2), ([3], 4)])) >= {"ndcg@10", "recall@10"}


def test_online_learner_trains_without_the_blend_then_chooses_it_as_offline_does():
    """Issue 17 in the stream: the kNN weight and history penalty are cleared before a window's
    training and chosen after it on held-out events (the offline choice: trainer/history.py grids),
    so the published (and served) model carries them."""
    from trainer.history import KNN_GRID, PENALTY_GRID

    rng = np.random.default_rng(0)
    raw = rng.normal(size=(30, 8)).astype(np.float32)
    ms = ModelSettings(d_model=8, n_heads=2, d_out=8, n_layers=1)
    assert ms.history_knn_blend and ms.history_age_bias and ms.history_in_loss == "masked"  # the defaults
    cfg = TowerConfig.from_settings(ms, 30, 8)
    learner = OnlineLearner(cfg, Features.fit(raw), lr=1e-2, weight_decay=0.0, seed=0)
    learner.set_catalogue(raw)
    h, tau = learner.model.history, cfg.temperature
    with torch.no_grad():  # a blend left by the previous window
        h.knn_weight.fill_(0.5 / tau)
        h.age_bias.fill_(-0.2 / tau)
    learner.clear_blend()
    assert float(h.knn_weight) == 0.0 and not h.age_bias.any()
    # items follow their neighbours in content: the kNN term helps, so a non-zero weight wins
    near = np.argsort(-(raw @ raw.T), axis=1)[:, 1]
    held = [([u, int(near[u])], int(near[near[u]])) for u in range(30)]
    chosen = learner.choose_blend(held, at_most=20)
    assert chosen["weight"] in KNN_GRID and chosen["penalty"] in PENALTY_GRID and chosen["weight"] > 0
    assert abs(float(h.knn_weight) - chosen["weight"] / tau) < 1e-4 and learner.model.knn_scale() is not None
    assert learner.choose_blend([]) is None
    off = TowerConfig.from_settings(ms.model_copy(update={"history_knn_blend": False}), 30, 8)
    assert OnlineLearner(off, Features.fit(raw), 1e-2, 0.0, 0).choose_blend(held) is None


def test_online_learner_fits_the_ease_term_at_the_trainers_rank_and_clears_it_before_a_refit():
    """Issue 17 in the stream: `choose_collab` fits EASE on the training sequences at a rank below the
    model's served one (zero-padded), chooses a non-zero weight where co-occurrence predicts the
    target, and `clear_blend(collab=True)` switches it off before the next window's refit."""
    rng = np.random.default_rng(0)
    raw = rng.normal(size=(30, 8)).astype(np.float32)  # random content: only co-occurrence predicts
    cfg = TowerConfig.from_settings(ModelSettings(d_model=8, n_heads=2, d_out=8, n_layers=1, collab_rank=8), 30, 8)
    learner = OnlineLearner(cfg, Features.fit(raw), lr=1e-2, weight_decay=0.0, seed=0)
    learner.set_catalogue(raw)
    groups = [[g + 6 * k for k in range(5)] for g in range(6)]  # 6 groups of 5 items
    fit = [[int(i) for i in rng.permutation(groups[u % 6])[:4]] for u in range(60)]
    held = [([groups[g][0], groups[g][1]], groups[g][2]) for g in range(6)]
    assert learner.choose_collab(fit, [], 5.0, 4) is None and learner.choose_collab([], held, 5.0, 4) is None
    chosen = learner.choose_collab(fit, held, 5.0, 4)
    assert chosen["rank"] == 4 and chosen["lambda"] == 5.0 and chosen["collab_weight"] > 0
    collab = learner.model.collab
    assert cfg.collab_rank == 8 and collab.item_factor.shape == (30, 8) and not collab.item_factor[:, 4:].any()
    assert learner.model.collab_active()
    learner.clear_blend(collab=True)
    assert not learner.model.collab_active()


def test_ease_cells_is_the_largest_dense_matrix_of_a_fit():
    assert ease_cells(8442, 4385) == 8442 * 4385  # more users than items: the interaction matrix
    assert ease_cells(100, 4385) == 4385 * 4385  # fewer: the item-item weights
