"""Top-K recommendations: a history -> content embeddings -> user tower -> search -> the user's items
removed -> ids, scores, titles and the model version; with a popularity fallback.

Two search paths, chosen by `serving.search`:
- "memory" (default): the jobs of concurrent requests are batched (serving/batching.py); one batch is
  one user-tower forward pass and one (B, d) x (d, N) product over the in-memory index of the served
  version (serving/index.py).
- "store": the plain path, one vector-store search call per request (kept to measure against).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from config import Settings
from serving.batching import MicroBatcher
from serving.content import ContentCache
from serving.index import ModelFollower, ModelSnapshot
from serving.schemas import Fallback, HistoryItem, HistoryRequest, ItemFilter, Recommendations, ScoredItem, SimilarItems
from store.state import Entry, StateReader
from store.titles import TitleReader
from store.vectors import VectorStore
from streams.replica import state_reader
from trainer.towers import LEARN

RECENT = 5  # newest history items echoed in a response


# ---- what can go wrong (the API maps these to status codes) -------------------------------------
class UnknownUser(LookupError):
    def __init__(self, user_id: str):
        super().__init__(f"unknown user {user_id!r}: the state store holds no interactions of this user; "
                         f"ask with ?fallback=popular for popular items")  # fmt: skip


class UnknownItem(LookupError):
    def __init__(self, item_id: str, version: str):
        super().__init__(f"unknown item {item_id!r}: model version {version} has no vector for it")


class NoModel(RuntimeError):
    def __init__(self):
        super().__init__("no model version is served yet (none promoted, or still loading); "
                         "ask with fallback=popular for popular items")  # fmt: skip


class NothingKnown(ValueError):
    def __init__(self, unknown: list[str]):
        self.unknown = unknown
        super().__init__(f"none of the history's items has a content embedding in the store: {unknown[:20]}; "
                         f"ask with fallback=popular for popular items")  # fmt: skip


# ---- the pure part --------------------------------------------------------------------------------
@dataclass
class Job:
    """One request's ranking work: a history (its items' content, oldest first) or an item's vector."""

    k: int
    exclude: set[str]
    history: np.ndarray | None = None  # (T, d_raw)
    history_ids: list[str] | None = None  # the history's item ids (T,): a version's EASE term reads them
    item_id: str | None = None  # rank by this item's vector instead (similar items)
    allow: list[str] | None = None


@dataclass
class Ranked:
    version: str
    items: list[tuple[str, float]]


def user_vectors(model: LEARN, histories: Sequence[np.ndarray], rows: Sequence[np.ndarray] | None = None,
                 pad: int = 0) -> torch.Tensor:  # fmt: skip
    """(B, d) user vectors of histories of raw content embeddings (right-padded here); with `rows`
    (per history, its items' rows in the version's EASE index, `pad` = the index's size for padding and
    unknown items: store/collab.py), the EASE term's part too."""
    lengths = torch.tensor([len(h) for h in histories], dtype=torch.int64)  # (B,)
    x = torch.zeros(len(histories), int(lengths.max()), histories[0].shape[1])  # (B, T, d_raw)
    for b, h in enumerate(histories):
        x[b, : len(h)] = torch.from_numpy(h)
    ids = None
    if rows is not None:
        ids = torch.full(x.shape[:2], pad, dtype=torch.int64)  # (B, T)
        for b, r in enumerate(rows):
            ids[b, : len(r)] = torch.from_numpy(np.asarray(r, np.int64))
    with torch.inference_mode():
        return model.encode_users(x, lengths, ids=ids)


def job_users(snap: ModelSnapshot, jobs: Sequence[Job]) -> torch.Tensor:
    """The user vectors of history jobs under the snapshot's version (its EASE rows by the ids)."""
    if snap.collab is None:
        return user_vectors(snap.model, [j.history for j in jobs])
    if any(j.history_ids is None or len(j.history_ids) != len(j.history) for j in jobs):
        raise ValueError(f"model version {snap.version} has an EASE term: a history needs its item ids")
    rows = [snap.collab.rows(j.history_ids) for j in jobs]
    return user_vectors(snap.model, [j.history for j in jobs], rows, len(snap.collab.ids))


