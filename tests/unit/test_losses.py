import math

import torch
import torch.nn.functional as F

from trainer import losses


def unit(x):
    return F.normalize(x, dim=-1)


def test_in_batch_masks_duplicate_targets():
    torch.manual_seed(0)
    u, v = unit(torch.randn(4, 8)), unit(torch.randn(4, 8))
    ids = torch.tensor([7, 7, 3, 5])
    loss = losses.in_batch_softmax(u, v, ids, 0.1)
    # by hand: row 0 must not see column 1 (same item 7) as a negative, and vice versa
    logits = u @ v.T / 0.1
    expect = 0.0
    for i in range(4):
        cols = [j for j in range(4) if j == i or ids[j] != ids[i]]
        expect += -(logits[i, i] - torch.logsumexp(logits[i, cols], 0))
    assert torch.allclose(loss, expect / 4, atol=1e-5)


def test_history_mask_and_full_softmax_keep_target():
    seq = torch.tensor([[0, 1, 2, 9], [3, 3, 9, 9]])  # pad id 9, n_items 5
    anchors = torch.tensor([[0, 0], [0, 1], [1, 0]])
    m = losses.history_mask(seq, anchors, 5, 9)
    assert m.tolist() == [
        [True, False, False, False, False],
        [True, True, False, False, False],
        [False, False, False, True, False],
    ]
    u, items = unit(torch.randn(3, 4)), unit(torch.randn(5, 4))
    targets = torch.tensor([1, 2, 3])  # the last anchor's target re-occurs in its history
    loss = losses.full_softmax(u, items, targets, 0.5, m)
    assert math.isfinite(float(loss))
    logits = u @ items.T / 0.5
    row2 = -(logits[2, 3] - torch.logsumexp(logits[2], 0))  # target kept, nothing else masked
    row0 = -(logits[0, 1] - torch.logsumexp(logits[0, 1:], 0))  # item 0 masked
    row1 = -(logits[1, 2] - torch.logsumexp(logits[1, 2:], 0))
    assert torch.allclose(loss, (row0 + row1 + row2) / 3, atol=1e-5)


def test_dense_all_action_by_hand():
    torch.manual_seed(1)
    M, W, d = 3, 2, 4
    u, win = unit(torch.randn(M, d)), unit(torch.randn(M, W, d))
    ids = torch.tensor([[10, 11], [12, -1], [11, 13]])
    groups = torch.tensor([0, 1, 2])
    loss = losses.dense_all_action(u, win, ids, 0.2, groups)
    total, n = 0.0, 0
    for k in range(W):
        for i in range(M):
            if ids[i, k] < 0:
                continue
            cols = [j for j in range(M) if j == i or (ids[j, k] >= 0 and int(ids[j, k]) not in ids[i].tolist())]
            logits = torch.stack([u[i] @ win[j, k] for j in cols]) / 0.2
            total += -(logits[cols.index(i)] - torch.logsumexp(logits, 0))
            n += 1
    assert torch.allclose(loss, total / n, atol=1e-5)


def test_dense_all_action_masks_same_user():
    u = unit(torch.randn(2, 4))
    win = unit(torch.randn(2, 1, 4))
    ids = torch.tensor([[1], [2]])
    # same user: the other anchor is masked, each row has only its positive -> loss 0
    assert float(losses.dense_all_action(u, win, ids, 0.1, torch.tensor([0, 0]))) < 1e-6
    assert float(losses.dense_all_action(u, win, ids, 0.1, torch.tensor([0, 1]))) > 0


def test_dense_full_softmax_by_hand():
    torch.manual_seed(2)
    M, W, N, d = 2, 2, 6, 4
    u, items, win = unit(torch.randn(M, d)), unit(torch.randn(N, d)), unit(torch.randn(M, W, d))
    ids = torch.tensor([[1, 2], [3, -1]])
    exclude = torch.zeros(M, N, dtype=torch.bool)
    exclude[0, 0] = True  # history of anchor 0
    loss = losses.dense_full_softmax(u, items, win, ids, 0.5, exclude)
    total, n = 0.0, 0
    for i in range(M):
        keep = [j for j in range(N) if not exclude[i, j] and j not in ids[i].tolist()]
        for k in range(W):
            if ids[i, k] < 0:
                continue
            logits = torch.cat([(u[i] @ win[i, k]).view(1), u[i] @ items[keep].T]) / 0.5
            total += -(logits[0] - torch.logsumexp(logits, 0))
            n += 1
    assert torch.allclose(loss, total / n, atol=1e-5)
