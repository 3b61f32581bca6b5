"""The evaluation protocol, stated once, and its metrics as small pure functions.

Protocol (LEARN / UniSRec full ranking, used for every model in this project, peers included):
- leave-one-out: each user's last item is the test target, the one before it the validation target;
- the target is ranked against ALL items of the catalogue (no sampled negatives);
- items in the user's history are removed from the ranking, except the target itself (50 of the 8,442
  Scientific test targets re-occur in their own history; removing them would make them unrankable);
- ties count against the target (rank = items scored strictly higher + other items scored equal), so a
  model that scores everything alike ranks last, never first;
- metrics: NDCG@10, Recall@10 (= HR@10 with one target), NDCG@50, Recall@50 and MRR (untruncated).

`history_excluded=False` gives RecBole's own convention (only the padding id is masked), so a peer
can be reported both ways from one score matrix. `evaluate_both_protocols` does exactly that: each
batch's scores are computed once and ranked under both conventions (`PROTOCOLS`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch

KS = (10, 50)
METRIC_NAMES = tuple(f"{m}@{k}" for k in KS for m in ("ndcg", "recall")) + ("mrr",)
# protocol name -> history_excluded; the names are the keys results files use for them
PROTOCOLS = {"history_excluded": True, "recbole": False}


def mask_history(
    scores: torch.Tensor, histories: Sequence[Sequence[int]], targets: torch.Tensor
) -> torch.Tensor:
    """Set the score of every history item to -inf, keeping each row's target. (B, N) -> (B, N)."""
    scores = scores.clone()
    rows = [r for r, h in enumerate(histories) for _ in h]
    cols = [i for h in histories for i in h]
    if rows:
        kept = scores[torch.arange(len(targets)), targets].clone()
        scores[rows, cols] = float("-inf")
        scores[torch.arange(len(targets)), targets] = kept
    return scores


def target_ranks(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """0-based rank of each row's target among all columns, ties counted against it. (B, N) -> (B,)."""
    target_scores = scores.gather(1, targets.view(-1, 1))  # (B, 1)
    higher = (scores > target_scores).sum(1)
    ties = (scores == target_scores).sum(1) - 1  # the target equals itself
    return higher + ties


def metrics_from_ranks(ranks: torch.Tensor, ks: Iterable[int] = KS) -> dict[str, float]:
    """Mean NDCG@k, Recall@k and MRR over 0-based ranks."""
    ranks = ranks.double()
    out: dict[str, float] = {}
    for k in ks:
        hit = ranks < k
        out[f"ndcg@{k}"] = float((hit / torch.log2(ranks + 2)).mean())
        out[f"recall@{k}"] = float(hit.double().mean())
    out["mrr"] = float((1.0 / (ranks + 1)).mean())
    return out


def ranks_for_batch(
    scores: torch.Tensor,
    targets: torch.Tensor,
    histories: Sequence[Sequence[int]],
    history_excluded: bool = True,
    padding_id: int | None = None,
) -> torch.Tensor:
    """Apply the protocol to one batch of full score rows and return the targets' ranks."""
    scores = scores.float()
    if padding_id is not None:
        scores = scores.clone()
        scores[:, padding_id] = float("-inf")
    if history_excluded:
        scores = mask_history(scores, histories, targets)
    return target_ranks(scores, targets)


def split_ranks(
    full_scores: Callable[[list[list[int]]], torch.Tensor],
    examples: Sequence[tuple[Sequence[int], int]],
    conventions: dict[str, bool],
    batch_size: int = 1024,
) -> dict[str, torch.Tensor]:
    """The targets' ranks over a split under each named convention (name -> history_excluded), the
    scorer called once per batch, so every convention ranks the same score matrix."""
    ranks: dict[str, list[torch.Tensor]] = {name: [] for name in conventions}
    with torch.no_grad():
        for i in range(0, len(examples), batch_size):
            chunk = examples[i : i + batch_size]
            histories = [list(h) for h, _ in chunk]
            targets = torch.tensor([t for _, t in chunk], dtype=torch.long)
            scores = full_scores(histories)
            for name, excluded in conventions.items():
                ranks[name].append(ranks_for_batch(scores, targets, histories, excluded))
    return {name: torch.cat(r) for name, r in ranks.items()}


def evaluate_examples(
    full_scores: Callable[[list[list[int]]], torch.Tensor],
    examples: Sequence[tuple[Sequence[int], int]],
    batch_size: int = 1024,
    history_excluded: bool = True,
) -> dict[str, float]:
    """Run the protocol over a split: `full_scores(histories) -> (B, N)` is any model's scorer (a
    LEARN model, a baseline, exported peer scores); `examples` are (history, target) pairs."""
    ranks = split_ranks(full_scores, examples, {"split": history_excluded}, batch_size)["split"]
    return metrics_from_ranks(ranks)


def evaluate_both_protocols(
    full_scores: Callable[[list[list[int]]], torch.Tensor],
    examples: Sequence[tuple[Sequence[int], int]],
    batch_size: int = 1024,
) -> dict[str, dict[str, float]]:
    """`evaluate_examples` under every convention of `PROTOCOLS` from ONE score matrix (the scorer
    is called once per batch): {"history_excluded": metrics, "recbole": metrics}."""
    ranks = split_ranks(full_scores, examples, PROTOCOLS, batch_size)
    return {name: metrics_from_ranks(r) for name, r in ranks.items()}
