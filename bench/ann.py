"""The approximate index (serving/ann.py) at 1M items: recall@10 against exact search, single-query
latency as the API calls it, build time and memory (issue 16, "Serving at catalogue scale").

    .venv/bin/python -m bench.ann [--items 1000000] [--queries 1000] [--work /tmp/learn-ann-bench]
                                  [--out bench/results/scale/ann.json] [--compare-items 200000]

What is measured on what:
- The model: a real LEARN-(a) trained on the UniSRec Scientific split with the default settings but 8
  epochs (`learn train --epochs 8 --threads 1`, run by this script into <work>/model when missing;
  its validation NDCG@10 is recorded). Its content-kNN blend weight is non-zero, as the default
  model's is, so it serves 640-wide vectors ([item tower 64, features 576]); the 64-wide tower-only
  layout (a model without the blend) is measured too: the first 64 columns of the same vectors.
- The items: the 4,385 real items' raw SmolLM2 content embeddings (the embedding cache), then new
  items up to `--items`, each a convex mixture (Dirichlet(1) weights) of 2 or 3 real items' raw
  embeddings chosen uniformly, plus Gaussian noise of 0.1 x the catalogue's per-dimension standard
  deviation, L2-normalised like the encoder's output; all through the trained model's `encode_items`
  (whitening, item tower, kNN layout), as the publisher writes a version's vectors.
- The queries: `--queries` validation users (random, seeded) of the split, their user vectors from
  `encode_users` over their validation histories; each query excludes the user's history, as the API
  does. Exact top-10 by brute force (`ItemIndex.search`, the exact index, same exclusions).
- The latency: one `search` call per query, batch 1, on one thread (faiss and torch; the API runs
  with serving.torch_threads = 1), timed around the call; the first 20 are warm-up.
- The indexes: faiss HNSW at 640 wide, ef_search swept on one build, and IVF-Flat (the default,
  serving.ann_kind) at 640 and 64 wide, nprobe swept; builds on 2 threads (BUILD_THREADS). `--compare-items`:
  faiss IVF, faiss HNSW and hnswlib (where installed; not a dependency) on one thread at that size.
Generated vectors, the model and the exact answers are cached under --work; every finished config is
written to --out at once and skipped on a restart. The result records the machine's load: 2 cores
shared with other agents' work, so latencies are upper bounds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from config import Settings  # noqa: E402
from serving.ann import AnnIndex, AnnParams  # noqa: E402
from serving.index import ItemIndex  # noqa: E402

DATASET = "amazon-scientific-unisrec"
EPOCHS = 8
CHUNK = 20_000
WARMUP = 20
K = 10
BUILD_THREADS = 2  # the builds (serving: serving.ann_build_threads, 0 = all cores); searches run on 1
# (name, width, build params, the search knob swept on one build): the served 640-wide layout first
CONFIGS = [
    ("hnsw", 640, {"kind": "hnsw", "m": 16, "ef_construction": 100}, ("ef_search", (64, 128, 256, 512, 1024))),
    ("ivf", 640, {"kind": "ivf", "nlist": 1000}, ("nprobe", (16, 32, 64))),
    ("ivf", 64, {"kind": "ivf", "nlist": 1000}, ("nprobe", (16, 32, 64))),
]


def rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def load_real(settings: Settings):
    from trainer.data import load_source
    from trainer.offline import dataset_source, encode_catalogue

    data = load_source(dataset_source(settings, DATASET), history_cap=settings.model.max_seq_len)
    raw, encoder_id, _ = encode_catalogue(data, settings.encoder, settings, progress=False)
    return data, np.asarray(raw, np.float32), encoder_id


def trained_model(settings: Settings, work: Path) -> tuple[Path, dict]:
    run = work / "model"
    if not (run / "results.json").exists():
        from trainer.offline import train_cli

        train_cli(settings, DATASET, epochs=EPOCHS, run_dir=run, progress=False, threads=1)
    res = json.loads((run / "results.json").read_text())
    return run / "checkpoint", {"command": f"learn train --epochs {EPOCHS} --threads 1 --run-dir {run}",
                                "valid_ndcg10": res["valid_metrics"]["ndcg@10"], "test_ndcg10": res["metrics"]["ndcg@10"],
                                "knn_blend_weight": res["knn_blend"]["weight"]}  # fmt: skip


def generated_raw(raw: np.ndarray, n: int, seed: int, start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) of the catalogue: the real items first, then the mixtures (module doc)."""
    out = np.empty((stop - start, raw.shape[1]), np.float32)
    std = raw.std(0)
    real = len(raw)
    lo = start
    if lo < real:
        out[: min(stop, real) - lo] = raw[lo : min(stop, real)]
        lo = min(stop, real)
    if lo < stop:
        rng = np.random.default_rng([seed, lo])  # a chunk's rows depend on its start only
        m = stop - lo
        parts = rng.integers(2, 4, m)  # 2 or 3 parents
        parents = rng.integers(0, real, (m, 3))
        w = rng.dirichlet(np.ones(3), m) * (np.arange(3)[None, :] < parts[:, None])
        w /= w.sum(1, keepdims=True)
        mix = np.einsum("mp,mpd->md", w, raw[parents]) + 0.1 * std * rng.standard_normal((m, raw.shape[1]))
        out[lo - start :] = mix / np.linalg.norm(mix, axis=1, keepdims=True)
    return out


