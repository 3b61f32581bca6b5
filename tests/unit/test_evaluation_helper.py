import torch

from trainer.evaluation import evaluate_examples


def test_evaluate_examples_batches_and_masks_history():
    # 4 items; the scorer likes item 0 best, then 1, 2, 3. History items are removed from the ranking.
    scorer = lambda hs: torch.tensor([[4.0, 3.0, 2.0, 1.0]]).expand(len(hs), -1)
    ex = [([0], 1), ([], 1), ([0, 1], 2), ([2], 2)]
    m = evaluate_examples(scorer, ex, batch_size=3)
    # ranks: 0 (0 masked), 1, 0 (0,1 masked), 2 (target re-occurs in history: kept)
    assert abs(m["mrr"] - (1 + 1 / 2 + 1 + 1 / 3) / 4) < 1e-9
    assert m["recall@10"] == 1.0
