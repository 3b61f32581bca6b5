"""An approximate top-K index (faiss HNSW or IVF, inner product) behind the exact index's interface.

The exact in-memory index (serving/index.py `ItemIndex`) scores every item: one (B, d) x (d, N)
product, right at 100k items, ~N x d x 4 bytes read per batch beyond that. `AnnIndex` answers the same
calls (`search`, `vector`, `with_changes`, `ids`, `row_of`, `written_at`, `len`) from a faiss index
over the full vectors (Flat storage, no compression), one of two kinds (`serving.ann_kind`):
- "ivf" (default): `IndexIVFFlat`, the items split into `ann_nlist` k-means cells (~sqrt(N)); a query
  scores the `ann_nprobe` nearest cells' items;
- "hnsw": `IndexHNSWFlat`, a navigable small-world graph (`ann_m` links a node, built with
  `ann_ef_construction`); a query walks it keeping the `ann_ef_search` best candidates.
Chosen by measurement at 1M items on the served 640-wide vectors (bench/ann.py,
bench/results/scale/ann.json): IVF (1000 cells) built in 31 s and reached recall@10 0.999 / 1.0 at
nprobe 16 / 32; HNSW (M 16) took 1008 s to build and reached 0.94 / 0.966 at ef 256 / 512. (At 30-50k
items with 1000 cells, ~40 items a cell, IVF's recall stayed near 0.9 where HNSW's passed 0.99; "auto"
switches to the ANN index only from serving.ann_min_items = 200k items.)

How a snapshot stays immutable while the follower applies changes (an LSM-like split, the way Milvus
keeps a sealed segment beside a growing one):
- `base`: the faiss index as built, never mutated once a snapshot holds it;
- `stale`: the base labels no longer live (deleted, or rewritten since the build), filtered out of
  every base search by a faiss ID selector built once per snapshot;
- `fresh`: an exact `ItemIndex` of the rows upserted since the build, searched exactly beside it;
- `exact`: the exact index of every live row, the record the others are a view of (vectors for
  `vector()`, allow-lists and rebuilds; write times and ids for the follower).
`with_changes` returns a new `AnnIndex` sharing `base`; once stale + fresh rows exceed
`rebuild_fraction` of the catalogue it builds a new base instead (on the follower's background thread:
requests keep being answered by the old snapshot meanwhile).

Filters stay exact: a query's excluded ids (its history, the request's `exclude`) are removed by
over-fetching: the base is asked for k + m hits, m the number of the query's excluded ids that are live
base items, so dropping them still leaves k (when the search reaches that many). An allow-list
(`only`) is scored exactly over the allowed rows (the exact index's `allow` path): a short list never
needs the ANN.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import faiss
import numpy as np
import torch

from serving.index import ItemIndex

TRAIN_POINTS_PER_CELL = 64  # k-means sample per cell (faiss warns below 39)
TRAIN_ITERATIONS = 10


@dataclass(frozen=True)
class AnnParams:
    kind: str = "ivf"  # "ivf" | "hnsw"
    m: int = 16  # HNSW: graph links per node
    ef_construction: int = 100  # HNSW: candidates kept while inserting
    ef_search: int = 512  # HNSW: candidates kept while searching (recall against speed)
    nlist: int = 0  # IVF: k-means cells; 0: about sqrt(N)
    nprobe: int = 32  # IVF: cells scored per query
    rebuild_fraction: float = 0.05  # rebuild the base when stale + fresh rows exceed this share of N
    build_threads: int = 0  # OpenMP threads of a (re)build, on the thread that builds (0: faiss's default)
    search_threads: int = 1  # OpenMP threads of a search call, on the calling thread (0: faiss's default)
    seed: int = 1234

    @classmethod
    def from_settings(cls, s) -> "AnnParams":
        return cls(s.ann_kind, s.ann_m, s.ann_ef_construction, s.ann_ef_search, s.ann_nlist, s.ann_nprobe,
                   s.ann_rebuild_fraction, s.ann_build_threads, s.torch_threads)  # fmt: skip

    def cells(self, n: int) -> int:
        """The number of cells for n items: nlist, or ~sqrt(n); at most n / 39 (k-means needs points)."""
        want = self.nlist or int(round(math.sqrt(n)))
        return max(1, min(want, n // 39))


def build_base(vectors: np.ndarray, params: AnnParams) -> faiss.Index:
    """The params' kind of inner-product index over `vectors` (N, d) float32, labels 0..N-1."""
    if params.build_threads > 0:
        faiss.omp_set_num_threads(params.build_threads)  # this thread's OpenMP setting only
    if params.kind == "hnsw":
        index = faiss.IndexHNSWFlat(vectors.shape[1], params.m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = params.ef_construction
        index.hnsw.efSearch = params.ef_search
        index.add(vectors)
        return index
    if params.kind == "ivf":
        return build_ivf(vectors, params)
    raise ValueError(f"unknown ANN kind {params.kind!r}: hnsw or ivf")


def search_parameters(index: faiss.Index, sel) -> faiss.SearchParameters:
    """The index's own search knob (efSearch or nprobe, as set on it) and an ID selector or None."""
    if isinstance(index, faiss.IndexHNSW):
        p = faiss.SearchParametersHNSW(efSearch=index.hnsw.efSearch)
    else:
        p = faiss.SearchParametersIVF(nprobe=index.nprobe)
    if sel is not None:
        p.sel = sel
    return p


def build_ivf(vectors: np.ndarray, params: AnnParams) -> faiss.Index:
    """An IVF-Flat inner-product index over `vectors` (N, d) float32, labels 0..N-1."""
    n, d = vectors.shape
    index = faiss.index_factory(d, f"IVF{params.cells(n)},Flat", faiss.METRIC_INNER_PRODUCT)
    index.cp.max_points_per_centroid = TRAIN_POINTS_PER_CELL
    index.cp.niter = TRAIN_ITERATIONS
    index.cp.seed = params.seed
    index.train(vectors)
    index.add(vectors)
    index.nprobe = min(params.nprobe, index.nlist)
    return index


def excluding(labels: Sequence[int]):
    """faiss search parameters of an IVF search that skips `labels` (None when there are none)."""
    if not labels:
        return None
    batch = faiss.IDSelectorBatch(np.asarray(sorted(labels), dtype=np.int64))
    return batch, faiss.IDSelectorNot(batch)  # the inner selector must outlive the outer


@dataclass(frozen=True, eq=False)
class AnnIndex:
    """See the module docstring. Build with `AnnIndex.of(exact_index, params)`."""

    exact: ItemIndex
    base: faiss.Index = field(repr=False)
    base_ids: list[str] = field(repr=False)  # faiss label -> item id
    label_of: dict[str, int] = field(repr=False)  # item id -> faiss label
    stale: frozenset[int]
    fresh: ItemIndex
    params: AnnParams
    _skip: tuple | None = field(default=None, repr=False)  # (selectors) of `stale`, built once

    @classmethod
    def of(cls, exact: ItemIndex, params: AnnParams) -> "AnnIndex":
        base = build_base(np.ascontiguousarray(exact.vectors.numpy()), params)
        empty = ItemIndex.build([], np.zeros((0, exact.dim), np.float32), np.zeros(0))
        return cls(exact, base, list(exact.ids), dict(exact.row_of), frozenset(), empty, params)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_skip", excluding(self.stale))

    # -- the exact index's read interface, from the record --
    def __len__(self) -> int:
        return len(self.exact)

    @property
    def ids(self) -> list[str]:
        return self.exact.ids

    @property
    def vectors(self) -> torch.Tensor:
        return self.exact.vectors

    @property
    def written_at(self) -> np.ndarray:
        return self.exact.written_at

    @property
    def row_of(self) -> dict[str, int]:
        return self.exact.row_of

    @property
    def dim(self) -> int:
        return self.exact.dim

    @property
    def newest(self) -> float:
        return self.exact.newest

    def vector(self, item_id: str) -> torch.Tensor | None:
        return self.exact.vector(item_id)

    # -- search --
    def search(
        self,
        queries: torch.Tensor,  # (B, d)
        ks: Sequence[int],
        exclude: Sequence[set[str]],
        allow: Sequence[Sequence[str] | None] | None = None,
    ) -> list[list[tuple[str, float]]]:
        """Per query, the top `ks[b]` (id, score) leaving out `exclude[b]`, among `allow[b]` if given."""
        out: list[list[tuple[str, float]] | None] = [None] * len(ks)
        restricted = [b for b in range(len(ks)) if allow is not None and allow[b] is not None]
        if restricted:  # allow-lists: exact over the allowed rows
            got = self.exact.search(queries[restricted], [ks[b] for b in restricted],
                                    [exclude[b] for b in restricted], [allow[b] for b in restricted])  # fmt: skip
            for b, hits in zip(restricted, got):
                out[b] = hits
        free = [b for b in range(len(ks)) if out[b] is None]
        if free:
            for b, hits in zip(free, self._search_free(queries[free], [ks[b] for b in free],
                                                       [exclude[b] for b in free])):  # fmt: skip
                out[b] = hits
        return out  # type: ignore[return-value]

    def _search_free(self, queries: torch.Tensor, ks: list[int], exclude: list[set[str]]):
        q = np.ascontiguousarray(queries.detach().to(torch.float32).numpy())
        live = [sum(1 for i in ex if (lab := self.label_of.get(i)) is not None and lab not in self.stale)
                for ex in exclude]  # fmt: skip
        fetch = min(max(k + m for k, m in zip(ks, live)), self.base.ntotal)
        base_hits: list[list[tuple[str, float]]] = [[] for _ in ks]
        if fetch > 0:
            if self.params.search_threads > 0:
                faiss.omp_set_num_threads(self.params.search_threads)  # this request thread's setting
            params = search_parameters(self.base, self._skip[1] if self._skip is not None else None)
            scores, labels = self.base.search(q, fetch, params=params)
            for b, ex in enumerate(exclude):
                hits = ((self.base_ids[lab], float(s)) for s, lab in zip(scores[b], labels[b]) if lab >= 0)
                base_hits[b] = [h for h in hits if h[0] not in ex][: ks[b]]
        if len(self.fresh) == 0:
            return base_hits
        fresh_hits = self.fresh.search(queries, ks, exclude)
        return [sorted(a + f, key=lambda h: -h[1])[:k] for a, f, k in zip(base_hits, fresh_hits, ks)]

    # -- changes --
    def with_changes(self, rows: list[dict], deleted: set[str]) -> "AnnIndex":
        """A new index: `rows` (item_id, vector, written_at) upserted, `deleted` ids removed; the base is
        shared (its rewritten and deleted labels marked stale) or rebuilt past `rebuild_fraction`."""
        exact = self.exact.with_changes(rows, deleted)
        touched = {r["item_id"] for r in rows} | set(deleted)
        stale = self.stale | {lab for i in touched if (lab := self.label_of.get(i)) is not None}
        fresh = self.fresh.with_changes(rows, {i for i in deleted if i in self.fresh.row_of})  # as exact: delete, then upsert
        if len(stale) + len(fresh) > self.params.rebuild_fraction * max(len(exact), 1):
            return AnnIndex.of(exact, self.params)
        return AnnIndex(exact, self.base, self.base_ids, self.label_of, frozenset(stale), fresh, self.params)


def choose_index(index: ItemIndex | AnnIndex, kind: str, min_items: int, params: AnnParams):
    """The index a snapshot should hold: exact, or approximate ("ann"; "auto": from `min_items` items on).
    An empty catalogue stays exact (nothing to cluster)."""
    exact = index.exact if isinstance(index, AnnIndex) else index
    if len(exact) == 0 or kind == "exact" or (kind == "auto" and len(exact) < min_items):
        return exact
    return index if isinstance(index, AnnIndex) else AnnIndex.of(exact, params)


def index_chooser(serving_settings):
    """`ModelFollower(make_index=...)` for the settings' `serving.index` choice."""
    s = serving_settings
    params = AnnParams.from_settings(s)
    return lambda index: choose_index(index, s.index, s.ann_min_items, params)
