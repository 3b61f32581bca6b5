"""Benchmark of issue 4: the content encoder alone (batched vs naive) and the encoder worker end to end.

    python -m bench.encoder                      # SmolLM2 (settings default), writes bench/results/encoder.json
    python -m bench.encoder --synthetic-only    # only the 100k synthetic-catalogue run (MiniLM), into the same file
    python -m bench.encoder --compiled-only     # only the torch.compile comparison, into the same file
    python -m bench.encoder --freshness-only    # only freshness, at each of --fresh-rates, into the same file

1. Encoder alone, embedding cache bypassed, on a seeded sample of the Scientific catalogue's prompts:
   the batched, length-bucketed path (`ContentEncoder.encode`) at several batch sizes, against a naive
   loop over the same texts (one text per forward pass, padded to max_tokens), in the same run,
   interleaved over `--rounds` rounds (median); then the same with `encoder.dtype = "bfloat16"`.
   Each path's executed model FLOP/s is also given as a fraction of the best rate of a large matmul
   on the same device, dtype and threads (`--peak-tflops`: also of a datasheet peak). On a GPU the
   settings' dtype "auto" is bf16, so there the headline figures are bf16 on the GPU.
2. Worker end to end, with a fresh data dir (cold cache, empty vector store) and a promoted model
   version (a random-projection item tower, so "searchable" means in the current version's
   collection): all 4,385 item texts produced to a real broker; items/s until all are written.
3. Freshness: new items produced at a steady rate (5/s); produce time (= event_time) -> the item is
   found by a reader of the vector store (a guest process polling every 50 ms).
4. (`--compiled-only`) Whether compiling can lift the fp32 batched path: eager batched, the same
   model through `torch.compile` (inductor, weights frozen, dynamic shapes) and the naive loop,
   interleaved in one run. Not used by the worker (see the `compiled` entry's `why`).
Every figure comes from the run. The machine's CPU is shared with other jobs: see `cpu_note`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import torch
from transformers import AutoConfig

from config import Settings, load_settings
from deploy.broker import free_port
from deploy.stack import Stack
from encoder.content import ContentEncoder
from encoder.llm import load_llm, resolve_model_dir
from encoder.pooling import content_embedding
from encoder.prompt import build_prompt
from store.registry import ModelRegistry
from store.vectors import VectorStore
from streams.datasets import read_unisrec
from streams.producer import EventProducer
from streams.replay import item_records
from streams.schemas import ItemRecord

RESULTS = Path(__file__).resolve().parent / "results" / "encoder.json"


def catalogue(settings: Settings) -> list[ItemRecord]:
    return item_records(read_unisrec(settings.shared_data_dir), time.time())


def prompt_of(rec: ItemRecord, settings: Settings) -> str:
    return build_prompt(rec.text_fields(), settings.encoder.template)


# ---- 1. the encoder alone ------------------------------------------------------------------------
def naive_encode(llm, prompts: list[str], max_tokens: int) -> np.ndarray:
    """One text per forward pass, always padded to max_tokens: what a first attempt looks like."""
    out = []
    with torch.inference_mode():
        for p in prompts:
            enc = llm.tokenizer([p], padding="max_length", truncation=True, max_length=max_tokens,
                                return_tensors="pt").to(llm.device)  # fmt: skip
            hidden = llm.model(**enc).last_hidden_state  # (1, max_tokens, d)
            out.append(content_embedding(hidden, enc["attention_mask"])[0].cpu().numpy())
    return np.stack(out)


def cpu_model() -> str:
    """The CPU's model name and its bf16 matmul support (AMX or not changes the bf16 figures ~3x)."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    name = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")),
                platform.processor() or platform.machine())  # fmt: skip
    flags = set(next((ln.split(":", 1)[1].split() for ln in info.splitlines() if ln.startswith("flags")), []))
    return f"{name} ({'AMX' if 'amx_bf16' in flags else 'no AMX'}{', avx512_bf16' if 'avx512_bf16' in flags else ''})"


