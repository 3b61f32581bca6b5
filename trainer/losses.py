"""The three training losses of the twin towers. Pure functions over tensors, no model code.

All take L2-normalised user and item vectors and a temperature tau (logits = cos / tau).

1. `in_batch_softmax`: next-item prediction; each anchor's positive is scored against the other
   anchors' positives in the batch. Columns that carry the SAME item as the row's positive (a popular
   item appears many times in a batch) are masked, so an item is never its own negative.
2. `full_softmax`: next-item cross-entropy over ALL items of the catalogue, with the anchor's history
   masked out of the denominator (the evaluation ranks with history excluded, so training should not
   spend effort pushing history items down). Exact, and cheap for a catalogue of a few thousand items.
   Without the mask, history items are negatives like any other; `extra_logits` adds learned score
   terms (trainer/history.py), e.g. a bias on the history's items that learns how often they recur.
3. `dense_all_action`: the LEARN paper's loss. Every history position's user vector predicts EVERY
   item of its target window (the next `W` items), not only the next one. For window slot k the
   candidates are the slot-k item vectors of all anchors in the batch (for item tower (a) they are
   contextual: the tower read the window causally); columns carrying an item of the row's own window,
   or belonging to the same user (`groups`), are masked, so negatives are other users' targets.

4. `dense_full_softmax`: (3)'s dense targets with (2)'s negatives (the whole catalogue, history
   masked). On this data in-batch negatives are a weak, popularity-skewed sample of the catalogue
   (see trainer/offline.py for the validation numbers), and the full catalogue is cheap to score.

Default (config.settings.ModelSettings.loss): see trainer/offline.py's module docstring, which states
the default and the validation numbers it was chosen on.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

NEG_INF = float("-inf")


def _negative_pool(M: int, max_negatives: int | None, device) -> torch.Tensor:
    """Column indices of the in-batch negatives: all anchors, or a random subset of max_negatives
    (a batch of long sequences has tens of thousands of anchors; M x M logits would not fit)."""
    if max_negatives is None or M <= max_negatives:
        return torch.arange(M, device=device)
    return torch.randperm(M, device=device)[:max_negatives]


def in_batch_softmax(
    user: torch.Tensor,
    pos: torch.Tensor,
    pos_ids: torch.Tensor,
    temperature: float,
    max_negatives: int | None = None,
) -> torch.Tensor:
    """user (M, d), pos (M, d), pos_ids (M,) -> scalar. Row i's positive is pos[i]; its negatives are
    the other rows' positives (a random pool of max_negatives of them when M is larger)."""
    M = len(user)
    pool = _negative_pool(M, max_negatives, user.device)  # (K,)
    pos_logit = (user * pos).sum(-1, keepdim=True) / temperature  # (M, 1)
    neg = user @ pos[pool].T / temperature  # (M, K)
    same = pool.view(1, -1) == torch.arange(M, device=user.device).view(-1, 1)  # the row itself
    dup = pos_ids[pool].view(1, -1) == pos_ids.view(-1, 1)  # (M, K) the same item as the positive
    neg = neg.masked_fill(same | dup, NEG_INF)
    logits = torch.cat([pos_logit, neg], 1)
    return F.cross_entropy(logits, torch.zeros(M, dtype=torch.long, device=user.device))


def history_mask(
    seq: torch.Tensor, anchors: torch.Tensor, n_items: int, pad_id: int
) -> torch.Tensor:
    """Boolean (M, n_items): True where the item is in anchor m's history (its sequence up to and
    including the anchor position). seq (B, T) padded with pad_id; anchors (M, 2) rows of (b, t)."""
    B, T = seq.shape
    M = len(anchors)
    mask = torch.zeros(M, n_items + 1, dtype=torch.bool, device=seq.device)
    pos = torch.arange(T, device=seq.device)
    upto = pos.view(1, T) <= anchors[:, 1].view(M, 1)  # (M, T)
    items = seq[anchors[:, 0]]  # (M, T)
    rows = torch.arange(M, device=seq.device).view(M, 1).expand(M, T)
    mask[rows[upto], items[upto]] = True
    return mask[:, :n_items]


