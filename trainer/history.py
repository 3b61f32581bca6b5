"""Learned score terms for what a user has already seen (issue 17). Pure tensor functions plus one
small module; trainer/towers.py adds its output to the twin towers' logits, in training and scoring.

RecBole's full-sort evaluation (the convention of every published result on the UniSRec files) keeps
the user's history items in the ranking. A content model trained with history masked out of its
softmax never learns where those items belong, and, their text being the most like the history, it
ranks them near the top. These terms give it something to learn instead, trained in the same loss:

- `age_bias`: one learned logit per age (0 = the most recent item of the history, ages past the
  sequence cap share the last slot) added to every item of the user's own history, at its most
  recent occurrence. With history items kept as negatives in the softmax, it learns how likely a
  re-occurrence is (about 0.6% of the training targets here, mostly the last item) instead of
  letting content similarity decide.
- `knn`: a learned weight times the zero-training baseline's cosine between the candidate's
  content features and the recency-weighted mean (decay 0.7, fixed like the baseline's: the
  similarity then needs no gradient, which keeps it cheap) of the history's features: a content-kNN
  residual beside the towers' score. Either learned in the loss (`history_knn`) or, cheaper (the
  similarity costs as much as the rest of a training step on this CPU), held at zero in training and
  set afterwards to the weight of a small grid with the best validation NDCG@10, the mean over both
  conventions (`history_knn_blend`, `choose_knn_blend`): a validation-chosen blend with the
  zero-training baseline, stored in the model, so checkpoints and exported towers carry it.

With history masked out of the softmax the age bias cannot be learned (the only history item left in
the loss is a re-occurring target, so it would only grow): there it is held at zero in training and,
with `history_knn_blend`, one penalty for every history item is chosen on the same validation grid. Over the frozen features
  only, so a cold item gets it like any other; it is a dot product with the features, so it can be
  served as extra vector dimensions ([user, w * kNN user] . [item, item features]).

Both are zero at initialisation (the model starts as the plain towers). All logits here are in the
softmax's units (cosine / temperature).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from trainer.evaluation import PROTOCOLS, metrics_from_ranks, ranks_for_batch

NOT_SEEN = -1


def history_ages(seq: torch.Tensor, anchors: torch.Tensor, n_items: int) -> torch.Tensor:
    """Age of each item's most recent occurrence in each anchor's history, NOT_SEEN elsewhere.
    seq (B, T) right-padded ids (the padding id is n_items); anchors (M, 2) rows of (b, t), the
    history being seq[b, : t + 1]. -> (M, n_items) long, age 0 = the item at position t."""
    B, T = seq.shape
    M = len(anchors)
    pos = torch.arange(T, device=seq.device)
    upto = pos.view(1, T) <= anchors[:, 1].view(M, 1)  # (M, T)
    ages = anchors[:, 1].view(M, 1) - pos.view(1, T)  # (M, T)
    items = seq[anchors[:, 0]]  # (M, T)
    big = T + 1
    out = torch.full((M, n_items + 1), big, dtype=torch.long, device=seq.device)
    out.scatter_reduce_(1, items, torch.where(upto, ages, torch.full_like(ages, big)), reduce="amin")
    out = out[:, :n_items]
    return torch.where(out == big, torch.full_like(out, NOT_SEEN), out)


def age_bias_logits(ages: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """(M, N) ages (NOT_SEEN where not in the history), (L,) bias per age -> (M, N) logits."""
    seen = ages >= 0
    return torch.where(seen, bias[ages.clamp(0, len(bias) - 1)], bias.new_zeros(()))


def recency_weighted_history(
    content: torch.Tensor, seq: torch.Tensor, anchors: torch.Tensor, decay: torch.Tensor
) -> torch.Tensor:
    """The zero-training user vector of each anchor: sum over j <= t of decay^(t - j) content[seq[b, j]],
    L2-normalised. content (N + 1, d) (the padding row included), decay a scalar in (0, 1) -> (M, d)."""
    B, T = seq.shape
    pos = torch.arange(T, device=seq.device, dtype=content.dtype)
    age = pos.view(T, 1) - pos.view(1, T)  # (T, T): age of item j seen from position t
    weights = torch.where(age >= 0, decay ** age.clamp_min(0), torch.zeros_like(age))  # lower triangular
    summed = torch.einsum("tj,bjd->btd", weights, content[seq])  # (B, T, d)
    return F.normalize(summed[anchors[:, 0], anchors[:, 1]], dim=-1)


def recency_weighted_mean(x: torch.Tensor, lengths: torch.Tensor, decay: float) -> torch.Tensor:
    """The same zero-training user vector over right-padded features: x (B, T, d) (padding rows any
    value), lengths (B,) >= 1 -> (B, d), sum over real j of decay^(len - 1 - j) x[b, j], L2-normalised."""
    B, T, _ = x.shape
    pos = torch.arange(T, device=x.device).view(1, T)
    age = (lengths.view(B, 1) - 1 - pos).clamp_min(0).to(x.dtype)  # (B, T)
    w = torch.where(pos < lengths.view(B, 1), torch.full_like(age, decay) ** age, torch.zeros_like(age))
    return F.normalize((w.unsqueeze(-1) * x).sum(1), dim=-1)


def last_positions(lens: torch.Tensor) -> torch.Tensor:
    """(B,) sequence lengths -> (B, 2) anchors at each sequence's last real position."""
    return torch.stack([torch.arange(len(lens), device=lens.device), (lens - 1).clamp_min(0)], 1)