# ---- FLOP accounting: what fraction of the hardware's matmul rate a path reaches ----------------
def forward_flops(model, shapes: list[tuple[int, int]]) -> float:
    """Model FLOPs of forward passes of the given (batch, padded length) shapes: 2 per weight per
    token (embedding tables excluded: they are lookups) plus attention's two (T x T x d) matmuls per
    layer. Padding counts: it is work the hardware does."""
    weights = sum(p.numel() for n, p in model.named_parameters() if "embed" not in n)
    c = model.config
    return float(sum(2 * weights * b * t + 4 * c.num_hidden_layers * c.hidden_size * b * t * t for b, t in shapes))


def batched_shapes(lengths: list[int], batch_size: int) -> list[tuple[int, int]]:
    """The (batch, padded length) shapes ContentEncoder runs: sorted by length, padded per batch."""
    order = sorted(lengths, reverse=True)
    return [(len(order[i : i + batch_size]), order[i]) for i in range(0, len(order), batch_size)]


def flop_rate(model, shapes: list[tuple[int, int]], seconds: float, peak: float) -> dict:
    """Executed model GFLOP/s of `shapes` run in `seconds`, and its fraction of the matmul peak."""
    flops = forward_flops(model, shapes) / seconds
    return {"gflops_per_s": flops / 1e9, "fraction_of_matmul_peak": flops / peak}


def matmul_peak_flops(device: torch.device, dtype: torch.dtype) -> float:
    """The best FLOP/s of a large square matmul on this device, dtype and thread count: the rate a
    well-shaped GEMM reaches here (the practical ceiling, below the datasheet peak)."""
    n = 8192 if device.type == "cuda" else 2048
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    best = float("inf")
    for _ in range(5):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        (a @ b).sum().item()  # .item() waits for the device
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def time_batched(settings: Settings, llm, prompts: list[str], batch_size: int) -> tuple[float, np.ndarray]:
    """Seconds and vectors of the batched, length-bucketed path (ContentEncoder, cache bypassed)."""
    enc = ContentEncoder(settings.encoder.model_copy(update={"batch_size": batch_size}), settings.models_path,
                         cache=None, llm=llm)  # fmt: skip
    t = time.perf_counter()
    vecs = enc.encode(prompts)
    return time.perf_counter() - t, vecs


def time_naive(llm, prompts: list[str], max_tokens: int) -> tuple[float, np.ndarray]:
    """Seconds and vectors of the naive loop."""
    t = time.perf_counter()
    vecs = naive_encode(llm, prompts, max_tokens)
    return time.perf_counter() - t, vecs