def full_softmax(
    user: torch.Tensor,
    items: torch.Tensor,
    targets: torch.Tensor,
    temperature: float,
    exclude: torch.Tensor | None = None,
    extra_logits: torch.Tensor | None = None,
) -> torch.Tensor:
    """user (M, d), items (N, d), targets (M,), exclude (M, N) bool (history) -> scalar.
    The target itself is never excluded, even when it re-occurs in the history. `extra_logits`
    (M, N) is added to the logits (trainer/history.py's learned terms for items already seen)."""
    logits = user @ items.T / temperature  # (M, N)
    if extra_logits is not None:
        logits = logits + extra_logits
    if exclude is not None:
        exclude = exclude.clone()
        exclude[torch.arange(len(targets), device=targets.device), targets] = False
        logits = logits.masked_fill(exclude, NEG_INF)
    return F.cross_entropy(logits, targets)


def dense_all_action(
    user: torch.Tensor,
    window: torch.Tensor,
    window_ids: torch.Tensor,
    temperature: float,
    groups: torch.Tensor | None = None,
    max_negatives: int | None = None,
) -> torch.Tensor:
    """user (M, d); window (M, W, d) item vectors of each anchor's next W items; window_ids (M, W)
    item ids, -1 where the window runs past the sequence's end; groups (M,) user index per anchor.
    -> scalar, the mean cross-entropy over all valid (anchor, slot) pairs. Negatives for slot k are
    the slot-k vectors of the other anchors (a random pool of max_negatives of them when M is larger)."""
    M, W, _ = window.shape
    rows = torch.arange(M, device=user.device)
    pool = _negative_pool(M, max_negatives, user.device)  # (K,)
    masked = pool.view(1, -1) == rows.view(-1, 1)  # (M, K) the row itself
    if groups is not None:
        masked = masked | (groups[pool].view(1, -1) == groups.view(-1, 1))  # same user
    total = user.new_zeros(())
    count = 0
    for k in range(W):
        valid = window_ids[:, k] >= 0  # (M,) rows with a positive at slot k
        if not bool(valid.any()):
            continue
        col_ids = window_ids[pool, k]  # (K,)
        # column carries one of the row's own window items, or has no item at slot k
        in_own_window = (col_ids.view(1, -1, 1) == window_ids.view(M, 1, W)).any(-1)  # (M, K)
        mask = masked | in_own_window | (col_ids < 0).view(1, -1)
        pos_logit = (user * window[:, k]).sum(-1, keepdim=True) / temperature  # (M, 1)
        neg = (user @ window[pool, k].T / temperature).masked_fill(mask, NEG_INF)  # (M, K)
        logits = torch.cat([pos_logit, neg], 1)[valid]
        target = torch.zeros(len(logits), dtype=torch.long, device=user.device)
        total = total + F.cross_entropy(logits, target, reduction="sum")
        count += int(valid.sum())
    return total / max(count, 1)


def dense_full_softmax(
    user: torch.Tensor,
    items: torch.Tensor,
    window: torch.Tensor,
    window_ids: torch.Tensor,
    temperature: float,
    exclude: torch.Tensor | None = None,
) -> torch.Tensor:
    """The dense all-action targets of `dense_all_action` with the negatives of `full_softmax`:
    every anchor predicts each of its next W items against the WHOLE catalogue, history masked.
    user (M, d); items (N, d) context-free catalogue vectors; window (M, W, d) the positives' vectors
    (contextual for item tower (a)); window_ids (M, W) with -1 past the end; exclude (M, N) history.
    The window's own items are masked out of the catalogue part, so each positive counts once.
    -> scalar, mean over valid (anchor, slot) pairs."""
    M, W, _ = window.shape
    logits = user @ items.T / temperature  # (M, N)
    mask = torch.zeros_like(logits, dtype=torch.bool) if exclude is None else exclude.clone()
    valid = window_ids >= 0  # (M, W)
    rows = torch.arange(M, device=user.device).view(M, 1).expand(M, W)
    mask[rows[valid], window_ids[valid]] = True
    lse = torch.logsumexp(logits.masked_fill(mask, NEG_INF), dim=1, keepdim=True)  # (M, 1)
    pos = (user.unsqueeze(1) * window).sum(-1) / temperature  # (M, W)
    nll = torch.logaddexp(pos, lse) - pos  # -log softmax of the positive over {positive} + catalogue
    return nll[valid].mean()
