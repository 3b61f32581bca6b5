import torch
import torch.nn.functional as F

from trainer import history, losses
from trainer.towers import LEARN, TowerConfig, pad_sequences


def test_history_ages_take_the_most_recent_occurrence():
    seq = torch.tensor([[0, 1, 0, 2, 5], [3, 5, 5, 5, 5]])  # n_items 5, pad id 5
    anchors = torch.tensor([[0, 0], [0, 2], [0, 3], [1, 0]])
    ages = history.history_ages(seq, anchors, 5)
    N = history.NOT_SEEN
    assert ages.tolist() == [
        [0, N, N, N, N],
        [0, 1, N, N, N],  # item 0 at positions 0 and 2: age of the later one
        [1, 2, 0, N, N],
        [N, N, N, 0, N],  # padding never counts
    ]


def test_age_bias_only_on_history_items():
    ages = torch.tensor([[0, -1, 3, 12]])
    bias = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    assert history.age_bias_logits(ages, bias).tolist() == [[1.0, 0.0, 4.0, 5.0]]  # ages >= 5 share the last


def test_recency_weighted_history_is_the_zero_training_user_vector():
    torch.manual_seed(0)
    content = torch.cat([F.normalize(torch.randn(6, 4), dim=-1), torch.zeros(1, 4)])  # pad id 6
    seq = torch.tensor([[1, 2, 3, 6], [4, 6, 6, 6]])
    anchors = torch.tensor([[0, 2], [0, 1], [1, 0]])
    got = history.recency_weighted_history(content, seq, anchors, torch.tensor(0.7))
    want = torch.stack([0.49 * content[1] + 0.7 * content[2] + content[3], 0.7 * content[1] + content[2], content[4]])
    assert torch.allclose(got, F.normalize(want, dim=-1), atol=1e-6)


def make(**kw):
    torch.manual_seed(0)
    kw = {"history_age_bias": False, "history_knn_blend": False, **kw}  # the plain towers unless asked
    cfg = TowerConfig(n_items=20, d_llm=12, d_model=8, n_heads=2, d_out=6, dropout=0.0, max_seq_len=10,
                      loss="full_softmax", **kw)  # fmt: skip
    return LEARN(cfg, F.normalize(torch.randn(20, 12), dim=-1))


def make_scorer(model):
    def scores(hs):
        s, n = pad_sequences(hs, model.pad_id, 10)
        return model.full_sort_predict({"item_seq": s, "item_seq_len": n})

    return scores


def test_history_terms_start_at_zero_and_are_learned_in_the_loss():
    plain = make(history_in_loss="negatives")
    m = make(history_in_loss="negatives", history_age_bias=True, history_knn=True)
    seq, lens = pad_sequences([[1, 2, 3, 4], [5, 6], [7, 8, 9]], m.pad_id, 10)
    batch = {"item_seq": seq, "item_seq_len": lens, "test_item": torch.tensor([0, 1, 2])}
    # zero at initialisation: the same scores as the plain towers
    assert torch.allclose(m.eval().full_sort_predict(batch), plain.eval().full_sort_predict(batch), atol=1e-6)
    m.train()
    m.calculate_loss(batch).backward()
    assert m.history.age_bias.grad.abs().sum() > 0 and m.history.knn_weight.grad.abs() > 0


def test_learned_age_bias_moves_history_items_in_full_sort_and_predict():
    m = make(history_in_loss="negatives", history_age_bias=True).eval()
    seq, lens = pad_sequences([[1, 2, 3], [4, 5]], m.pad_id, 10)
    batch = {"item_seq": seq, "item_seq_len": lens, "test_item": torch.tensor([3, 0])}
    before = m.full_sort_predict(batch)
    with torch.no_grad():
        m.history.age_bias[0] = -100.0  # the most recent item pushed down
    after = m.full_sort_predict(batch)
    changed = (before - after).abs() > 1e-6
    assert changed.nonzero().tolist() == [[0, 3], [1, 5]]  # only each user's last item
    assert torch.allclose(after[0, 3], before[0, 3] - 100.0 * m.cfg.temperature)
    assert torch.allclose(m.predict(batch), after.gather(1, batch["test_item"].view(-1, 1)).squeeze(1), atol=1e-5)


def test_negatives_keep_history_in_the_softmax():
    # masked: the history item is not in the denominator; negatives: it is (the loss is larger)
    user = F.normalize(torch.tensor([[1.0, 0.0]]), dim=-1)
    items = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1]]), dim=-1)
    target = torch.tensor([1])
    exclude = torch.tensor([[True, False, False]])
    masked = losses.full_softmax(user, items, target, 0.5, exclude)
    kept = losses.full_softmax(user, items, target, 0.5, None)
    biased = losses.full_softmax(user, items, target, 0.5, None, torch.tensor([[-1e4, 0.0, 0.0]]))
    assert kept > masked and torch.allclose(biased, masked)


def test_knn_blend_is_off_in_training_and_chosen_on_validation():
    plain = make(history_in_loss="negatives", history_age_bias=True)
    m = make(history_in_loss="negatives", history_age_bias=True, history_knn_blend=True)
    seq, lens = pad_sequences([[1, 2, 3, 4], [5, 6], [7, 8, 9]], m.pad_id, 10)
    batch = {"item_seq": seq, "item_seq_len": lens}
    assert not m.history.knn_weight.requires_grad
    assert torch.allclose(m.calculate_loss(batch), plain.calculate_loss(batch))  # training as without it
    m.eval()

    # validation targets that the content kNN ranks first: a large weight should win
    zt = history.recency_weighted_history(m.content, seq, history.last_positions(lens), torch.tensor(0.7))
    knn = zt @ m.content[:20].T
    knn[torch.arange(3).view(-1, 1), seq.clamp_max(19)] = -9  # not a history item
    examples = [(h, int(knn[i].argmax())) for i, h in enumerate([[1, 2, 3, 4], [5, 6], [7, 8, 9]])]
    out = history.choose_knn_blend(m, make_scorer, examples)
    assert [r["weight"] for r in out["grid"]] == list(history.KNN_GRID)
    best = max(out["grid"], key=lambda r: r["valid_history_excluded_ndcg@10"] + r["valid_recbole_ndcg@10"])
    assert out["weight"] == best["weight"] > 0
    assert torch.isclose(m.history.knn_weight, torch.tensor(out["weight"] / m.cfg.temperature))


def test_masked_history_gets_a_validation_chosen_penalty_not_a_learned_bias():
    m = make(history_age_bias=True, history_knn_blend=True)  # history masked in the loss (default)
    assert not m.history.age_bias.requires_grad and not m.history.knn_weight.requires_grad
    m.eval()

    # the user tower's favourite items are put in each history: under RecBole's convention they sit above
    # the target, so a penalty on history items must win
    hs = [[1, 2, 3], [4, 5], [6, 7, 8]]
    fav = make_scorer(m)(hs).argsort(1, descending=True)
    examples = [(h + [int(fav[i, 0])], int(fav[i, 1])) for i, h in enumerate(hs)]
    out = history.choose_knn_blend(m, make_scorer, examples)
    assert len(out["grid"]) == len(history.KNN_GRID) * len(history.PENALTY_GRID)
    assert out["penalty"] < 0
    assert torch.allclose(m.history.age_bias, torch.full((10,), out["penalty"] / m.cfg.temperature))
