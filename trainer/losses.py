"""The three training losses of the twin towers. Pure functions over tensors, no model code.

All take L2-normalised user and item vectors and a temperature tau (logits = cos / tau).

1. `in_batch_softmax`: next-item prediction; each anchor's positive is scored against the other
   anchors' positives in the batch. Columns that carry the SAME item as the row's positive (a popular
   item appears many times in a batch) are masked, so an item is never its own negative.
2. `full_softmax`: next-item cross-entropy over ALL items of the catalogue, with the anchor's history
   masked out of the denominator (the evaluation ranks with history excluded, so training should not
   spend effort pushing history items down). Exact, and cheap for a catalogue of a few thousand items.
3. `dense_all_action`: the LEARN paper's loss. Every history position's user vector predicts EVERY
   item of its target window (the next `W` items), not only the next one. For window slot k the
   candidates are the slot-k item vectors of all anchors in the batch (for item tower (a) they are
   contextual: the tower read the window causally); columns carrying an item of the row's own window,
   or belonging to the same user (`groups`), are masked, so negatives are other users' targets.

Default (config.settings.ModelSettings.loss): see trainer/offline.py's module docstring, which states
the default and the validation numbers it was chosen on.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

NEG_INF = float("-inf")


def in_batch_softmax(
    user: torch.Tensor, pos: torch.Tensor, pos_ids: torch.Tensor, temperature: float
) -> torch.Tensor:
    """user (M, d), pos (M, d), pos_ids (M,) -> scalar. Row i's positive is column i."""
    logits = user @ pos.T / temperature  # (M, M)
    dup = pos_ids.view(-1, 1) == pos_ids.view(1, -1)  # (M, M) same item
    dup.fill_diagonal_(False)
    logits = logits.masked_fill(dup, NEG_INF)
    return F.cross_entropy(logits, torch.arange(len(user), device=user.device))


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
) -> torch.Tensor:
    """user (M, d), items (N, d), targets (M,), exclude (M, N) bool (history) -> scalar.
    The target itself is never excluded, even when it re-occurs in the history."""
    logits = user @ items.T / temperature  # (M, N)
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
) -> torch.Tensor:
    """user (M, d); window (M, W, d) item vectors of each anchor's next W items; window_ids (M, W)
    item ids, -1 where the window runs past the sequence's end; groups (M,) user index per anchor.
    -> scalar, the mean cross-entropy over all valid (anchor, slot) pairs."""
    M, W, _ = window.shape
    total = user.new_zeros(())
    count = 0
    eye = torch.eye(M, dtype=torch.bool, device=user.device)
    same_user = (groups.view(-1, 1) == groups.view(1, -1)) if groups is not None else None
    for k in range(W):
        valid = window_ids[:, k] >= 0  # (M,)
        if not bool(valid.any()):
            continue
        logits = user @ window[:, k].T / temperature  # (M, M)
        # column j's slot-k item is one of row i's own window items, or column j has no item there
        in_own_window = (window_ids[:, k].view(1, M, 1) == window_ids.view(M, 1, W)).any(-1)  # (M, M)
        mask = in_own_window | ~valid.view(1, M)
        if same_user is not None:
            mask = mask | same_user
        mask = mask & ~eye
        logits = logits.masked_fill(mask, NEG_INF)[valid]  # rows with a positive at slot k
        target = torch.arange(M, device=user.device)[valid]
        total = total + F.cross_entropy(logits, target, reduction="sum")
        count += int(valid.sum())
    return total / max(count, 1)
