import numpy as np
import torch

from encoder.pooling import l2_normalize, mean_pairwise_cosine, mean_pool


def test_mean_pool_ignores_padding():
    h = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])  # (1, 3, 2)
    m = torch.tensor([[1, 1, 0]])
    assert torch.allclose(mean_pool(h, m), torch.tensor([[2.0, 3.0]]))


def test_l2_normalize_torch_and_numpy():
    x = np.array([[3.0, 4.0], [0.0, 0.0]])
    assert np.allclose(l2_normalize(x), [[0.6, 0.8], [0.0, 0.0]])
    assert torch.allclose(l2_normalize(torch.tensor([[3.0, 4.0]])).norm(dim=-1), torch.tensor([1.0]))


def test_mean_pairwise_cosine_sees_a_common_direction():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 8))
    assert abs(mean_pairwise_cosine(x)) < 0.05 and mean_pairwise_cosine(x + 5.0) > 0.5
