"""Self-contained towers for the processes that must not import trainer/ (encoder worker, serving).

Both exported modules take the encoder's RAW content embeddings (mean-pooled, L2-normalised LLM
states) and do everything else themselves: the catalogue whitening the model was trained with, the
re-normalisation, the tower, the final L2 norm. They are TorchScript (traced), so loading them is
`torch.jit.load(path)`: no pickle, no project code.

    item_tower.pt   (N, d_raw) float32                  -> (N, d_out) item vectors
    user_tower.pt   (B, T, d_raw) float32, (B,) int64   -> (B, d_out) user vectors
                    sequences right-padded (any values in the padding), lengths >= 1

A model with trainer/history.py's content-kNN residual exports it as extra dimensions, so one inner
product still gives the model's score: item vectors [v, f] (f: the item's features) and user vectors
[u, temperature * w * z] (z: the recency-weighted mean of the history's features), d_out + d_llm wide.
The learned age bias acts only on the user's own history items, which serving leaves out of every
answer, so it is not exported.

Exported towers use content only: a model trained with the optional item-ID embedding cannot be
exported (new items have no ID row), and `export_towers` refuses it.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from encoder.pooling import Whitening
from trainer.towers import LEARN


class _Features(nn.Module):
    """Raw content embeddings -> the model's input features (whitening, then L2 norm)."""

    def __init__(self, whitening: Whitening | None, d_raw: int):
        super().__init__()
        if whitening is None:
            mean, transform = np.zeros(d_raw, np.float32), np.eye(d_raw, dtype=np.float32)
        else:
            mean, transform = whitening.mean, whitening.transform
        self.register_buffer("mean", torch.from_numpy(np.array(mean, np.float32)))  # (d_raw,)
        self.register_buffer("transform", torch.from_numpy(np.array(transform, np.float32)))  # (d_raw, d_llm)

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        return F.normalize((raw - self.mean) @ self.transform, dim=-1)


class ItemTower(nn.Module):
    def __init__(self, model: LEARN, features: _Features):
        super().__init__()
        self.features = features
        self.pcm = copy.deepcopy(model.pcm)
        self.item_proj = copy.deepcopy(model.item_proj) if model.item_proj is not None else nn.Identity()
        self.variant = model.cfg.item_tower
        self.knn = knn_weight(model) is not None

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        x = self.features(raw)  # (N, d_llm)
        if self.variant == "c":
            v = self.item_proj(x)
        else:
            v = self.pcm(x.unsqueeze(1)).squeeze(1)  # a single-item sequence: (N, d_out)
        v = F.normalize(v, dim=-1)
        return torch.cat([v, x], -1) if self.knn else v


class UserTower(nn.Module):
    def __init__(self, model: LEARN, features: _Features):
        super().__init__()
        self.features = features
        self.pcm = copy.deepcopy(model.pcm)
        w = knn_weight(model)
        self.knn = w is not None
        # the kNN term's scale in cosine units (temperature x learned weight) and its decay
        self.knn_scale = float(model.cfg.temperature * w) if w is not None else 0.0
        self.decay = float(model.history.decay) if w is not None else 0.0

    def forward(self, raw_seq: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        B, T, _ = raw_seq.shape
        real = torch.arange(T, device=raw_seq.device).view(1, T) < lengths.view(B, 1)  # (B, T)
        x = self.features(raw_seq) * real.unsqueeze(-1)  # padding = zero content, as in training
        states = F.normalize(self.pcm(x), dim=-1)  # (B, T, d_out)
        idx = (lengths - 1).clamp_min(0).view(B, 1, 1).expand(B, 1, states.size(-1))
        u = states.gather(1, idx).squeeze(1)
        if not self.knn:
            return u
        age = (lengths.view(B, 1) - 1 - torch.arange(T, device=raw_seq.device).view(1, T)).clamp_min(0)  # (B, T)
        w = torch.where(real, torch.full_like(x[..., 0], self.decay) ** age, torch.zeros_like(x[..., 0]))
        z = F.normalize((w.unsqueeze(-1) * x).sum(1), dim=-1)  # the zero-training user vector
        return torch.cat([u, self.knn_scale * z], -1)


def knn_weight(model: LEARN) -> float | None:
    """The weight of the model's content-kNN residual, None when it has none (or it is zero: a model
    whose blend was never chosen, as in the incremental trainer, exports as the plain towers)."""
    h = getattr(model, "history", None)
    return None if h is None or h.knn_weight is None or float(h.knn_weight) == 0.0 else float(h.knn_weight)


def export_towers(model: LEARN, whitening: Whitening | None, directory: Path) -> tuple[Path, Path]:
    """Trace both towers (eval mode, CPU) into `directory`; return (item_tower.pt, user_tower.pt)."""
    if model.cfg.use_id_embedding:
        raise ValueError("towers with the item-ID embedding cannot be exported: new items have no ID row")
    model = copy.deepcopy(model).cpu().eval()
    d_raw = whitening.mean.shape[0] if whitening is not None else model.cfg.d_llm
    features = _Features(whitening, d_raw)
    directory.mkdir(parents=True, exist_ok=True)
    item_path, user_path = directory / "item_tower.pt", directory / "user_tower.pt"
    with torch.no_grad():
        item = torch.jit.trace(ItemTower(model, features).eval(), torch.randn(3, d_raw), check_trace=False)
        user = torch.jit.trace(UserTower(model, features).eval(),
                               (torch.randn(2, 4, d_raw), torch.tensor([4, 2])), check_trace=False)  # fmt: skip
    item.save(str(item_path))
    user.save(str(user_path))
    return item_path, user_path


def load_tower(path: Path) -> torch.jit.ScriptModule:
    """An exported tower, ready for inference."""
    return torch.jit.load(str(path), map_location="cpu").eval()