def rank_in_memory(snap: ModelSnapshot, jobs: list[Job]) -> list[Ranked | Exception]:
    """Rank a batch of jobs against the snapshot's in-memory index (one tower pass, one product)."""
    index = snap.index
    out: list[Ranked | Exception | None] = [None] * len(jobs)
    rows, queries = [], []
    users = [b for b, j in enumerate(jobs) if j.history is not None]
    if users:
        u = job_users(snap, [jobs[b] for b in users])
        rows += users
        queries += list(u)
    for b, j in enumerate(jobs):
        if j.item_id is not None:
            v = index.vector(j.item_id)
            if v is None:
                out[b] = UnknownItem(j.item_id, snap.version)
            else:
                rows.append(b)
                queries.append(v)
    if rows:
        hits = index.search(torch.stack(queries), [jobs[b].k for b in rows], [jobs[b].exclude for b in rows],
                            [jobs[b].allow for b in rows])  # fmt: skip
        for b, h in zip(rows, hits):
            out[b] = Ranked(snap.version, h)
    return out


def count_popularity(sequences) -> Counter:
    """Items by the number of users whose recent history holds them."""
    counts: Counter = Counter()
    for _, seq in sequences:
        counts.update({e.item_id for e in seq})
    return counts


# ---- the state store as the API reads it -------------------------------------------------------------
class StateView:
    """A StateReader shared by request handlers and the thread that calls `catch_up` (which may open
    newly created partitions, so the two are serialised; a read is microseconds)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        # secondary (same machine) or a changelog replica of this API process's own (state.reader)
        self.reader = state_reader(settings, f"api-{settings.serving.port}")
        self._lock = threading.Lock()

    def sequence(self, user_id: str) -> list[Entry] | None:
        with self._lock:
            return self.reader.sequence(user_id)

    def scan(self, fn):
        """`fn(users)` over every (user, sequence), under the lock."""
        with self._lock:
            return fn(self.reader.users())

    def catch_up(self) -> None:
        with self._lock:
            self.reader.catch_up()

    def close(self) -> None:
        with self._lock:
            self.reader.close()


class Popularity:
    """The most popular items now, recounted from the state store at most every `ttl_s`, on first use
    (a scan of every user: its own reader, so requests never wait for it)."""

    def __init__(self, settings: Settings, ttl_s: float = 60.0, top_n: int = 1000, state: StateView | None = None):
        self.settings, self.ttl_s, self.top_n = settings, ttl_s, top_n
        # a changelog replica has one writer (the API's StateView): count through it, not a reader of its own
        self.state = state if settings.state.reader == "changelog" else None
        self._top: list[tuple[str, int]] = []
        self._at = -float("inf")
        self._lock = threading.Lock()

    def top(self) -> list[tuple[str, int]]:
        with self._lock:
            if time.monotonic() - self._at > self.ttl_s and self.state is not None:
                self._top = self.state.scan(count_popularity).most_common(self.top_n)
                self._at = time.monotonic()
            elif time.monotonic() - self._at > self.ttl_s:
                reader = StateReader(self.settings.state_path, self.settings.topics.interactions)
                try:
                    self._top = count_popularity(reader.users()).most_common(self.top_n)
                finally:
                    reader.close()
                self._at = time.monotonic()
            return self._top


# ---- the recommender -----------------------------------------------------------------------------
@dataclass
class Recommender:
    settings: Settings
    state: StateView
    follower: ModelFollower
    content: ContentCache
    titles: TitleReader
    store: VectorStore
    popularity: Popularity
    observe_search: Callable[[float], None] = lambda seconds: None
    observe_batch: Callable[[int, float], None] = lambda size, seconds: None
    _ranker: MicroBatcher | None = field(default=None, init=False)
    _fetcher: MicroBatcher | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        s = self.settings.serving
        self._fetcher = MicroBatcher(self.content.fetch_many, s.max_batch, "content-fetch")
        if s.search == "memory":
            self._ranker = MicroBatcher(self._rank_batch, s.max_batch, "ranker", self.observe_batch)

    def close(self) -> None:
        for b in (self._ranker, self._fetcher):
            if b is not None:
                b.close()

    # -- requests --
    async def for_user(self, user_id: str, k: int, fallback: Fallback = "none") -> Recommendations:
        seq = self.state.sequence(user_id)
        if seq is None:
            if fallback == "popular":
                return await self._popular(user_id, [], k, ItemFilter(), [], [])
            raise UnknownUser(user_id)
        return await self._recommend(user_id, [e.item_id for e in seq], k, ItemFilter(), fallback,
                                     [e.event_time for e in seq])  # fmt: skip

    async def for_history(self, req: HistoryRequest) -> Recommendations:
        return await self._recommend(None, req.history, req.k, req.filter, req.fallback, None)

    async def similar(self, item_id: str, k: int) -> SimilarItems:
        ranked = await self._rank(Job(k, {item_id}, item_id=item_id))
        return SimilarItems(item_id=item_id, title=self.titles.get(item_id), model_version=ranked.version,
                            items=self._titled(ranked.items))  # fmt: skip

    # -- the steps --
    async def _recommend(self, user_id, history: list[str], k: int, flt: ItemFilter, fallback: Fallback,
                         times: list[float] | None) -> Recommendations:  # fmt: skip
        recent = [HistoryItem(item_id=i, title=self.titles.get(i), event_time=times[n] if times else None)
                  for n, i in reversed(list(enumerate(history))[-RECENT:])]  # fmt: skip
        snap = self.follower.snapshot
        if snap is None:
            if fallback == "popular":
                return await self._popular(user_id, history, k, flt, recent, [])
            raise NoModel()
        content, unknown = await self._content(history)
        known = [i for i in history if i in content][-snap.max_seq_len :]
        if not known:
            if fallback == "popular":
                return await self._popular(user_id, history, k, flt, recent, unknown)
            raise NothingKnown(unknown)
        exclude = set(flt.exclude) | (set(history) if flt.exclude_history else set())
        ranked = await self._rank(Job(k, exclude, history=np.stack([content[i] for i in known]), history_ids=known,
                                      allow=flt.only))  # fmt: skip
        return Recommendations(user_id=user_id, model_version=ranked.version, source="model",
                               items=self._titled(ranked.items), recent_items=recent, unknown_items=unknown)  # fmt: skip

    async def _content(self, history: list[str]) -> tuple[dict[str, np.ndarray], list[str]]:
        """The history's content embeddings by id (cache, then one store call) and the unknown ids."""
        found, missing = self.content.lookup(dict.fromkeys(history))
        if missing:
            found.update(await self._fetcher.submit(missing))
        return found, [i for i in dict.fromkeys(history) if i not in found]

    async def _rank(self, job: Job) -> Ranked:
        if self._ranker is not None:
            return await self._ranker.submit(job)
        return await asyncio.to_thread(self._rank_plain, job)

    def _rank_batch(self, jobs: list[Job]) -> list[Ranked | Exception]:
        snap = self.follower.snapshot  # read once: the whole batch is answered by one version
        if snap is None or snap.index is None:
            return [NoModel() for _ in jobs]
        t0 = time.perf_counter()
        out = rank_in_memory(snap, jobs)
        self.observe_search(time.perf_counter() - t0)
        return out

    def _rank_plain(self, job: Job) -> Ranked:
        """One request, one vector-store search call (plus a lookup of the item's vector for `similar`)."""
        snap = self.follower.snapshot
        if snap is None:
            raise NoModel()
        if job.history is not None:
            query = job_users(snap, [job]).numpy()
        else:
            row = self.store.get(snap.collection, [job.item_id], with_vectors=True).get(job.item_id)
            if row is None:
                raise UnknownItem(job.item_id, snap.version)
            query = row.vector[None, :]
        t0 = time.perf_counter()
        if job.allow is not None:  # score the allowed items only: their vectors, in one call
            rows = self.store.get(snap.collection, job.allow, with_vectors=True)
            hits = sorted(((i, float(r.vector @ query[0])) for i, r in rows.items() if i not in job.exclude),
                          key=lambda x: -x[1])[: job.k]  # fmt: skip
        else:
            hits = self.store.search(snap.collection, query, job.k, exclude=job.exclude)[0]
        self.observe_search(time.perf_counter() - t0)
        return Ranked(snap.version, hits)

    async def _popular(self, user_id, history: list[str], k: int, flt: ItemFilter, recent, unknown) -> Recommendations:
        top = await asyncio.to_thread(self.popularity.top)
        snap = self.follower.snapshot
        exclude = set(flt.exclude) | (set(history) if flt.exclude_history else set())
        allow = set(flt.only) if flt.only is not None else None
        live = snap.index.row_of if snap is not None and snap.index is not None else None  # deleted items out
        items = [(i, float(n)) for i, n in top
                 if i not in exclude and (allow is None or i in allow) and (live is None or i in live)][:k]  # fmt: skip
        return Recommendations(user_id=user_id, model_version=snap.version if snap else None, source="popular",
                               items=self._titled(items), recent_items=recent, unknown_items=unknown)  # fmt: skip

    def _titled(self, items: list[tuple[str, float]]) -> list[ScoredItem]:
        return [ScoredItem(item_id=i, score=s, title=self.titles.get(i)) for i, s in items]
