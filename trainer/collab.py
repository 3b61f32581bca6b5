"""A collaborative item-item score beside the content towers (issue 17): EASE, served in low rank.

EASE (Steck, WWW 2019): with X the (users x items) binary interaction matrix of the TRAINING
sequences, B = I - P / diag(P), P = (X^T X + lambda I)^-1, and diag(B) = 0; a user's score for item
j is x_u . B[:, j] (x_u: their history, binary). Closed form, one N x N inverse (4,385 items here:
seconds). It knows only item ids, so it is zero for an item nobody interacted with in training:
cold items keep the content-only score.

Served like the content-kNN term (trainer/history.py), as extra vector dimensions: B ~ P Q^T
(truncated SVD, rank r), the user part w * sum over the history's distinct items of P[h], the item
part Q[i] (a zero row for an unknown item), so [user, w sum_h P[h]] . [item, Q[i]] adds w x_u B_r[:, i].
The weight w (cosine units), lambda and the rank are chosen after training on validation, with the
kNN weight and the history penalty (`choose_collab_blend`), by the mean of both conventions'
validation NDCG@10. All pure tensor functions; `CollabScore` holds the factors in the model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn as nn

from trainer.history import score_parts, valid_ndcg10


def interaction_matrix(histories: Sequence[Sequence[int]], n_items: int) -> torch.Tensor:
    """(U, N) float64, 1 where user u's history holds item i (repeats count once)."""
    x = torch.zeros(len(histories), n_items, dtype=torch.float64)
    rows = [r for r, h in enumerate(histories) for _ in h]
    cols = [i for h in histories for i in h]
    if rows:
        x[rows, cols] = 1.0
    return x


def fit_ease(x: torch.Tensor, lam: float) -> torch.Tensor:
    """EASE's weights of a (U, N) interaction matrix: (N, N) float64, zero diagonal. With fewer users
    than items P is computed through the U x U system (Woodbury: P = (I - X^T (lam I + X X^T)^-1 X) / lam),
    so a small sample costs little whatever the catalogue's size."""
    if lam <= 0:
        raise ValueError(f"EASE needs lambda > 0, got {lam}")
    x = x.to(torch.float64)
    u, n = x.shape
    if u < n:
        k = x @ x.T
        k.diagonal().add_(lam)
        p = -(x.T @ torch.linalg.solve(k, x))
        p.diagonal().add_(1.0)
        p /= lam
    else:
        g = x.T @ x
        g.diagonal().add_(lam)
        p = torch.linalg.inv(g)
    b = -p / p.diagonal().view(1, -1)
    b.diagonal().zero_()
    return b


