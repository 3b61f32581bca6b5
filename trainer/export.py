"""Self-contained towers for the processes that must not import trainer/ (encoder worker, serving).

Both exported modules take the encoder's RAW content embeddings (mean-pooled, L2-normalised LLM
states) and do everything else themselves: the catalogue whitening the model was trained with, the
re-normalisation, the tower, the final L2 norm. They are TorchScript (traced), so loading them is
`torch.jit.load(path)`: no pickle, no project code.

    item_tower.pt   (N, d_raw) float32                  -> (N, d_out) item vectors
    user_tower.pt   (B, T, d_raw) float32, (B,) int64   -> (B, d_out) user vectors
                    sequences right-padded (any values in the padding), lengths >= 1

Exported towers use content only: a model trained with the optional item-ID embedding cannot be
exported (new items have no ID row), and `export_towers` refuses it.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn as nn

from trainer.towers import LEARN


class ItemTower(nn.Module):
    def __init__(self, model: LEARN):
        super().__init__()
        self.model = model

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        return self.model.encode_items(raw)


class UserTower(nn.Module):
    def __init__(self, model: LEARN):
        super().__init__()
        self.model = model

    def forward(self, raw_seq: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.model.encode_users(raw_seq, lengths)


def export_towers(model: LEARN, directory: Path) -> tuple[Path, Path]:
    """Trace both towers (eval mode, CPU) into `directory`; return (item_tower.pt, user_tower.pt)."""
    if model.cfg.use_id_embedding:
        raise ValueError("towers with the item-ID embedding cannot be exported: new items have no ID row")
    model = copy.deepcopy(model).cpu().eval()
    d_raw = model.cfg.d_raw
    directory.mkdir(parents=True, exist_ok=True)
    item_path, user_path = directory / "item_tower.pt", directory / "user_tower.pt"
    with torch.no_grad():
        item = torch.jit.trace(ItemTower(model).eval(), torch.randn(3, d_raw), check_trace=False)
        user = torch.jit.trace(UserTower(model).eval(),
                               (torch.randn(2, 4, d_raw), torch.tensor([4, 2])), check_trace=False)  # fmt: skip
    item.save(str(item_path))
    user.save(str(user_path))
    return item_path, user_path


def load_tower(path: Path) -> torch.jit.ScriptModule:
    """An exported tower, ready for inference."""
    return torch.jit.load(str(path), map_location="cpu").eval()
