"""The in-memory top-K index of the served model version, kept consistent with the registry and store.

Why in memory: one milvus-lite search call costs ~45 ms of fixed overhead at 4.4k items (~200 ms at
100k, measured here), while scoring all item vectors of a version in process is one (B, d) x (d, N)
product and a top-k. So the API keeps a copy of the current version's `items_<version>` collection
and answers from it; the vector store stays the durable record, and this copy follows it:

- Version switches: the registry's CURRENT is followed (store/registry.py `CurrentFollower`); a new
  version is loaded (its model artefact through trainer/checkpoint.py: the project's own model
  module and safetensors weights, no archived code; plus a full scan of its collection) in the
  background while the old snapshot keeps serving, then one reference assignment swaps them. A
  request reads the snapshot once, so it is answered entirely by one version, and no request fails
  during a switch.
- Items added or changed after the version was published (the encoder worker upserts new items into
  the current version's collection): every `serving.sync_s` the rows stamped (`written_at`) since the
  previous sync began, less a margin, are listed (ids and times only), and the vectors of the rows
  that are new or newer than the copy's are fetched. Their content embeddings leave the cache too.
- Items deleted (tombstones delete from every `items_*` collection): the row count is compared with
  the copy's; when the store holds fewer rows, the ids are listed and the missing ones dropped.
So the copy lags the store by at most about `sync_s` (two syncs when a delete races an insert).

Snapshots and indexes are immutable: a sync builds a new `ItemIndex` and swaps it in. At catalogue
scale the index is approximate (`serving.index`, serving/ann.py `AnnIndex`: the same interface).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from store.collab import CollabIndex, read_collab
from store.registry import CurrentFollower, ModelRegistry
from store.vectors import QUERY_CAP, VectorStore
from trainer.checkpoint import load_checkpoint
from trainer.towers import LEARN

log = logging.getLogger(__name__)

WRITE_MARGIN_S = 10.0  # a writer stamps written_at before its upsert call returns; re-list this window


# ---- the index ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ItemIndex:
    """Item-tower vectors of one version, searchable by inner product (vectors are L2-normalised)."""

    ids: list[str]
    vectors: torch.Tensor  # (N, d) float32
    written_at: np.ndarray  # (N,) float64, the store's write time of each row
    row_of: dict[str, int] = field(repr=False)

    @classmethod
    def build(cls, ids: Sequence[str], vectors: np.ndarray, written_at: np.ndarray) -> "ItemIndex":
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)  # (N, d)
        return cls(list(ids), torch.from_numpy(vectors), np.asarray(written_at, np.float64),
                   {i: r for r, i in enumerate(ids)})  # fmt: skip

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def newest(self) -> float:
        return float(self.written_at.max()) if len(self) else 0.0

    def vector(self, item_id: str) -> torch.Tensor | None:
        row = self.row_of.get(item_id)
        return None if row is None else self.vectors[row]

    def search(
        self,
        queries: torch.Tensor,  # (B, d)
        ks: Sequence[int],
        exclude: Sequence[set[str]],
        allow: Sequence[Sequence[str] | None] | None = None,
    ) -> list[list[tuple[str, float]]]:
        """Per query, the top `ks[b]` (id, score) leaving out `exclude[b]`, among `allow[b]` if given."""
        if len(self) == 0:
            return [[] for _ in ks]
        scores = queries.to(torch.float32) @ self.vectors.T  # (B, N)
        out = []
        for b, k in enumerate(ks):
            rows = None
            if allow is not None and allow[b] is not None:
                rows = [r for r in (self.row_of.get(i) for i in allow[b]) if r is not None]
            out.append(self._top(scores[b], k, exclude[b], rows))
        return out

    def _top(self, scores: torch.Tensor, k: int, exclude: set[str], rows: list[int] | None):
        if rows is not None:
            scores = scores[rows]  # (M,)
        ids = self.ids if rows is None else [self.ids[r] for r in rows]
        n = min(len(ids), k + len(exclude))
        if n == 0:
            return []
        top = torch.topk(scores, n)  # sorted, best first
        hits = ((ids[i], float(s)) for s, i in zip(top.values.tolist(), top.indices.tolist()))
        return [h for h in hits if h[0] not in exclude][:k]

    def with_changes(self, rows: list[dict], deleted: set[str]) -> "ItemIndex":
        """A new index: `rows` (item_id, vector, written_at) upserted, `deleted` ids removed."""
        vectors = self.vectors.numpy()
        if deleted:
            keep = np.array([i not in deleted for i in self.ids], dtype=bool)
            ids = [i for i, k in zip(self.ids, keep) if k]
            vectors, written = vectors[keep], self.written_at[keep]
        else:
            ids, vectors, written = list(self.ids), vectors.copy(), self.written_at.copy()
        row_of = {i: r for r, i in enumerate(ids)} if deleted else dict(self.row_of)
        new_ids, new_vecs, new_times = [], [], []
        for r in rows:
            at = row_of.get(r["item_id"])
            if at is not None:
                vectors[at], written[at] = r["vector"], r["written_at"]
            else:
                row_of[r["item_id"]] = len(ids) + len(new_ids)
                new_ids.append(r["item_id"])
                new_vecs.append(r["vector"])
                new_times.append(r["written_at"])
        if new_ids:
            ids += new_ids
            vectors = np.concatenate([vectors, np.asarray(new_vecs, np.float32).reshape(len(new_ids), -1)])
            written = np.concatenate([written, np.asarray(new_times, np.float64)])
        return ItemIndex(ids, torch.from_numpy(np.ascontiguousarray(vectors)), written, row_of)


# ---- reading the store -------------------------------------------------------------------------
def load_index(store: VectorStore, name: str) -> ItemIndex:
    rows = list(store.scan(name, ["vector", "written_at"]))
    if not rows:
        return ItemIndex.build([], np.zeros((0, store.dim(name)), np.float32), np.zeros(0))
    return ItemIndex.build([r["item_id"] for r in rows], np.asarray([r["vector"] for r in rows], np.float32),
                           np.array([r["written_at"] for r in rows]))  # fmt: skip


def changed_since(store: VectorStore, name: str, since: float) -> list[dict]:
    """(item_id, written_at) of the rows written at or after `since` (one query, or a scan when more)."""
    flt = f"written_at >= {since!r}"
    rows = store.query(name, flt, ["written_at"], limit=QUERY_CAP)
    return rows if len(rows) < QUERY_CAP else list(store.scan(name, ["written_at"], flt))


# ---- the served model --------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelSnapshot:
    """What one request is answered with: a version's model (its `encode_users` is the user tower),
    (memory mode) its item index and, for a model with an EASE term, the term's id index (the user
    vector's part needs the history's rows: store/collab.py)."""

    version: str
    collection: str
    model: LEARN
    index: ItemIndex | None
    loaded_at: float
    max_seq_len: int = 50  # the user tower's positions: a longer history is cut to its newest items
    collab: CollabIndex | None = None


class ModelFollower:
    """Keeps `snapshot` on the registry's current version and its index in step with the store.

    `poll()` (every `poll_s`) follows the registry pointer; `sync()` (every `sync_s`) follows the
    store. Both run on one background thread (`start`); tests call them directly.
    """

    def __init__(self, registry: ModelRegistry, store: VectorStore, in_memory: bool,
                 on_content_change: Callable[[list[str]], None] | None = None,
                 on_switch: Callable[[ModelSnapshot, float], None] | None = None,
                 make_index: Callable[[ItemIndex], ItemIndex] | None = None):  # fmt: skip
        self.registry, self.store, self.in_memory = registry, store, in_memory
        # exact or approximate (serving/ann.py `index_chooser`); applied to every new index
        self.make_index = make_index or (lambda index: index)
        self.current = CurrentFollower(registry)
        self.on_content_change = on_content_change
        self.on_switch = on_switch
        self.snapshot: ModelSnapshot | None = None
        self.checked = False  # the registry has been looked at once (readiness)
        self.error: str | None = None
        self.last_sync_s = 0.0  # how long the last sync took (its store queries dominate)
        self._since = 0.0  # rows stamped from then on are listed by the next sync
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- following the registry --
    def poll(self) -> bool:
        """Load the current version if the pointer moved; True when the snapshot changed."""
        current = self.current.poll()
        if current is None:
            self.checked = True
            return False
        t0, started = time.perf_counter(), time.time()
        model, _ = load_checkpoint(current.path)
        index = self.make_index(load_index(self.store, current.collection)) if self.in_memory else None
        collab = read_collab(current.path) if model.collab_active() else None
        if model.collab_active() and collab is None:
            raise ValueError(f"model version {current.name} has an EASE term but no {current.path.name}/collab_ids.json")
        snap = ModelSnapshot(current.name, current.collection, model, index, time.time(), model.cfg.max_seq_len, collab)
        self.snapshot = snap
        self.current.accept(current)
        self.checked, self.error = True, None
        self._since = started - WRITE_MARGIN_S  # what the scan may have missed
        seconds = time.perf_counter() - t0
        log.info("serving model version %s (%s items in memory, loaded in %.1fs)", current.name,
                 len(index) if index is not None else "no", seconds)  # fmt: skip
        if self.on_switch:
            self.on_switch(self.snapshot, seconds)
        return True

    # -- following the store --
    def sync(self) -> None:
        """Bring the snapshot's index up to the rows written since the last sync (see the module doc).

        Only rows stamped at or after (the previous sync's start - WRITE_MARGIN_S) are listed: a row not
        visible to that sync was stamped less than the margin before it started. The rows that are new
        or newer than the copy's are fetched; their items' content is dropped from the content cache
        too (the encoder worker rewrites an item's content and its vector in the same batch).
        """
        snap, since = self.snapshot, self._since
        if snap is None:
            return
        started = time.time()
        changed = changed_since(self.store, snap.collection, since)
        index = snap.index
        if index is None:  # store mode: nothing to copy, only the content cache to keep honest
            stale = [r["item_id"] for r in changed]
        else:
            stale = [r["item_id"] for r in changed
                     if (row := index.row_of.get(r["item_id"])) is None or index.written_at[row] < r["written_at"]]  # fmt: skip
            if stale:
                got = self.store.get(snap.collection, stale, with_vectors=True)
                index = index.with_changes([{"item_id": i, "vector": r.vector, "written_at": r.written_at}
                                            for i, r in got.items()], set())  # fmt: skip
            if self.store.count(snap.collection) < len(index):  # something was deleted
                present = {r["item_id"] for r in self.store.scan(snap.collection, [])}
                index = index.with_changes([], {i for i in index.ids if i not in present})
            if index is not snap.index:
                index = self.make_index(index)  # "auto" may cross its threshold
        if stale and self.on_content_change:
            self.on_content_change(stale)
        if self.snapshot is snap:  # not replaced by a version switch meanwhile
            if index is not snap.index:
                self.snapshot = replace(snap, index=index)
            self._since = started - WRITE_MARGIN_S

    # -- the thread --
    def start(self, poll_s: float, sync_s: float) -> None:
        self._thread = threading.Thread(target=self._run, args=(poll_s, sync_s), name="model-follower", daemon=True)
        self._thread.start()

    def _run(self, poll_s: float, sync_s: float) -> None:
        next_sync = time.monotonic() + sync_s
        while not self._stop.is_set():
            try:
                self.poll()
                if time.monotonic() >= next_sync:
                    t0 = time.monotonic()
                    self.sync()
                    self.last_sync_s = time.monotonic() - t0
                    next_sync = time.monotonic() + sync_s
            except Exception as e:  # noqa: BLE001 - keep serving the last good snapshot
                self.error = f"{type(e).__name__}: {e}"
                self.checked = True
                log.exception("following the registry/store failed; still serving %s",
                              self.snapshot.version if self.snapshot else "nothing")  # fmt: skip
            self._stop.wait(poll_s)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