def bench_encoder(settings: Settings, prompts: list[str], batch_sizes: list[int], bf16: bool = True,
                  rounds: int = 1) -> dict:
    """Each batch size and the naive loop `rounds` times, interleaved (batched sizes, naive, again),
    so a slow minute of the machine does not land on one side only; rates from the median time."""
    e = settings.encoder
    llm = load_llm(e.model, settings.models_path, e.device, e.dtype)
    lengths = [min(len(x), e.max_tokens) for x in llm.tokenizer(prompts)["input_ids"]]
    tokens = int(sum(lengths))
    ContentEncoder(e, settings.models_path, cache=None, llm=llm).encode(prompts[:8])  # warm-up
    times: dict[str, list[float]] = {str(b): [] for b in batch_sizes} | {"naive": []}
    batched_vecs = naive_vecs = None
    for r in range(rounds):
        for b in batch_sizes:
            s, vecs = time_batched(settings, llm, prompts, b)
            times[str(b)].append(s)
            print(f"  round {r + 1}, batched, batch {b:3d}: {len(prompts) / s:7.1f} items/s  {tokens / s:8.0f} tokens/s",
                  flush=True)  # fmt: skip
            if b == e.batch_size:
                batched_vecs = vecs
        s, naive_vecs = time_naive(llm, prompts, e.max_tokens)
        times["naive"].append(s)
        print(f"  round {r + 1}, naive (1 text, padded to {e.max_tokens}): "
              f"{len(prompts) / times['naive'][-1]:7.1f} items/s", flush=True)  # fmt: skip

    def rates(key: str) -> dict:
        s = float(np.median(times[key]))
        return {"items_per_s": len(prompts) / s, "tokens_per_s": tokens / s, "seconds": s,
                "items_per_s_per_round": [len(prompts) / x for x in times[key]]}  # fmt: skip

    per_batch = {str(b): rates(str(b)) for b in batch_sizes}
    naive = {**rates("naive"), "padded_tokens_per_s": len(prompts) * e.max_tokens / float(np.median(times["naive"]))}
    peak = matmul_peak_flops(llm.device, llm.dtype)
    # the batched path encodes each distinct prompt once
    unique_lengths = list({p: n for p, n in zip(prompts, lengths)}.values())
    for b in batch_sizes:
        per_batch[str(b)].update(flop_rate(llm.model, batched_shapes(unique_lengths, b), per_batch[str(b)]["seconds"], peak))
    naive.update(flop_rate(llm.model, [(1, e.max_tokens)] * len(prompts), naive["seconds"], peak))
    print(f"  matmul peak {peak / 1e9:.0f} GFLOP/s; batch {e.batch_size}: "
          f"{per_batch[str(e.batch_size)]['fraction_of_matmul_peak']:.0%} of it, naive {naive['fraction_of_matmul_peak']:.0%}",
          flush=True)  # fmt: skip
    diff = float(np.abs(naive_vecs - batched_vecs).max()) if batched_vecs is not None else None
    out = {"per_batch_size": per_batch, "naive": naive, "rounds": rounds, "tokens": tokens,
           "mean_tokens": tokens / len(prompts), "naive_vs_batched_max_abs_diff": diff,
           "hidden_size": llm.hidden_size, "device": str(llm.device), "matmul_peak_gflops_per_s": peak / 1e9,
           "dtype": str(llm.dtype).removeprefix("torch.")}  # fmt: skip
    if bf16 and llm.dtype == torch.float32:
        out["bfloat16"] = bench_bfloat16(settings, prompts, tokens, unique_lengths, batched_vecs)
    return out


def bench_bfloat16(settings: Settings, prompts: list[str], tokens: int, unique_lengths: list[int],
                   fp32_vecs: np.ndarray) -> dict:
    """The same batched path and naive loop with `encoder.dtype = "bfloat16"` (an option, not the CPU
    default): speed, and how far its vectors are from the fp32 ones."""
    e = settings.encoder.model_copy(update={"dtype": "bfloat16"})
    llm = load_llm(e.model, settings.models_path, e.device, e.dtype)
    bs = settings.model_copy(update={"encoder": e})
    time_batched(bs, llm, prompts[:8], e.batch_size)  # warm-up
    s, vecs = time_batched(bs, llm, prompts, e.batch_size)
    naive_s, _ = time_naive(llm, prompts, e.max_tokens)
    cos = (vecs * fp32_vecs).sum(1)
    peak = matmul_peak_flops(llm.device, llm.dtype)
    print(f"  bfloat16: batched {len(prompts) / s:7.1f} items/s, naive {len(prompts) / naive_s:7.1f} items/s, "
          f"min cosine to fp32 {cos.min():.5f}", flush=True)  # fmt: skip
    return {"batch_size": e.batch_size, "items_per_s": len(prompts) / s, "tokens_per_s": tokens / s,
            "naive_items_per_s": len(prompts) / naive_s, "cosine_to_fp32_min": float(cos.min()),
            "cosine_to_fp32_mean": float(cos.mean()), "matmul_peak_gflops_per_s": peak / 1e9,
            **flop_rate(llm.model, batched_shapes(unique_lengths, e.batch_size), s, peak)}  # fmt: skip


