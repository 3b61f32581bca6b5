"""The model artefact: one format for an offline run (`learn train` writes <run>/checkpoint/) and for
a published registry version (trainer/publish.py writes the same two files into versions/<name>/).

    <dir>/model.safetensors   the model's state_dict: the towers' weights and the feature step's
                              whitening (the catalogue's feature table is not in it: it belongs to the
                              encoder and the vector store, and is passed back in on load)
    <dir>/model.json          {"config": TowerConfig, "metrics": {...}, "extra": {...}}

Loading reads tensors and JSON only and builds the model from this project's own module
(trainer/towers.py): nothing is unpickled, no archived code runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from trainer.towers import LEARN, TowerConfig

WEIGHTS = "model.safetensors"
META = "model.json"


def save_checkpoint(
    model: LEARN, directory: str | Path, metrics: dict | None = None, extra: dict | None = None
) -> Path:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(d / WEIGHTS))
    meta = {"config": model.cfg.to_dict(), "metrics": metrics or {}, "extra": extra or {}}
    (d / META).write_text(json.dumps(meta, indent=2, sort_keys=True))
    return d


def is_checkpoint(directory: str | Path) -> bool:
    d = Path(directory)
    return (d / WEIGHTS).is_file() and (d / META).is_file()


def load_checkpoint(directory: str | Path, raw: torch.Tensor | None = None) -> tuple[LEARN, dict]:
    """-> (model in eval mode, the JSON metadata). `raw`: the (N, d_raw) raw content embeddings the
    ids index, when the model is to be called with ids (evaluation, training); serving calls the
    raw-input towers (`encode_items`, `encode_users`) and needs none."""
    d = Path(directory)
    meta = json.loads((d / META).read_text())
    model = LEARN(TowerConfig.from_dict(meta["config"]))
    model.load_state_dict(load_file(str(d / WEIGHTS)))
    if raw is not None:
        model.set_catalogue(raw)
    model.eval()
    return model, meta
