import tempfile

import torch
import torch.nn.functional as F

from trainer import collab
from trainer.checkpoint import load_checkpoint, save_checkpoint
from trainer.towers import LEARN, TowerConfig, pad_sequences


def test_ease_is_the_constrained_ridge_solution():
    torch.manual_seed(0)
    x = (torch.rand(40, 9) < 0.3).double()
    b = collab.fit_ease(x, 5.0)
    assert torch.all(b.diagonal() == 0)
    # stationarity of ||X - XB||^2 + lambda ||B||^2 with diag(B) = 0: (G + lambda I) B - G is diagonal
    g = x.T @ x
    resid = (g + 5.0 * torch.eye(9, dtype=torch.float64)) @ b - g
    assert torch.allclose(resid - torch.diag(resid.diagonal()), torch.zeros(9, 9, dtype=torch.float64), atol=1e-9)
    # and no other zero-diagonal B does better
    def loss(m):
        return ((x - x @ m) ** 2).sum() + 5.0 * (m**2).sum()

    other = b + 0.01 * torch.randn(9, 9, dtype=torch.float64)
    other.diagonal().zero_()
    assert loss(b) < loss(other)


def test_ease_through_the_users_system_equals_the_items_one():
    torch.manual_seed(0)
    x = (torch.rand(30, 9) < 0.3).double()
    few = x[:5]  # 5 users < 9 items: the Woodbury path
    assert torch.allclose(collab.fit_ease(few, 2.0), direct_ease(few, 2.0), atol=1e-9)
    assert torch.allclose(collab.fit_ease(x, 2.0), direct_ease(x, 2.0), atol=1e-9)


def direct_ease(x, lam):
    p = torch.linalg.inv(x.T @ x + lam * torch.eye(x.shape[1], dtype=torch.float64))
    b = torch.eye(x.shape[1], dtype=torch.float64) - p / p.diagonal().view(1, -1)
    b.diagonal().zero_()
    return b


def test_low_rank_factors_are_the_truncated_svd():
    torch.manual_seed(0)
    b = torch.randn(60, 60, dtype=torch.float64)
    s = torch.linalg.svdvals(b)
    p, q = collab.low_rank(b, 60)
    assert torch.allclose((p @ q.T).double(), b, atol=1e-4)  # full rank: exact
    p, q = collab.low_rank(b, 8)  # randomised: near the Eckart-Young optimum
    err = torch.linalg.norm(b - (p @ q.T).double())
    assert p.shape == q.shape == (60, 8) and err <= 1.05 * s[8:].square().sum().sqrt()


def test_user_sums_count_each_distinct_history_item_once():
    p = torch.arange(12.0).view(6, 2)
    hs = [[1, 2, 1], [5], []]
    want = torch.stack([p[1] + p[2], p[5], torch.zeros(2)])
    assert torch.allclose(collab.user_sums(p, hs), want)
    seq, lens = pad_sequences(hs, 6, 10)  # padding id 6 (past the fitted catalogue) never counts
    assert torch.allclose(collab.sequence_user_sums(p, seq, lens), want)


def make(rank=4):
    torch.manual_seed(0)
    cfg = TowerConfig(n_items=20, d_llm=12, d_model=8, n_heads=2, d_out=6, dropout=0.0, max_seq_len=10,
                      collab_rank=rank)  # fmt: skip
    return LEARN(cfg, F.normalize(torch.randn(20, 12), dim=-1)).eval()


def make_scorer(model):
    def scores(hs):
        s, n = pad_sequences(hs, model.pad_id, 10)
        return model.full_sort_predict({"item_seq": s, "item_seq_len": n})

    return scores


HISTORIES = [[1, 2, 3], [4, 5], [6, 7, 8, 1]]