# ---- 2 and 3. the worker end to end --------------------------------------------------------------
def publish_random_tower(settings: Settings, d_in: int) -> str:
    """An untrained model (item tower (c): one projection d_in -> 64) over an empty catalogue, published
    and promoted by trainer/publish.py; the worker fills its collection as items arrive."""
    from trainer.publish import Publisher
    from trainer.towers import LEARN, TowerConfig

    torch.manual_seed(0)
    model = LEARN(TowerConfig.from_settings(settings.model.model_copy(update={"item_tower": "c"}), 0, d_in)).eval()
    with VectorStore(settings.vector_uri) as store:
        version = Publisher(ModelRegistry(settings.registry_path), store).publish(model, [], np.zeros((0, d_in)))
    return version.collection


def written(port: int) -> int:
    c = httpx.get(f"http://127.0.0.1:{port}/counts", timeout=5).json()
    return c.get("encoded", 0) + c.get("cache_hit", 0)


def wait_written(port: int, n: int, timeout_s: float) -> float:
    deadline = time.monotonic() + timeout_s
    while written(port) < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"worker wrote {written(port)} of {n} items within {timeout_s}s")
        time.sleep(0.25)
    return time.perf_counter()


def bench_worker(settings: Settings, recs: list[ItemRecord], d_llm: int, fresh_n: int, fresh_rate: float) -> dict:
    collection = publish_random_tower(settings, d_llm)
    port = free_port()
    out: dict = {"collection": collection}
    with Stack(settings, settings.data_dir / "run") as stack:
        stack.start_broker()
        stack.create_topics()
        stack.start_worker("encoder", port)
        with EventProducer(settings) as p:  # one item first: the worker has loaded its model after it
            p.send_item(ItemRecord(item_id="warm-up", title="warm-up item", event_time=time.time()))
        wait_written(port, 1, 300)

        t0 = time.perf_counter()
        with EventProducer(settings) as p:
            for r in recs:
                p.send_item(r)
        produced = time.perf_counter() - t0
        t1 = wait_written(port, 1 + len(recs), 6 * 3600)
        seconds = t1 - t0
        with VectorStore(settings.vector_uri) as store:
            out["searchable"] = store.count(collection) - 1
        out.update(items=len(recs), seconds=seconds, produce_seconds=produced, items_per_s=len(recs) / seconds)
        print(f"  worker: {len(recs)} items in {seconds:.1f}s = {len(recs) / seconds:.1f} items/s "
              f"({out['searchable']} searchable)", flush=True)  # fmt: skip
        if fresh_n:
            out["freshness"] = freshness(settings, recs, collection, fresh_n, fresh_rate)
    return out


def freshness(settings: Settings, recs: list[ItemRecord], collection: str, n: int, rate: float,
              prefix: str = "fresh") -> dict:
    """Produce `n` new items at `rate`/s; a reader polls the store; latency = found - event_time."""
    rng = random.Random(1)
    sources = rng.sample(recs, n)
    sent: dict[str, float] = {}
    seen: dict[str, float] = {}
    with EventProducer(settings) as p, VectorStore(settings.vector_uri) as store:
        start = time.time()
        k = 0
        while len(seen) < n and time.time() - start < n / rate + 60:
            now = time.time()
            while k < n and now >= start + k / rate:  # the steady producer
                src = sources[k]
                rec = src.model_copy(update={"item_id": f"{prefix}-{k}", "event_time": time.time(),
                                             "title": f"New {prefix}-{k}: {src.title}"})  # fmt: skip
                p.send_item(rec)
                p.flush()
                sent[rec.item_id] = rec.event_time
                k += 1
            pending = [i for i in sent if i not in seen]
            if pending:
                found = store.get(collection, pending)
                t = time.time()
                for i in found:
                    seen[i] = t
            time.sleep(0.05)
    lat = np.array([seen[i] - sent[i] for i in seen])
    res = {"items": n, "rate_per_s": rate, "found": len(seen), "poll_interval_s": 0.05,
           "p50_s": float(np.percentile(lat, 50)), "p99_s": float(np.percentile(lat, 99)),
           "max_s": float(lat.max()), "mean_s": float(lat.mean())}  # fmt: skip
    print(f"  freshness at {rate}/s: p50 {res['p50_s']:.3f}s  p99 {res['p99_s']:.3f}s  ({len(seen)}/{n} found)")
    return res


