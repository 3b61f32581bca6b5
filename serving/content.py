"""Raw content embeddings of the items in users' histories, cached in memory (LRU).

The user tower reads the frozen LLM's content embeddings of a user's recent items. They live in the
vector store's `content` collection (written by the encoder worker); a store round trip costs tens of
milliseconds, so each vector is fetched once (misses of concurrent requests in one call, see
serving/batching.py) and kept until evicted or until the store reports the item rewritten
(`invalidate`, fed by serving/index.py's sync).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence

import numpy as np

from store.vectors import CONTENT, VectorStore


class ContentCache:
    def __init__(self, store: VectorStore, capacity: int):
        self.store, self.capacity = store, capacity
        self._data: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._data)

    def lookup(self, ids: Iterable[str]) -> tuple[dict[str, np.ndarray], list[str]]:
        """(the cached vectors by id, the ids not cached)."""
        found, missing = {}, []
        with self._lock:
            for i in ids:
                v = self._data.get(i)
                if v is None:
                    missing.append(i)
                else:
                    self._data.move_to_end(i)
                    found[i] = v
        return found, missing

    def fetch(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
        """Read `ids` from the store (blocking) and cache them; absent ids are left out."""
        ids = list(dict.fromkeys(ids))
        if not ids:
            return {}
        try:
            rows = self.store.get(CONTENT, ids, with_vectors=True)
        except Exception:
            if not self.store.has(CONTENT):  # nothing encoded yet
                return {}
            raise
        got = {i: r.vector for i, r in rows.items()}
        with self._lock:
            for i, v in got.items():
                self._data[i] = v
                self._data.move_to_end(i)
            while len(self._data) > self.capacity:
                self._data.popitem(last=False)
        return got

    def fetch_many(self, jobs: list[Sequence[str]]) -> list[dict[str, np.ndarray]]:
        """One store call for the misses of several requests (a MicroBatcher function)."""
        got = self.fetch([i for ids in jobs for i in ids])
        return [{i: got[i] for i in ids if i in got} for ids in jobs]

    def invalidate(self, ids: Iterable[str] | None) -> None:
        """Forget `ids` (their content was rewritten); None forgets everything."""
        with self._lock:
            if ids is None:
                self._data.clear()
                return
            for i in ids:
                self._data.pop(i, None)
