"""Query latency of the vector store on a real Milvus server, at 100k items.

    .venv/bin/python -m bench.milvus_server [--items 100000] [--dim 64] [--queries 1000]
                                            [--out bench/results/milvus_server.json]

A Milvus 2.3.5 standalone (deploy/milvus_server.py: its own network namespace, reached through one
forwarded loopback port) gets one collection written through store/vectors.py as the trainer writes a
version's item vectors: `--items` random unit vectors of `--dim` (upserts of 5,000 rows), the store's
FLAT inner-product index, Session consistency. Then `--queries` single-query searches, one after
another, each as the API's `store` search path asks: top 10, leaving out 20 random ids (a user's
history), timed around `VectorStore.search` in this process; the first 50 are warm-up and not
counted. The top 10 of 100 queries are compared with exact inner-product search (FLAT: expect 1.0).
For comparison, bench/results/serving.json has milvus-lite's search on the same path at 100k items.
The result records the machine's load: this machine has 2 cores shared with other work, so the
figures are upper bounds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.seed import random_unit
from deploy import milvus_server
from store.vectors import VectorStore, items_collection

REPO = Path(__file__).resolve().parent.parent
COLLECTION = items_collection("bench")
WARMUP = 50


def percentiles_ms(seconds: list[float]) -> dict:
    ms = np.asarray(seconds) * 1000
    return {"query_p50_ms": float(np.percentile(ms, 50)), "query_p99_ms": float(np.percentile(ms, 99)),
            "query_mean_ms": float(ms.mean()), "queries": len(ms)}  # fmt: skip


def fill(store: VectorStore, ids: list[str], vectors: np.ndarray, batch: int = 5000) -> float:
    """Write the collection afresh; return the seconds it took."""
    start = time.perf_counter()
    store.drop(COLLECTION)
    store.ensure_collection(COLLECTION, vectors.shape[1])
    for k in range(0, len(ids), batch):
        store.upsert(COLLECTION, ids[k : k + batch], vectors[k : k + batch], model_id="bench")
    return time.perf_counter() - start


def time_searches(store: VectorStore, ids: list[str], queries: np.ndarray, rng: np.random.Generator) -> list[float]:
    out = []
    for q in queries:
        exclude = set(rng.choice(ids, 20, replace=False).tolist())
        start = time.perf_counter()
        (hits,) = store.search(COLLECTION, q, k=10, exclude=exclude)
        out.append(time.perf_counter() - start)
        assert len(hits) == 10 and not exclude & {h[0] for h in hits}
    return out[WARMUP:]


def check_top10(store: VectorStore, vectors: np.ndarray, ids: list[str], queries: np.ndarray) -> float:
    """Share of exact top-10 ids the store returns (FLAT is exact: expect 1.0)."""
    exact = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    got = store.search(COLLECTION, queries, k=10)
    return float(np.mean([len({ids[j] for j in e} & {h[0] for h in g}) / 10 for e, g in zip(exact, got)]))


def measure(store: VectorStore, ids: list[str], vectors: np.ndarray, queries: np.ndarray, seed: int) -> dict:
    write_s = fill(store, ids, vectors)
    assert store.count(COLLECTION) == len(ids)
    result = percentiles_ms(time_searches(store, ids, queries, np.random.default_rng(seed)))
    result["write_s"] = write_s
    result["top10_agreement_with_exact"] = check_top10(store, vectors, ids, queries[:100])
    return result


def run(items: int, dim: int, n_queries: int, seed: int = 0) -> dict:
    ids = [f"item-{k:07d}" for k in range(items)]
    vectors = random_unit(items, dim, seed)
    queries = random_unit(n_queries + WARMUP, dim, seed + 1)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-milvus-") as tmp:
        started = time.perf_counter()
        with milvus_server.start(Path(tmp) / "server") as server:
            start_s = time.perf_counter() - started
            with VectorStore(server.uri) as store:
                result = measure(store, ids, vectors, queries, seed)
    return {
        "milvus_server_query_p50_ms": result.pop("query_p50_ms"),
        "milvus_server_query_p99_ms": result.pop("query_p99_ms"),
        **result,
        "server_start_s": start_s,
        "items": items, "dim": dim, "k": 10, "excluded_per_query": 20, "index": "FLAT (inner product)",
        "server": "Milvus 2.3.5 standalone (PyPI milvus==2.3.5) in a private network namespace, one "
                  "forwarded loopback port, Session consistency, first start on a fresh directory",
        "machine": f"{os.cpu_count()} CPU cores shared with other agents' work, no GPU; 1-minute load "
                   f"average before {load_before:.1f}, after {os.getloadavg()[0]:.1f}",
    }  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.milvus_server")
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "milvus_server.json")
    args = p.parse_args(argv)
    result = {"command": " ".join(["python -m bench.milvus_server", *(argv if argv is not None else sys.argv[1:])]),
              **run(args.items, args.dim, args.queries)}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if not isinstance(v, dict)}, indent=2))


if __name__ == "__main__":
    main()
