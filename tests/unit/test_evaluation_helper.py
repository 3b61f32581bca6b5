import torch

from trainer.evaluation import PROTOCOLS, evaluate_both_protocols, evaluate_examples


def test_evaluate_examples_batches_and_masks_history():
    # 4 items; the scorer likes item 0 best, then 1, 2, 3. History items are removed from the ranking.
    scorer = lambda hs: torch.tensor([[4.0, 3.0, 2.0, 1.0]]).expand(len(hs), -1)
    ex = [([0], 1), ([], 1), ([0, 1], 2), ([2], 2)]
    m = evaluate_examples(scorer, ex, batch_size=3)
    # ranks: 0 (0 masked), 1, 0 (0,1 masked), 2 (target re-occurs in history: kept)
    assert abs(m["mrr"] - (1 + 1 / 2 + 1 + 1 / 3) / 4) < 1e-9
    assert m["recall@10"] == 1.0


def test_both_protocols_from_one_score_matrix():
    # the scorer is called once per batch and its scores are ranked under both conventions
    calls = []

    def scorer(hs):
        calls.append(len(hs))
        return torch.tensor([[4.0, 3.0, 2.0, 1.0]]).expand(len(hs), -1)

    ex = [([0], 1), ([0, 1], 2), ([2], 2)]
    both = evaluate_both_protocols(scorer, ex, batch_size=2)
    assert calls == [2, 1]
    assert set(both) == set(PROTOCOLS) == {"history_excluded", "recbole"}
    assert both["history_excluded"] == evaluate_examples(scorer, ex, history_excluded=True)
    assert both["recbole"] == evaluate_examples(scorer, ex, history_excluded=False)
    # RecBole's convention keeps history items in the ranking: ranks 1, 2, 2 instead of 0, 0, 2
    assert abs(both["recbole"]["mrr"] - (1 / 2 + 1 / 3 + 1 / 3) / 3) < 1e-9
    assert abs(both["history_excluded"]["mrr"] - (1 + 1 + 1 / 3) / 3) < 1e-9