class HistoryScore(nn.Module):
    """The enabled terms of the module docstring; forward -> (M, N) logits to add to the towers'."""

    def __init__(self, max_seq_len: int, age_bias: bool, knn: bool, decay: float = 0.7,
                 learn_knn: bool = True, learn_age_bias: bool = True):  # fmt: skip
        super().__init__()
        self.age_bias = nn.Parameter(torch.zeros(max_seq_len), requires_grad=learn_age_bias) if age_bias else None
        self.knn_weight = nn.Parameter(torch.zeros(()), requires_grad=learn_knn) if knn else None
        self.decay = decay

    def forward(self, seq: torch.Tensor, anchors: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
        """seq (B, T), anchors (M, 2), content (N + 1, d) the features table (its last row the padding
        item, so the catalogue may change size between calls) -> (M, N)."""
        n_items = content.shape[0] - 1
        out = content.new_zeros(len(anchors), n_items)
        if self.age_bias is not None and (self.age_bias.requires_grad or bool(self.age_bias.any())):
            out = out + age_bias_logits(history_ages(seq, anchors, n_items), self.age_bias)
        if self.knn_weight is not None and (self.knn_weight.requires_grad or float(self.knn_weight) != 0.0):
            with torch.no_grad():  # fixed features, fixed decay: only the weight is learned
                user = recency_weighted_history(content, seq, anchors, torch.tensor(self.decay))
                sim = user @ F.normalize(content[:n_items], dim=-1).T  # (M, N)
            out = out + self.knn_weight * sim
        return out


KNN_GRID = tuple(round(0.1 * i, 1) for i in range(9))  # kNN weight, cosine units
PENALTY_GRID = (0.0, -0.05, -0.1, -0.2, -0.3, -0.5, -1.0)  # on every history item, cosine units


def full_matrix(scorer: Callable, histories: list[list[int]], batch_size: int = 1024) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([scorer(histories[i : i + batch_size]) for i in range(0, len(histories), batch_size)])


def score_parts(model, make_scorer: Callable, histories: list[list[int]], knn: bool, penalty: bool
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """The parts of a blend's validation scores, each computed once: the model's (B, N) scores with the
    kNN weight (with `knn`) and the history penalty (with `penalty`) at zero, the kNN cosine itself
    (zeros without `knn`), and the in-history mask. A grid point is then base + w * kNN + p * seen."""
    h, tau = model.history, model.cfg.temperature
    with torch.no_grad():
        if knn:
            h.knn_weight.fill_(0.0)
        if penalty:
            h.age_bias.fill_(0.0)
        base = full_matrix(make_scorer(model), histories)
        sim = torch.zeros_like(base)
        if knn:
            h.knn_weight.fill_(1.0 / tau)
            sim = full_matrix(make_scorer(model), histories) - base  # the kNN cosine itself
    seen = torch.zeros_like(base, dtype=torch.bool)
    rows_, cols_ = [r for r, x in enumerate(histories) for _ in x], [i for x in histories for i in x]
    seen[rows_, cols_] = True
    return base, sim, seen


def valid_ndcg10(scores: torch.Tensor, targets: torch.Tensor, histories: list[list[int]]) -> dict[str, float]:
    """Validation NDCG@10 of (B, N) scores in both conventions (trainer/evaluation.PROTOCOLS)."""
    return {f"valid_{name}_ndcg@10": metrics_from_ranks(ranks_for_batch(scores, targets, histories, excluded))["ndcg@10"]
            for name, excluded in PROTOCOLS.items()}  # fmt: skip


def choose_knn_blend(model, make_scorer: Callable, examples, knn_grid=KNN_GRID, penalty_grid=PENALTY_GRID) -> dict:
    """After training: set `model`'s kNN weight, and, where its age bias is not learned (history masked
    in the loss), one penalty on every history item, to the grid point with the best validation
    NDCG@10, the mean over both conventions. `make_scorer(model)` -> a `histories -> (B, N)` scorer.
    The score parts are computed once (score = base + w * kNN + p * in-history), so each grid point
    costs two rankings. -> {"weight", "penalty", "criterion", "grid"}."""
    h, tau = model.history, model.cfg.temperature
    tune_penalty = h.age_bias is not None and not h.age_bias.requires_grad
    histories = [list(x) for x, _ in examples]
    targets = torch.tensor([t for _, t in examples], dtype=torch.long)
    base, knn, seen = score_parts(model, make_scorer, histories, knn=True, penalty=tune_penalty)
    grid = []
    for p in penalty_grid if tune_penalty else (0.0,):
        for w in knn_grid:
            grid.append({"weight": w, "penalty": p, **valid_ndcg10(base + w * knn + p * seen, targets, histories)})
    best = max(grid, key=lambda r: (r["valid_history_excluded_ndcg@10"] + r["valid_recbole_ndcg@10"]) / 2)
    with torch.no_grad():
        h.knn_weight.fill_(best["weight"] / tau)  # the history logits are added as temperature x logit
        if tune_penalty:
            h.age_bias.fill_(best["penalty"] / tau)
    return {"weight": best["weight"], "penalty": best["penalty"] if tune_penalty else None,
            "criterion": "mean of both conventions' valid NDCG@10", "grid": grid}  # fmt: skip