def synthetic(recs: list[ItemRecord], n: int, seed: int = 0) -> list[ItemRecord]:
    """A catalogue of `n` items made from the real ones: real texts with a variant suffix (unique prompts)."""
    rng = random.Random(seed)
    out = []
    for k in range(n):
        src = recs[k % len(recs)]
        variant = f"{rng.choice(['Pack of', 'Set of', 'Case of'])} {k // len(recs) + 1}"
        out.append(src.model_copy(update={"item_id": f"syn-{k}", "title": f"{src.title} ({variant})"}))
    return out


def fresh_settings(base: Settings, model: str, root: Path) -> Settings:
    """A new data dir (cold cache, empty store) that reuses the converted model files."""
    data = root / "data"
    data.mkdir(parents=True)
    if base.models_path.exists():
        (data / "models").symlink_to(base.models_path.resolve())
    return base.model_copy(update={"data_dir": data, "encoder": base.encoder.model_copy(update={"model": model}),
                                   "vectors": base.vectors.model_copy(update={"uri": ""})})  # fmt: skip


def synthetic_entry(base: Settings, model: str, n: int, sample_size: int, root: Path) -> dict:
    """The worker on a synthetic catalogue of `n` items made from the real texts, with `model`'s
    encoder-alone rate at the same batch size measured first, in the same run."""
    settings = base.model_copy(update={"encoder": base.encoder.model_copy(update={"model": model})})
    recs = catalogue(settings)
    sample = [prompt_of(r, settings) for r in random.Random(0).sample(recs, sample_size)]
    print(f"encoder alone: {model}, {len(sample)} texts, torch threads {torch.get_num_threads()}")
    enc = bench_encoder(settings, sample, [settings.encoder.batch_size], bf16=False)
    alone = enc["per_batch_size"][str(settings.encoder.batch_size)]["items_per_s"]
    print(f"worker end to end: synthetic catalogue of {n} items with {model}")
    w = bench_worker(fresh_settings(settings, model, root / "synthetic"), synthetic(recs, n), enc["hidden_size"], 0, 0)
    print(f"synthetic: {n} items, worker {w['items_per_s']:.1f} items/s = {w['items_per_s'] / alone:.2f}x "
          f"the encoder alone ({alone:.1f} items/s)")  # fmt: skip
    return {"model": model, "batch_size": settings.encoder.batch_size, "torch_threads": torch.get_num_threads(),
            "encoder_alone_items_per_s": alone, "worker_vs_encoder": w["items_per_s"] / alone, **w,
            "load_average_1m_at_end": os.getloadavg()[0]}  # fmt: skip


def command_line(argv: list[str] | None) -> str:
    """The command that produced a results entry."""
    return " ".join(["python -m bench.encoder", *(argv if argv is not None else sys.argv[1:])])


def previous_results(out: Path) -> dict:
    return json.loads(out.read_text()) if out.exists() else {}


def write_entry(out: Path, key: str, entry: dict) -> dict:
    """Set one entry of an existing results file (the `--*-only` runs), the other entries kept."""
    result = previous_results(out)
    result[key] = entry
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"written: {out}")
    return result