def item_vectors(model, raw: np.ndarray, n: int, work: Path) -> np.ndarray:
    """(n, served_dim) item vectors, cached as <work>/items-<n>.npy (written chunk by chunk, resumable)."""
    path, done_path = work / f"items-{n}.npy", work / f"items-{n}.done"
    width = model.served_dim()
    vecs = np.lib.format.open_memmap(path, mode="r+" if path.exists() else "w+", dtype=np.float32, shape=(n, width))
    done = int(done_path.read_text()) if done_path.exists() else 0
    t0 = time.perf_counter()
    for start in range(done, n, CHUNK):
        stop = min(start + CHUNK, n)
        with torch.inference_mode():
            vecs[start:stop] = model.encode_items(torch.from_numpy(generated_raw(raw, n, 2024, start, stop))).numpy()
        vecs.flush()
        done_path.write_text(str(stop))
        print(f"  items {stop:,}/{n:,} ({time.perf_counter() - t0:.0f}s)", flush=True)
    return np.load(path, mmap_mode="r")


def user_queries(model, data, raw: np.ndarray, n: int) -> tuple[np.ndarray, list[set[str]], list[int]]:
    from serving.recommend import user_vectors

    rng = np.random.default_rng(7)
    users = sorted(rng.choice(len(data.valid), size=min(n, len(data.valid)), replace=False).tolist())
    hists = [data.valid[u][0][-model.cfg.max_seq_len :] for u in users]
    q = torch.cat([user_vectors(model, [raw[h] for h in hists[i : i + 256]]) for i in range(0, len(hists), 256)])
    return q.numpy(), [{f"r{i}" for i in h} for h in hists], users


def exact_top(index: ItemIndex, q: np.ndarray, exclude: list[set[str]], path: Path) -> list[list[str]]:
    if path.exists():
        return json.loads(path.read_text())
    out = []
    for i in range(0, len(q), 50):
        hits = index.search(torch.from_numpy(q[i : i + 50]), [K] * len(q[i : i + 50]), exclude[i : i + 50])
        out += [[h for h, _ in x] for x in hits]
    path.write_text(json.dumps(out))
    return out


def timed(index, q: np.ndarray, exclude: list[set[str]]) -> tuple[list[float], list[list[str]]]:
    seconds, got = [], []
    for b in range(len(q)):
        qb = torch.from_numpy(q[b : b + 1])
        t0 = time.perf_counter()
        hits = index.search(qb, [K], [exclude[b]])[0]
        seconds.append(time.perf_counter() - t0)
        got.append([h for h, _ in hits])
    return seconds[WARMUP:], got[WARMUP:]


def summary(seconds: list[float], got: list[list[str]], truth: list[list[str]]) -> dict:
    ms = np.asarray(seconds) * 1000
    recall = float(np.mean([len(set(g) & set(t)) / len(t) for g, t in zip(got, truth)]))
    return {"query_p50_ms": float(np.percentile(ms, 50)), "query_p99_ms": float(np.percentile(ms, 99)),
            "query_mean_ms": float(ms.mean()), "recall_at_10": recall}  # fmt: skip


