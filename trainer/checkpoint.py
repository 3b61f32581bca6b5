"""Checkpoints: weights as safetensors, everything else (config, metrics, provenance) as JSON.

Loading reads tensors and JSON only: nothing is ever unpickled.
    <dir>/model.safetensors   the model's state_dict (content embeddings are not in it: they belong
                              to the encoder and the cache, and are passed back in on load)
    <dir>/model.json          {"config": TowerConfig, "metrics": {...}, "extra": {...}}
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from trainer.towers import LEARN, TowerConfig


def save_checkpoint(
    model: LEARN, directory: str | Path, metrics: dict | None = None, extra: dict | None = None
) -> Path:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(d / "model.safetensors"))
    meta = {"config": model.cfg.to_dict(), "metrics": metrics or {}, "extra": extra or {}}
    (d / "model.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
    return d


def load_checkpoint(directory: str | Path, content: torch.Tensor) -> tuple[LEARN, dict]:
    """-> (model in eval mode, the JSON metadata). `content` is the (N, d_llm) table it was trained on."""
    d = Path(directory)
    meta = json.loads((d / "model.json").read_text())
    model = LEARN(TowerConfig(**meta["config"]), content)
    model.load_state_dict(load_file(str(d / "model.safetensors")))
    model.eval()
    return model, meta
