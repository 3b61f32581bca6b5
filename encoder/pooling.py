"""Pooling and post-processing of frozen-LLM hidden states. Pure functions plus one small fitted object.

- `mean_pool`: LEARN's content embedding, the mean of the last hidden layer over non-padding tokens.
- `l2_normalize`: unit length (the paper's choice after pooling).
- `Whitening`: mean-centring + PCA-whitening fitted on the catalogue. Mean-pooled decoder states are
  very anisotropic (SmolLM2: mean pairwise cosine ~0.93 on this catalogue), so every cosine is close to
  1 until the common direction is removed. Saved as plain arrays in an .npz (no pickle).
"""

from __future__ import annotations

from pathlib import Path

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


class Whitening:
    """x -> (x - mean) @ W, with W = V diag(1/sqrt(eigval + eps)) from the catalogue's covariance.

    `dim` keeps only the top principal components (None: all); `whiten=False` keeps the PCA rotation
    but not the rescaling (mean-centring only, up to rotation).
    """

    def __init__(self, mean: np.ndarray, transform: np.ndarray):
        self.mean = np.asarray(mean, dtype=np.float32)  # (d,)
        self.transform = np.asarray(transform, dtype=np.float32)  # (d, k)

    @classmethod
    def fit(
        cls, x: np.ndarray, dim: int | None = None, eps: float = 1e-6, whiten: bool = True
    ) -> "Whitening":
        x = np.asarray(x, dtype=np.float64)
        mean = x.mean(0)
        cov = np.cov(x - mean, rowvar=False)  # (d, d)
        eigval, eigvec = np.linalg.eigh(cov)
        order = np.argsort(eigval)[::-1][: dim or len(eigval)]
        eigval, eigvec = np.clip(eigval[order], 0.0, None), eigvec[:, order]
        scale = 1.0 / np.sqrt(eigval + eps) if whiten else np.ones_like(eigval)
        return cls(mean, eigvec * scale[None, :])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """(N, d) -> (N, k) float32."""
        return ((np.asarray(x, dtype=np.float32) - self.mean) @ self.transform).astype(np.float32)

    def save(self, path: str | Path) -> None:
        np.savez(path, mean=self.mean, transform=self.transform)

    @classmethod
    def load(cls, path: str | Path) -> "Whitening":
        with np.load(path, allow_pickle=False) as f:
            return cls(f["mean"], f["transform"])
