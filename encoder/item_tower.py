"""The item tower the encoder worker runs: the current model version's exported `item_tower.pt2`.

The publisher (trainer/publish.py) writes it from the model's own `encode_items` as a torch.export
program: this process must not import trainer/ (encoder/ comes before trainer/ in the flow), and a
program is a graph (JSON) plus raw tensors, so loading it runs no archived code. The one pickle in
the archive (its sample inputs) is first checked to load as plain tensors (`weights_only`), so torch
never falls back to a full unpickle. torch is imported on first use, not at import.

A version with a chosen EASE term (trainer/collab.py) serves its items as [content vector, Q[row]]:
the program stays the content model's (it knows no ids), and the item's factor row is looked up by
its string id in the version's files (store/collab.py; zeros for an item the fit never saw), so a
row written here equals the publisher's for the same item.
"""

from __future__ import annotations

import io
import logging
import zipfile
from pathlib import Path

import numpy as np

from store.collab import CollabIndex, read_collab
from store.registry import CurrentFollower, ModelRegistry, Version

log = logging.getLogger(__name__)


class ItemTower:
    """The current model version's item tower, reloaded when the registry's CURRENT changes."""

    def __init__(self, registry: ModelRegistry):
        self.current = CurrentFollower(registry)
        self.module = None
        self.collab: CollabIndex | None = None  # the version's EASE item side, if it has one

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
            self.module, self.collab = None, None
            self.current.accept(current)
            return False
        self.module = load_program(current.item_tower_path)
        self.collab = read_collab(current.path)
        self.current.accept(current)
        log.info("item tower of model version %s loaded", current.name)
        return True

    def __call__(self, content: np.ndarray, ids: list[str] | None = None) -> np.ndarray:
        """(N, d_raw) content embeddings of the items `ids` -> their served vectors (N, d); the ids
        are needed when the version has an EASE term (its rows are looked up by id)."""
        import torch

        with torch.inference_mode():
            out = self.module(torch.from_numpy(np.ascontiguousarray(content, dtype=np.float32)))  # (N, d_out)
        out = out.float().cpu().numpy()
        if self.collab is None:
            return out
        if ids is None or len(ids) != len(out):
            raise ValueError(f"model version {self.current.version.name} has an EASE term: its item vectors need "
                             f"the items' ids ({len(out)} rows, {None if ids is None else len(ids)} ids)")  # fmt: skip
        return np.concatenate([out, self.collab.item_rows(ids)], axis=1)


def load_program(path: Path):
    """A torch.export program as a callable module, refusing an archive whose pickled members hold
    more than tensors."""
    import torch

    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            if name.endswith(".pt"):
                torch.load(io.BytesIO(archive.read(name)), weights_only=True)  # raises on anything else
    return torch.export.load(str(path)).module()