def synthetic_only(base: Settings, args, argv) -> dict:
    """`--synthetic-only`: the synthetic run alone (default 100,000 items), written into the
    `synthetic` entry of `--out`, the other entries kept."""
    root = Path(tempfile.mkdtemp(prefix="bench-encoder-"))
    try:
        entry = synthetic_entry(base, args.synthetic_model, args.synthetic or 100_000, args.sample, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return write_entry(args.out, "synthetic", {**entry, "command": command_line(argv)})


def compiled_only(base: Settings, args, argv) -> dict:
    """`--compiled-only`: eager batched vs compiled batched vs the naive loop on the same sample, in
    interleaved rounds, written into the `compiled` entry of `--out`, the other entries kept."""
    import dataclasses

    import torch._inductor.config as inductor

    settings = base
    e = settings.encoder
    sample = [prompt_of(r, settings) for r in random.Random(0).sample(catalogue(settings), args.sample)]
    llm = load_llm(e.model, settings.models_path, e.device, e.dtype)
    inductor.freezing = True  # weights are constants: lets inductor pre-pack them for the GEMM library
    compiled = dataclasses.replace(llm, model=torch.compile(llm.model, dynamic=True))
    time_batched(settings, llm, sample[:8], e.batch_size)  # warm-up
    t = time.perf_counter()
    time_batched(settings, compiled, sample[: 4 * e.batch_size], e.batch_size)  # compiles
    compile_s = time.perf_counter() - t
    times: dict[str, list[float]] = {"eager": [], "compiled": [], "naive": []}
    for r in range(args.rounds):
        s_eager, v_eager = time_batched(settings, llm, sample, e.batch_size)
        s_comp, v_comp = time_batched(settings, compiled, sample, e.batch_size)
        s_naive, _ = time_naive(llm, sample, e.max_tokens)
        for k, x in (("eager", s_eager), ("compiled", s_comp), ("naive", s_naive)):
            times[k].append(x)
        print(f"  round {r + 1}: " + ", ".join(f"{k} {len(sample) / v[-1]:.2f} items/s" for k, v in times.items()),
              flush=True)  # fmt: skip
    rate = {k: len(sample) / float(np.median(v)) for k, v in times.items()}
    entry = {
        "model": e.model, "batch_size": e.batch_size, "torch_threads": torch.get_num_threads(),
        "sample_texts": len(sample), "rounds": args.rounds, "compile_seconds": compile_s,
        "eager_batched_items_per_s": rate["eager"], "compiled_batched_items_per_s": rate["compiled"],
        "naive_items_per_s": rate["naive"], "eager_batched_vs_naive": rate["eager"] / rate["naive"],
        "compiled_batched_vs_naive": rate["compiled"] / rate["naive"],
        "compiled_vs_eager": rate["compiled"] / rate["eager"],
        "cosine_compiled_to_eager_min": float((v_eager * v_comp).sum(1).min()),
        "why": "not used by the worker: the compile is paid at every process start, needs a C++ compiler at "
               "run time, and the gain is small next to the bfloat16 option",
        "load_average_1m_at_end": os.getloadavg()[0],
        "command": command_line(argv),
    }  # fmt: skip
    for k in ("compile_seconds", "eager_batched_items_per_s", "compiled_batched_items_per_s", "naive_items_per_s",
              "eager_batched_vs_naive", "compiled_batched_vs_naive", "compiled_vs_eager"):  # fmt: skip
        print(f"{k:28s} {entry[k]:.3f}")
    return write_entry(args.out, "compiled", entry)


def freshness_only(base: Settings, args, argv) -> dict:
    """`--freshness-only`: freshness at each of `--fresh-rates` on a fresh stack (warm worker, empty
    store), written into the `freshness_by_rate` entry of `--out`, the other entries kept. A rate is
    "low" only if the worker keeps up with it: at small micro-batches a CPU worker does fewer items/s
    than the batched encoder rate, and above that rate the figure measures a growing queue."""
    settings = base
    recs = catalogue(settings)
    e = settings.encoder
    root = Path(tempfile.mkdtemp(prefix="bench-encoder-"))
    entries = []
    try:
        s = fresh_settings(settings, e.model, root / "fresh")
        d_llm = AutoConfig.from_pretrained(resolve_model_dir(e.model, s.models_path)).hidden_size
        collection = publish_random_tower(s, d_llm)
        port = free_port()
        with Stack(s, s.data_dir / "run") as stack:
            stack.start_broker()
            stack.create_topics()
            stack.start_worker("encoder", port)
            with EventProducer(s) as p:
                p.send_item(ItemRecord(item_id="warm-up", title="warm-up item", event_time=time.time()))
            wait_written(port, 1, 300)
            for i, rate in enumerate(float(x) for x in args.fresh_rates.split(",")):
                entries.append(freshness(s, recs, collection, args.fresh_items, rate, prefix=f"fresh{i}"))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return write_entry(args.out, "freshness_by_rate", {
        "model": e.model, "torch_threads": torch.get_num_threads(), "runs": entries,
        "load_average_1m_at_end": os.getloadavg()[0], "command": command_line(argv)})  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="encoder model (default: settings.encoder.model)")
    ap.add_argument("--sample", type=int, default=384, help="texts for the encoder-alone measurements")
    ap.add_argument("--batch-sizes", default="8,16,32,64")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds of the encoder-alone timings (median)")
    ap.add_argument("--fresh-items", type=int, default=300, help="items produced for the freshness run")
    ap.add_argument("--fresh-rate", type=float, default=5.0)
    ap.add_argument("--skip-worker", action="store_true")
    ap.add_argument("--synthetic", type=int, default=0, help="also run the worker on a synthetic catalogue of N")
    ap.add_argument("--synthetic-model", default="minilm")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: settings.encoder.threads)")
    ap.add_argument("--synthetic-only", action="store_true",
                    help="run only the synthetic-catalogue worker run (and its model's encoder-alone rate) and "
                         "update the `synthetic` entry of an existing results file")  # fmt: skip
    ap.add_argument("--compiled-only", action="store_true",
                    help="run only the torch.compile comparison and update the `compiled` entry of an existing "
                         "results file")  # fmt: skip
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="the device's datasheet peak for the compute dtype, e.g. 989 for an H100/H200 in dense bf16")
    ap.add_argument("--freshness-only", action="store_true",
                    help="run only freshness at each of --fresh-rates and update the `freshness_by_rate` entry")
    ap.add_argument("--fresh-rates", default="5,2.5", help="with --freshness-only: the steady rates, items/s")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)

    base = load_settings()
    if args.threads is not None:  # for the encoder alone here and, through the settings, the worker
        base = base.model_copy(update={"encoder": base.encoder.model_copy(update={"threads": args.threads})})
    if base.encoder.threads > 0:  # the worker does the same (encoder.threads)
        torch.set_num_threads(base.encoder.threads)
    if args.synthetic_only:
        return synthetic_only(base, args, argv)
    if args.compiled_only:
        return compiled_only(base, args, argv)
    if args.freshness_only:
        return freshness_only(base, args, argv)
    model = args.model or base.encoder.model
    settings = base.model_copy(update={"encoder": base.encoder.model_copy(update={"model": model})})
    recs = catalogue(settings)
    rng = random.Random(0)
    sample = [prompt_of(r, settings) for r in rng.sample(recs, args.sample)]
    sizes = [int(x) for x in args.batch_sizes.split(",")]
    if settings.encoder.batch_size not in sizes:
        sizes.append(settings.encoder.batch_size)
    print(f"encoder alone: {model}, {len(sample)} texts, cache bypassed, torch threads {torch.get_num_threads()}")
    result_threads = torch.get_num_threads()
    enc = bench_encoder(settings, sample, sizes, rounds=args.rounds)
    batched = enc["per_batch_size"][str(settings.encoder.batch_size)]["items_per_s"]
    result = {
        "model": model,
        "device": enc["device"],
        "batch_size": settings.encoder.batch_size,
        "max_tokens": settings.encoder.max_tokens,
        "torch_threads": result_threads,
        "batched_items_per_s": batched,
        "batched_tokens_per_s": enc["per_batch_size"][str(settings.encoder.batch_size)]["tokens_per_s"],
        "naive_items_per_s": enc["naive"]["items_per_s"],
        "naive_tokens_per_s": enc["naive"]["tokens_per_s"],
        "batched_vs_naive": batched / enc["naive"]["items_per_s"],
        # batched_vs_naive = padding_ratio x per_token_speedup: the naive loop runs max_tokens per text
        # against mean_tokens, and per token the batched path is this much faster than one padded text
        "padding_ratio": settings.encoder.max_tokens / enc["mean_tokens"],
        "per_token_speedup": enc["per_batch_size"][str(settings.encoder.batch_size)]["tokens_per_s"]
        / enc["naive"]["padded_tokens_per_s"],
        # executed model FLOP/s over the best rate of a large matmul on the same device, dtype and threads
        "batched_fraction_of_matmul_peak": enc["per_batch_size"][str(settings.encoder.batch_size)]["fraction_of_matmul_peak"],
        "naive_fraction_of_matmul_peak": enc["naive"]["fraction_of_matmul_peak"],
        "matmul_peak_gflops_per_s": enc["matmul_peak_gflops_per_s"],
        "encoder": enc,
        "sample_texts": len(sample),
    }
    if args.peak_tflops:
        result["datasheet_peak_tflops"] = args.peak_tflops
        result["batched_fraction_of_datasheet_peak"] = (
            enc["per_batch_size"][str(settings.encoder.batch_size)]["gflops_per_s"] / (args.peak_tflops * 1e3))
    if "bfloat16" in enc:  # the option, measured in the same run (the default above stays fp32 on CPU)
        bf = enc["bfloat16"]
        result.update(bf16_batched_items_per_s=bf["items_per_s"], bf16_naive_items_per_s=bf["naive_items_per_s"],
                      bf16_batched_vs_fp32_naive=bf["items_per_s"] / enc["naive"]["items_per_s"],
                      bf16_cosine_to_fp32_min=bf["cosine_to_fp32_min"])  # fmt: skip
    root = Path(tempfile.mkdtemp(prefix="bench-encoder-"))
    try:
        if not args.skip_worker:
            s = fresh_settings(settings, model, root / "catalogue")
            print(f"worker end to end: {len(recs)} Scientific items, cold cache, data dir {s.data_dir}")
            w = bench_worker(s, recs, enc["hidden_size"], args.fresh_items, args.fresh_rate)
            result.update(worker_items_per_s=w["items_per_s"], worker_vs_encoder=w["items_per_s"] / batched,
                          freshness_p50_s=w["freshness"]["p50_s"], freshness_p99_s=w["freshness"]["p99_s"],
                          worker=w)  # fmt: skip
        if args.synthetic:
            result["synthetic"] = synthetic_entry(base, args.synthetic_model, args.synthetic, args.sample, root)
        elif previous_results(args.out).get("synthetic", {}).get("command"):
            result["synthetic"] = previous_results(args.out)["synthetic"]  # an earlier --synthetic-only run
        else:
            result["synthetic"] = {"run": False, "why": (
                f"{len(recs) * 23} items at the measured ~{result.get('worker_items_per_s', batched):.0f} items/s "
                f"would take hours on this CPU; run with --synthetic-only (MiniLM, 100,000 items by default)")}  # fmt: skip
    finally:
        shutil.rmtree(root, ignore_errors=True)
    previous = previous_results(args.out)
    result.update({k: previous[k] for k in ("compiled", "freshness_by_rate") if k in previous})  # --*-only runs
    result["cpu_note"] = (f"{os.cpu_count()} CPU cores; 1-minute load average at the end {os.getloadavg()[0]:.1f} "
                          f"(other jobs sharing the cores make every figure here lower)")  # fmt: skip
    result["machine"] = f"{cpu_model()}, torch {torch.__version__}"
    result["command"] = command_line(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    keys = ["batched_items_per_s", "naive_items_per_s", "batched_vs_naive", "padding_ratio", "per_token_speedup",
            "batched_fraction_of_matmul_peak", "naive_fraction_of_matmul_peak",
            "bf16_batched_items_per_s", "bf16_batched_vs_fp32_naive", "bf16_cosine_to_fp32_min", "worker_items_per_s",
            "worker_vs_encoder", "freshness_p50_s", "freshness_p99_s", "model", "device", "batch_size"]  # fmt: skip
    for k in keys:
        v = result.get(k)
        print(f"{k:22s} {v:.3f}" if isinstance(v, float) else f"{k:22s} {v}")
    print(f"written: {args.out}")
    return result


if __name__ == "__main__":
    main()
