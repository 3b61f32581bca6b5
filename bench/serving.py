"""Query latency and throughput of the API, in memory (batched) vs the plain one-search-call-per-request path.

    .venv/bin/python bench/serving.py [--sizes 4.4k,100k] [--out bench/results/serving.json]

For each catalogue size a deployment is seeded (bench/seed.py: content + titles in the vector store,
users' sequences in the state store, an untrained model version published the trainer's way):
  4.4k  the real Amazon Scientific catalogue (UniSRec, 4,385 items) with its 8,442 users' sequences;
        content = the frozen LLM's embeddings from the embedding cache when it holds them all, else
        random unit vectors of the encoder's width (the result says which)
  100k  a synthetic catalogue: 100,000 random unit content vectors of the same width, 20,000 users
        with 5-50 items drawn by a Zipf-like popularity
A separate process holds the milvus-lite file (the encoder worker's role); the API runs as its own
process (uvicorn) and, like the bench process, reaches the store over loopback gRPC, as in the
running system.

Per path, against the API over real HTTP (aiohttp, keep-alive) on 127.0.0.1:
  request_p50_ms / request_p99_ms  one client, requests one after another (a single request's latency)
  requests_per_s                   `--clients` concurrent clients (closed loop), with their latency
                                   as loaded_p50_ms / loaded_p99_ms
  search_p50_ms / search_p99_ms    the search alone, for one query, timed in the bench process: the
                                   in-memory index (memory) or one vector-store search call (plain)
Every user asked is asked once before measuring (the API's content cache warm, as in steady state).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.seed import publish_version, random_unit, write_catalogue, write_sequences  # noqa: E402
from config import Settings, load_settings  # noqa: E402
from deploy.broker import free_port  # noqa: E402
from deploy.stack import settings_env  # noqa: E402
from serving.api import command  # noqa: E402
from serving.index import load_index  # noqa: E402
from serving.recommend import user_vectors  # noqa: E402
from store.registry import open_registry  # noqa: E402
from store.vectors import CONTENT, VectorStore  # noqa: E402
from trainer.checkpoint import load_checkpoint  # noqa: E402


def pct(xs, q) -> float:
    return float(np.percentile(np.asarray(xs) * 1000, q))


# ---- the catalogues ------------------------------------------------------------------------------
def real_catalogue(settings: Settings):
    """(ids, content, titles, sequences, what the content is) of the Scientific catalogue."""
    from encoder.content import ContentEncoder
    from trainer.data import load_dataset

    data = load_dataset("amazon-scientific-unisrec", settings.shared_data_dir)
    enc = ContentEncoder(settings.encoder, models_path=settings.models_path, cache=settings.cache_path)
    with enc.cache:
        cached = enc.cache.get_many(enc.model_id, enc.template, data.prompts(enc.template))
    if all(v is not None for v in cached):
        content, source = np.stack(cached).astype(np.float32), f"real: cached {enc.model_id} embeddings"
    else:
        d = next((v.shape[0] for v in cached if v is not None), 576)
        content, source = random_unit(data.n_items, d), f"random unit vectors (d={d}): embedding cache incomplete"
    titles = {i: f["title"] for i, f in zip(data.item_ids, data.item_fields) if f.get("title")}
    sequences = {u: [data.item_ids[i] for i in (h + [t])] for u, (h, t) in zip(data.users, data.test)}
    return data.item_ids, content, titles, sequences, source


def synthetic_catalogue(n_items: int, n_users: int, d: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    ids = [f"syn{j:06d}" for j in range(n_items)]
    p = 1.0 / np.arange(1, n_items + 1) ** 0.8  # Zipf-like item popularity
    p /= p.sum()
    sequences = {}
    for u in range(n_users):
        picks = rng.choice(n_items, size=int(rng.integers(5, 51)), p=p)
        sequences[f"user{u:06d}"] = [ids[j] for j in picks]
    titles = {i: f"Synthetic item {i[3:]}" for i in ids}
    return ids, random_unit(n_items, d, seed), titles, sequences, f"random unit vectors (d={d})"


HOST = """
import sys, time
from store.vectors import VectorStore
store = VectorStore(sys.argv[1]).open()
print(store.mode, flush=True)
time.sleep(1e9)
"""


def start_store_host(uri: str) -> subprocess.Popen:
    """A process that holds the milvus-lite file and serves it, as the encoder worker does when running."""
    proc = subprocess.Popen([sys.executable, "-c", HOST, uri], cwd=REPO, stdout=subprocess.PIPE, text=True)
    mode = proc.stdout.readline().strip()
    if mode != "host":
        proc.kill()
        raise RuntimeError(f"the store host process became {mode!r}, not host: is {uri} held by another process?")
    return proc


def seed_size(size: str, root: Path, base: Settings):
    """Seed (or reuse) the deployment of one size -> (settings, sequences, content, ids, content source)."""
    data_dir = root / size
    s = base.model_copy(update={"data_dir": data_dir})
    meta_path = data_dir / "bench-meta.json"
    if size == "4.4k":
        ids, content, titles, sequences, source = real_catalogue(base)
    else:
        d = 576
        ids, content, titles, sequences, source = synthetic_catalogue(100_000, 20_000, d)
    if not (meta_path.exists() and open_registry(s).current() is not None):
        shutil.rmtree(data_dir, ignore_errors=True)
        data_dir.mkdir(parents=True)
        store = VectorStore(s.vector_uri).open()
        t0 = time.perf_counter()
        write_catalogue(s, store, ids, content, titles)
        write_sequences(s, sequences)
        version = publish_version(s, store, ids, content)
        for name in (CONTENT, version.collection):  # searched from disk segments, not the write buffer
            store._client.flush(name)
        meta_path.write_text(json.dumps({"items": len(ids), "users": len(sequences), "content": source,
                                         "seed_seconds": time.perf_counter() - t0}))  # fmt: skip
        store.close()
    print(f"[{size}] {len(ids)} items, {len(sequences)} users; content: {source}", flush=True)
    return s, sequences, content, ids, source


# ---- the load ------------------------------------------------------------------------------------
async def ask(session, url: str) -> float:
    t0 = time.perf_counter()
    async with session.get(url) as r:
        await r.read()
        if r.status != 200:
            raise RuntimeError(f"{url}: {r.status} {await r.text()}")
    return time.perf_counter() - t0


async def closed_loop(base_url: str, users: list[str], clients: int, n: int | None, k: int = 10):
    """`clients` concurrent clients ask for `n` random users' recommendations (n=None: each user once,
    in random order); (latencies, seconds)."""
    import aiohttp

    rng = random.Random(n)
    todo = rng.sample(users, len(users)) if n is None else [rng.choice(users) for _ in range(n)]
    lat: list[float] = []
    conn = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=conn) as session:

        async def client() -> None:
            while todo:
                lat.append(await ask(session, f"{base_url}/users/{todo.pop()}/recommendations?k={k}"))

        t0 = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        return lat, time.perf_counter() - t0


def measure_api(s: Settings, mode: str, users: list[str], n_seq: int, n_load: int, clients: int, log: Path) -> dict:
    port = free_port()
    api = s.model_copy(update={"serving": s.serving.model_copy(update={"search": mode, "port": port})})
    env = {**os.environ, **settings_env(api), "PYTHONUNBUFFERED": "1"}
    with open(log, "ab") as out:
        proc = subprocess.Popen(command(), stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    base_url = f"http://127.0.0.1:{port}"
    try:
        import httpx

        t0 = time.perf_counter()
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the API exited ({proc.returncode}); see {log}")
            try:
                if httpx.get(f"{base_url}/ready?require_model=true", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        ready_s = time.perf_counter() - t0
        # every user once: the content cache holds what steady state holds
        asyncio.run(closed_loop(base_url, users, clients, None))
        seq, _ = asyncio.run(closed_loop(base_url, users, 1, n_seq))
        loaded, seconds = asyncio.run(closed_loop(base_url, users, clients, n_load))
        return {"request_p50_ms": pct(seq, 50), "request_p99_ms": pct(seq, 99), "requests": len(seq),
                "requests_per_s": len(loaded) / seconds, "loaded_p50_ms": pct(loaded, 50),
                "loaded_p99_ms": pct(loaded, 99), "loaded_requests": len(loaded), "clients": clients,
                "ready_after_s": ready_s}  # fmt: skip
    finally:
        proc.terminate()
        proc.wait(30)


def measure_search(s: Settings, store: VectorStore, sequences: dict, content: np.ndarray, ids: list[str],
                   n_memory: int, n_plain: int) -> tuple[dict, dict]:  # fmt: skip
    """The search alone for one query: the in-memory index vs one store call (bench process, 1 thread)."""
    torch.set_num_threads(1)
    version = open_registry(s).current()
    tower = load_checkpoint(version.path)[0]  # the served model: its encode_users is the user tower
    row = {i: r for r, i in enumerate(ids)}
    users = random.Random(2).sample(sorted(sequences), 200)
    queries = [user_vectors(tower, [content[[row[i] for i in sequences[u][-50:]]]]) for u in users]
    index = load_index(store, version.collection)
    mem, plain = [], []
    for j in range(n_memory):  # interleaved, so that both see the same load from other processes
        u, q = users[j % len(users)], queries[j % len(users)]
        t0 = time.perf_counter()
        index.search(q, [10], [set(sequences[u])])
        mem.append(time.perf_counter() - t0)
        if j % (n_memory // n_plain) == 0 and len(plain) < n_plain:
            t0 = time.perf_counter()
            store.search(version.collection, q.numpy(), 10, exclude=set(sequences[u]))
            plain.append(time.perf_counter() - t0)
    return ({"search_p50_ms": pct(mem, 50), "search_p99_ms": pct(mem, 99), "searches": len(mem)},
            {"search_p50_ms": pct(plain, 50), "search_p99_ms": pct(plain, 99), "searches": len(plain)})  # fmt: skip


def measure_size(s: Settings, sequences: dict, content: np.ndarray, ids: list[str], source: str, args) -> dict:
    size = s.data_dir.name
    users = random.Random(0).sample(sorted(sequences), min(len(sequences), args.users))
    log = args.work / f"api-{size}.log"
    store = VectorStore(s.vector_uri).open()  # a guest, like the API
    try:
        mem_search, plain_search = measure_search(s, store, sequences, content, ids, 2000, 100)
    finally:
        store.close()
    print(f"[{size}] search alone: memory p50 {mem_search['search_p50_ms']:.2f} ms, "
          f"plain p50 {plain_search['search_p50_ms']:.1f} ms", flush=True)
    memory = measure_api(s, "memory", users, args.requests, args.load_requests, args.clients, log)
    print(f"[{size}] memory: {memory}", flush=True)
    plain = measure_api(s, "store", users[: args.plain_users], args.plain_requests, args.plain_requests,
                        args.clients, log)  # fmt: skip
    print(f"[{size}] plain: {plain}", flush=True)
    return {**memory, **mem_search, "items": len(ids), "users": len(sequences), "users_asked": len(users),
            "content": source, "path": "in-memory index of the served version, concurrent requests batched",
            "plain": {**plain, **plain_search, "path": "one vector-store (milvus-lite) search call per request, "
                      "over loopback gRPC"}}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="4.4k,100k")
    ap.add_argument("--work", type=Path, default=REPO / ".learn" / "bench-serving", help="seeded deployments (reused)")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "serving.json")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=2000, help="sequential requests (memory path)")
    ap.add_argument("--load-requests", type=int, default=4000, help="concurrent requests (memory path)")
    ap.add_argument("--users", type=int, default=2000, help="users asked (a random sample; memory path)")
    ap.add_argument("--plain-users", type=int, default=200, help="users asked on the plain path")
    ap.add_argument("--plain-requests", type=int, default=150, help="sequential and concurrent requests (plain)")
    args = ap.parse_args()

    base = load_settings()
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    results["command"] = "python " + " ".join([str(Path(sys.argv[0]).relative_to(REPO)
                                               if Path(sys.argv[0]).is_absolute() else sys.argv[0]), *sys.argv[1:]])  # fmt: skip
    results["machine"] = f"{os.cpu_count()} CPU cores (shared with other work), no GPU; load average before: " \
                         f"{os.getloadavg()[0]:.1f}"  # fmt: skip
    results["notes"] = (
        "request_p50_ms/request_p99_ms: one HTTP client, requests one after another; requests_per_s: "
        f"{args.clients} concurrent clients (closed loop), their latencies as loaded_p50_ms/loaded_p99_ms; "
        "search_*: the search alone for one query, timed in the bench process (in-memory index, or one "
        "milvus-lite search call for 'plain'); each path's API process asked every sampled user once "
        "before measuring (content cache warm); the store's host is a separate process, as the encoder "
        "worker is when the pipeline runs; model versions are untrained towers of the default shape"
    )
    args.work.mkdir(parents=True, exist_ok=True)
    for size in args.sizes.split(","):
        s, sequences, content, ids, source = seed_size(size, args.work, base)
        host = start_store_host(s.vector_uri)
        try:
            results[size] = measure_size(s, sequences, content, ids, source, args)
        finally:
            host.terminate()
            host.wait(30)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