def write(out: Path, result: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(out)


def main(argv=None) -> None:
    import faiss

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--work", type=Path, default=Path("/tmp/learn-ann-bench"))
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "scale" / "ann.json")
    p.add_argument("--compare-items", type=int, default=50_000, help="size of the faiss/hnswlib comparison (0: none)")
    a = p.parse_args(argv)
    a.work.mkdir(parents=True, exist_ok=True)
    wall0, load_before = time.perf_counter(), os.getloadavg()
    result = json.loads(a.out.read_text()) if a.out.exists() else {}
    result.setdefault("configs", {})
    settings = Settings()  # LEARN_CACHE_DIR: where the embedding cache is
    torch.set_num_threads(2)  # generation and exact answers (not timed)
    data, raw, encoder_id = load_real(settings)
    ckpt, model_info = trained_model(settings, a.work)
    from trainer.checkpoint import load_checkpoint

    model = load_checkpoint(ckpt)[0]
    print(f"model {ckpt}: served width {model.served_dim()}, {model_info}", flush=True)
    vecs = item_vectors(model, raw, a.items, a.work)
    q_full, exclude, _ = user_queries(model, data, raw, a.queries)
    ids = [f"r{i}" if i < len(raw) else f"g{i}" for i in range(a.items)]  # r<n>: the real item n
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    for kind, width, build, (knob, values) in CONFIGS:
        name = f"d{width}-{kind}-" + "-".join(f"{k}{v}" for k, v in build.items() if k != "kind")
        todo = [v for v in values if f"{name}-{knob}{v}" not in result["configs"]]
        if not todo and f"d{width}-exact" in result["configs"]:
            continue
        cols = np.ascontiguousarray(vecs[:, :width])
        q = np.ascontiguousarray(q_full[:, :width])
        exact = ItemIndex.build(ids, cols, np.zeros(a.items))
        torch.set_num_threads(2)
        truth = exact_top(exact, q, exclude, a.work / f"truth-{a.items}-d{width}-q{len(q)}.json")
        torch.set_num_threads(1)
        if f"d{width}-exact" not in result["configs"]:  # the exact index on the same path, for reference
            sec, got = timed(exact, q[: WARMUP + 100], exclude[: WARMUP + 100])
            result["configs"][f"d{width}-exact"] = {"index": "exact (ItemIndex)", "width": width, "queries": len(sec),
                                                    **summary(sec, got, truth[WARMUP : WARMUP + 100])}  # fmt: skip
            write(a.out, result)
        if not todo:
            continue
        rss0, t0 = rss_mb(), time.perf_counter()
        ann = AnnIndex.of(exact, AnnParams(**build, **{knob: todo[0]}, build_threads=BUILD_THREADS))
        build_s, index_mb = time.perf_counter() - t0, rss_mb() - rss0
        print(f"  built {name} in {build_s:.0f}s (+{index_mb:.0f} MB)", flush=True)
        for v in todo:
            if knob == "ef_search":  # the benchmark's sweep; serving sets it once (serving.ann_ef_search / ann_nprobe)
                ann.base.hnsw.efSearch = v
            else:
                ann.base.nprobe = v
            sec, got = timed(ann, q, exclude)
            key = f"{name}-{knob}{v}"
            result["configs"][key] = {
                "index": f"faiss {'IndexHNSWFlat' if kind == 'hnsw' else 'IndexIVFFlat'} inner product (serving/ann.py AnnIndex)",
                "width": width, "items": a.items, **{k: x for k, x in build.items() if k != "kind"}, knob: v,
                "queries": len(sec), "build_s": build_s, "build_threads": BUILD_THREADS, "index_rss_mb": index_mb,
                "vectors_mb": cols.nbytes / 2**20, **summary(sec, got, truth[WARMUP:]),
            }  # fmt: skip
            print(f"  {key}: {result['configs'][key]}", flush=True)
            write(a.out, result)
        del ann, exact, cols
    if a.compare_items and "choice" not in result:
        result["choice"] = compare(vecs, q_full, exclude, ids, a.compare_items, a.work)
        write(a.out, result)
    headline(result, a, model_info, encoder_id, load_before, time.perf_counter() - wall0)
    write(a.out, result)
    print(json.dumps({k: v for k, v in result.items() if k not in ("configs", "choice")}, indent=2))