def low_rank(b: torch.Tensor, rank: int, niter: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """(P, Q) float32 (N, rank) with P Q^T ~ b, the singular values split evenly between the sides:
    a randomised truncated SVD (torch.svd_lowrank: seconds where the exact one of 4,385 x 4,385 takes
    a minute on one core), exact when `rank` is within 10 of N."""
    n = min(b.shape)
    b = b.float()  # float32: half the time of float64, and the factors are served in float32
    if rank + 10 >= n:
        u, s, vh = torch.linalg.svd(b, full_matrices=False)
        v = vh.T
    else:
        u, s, v = torch.svd_lowrank(b, q=rank + 10, niter=niter)
    root = s[:rank].sqrt()
    return (u[:, :rank] * root).float().contiguous(), (v[:, :rank] * root).float().contiguous()


def user_sums(p: torch.Tensor, histories: Sequence[Sequence[int]]) -> torch.Tensor:
    """(B, r): the sum of P over each history's distinct items (an empty history: zeros)."""
    x = interaction_matrix(histories, p.shape[0]).to(p.dtype)
    return x @ p


def sequence_user_sums(p: torch.Tensor, seq: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """`user_sums` over right-padded ids: seq (B, T) (padding: any id >= len(p)), lengths (B,) -> (B, r)."""
    B, T = seq.shape
    n = p.shape[0]
    real = (torch.arange(T, device=seq.device).view(1, T) < lengths.view(B, 1)) & (seq < n)
    x = torch.zeros(B, n + 1, dtype=p.dtype, device=p.device)
    x.scatter_(1, torch.where(real, seq, torch.full_like(seq, n)), 1.0)  # distinct items: set, not add
    return x[:, :n] @ p


class CollabScore(nn.Module):
    """The served factors of the EASE term: buffers (saved with the weights), empty until chosen."""

    def __init__(self, rank: int):
        super().__init__()
        # no rows until fitted (`set`), so a model without a chosen term carries nothing
        self.register_buffer("user_factor", torch.zeros(0, rank))  # P (N fitted, rank)
        self.register_buffer("item_factor", torch.zeros(0, rank))  # Q
        self.register_buffer("weight", torch.zeros(()))  # cosine units
        # per fitted item, the sum of its content features: the catalogue the ids index (`fits`)
        self.register_buffer("signature", torch.zeros(0))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in ("user_factor", "item_factor", "signature"):  # saved over another catalogue size
            if prefix + name in state_dict:
                setattr(self, name, torch.zeros_like(state_dict[prefix + name]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def active(self) -> bool:
        return float(self.weight) != 0.0 and len(self.item_factor) > 0

    def set(self, p: torch.Tensor, q: torch.Tensor, weight: float, features: torch.Tensor) -> None:
        """Install factors (N, r') with r' <= the buffers' rank (the rest stays zero) and the weight,
        fitted over the catalogue whose (N, d) content features are `features`."""
        n, rank = p.shape[0], self.user_factor.shape[1]
        with torch.no_grad():
            self.user_factor = p.new_zeros(n, rank)
            self.item_factor = q.new_zeros(n, rank)
            self.user_factor[:, : p.shape[1]] = p
            self.item_factor[:, : q.shape[1]] = q
            self.signature = features[:n].sum(1).float().clone()
            self.weight.fill_(weight)

    def fits(self, features: torch.Tensor) -> bool:
        """Whether a catalogue's (N', d) features start with the fitted catalogue's items, in order
        (ids still index the same items; items appended after them are unknown to the fit)."""
        n = len(self.signature)
        return len(features) >= n and torch.allclose(features[:n].sum(1).float(), self.signature, atol=1e-4)

    def users(self, seq: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, r) served user part: weight x the sum of P over the history's distinct items."""
        return self.weight * sequence_user_sums(self.user_factor, seq, lengths)

    def items(self, ids: torch.Tensor) -> torch.Tensor:
        """(N, r) served item part: Q, zero rows for ids outside the fitted catalogue."""
        known = ids < self.item_factor.shape[0]
        return torch.where(known.view(-1, 1), self.item_factor[ids.clamp_max(self.item_factor.shape[0] - 1)], 0.0)

    def forward(self, seq: torch.Tensor, lengths: torch.Tensor, n_items: int) -> torch.Tensor:
        """(B, n_items) scores in cosine units for the catalogue's first n_items ids."""
        return self.users(seq, lengths) @ self.items(torch.arange(n_items, device=seq.device)).T


LAMBDA_GRID = (60.0, 100.0)  # EASE's L2 weight (200 and 300 lost on validation, seed 2024)
WEIGHT_GRID = (0.0, 2.0, 4.0, 6.0, 9.0, 13.0)  # the EASE term's weight, cosine units (0: the term off)
KNN_GRID = (0.3, 0.5, 0.7, 1.0)  # beside it: the kNN weight and the history penalty (trainer/history.py)
PENALTY_GRID = (-0.5, -1.0)


def choose_collab_blend(model, make_scorer: Callable, train_seqs: Sequence[Sequence[int]], examples,
                        lambdas=LAMBDA_GRID, weights=WEIGHT_GRID, knn_grid=KNN_GRID,
                        penalty_grid=PENALTY_GRID, start: dict | None = None) -> dict:  # fmt: skip
    """After training (and after trainer/history.choose_knn_blend, whose choice `start` = {"weight",
    "penalty"} joins the grid): fit EASE on `train_seqs` (the TRAINING sequences: no validation target
    is in them) for each lambda, factor it in the model's rank, and set the model's EASE factors and
    weight, kNN weight and history penalty to the grid point with the best validation NDCG@10, the
    mean over both conventions (weight 0, the content model alone, is on the grid). -> the choice
    and the grid. `make_scorer(model)` -> a `histories -> (B, N)` scorer."""
    h, tau, n = model.history, model.cfg.temperature, model.cfg.n_items
    has_knn = h is not None and h.knn_weight is not None
    has_penalty = h is not None and h.age_bias is not None and not h.age_bias.requires_grad  # history masked
    histories = [list(x) for x, _ in examples]
    targets = torch.tensor([t for _, t in examples], dtype=torch.long)
    with torch.no_grad():
        model.collab.weight.fill_(0.0)
    base, knn, seen = score_parts(model, make_scorer, histories, knn=has_knn, penalty=has_penalty)
    pairs = {(w if has_knn else 0.0, p if has_penalty else 0.0) for w in knn_grid for p in penalty_grid}
    if start is not None:
        pairs.add((start["weight"] if has_knn else 0.0, (start["penalty"] or 0.0) if has_penalty else 0.0))
    x = interaction_matrix(train_seqs, n)
    grid, best, best_factors = [], None, None
    for lam in lambdas:
        factors = low_rank(fit_ease(x, lam), model.cfg.collab_rank)
        collab = user_sums(factors[0], histories) @ factors[1].T  # (U, N)
        for c in weights:
            for w, p in sorted(pairs):
                row = {"lambda": lam, "collab_weight": c, "knn_weight": w, "penalty": p,
                       **valid_ndcg10(base + w * knn + p * seen + c * collab, targets, histories)}  # fmt: skip
                grid.append(row)
                if best is None or _criterion(row) > _criterion(best):
                    best, best_factors = row, factors
        del collab
    with torch.no_grad():
        model.collab.set(*best_factors, best["collab_weight"], model.content[:n])
        if has_knn:
            h.knn_weight.fill_(best["knn_weight"] / tau)
        if has_penalty:
            h.age_bias.fill_(best["penalty"] / tau)
    return {**best, "rank": model.cfg.collab_rank, "criterion": "mean of both conventions' valid NDCG@10", "grid": grid}


def _criterion(row: dict) -> float:
    return (row["valid_history_excluded_ndcg@10"] + row["valid_recbole_ndcg@10"]) / 2
