"""Pooling and post-processing of frozen-LLM hidden states. Pure functions.

- `mean_pool`: LEARN's content embedding, the mean of the last hidden layer over non-padding tokens.
- `l2_normalize`: unit length (the paper's choice after pooling).
- `mean_pairwise_cosine`: how anisotropic a set of vectors is. The whitening that removes the common
  direction is fitted per model version, so it lives with the model (trainer/towers.py `Features`).
"""

from __future__ import annotations

import numpy as np
import torch


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the positions where mask is 1. hidden (B, T, d), mask (B, T) -> (B, d)."""
    m = mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)


def l2_normalize(x, eps: float = 1e-12):
    """Rows to unit length; works on torch tensors and numpy arrays alike. (..., d) -> (..., d)."""
    if isinstance(x, torch.Tensor):
        return torch.nn.functional.normalize(x, dim=-1, eps=eps)
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


def content_embedding(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """LEARN's content embedding of hidden states in any dtype: the mean over real tokens, in fp32, at
    unit length. hidden (B, T, d), mask (B, T) -> (B, d) float32."""
    return l2_normalize(mean_pool(hidden.float(), mask))


def mean_pairwise_cosine(x: np.ndarray, sample: int = 2000, seed: int = 0) -> float:
    """Average cosine between distinct rows (on a random sample): ~0 isotropic, ~1 collapsed."""
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(x), size=min(sample, len(x)), replace=False)
    u = l2_normalize(np.asarray(x, dtype=np.float64)[idx])
    sims = u @ u.T
    n = len(u)
    return float((sims.sum() - np.trace(sims)) / max(n * (n - 1), 1))
