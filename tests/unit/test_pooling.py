import numpy as np
import torch

from encoder.pooling import Whitening, l2_normalize, mean_pairwise_cosine, mean_pool


def test_mean_pool_ignores_padding():
    h = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])  # (1, 3, 2)
    m = torch.tensor([[1, 1, 0]])
    assert torch.allclose(mean_pool(h, m), torch.tensor([[2.0, 3.0]]))


def test_l2_normalize_torch_and_numpy():
    x = np.array([[3.0, 4.0], [0.0, 0.0]])
    assert np.allclose(l2_normalize(x), [[0.6, 0.8], [0.0, 0.0]])
    assert torch.allclose(l2_normalize(torch.tensor([[3.0, 4.0]])).norm(dim=-1), torch.tensor([1.0]))


def test_whitening_decorrelates_and_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 8)) @ rng.normal(size=(8, 8)) + 5.0  # correlated, off-centre
    w = Whitening.fit(x)
    z = w(x)
    assert np.allclose(z.mean(0), 0, atol=1e-4)
    assert np.allclose(np.cov(z, rowvar=False), np.eye(8), atol=1e-2)
    assert mean_pairwise_cosine(x) > 0.5 and abs(mean_pairwise_cosine(z)) < 0.05
    w.save(tmp_path / "w.npz")
    w2 = Whitening.load(tmp_path / "w.npz")
    assert np.allclose(w2(x), z)
    assert Whitening.fit(x, dim=3)(x).shape == (500, 3)
