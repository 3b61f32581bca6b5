"""A model version's EASE item side as plain files (issue 17): the id index and the item factors.

A version whose model has a chosen EASE term (trainer/collab.py) serves it as extra dimensions:
items [.., Q[row]], users [.., w * sum_h P[h]], the rows indexing the catalogue the term was fitted
on. The publisher (trainer/publish.py) writes beside the model artefact
    collab_ids.json      ["item id of row 0", ...]: the string ids of the fitted rows, in order
    collab_items.npy     (rows, rank) float32: Q, the item factors (row r = collab_ids[r])
so that the encoder worker (which imports no trainer/ and no model) appends an item's row to the
exported content tower's vector, and serving maps a history's string ids to rows. An id outside the
index (an item new since the fit) gets the row number `len(ids)` (the padding: no user part) and a
zero item row: it scores as content alone. numpy only; nothing here knows the model.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

COLLAB_IDS = "collab_ids.json"
COLLAB_ITEMS = "collab_items.npy"


@dataclass(frozen=True)
class CollabIndex:
    ids: list[str]
    items: np.ndarray  # (rows, rank) float32
    row_of: dict[str, int] = field(repr=False)

    @classmethod
    def build(cls, ids: Sequence[str], items: np.ndarray) -> "CollabIndex":
        items = np.ascontiguousarray(items, np.float32)
        if items.ndim != 2 or len(items) != len(ids):
            raise ValueError(f"the EASE term has {items.shape} item factors for {len(ids)} ids")
        return cls(list(ids), items, {i: r for r, i in enumerate(ids)})

    @property
    def rank(self) -> int:
        return int(self.items.shape[1])

    def rows(self, ids: Sequence[str]) -> np.ndarray:
        """(n,) int64 rows of `ids`; an unknown id -> len(self.ids) (a row no factor has)."""
        pad = len(self.ids)
        return np.fromiter((self.row_of.get(i, pad) for i in ids), np.int64, len(ids))

    def item_rows(self, ids: Sequence[str]) -> np.ndarray:
        """(n, rank) the served item part of `ids`: Q[row], zeros for an unknown id."""
        rows = self.rows(ids)
        out = np.zeros((len(ids), self.rank), np.float32)
        known = rows < len(self.ids)
        out[known] = self.items[rows[known]]
        return out


def write_collab(directory: Path, index: CollabIndex) -> None:
    directory = Path(directory)
    (directory / COLLAB_IDS).write_text(json.dumps(index.ids))
    np.save(directory / COLLAB_ITEMS, index.items, allow_pickle=False)


def read_collab(directory: Path) -> CollabIndex | None:
    """A version's EASE item side, or None when it has none (no term, or an older release's version)."""
    directory = Path(directory)
    if not (directory / COLLAB_IDS).exists():
        return None
    ids = json.loads((directory / COLLAB_IDS).read_text())
    return CollabIndex.build(ids, np.load(directory / COLLAB_ITEMS, allow_pickle=False))
