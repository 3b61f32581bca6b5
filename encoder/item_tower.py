"""The item tower the encoder worker runs: the current model version's exported `item_tower.pt2`.

The publisher (trainer/publish.py) writes it from the model's own `encode_items` as a torch.export
program: this process must not import trainer/ (encoder/ comes before trainer/ in the flow), and a
program is a graph (JSON) plus raw tensors, so loading it runs no archived code. The one pickle in
the archive (its sample inputs) is first checked to load as plain tensors (`weights_only`), so torch
never falls back to a full unpickle. torch is imported on first use, not at import.
"""

from __future__ import annotations

import io
import logging
import zipfile
from pathlib import Path

import numpy as np

from store.registry import CurrentFollower, ModelRegistry, Version

log = logging.getLogger(__name__)


class ItemTower:
    """The current model version's item tower, reloaded when the registry's CURRENT changes."""

    def __init__(self, registry: ModelRegistry):
        self.current = CurrentFollower(registry)
        self.module = None

    @property
    def version(self) -> Version | None:
        """The version whose collection gets new items' vectors (None: no usable current version)."""
        return self.current.version if self.module is not None else None

    def refresh(self) -> bool:
        """Follow CURRENT; True when the version changed (a new collection to fill)."""
        current = self.current.poll()
        if current is None:
            return False
        if not current.item_tower_path.exists():  # a version of an older release: nothing to run
            log.error("model version %s has no %s (written by an older release?): new items get no vectors "
                      "in its collection; publish a new version", current.name, current.item_tower_path.name)  # fmt: skip
            self.module = None
            self.current.accept(current)
            return False
        self.module = load_program(current.item_tower_path)
        self.current.accept(current)
        log.info("item tower of model version %s loaded", current.name)
        return True

    def __call__(self, content: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            out = self.module(torch.from_numpy(np.ascontiguousarray(content, dtype=np.float32)))  # (N, d_out)
        return out.float().cpu().numpy()


def load_program(path: Path):
    """A torch.export program as a callable module, refusing an archive whose pickled members hold
    more than tensors."""
    import torch

    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            if name.endswith(".pt"):
                torch.load(io.BytesIO(archive.read(name)), weights_only=True)  # raises on anything else
    return torch.export.load(str(path)).module()