def compare(vecs, q_full, exclude, ids, n: int, work: Path) -> dict:
    """faiss IVF-Flat and HNSW against hnswlib's HNSW on the first n items (640 wide), all built and
    searched on one thread; hnswlib is not a dependency: measured only where it is installed."""
    import faiss

    cols = np.ascontiguousarray(vecs[:n])
    q = np.ascontiguousarray(q_full)
    exact = ItemIndex.build(ids[:n], cols, np.zeros(n))
    torch.set_num_threads(2)
    truth = exact_top(exact, q, exclude, work / f"truth-{n}-d{cols.shape[1]}-q{len(q)}.json")
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    out = {"items": n, "width": cols.shape[1]}
    nlist = int(round(np.sqrt(n)))
    t0 = time.perf_counter()
    ann = AnnIndex.of(exact, AnnParams(kind="ivf", nlist=nlist, nprobe=16, build_threads=1))
    out["faiss_ivf_flat"] = {"nlist": nlist, "nprobe": 16, "build_s_1_thread": time.perf_counter() - t0,
                             **summary(*timed(ann, q, exclude), truth[WARMUP:])}  # fmt: skip
    t0 = time.perf_counter()
    ann = AnnIndex.of(exact, AnnParams(kind="hnsw", m=16, ef_construction=100, ef_search=128, build_threads=1))
    out["faiss_hnsw_M16_ef128"] = {"M": 16, "ef_construction": 100, "ef": 128, "build_s_1_thread": time.perf_counter() - t0,
                                   **summary(*timed(ann, q, exclude), truth[WARMUP:])}  # fmt: skip
    del ann
    try:
        import hnswlib
    except ImportError:
        out["hnswlib"] = "not installed: not measured"
        return out
    idx = hnswlib.Index(space="ip", dim=cols.shape[1])
    idx.init_index(max_elements=n, M=16, ef_construction=100, random_seed=1)
    idx.set_num_threads(1)
    t0 = time.perf_counter()
    idx.add_items(cols, np.arange(n))
    build = time.perf_counter() - t0
    for ef in (64, 128):
        idx.set_ef(ef)
        sec, got = [], []
        for b in range(len(q)):
            ex = {int(i[1:]) for i in exclude[b] if int(i[1:]) < n}
            t1 = time.perf_counter()
            labels, _ = idx.knn_query(q[b : b + 1], k=K + len(ex))
            hits = [ids[i] for i in labels[0] if i not in ex][:K]
            sec.append(time.perf_counter() - t1)
            got.append(hits)  # the exclusions by over-fetch, as AnnIndex does
        out[f"hnswlib_M16_ef{ef}"] = {"M": 16, "ef_construction": 100, "ef": ef, "build_s_1_thread": build,
                                      **summary(sec[WARMUP:], got[WARMUP:], truth[WARMUP:])}  # fmt: skip
    return out


def headline(result: dict, a, model_info: dict, encoder_id: str, load_before, wall_s: float) -> None:
    """The headline keys: the served 640-wide layout at the default nprobe (serving.ann_nprobe)."""
    from config.settings import ServingSettings

    d = ServingSettings()
    nlist = AnnParams(nlist=d.ann_nlist).cells(a.items)
    key = f"d640-{d.ann_kind}-nlist{nlist}-nprobe{d.ann_nprobe}"
    c = result["configs"].get(key)  # the served layout with the default settings
    if c is not None and a.items == 1_000_000:
        result.update(ann_1m_query_p50_ms=c["query_p50_ms"], ann_1m_query_p99_ms=c["query_p99_ms"],
                      ann_1m_recall_at_10=c["recall_at_10"], ann_1m_build_s=c["build_s"],
                      ann_1m_build_threads=c["build_threads"], ann_1m_index_rss_mb=c["index_rss_mb"],
                      ann_1m_config=key,
                      ann_1m_params={"index": "faiss IndexIVFFlat", "nlist": nlist, "nprobe": d.ann_nprobe, "width": 640})  # fmt: skip
    result.update(
        command=f"LEARN_CACHE_DIR=<dir with the SmolLM2 embedding cache> nice -n 5 .venv/bin/python -m bench.ann "
                f"--items {a.items} --queries {a.queries} --compare-items {a.compare_items}",
        items=a.items, queries=a.queries, k=K, model=model_info, encoder=encoder_id,
        vectors="the 4,385 real items, then convex mixtures (Dirichlet(1)) of 2-3 real items' raw SmolLM2 embeddings "
                "+ Gaussian noise 0.1 x per-dimension std, L2-normalised, through the trained model's encode_items",
        queries_from="validation users' histories through encode_users; each excludes its history",
        threads=1, batch=1, cpu_count=os.cpu_count(),
        load_avg={"before": load_before, "after": os.getloadavg()},
        wall_s=wall_s,  # this run's (a resumed run skips finished configs)
    )  # fmt: skip


if __name__ == "__main__":
    main()