def test_the_term_is_zero_until_set_and_then_served_as_extra_dimensions():
    m = make()
    seq, lens = pad_sequences(HISTORIES, m.pad_id, 10)
    batch = {"item_seq": seq, "item_seq_len": lens}
    before = m.full_sort_predict(batch)
    assert not m.collab_active() and m.served_dim(ids=True) == m.served_dim()
    torch.manual_seed(1)
    p, q = torch.randn(20, 3), torch.randn(20, 3)  # rank 3 of the 4 slots
    m.collab.set(p, q, 2.0, m.content[:20])
    after = m.full_sort_predict(batch)
    assert torch.allclose(after - before, 2.0 * collab.user_sums(p, HISTORIES) @ q.T, atol=1e-5)
    batch["test_item"] = torch.tensor([0, 9, 19])
    assert torch.allclose(m.predict(batch), after[torch.arange(3), batch["test_item"]], atol=1e-5)
    # served: [user, c sum_h P[h]] . [item, Q[i]] is the model's score (no history item is a candidate)
    raw = m.content[:20]  # no whitening fitted: the feature step is L2 only, and these are unit rows
    items = m.encode_items(raw, ids=torch.arange(20))
    users = m.encode_users(raw[seq.clamp_max(19)], lens, ids=seq)
    assert items.shape[1] == users.shape[1] == m.served_dim(ids=True) == 6 + 4
    assert torch.allclose(users @ items.T, after, atol=1e-5)
    # without ids: the content model's vectors, as before the term
    assert m.encode_items(raw).shape[1] == m.served_dim() == 6
    assert torch.allclose(m.encode_users(raw[seq.clamp_max(19)], lens) @ m.encode_items(raw).T, before, atol=1e-5)
    # an item unknown to the fit (a catalogue grown since): a zero row, content alone
    assert torch.all(m.collab.items(torch.tensor([20, 25])) == 0)


def test_a_catalogue_in_another_order_switches_the_term_off_and_a_grown_one_keeps_it():
    m = make()
    m.collab.set(torch.ones(20, 4), torch.ones(20, 4), 1.0, m.content[:20])
    raw = m.content[:20].clone()
    m.set_catalogue(torch.cat([raw, F.normalize(torch.randn(3, 12), dim=-1)]))  # 3 items appended
    assert m.collab_active()
    m.set_catalogue(raw.flip(0))  # the same items, other ids
    assert not m.collab_active()


def test_the_factors_travel_in_the_checkpoint_whatever_the_catalogue_size():
    m = make()
    m.collab.set(torch.randn(20, 4), torch.randn(20, 4), 3.0, m.content[:20])
    with tempfile.TemporaryDirectory() as d:
        save_checkpoint(m, d)
        m.cfg.n_items = 25  # as a model published over a larger live catalogue records it
        save_checkpoint(m, d)
        back, _ = load_checkpoint(d)
    assert back.collab_active() and torch.equal(back.collab.item_factor, m.collab.item_factor)
    assert torch.equal(back.collab.signature, m.collab.signature)


def test_choose_collab_blend_picks_a_positive_weight_when_the_term_predicts_the_targets():
    m = make(rank=20)
    m.cfg.history_age_bias = m.cfg.history_knn_blend = True
    # training sequences where item i is always followed by item i + 10: EASE learns i -> i + 10
    train = [[i, i + 10] for i in range(10)] * 5
    examples = [([i], i + 10) for i in range(10)]
    out = collab.choose_collab_blend(m, make_scorer, train, examples, lambdas=(1.0,), weights=(0.0, 10.0),
                                     knn_grid=(0.0,), penalty_grid=(0.0,))  # fmt: skip
    assert out["collab_weight"] == 10.0 and out["valid_history_excluded_ndcg@10"] > 0.99
    off = [r for r in out["grid"] if r["collab_weight"] == 0.0][0]
    assert off["valid_history_excluded_ndcg@10"] < 0.5  # the untrained towers alone do not know it
    assert m.collab_active() and float(m.collab.weight) == 10.0
    assert make_scorer(m)([[3]])[0].argmax() == 13
