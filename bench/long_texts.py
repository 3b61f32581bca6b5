#!/usr/bin/env python3
"""Long item texts (issue 17): how many prompts the encoder's token cap cuts, and the longer caps' vectors.

    .venv/bin/python bench/long_texts.py tokens
    LEARN_CACHE_DIR=DIR .venv/bin/python bench/long_texts.py encode --data amazon-scientific-lcrec --max-tokens 256

    LEARN_CACHE_DIR=DIR .venv/bin/python bench/long_texts.py run --split unisrec --text lcrec --max-tokens 256 --model learn

`tokens` writes the token-length distribution of every dataset's prompts (the default template, the
SmolLM2 tokenizer, special tokens included, i.e. what `max_tokens` caps) to
bench/results/long_texts.json: how many exceed 128 / 256 / 512 tokens. Tokenizing only, seconds.

`encode` fills the embedding cache (settings.cache_path) with a dataset's vectors at a given cap, as
`learn train --max-tokens N` (LEARN_ENCODER__MAX_TOKENS=N) reads them. Resumable: the cache keeps
every finished batch. `--longer-than K` encodes only the prompts longer than K tokens; a prompt of
at most K tokens is never cut by either cap, so its cap-N vector is its cap-K one, and `share`
copies those from the cap-K namespace instead of encoding them again (the LLM is causal and padded
on the right, so a text's vector does not depend on the cap once the cap exceeds its length). RocksDB
allows one writer per directory, so two encodes run in parallel write to two cache directories
(LEARN_CACHE_DIR) and `merge --from DIR/embedding-cache` joins them.

`run` trains / scores one configuration (trainer/offline.py, the one protocol, both conventions) and
writes it where bench/quality_table.py reads runs: `--split unisrec --text lcrec` is the UniSRec split
(the issue's protocol) with each item's text taken from the LC-Rec catalogue (titles plus
descriptions) where the titles match (`lcrec_text_for`), results under bench/results/quality/ as
ablations; `--split lcrec` is the LC-Rec split with its own text, under
bench/results/quality-amazon-scientific-lcrec/. The encoder's compute dtype comes from the settings
(these runs used LEARN_ENCODER__DTYPE=bfloat16: ~1.9x the fp32 rate on this CPU, cosine to fp32
>= 0.9998, bench/results/encoder.json), and is in each record's config.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
OUT = ROOT / "bench" / "results" / "long_texts.json"
CAPS = (128, 256, 512)
DATASETS = ("amazon-scientific-unisrec", "amazon-scientific-lcrec")


def length_summary(lengths: np.ndarray, caps: tuple[int, ...] = CAPS) -> dict:
    """Token lengths -> counts and shares over each cap, and percentiles."""
    lengths = np.asarray(lengths)
    out = {"n": int(len(lengths)), "p50": int(np.percentile(lengths, 50)), "p90": int(np.percentile(lengths, 90)),
           "p99": int(np.percentile(lengths, 99)), "max": int(lengths.max())}  # fmt: skip
    for c in caps:
        over = int((lengths > c).sum())
        out[f"over_{c}"] = over
        out[f"share_over_{c}"] = round(over / len(lengths), 4)
    return out


def load(data: str):
    from bench.quality import bench_settings
    from streams.datasets import resolve
    from trainer.data import load_source

    s = bench_settings()
    return s, load_source(resolve(data, s.datasets, s.shared_data_dir), history_cap=s.model.max_seq_len)


def prompt_lengths(prompts: list[str], tokenizer) -> np.ndarray:
    return np.array([len(x) for x in tokenizer(prompts, add_special_tokens=True, truncation=False)["input_ids"]])


def tokenizer_for(s):
    from transformers import AutoTokenizer

    from encoder.llm import resolve_model_dir

    return AutoTokenizer.from_pretrained(resolve_model_dir(s.encoder.model, s.models_path))


def cmd_tokens(_args) -> None:
    rows = {}
    for name in DATASETS:
        s, data = load(name)
        prompts = data.prompts(s.encoder.template)
        lengths = prompt_lengths(prompts, tokenizer_for(s))
        chars = np.array([len(p) for p in prompts])
        rows[name] = {"tokens": length_summary(lengths), "chars_p50": int(np.median(chars)),
                      "share_over_500_chars": round(float((chars > 500).mean()), 4)}  # fmt: skip
        print(name, json.dumps(rows[name]))
    prev = json.loads(OUT.read_text()) if OUT.exists() else {}
    OUT.write_text(json.dumps({**prev, "encoder": s.encoder.model, "template": s.encoder.template,
                               "token_lengths": rows, "command": "bench/long_texts.py tokens"}, indent=2))  # fmt: skip


def encoder_at(s, cap: int):
    from encoder.content import ContentEncoder

    enc = s.encoder.model_copy(update={"max_tokens": cap})
    return ContentEncoder(enc, models_path=s.models_path, cache=s.cache_path)


def title_key(title: str) -> str:
    return " ".join(title.lower().split()).rstrip(". ")


def lcrec_text_for(unisrec_fields: list[dict], lcrec_fields: list[dict]) -> tuple[list[dict], dict]:
    """Each UniSRec item's prompt fields replaced by the LC-Rec item's with the same title (and, where
    several share it, the same brand); an item without one match keeps its own. -> (fields, counts)."""
    by_title: dict[str, list[dict]] = {}
    for f in lcrec_fields:
        by_title.setdefault(title_key(f["title"]), []).append(f)
    out, counts = [], {"matched": 0, "ambiguous_kept": 0, "unmatched_kept": 0}
    for f in unisrec_fields:
        cands = by_title.get(title_key(f["title"]), [])
        if len(cands) > 1:
            cands = [c for c in cands if title_key(c["brand"]) == title_key(f["brand"])]
        if len(cands) == 1:
            out.append(dict(cands[0]))
            counts["matched"] += 1
        else:
            out.append(f)
            counts["ambiguous_kept" if by_title.get(title_key(f["title"])) else "unmatched_kept"] += 1
    return out, counts


def load_run_data(split: str, text: str):
    """(settings, DatasetSource, RecData) of a split, its item text from `text` ("own" or "lcrec")."""
    from dataclasses import replace

    from trainer.offline import dataset_source

    name = {"unisrec": DATASETS[0], "lcrec": DATASETS[1]}[split]
    s, data = load(name)
    src = dataset_source(s, name)
    if text == "lcrec" and split != "lcrec":
        fields, counts = lcrec_text_for(data.item_fields, load(DATASETS[1])[1].item_fields)
        data = replace(data, item_fields=fields, meta={**data.meta, "item_text": f"lcrec by title: {counts}"})
    return s, src, data


def variant_name(text: str, cap: int) -> str:
    return ("lcrec-text-" if text == "lcrec" else "") + f"max{cap}"


def cmd_run(args) -> None:
    import torch

    from bench.quality import outputs_for, record_for
    from trainer.offline import _run_loaded

    torch.set_num_threads(args.threads)
    s, src, data = load_run_data(args.split, args.text)
    ms = s.model.model_copy(update={"seed": args.seed, "item_tower": "a"})
    s = s.model_copy(update={"model": ms, "encoder": s.encoder.model_copy(update={"max_tokens": args.max_tokens})})
    variant = variant_name(args.text, args.max_tokens)
    default = args.split == "unisrec" and args.text == "own" and args.max_tokens == 128
    kind = "learn-a" if args.model == "learn" else "zero-training"
    model = kind if (args.split == "lcrec" and args.max_tokens == 128) or default else f"{kind}-ablation"
    out, runs_dir = outputs_for(DATASETS[0] if args.split == "unisrec" else str(src.directory.resolve()))
    run = dict(model=model, kind=args.model, encoder=s.encoder.model, variant="default", seed=args.seed, tower="a")
    path = out / f"{model}-{s.encoder.model}-{variant}-seed{args.seed}.json"
    if path.exists():
        print(f"{path} exists: skipped")
        return
    res = _run_loaded(s, src, data, runs_dir / path.stem, args.model, progress=False, t0=time.perf_counter())
    cmd = (f"LEARN_ENCODER__DTYPE={s.encoder.dtype} bench/long_texts.py run --split {args.split} --text {args.text} "
           f"--max-tokens {args.max_tokens} --model {args.model} --seed {args.seed}")  # fmt: skip
    rec = {**record_for(run, res, args.threads), "variant": variant, "command": cmd, "item_text": data.meta.get("item_text", "own")}
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rec, indent=2))
    v, vr = res["valid_metrics"]["ndcg@10"], res["valid_metrics_recbole_protocol"]["ndcg@10"]
    print(f"{path.name}: valid NDCG@10 {v:.4f} (RecBole convention {vr:.4f}), {res['seconds']:.0f}s", flush=True)


def cmd_share(args) -> None:
    """Copy the cap-K vectors of the prompts of at most K tokens into the cap-N namespace."""
    s, data = load(args.data)
    prompts = sorted(set(data.prompts(s.encoder.template)))
    lengths = prompt_lengths(prompts, tokenizer_for(s))
    short = [p for p, n in zip(prompts, lengths) if n <= args.longer_than]
    small, big = encoder_at(s, args.longer_than), encoder_at(s, args.max_tokens)
    vecs = small.cache.get_many(small.model_id, small.template, short)
    have = [(p, v) for p, v in zip(short, vecs) if v is not None]
    check = {}
    if have and args.check:  # the premise, measured: these prompts encoded afresh at the larger cap
        import torch

        torch.set_num_threads(args.threads)
        sample = [have[i] for i in np.random.default_rng(0).choice(len(have), min(args.check, len(have)), replace=False)]
        fresh = big._encode_uncached([p for p, _ in sample], progress=False)
        old = np.stack([v for _, v in sample])
        check = {"prompts": len(sample), "max_abs_diff": float(np.abs(fresh - old).max()),
                 "min_cosine": float((fresh * old).sum(1).min())}  # fmt: skip
        print("fresh vs shared:", check)
    if have:
        big.cache.put_many(big.model_id, big.template, [p for p, _ in have], np.stack([v for _, v in have]))
    print(f"shared {len(have)} of {len(short)} prompts of <= {args.longer_than} tokens into {big.model_id}")
    prev = json.loads(OUT.read_text()) if OUT.exists() else {}
    prev.setdefault("shared", {})[f"{args.data} {big.model_id}"] = {"shared": len(have), "short": len(short), "check": check}
    OUT.write_text(json.dumps(prev, indent=2))


def cmd_merge(args) -> None:
    """Copy every vector of another cache directory (`--from`, e.g. one a parallel encode wrote) into
    settings.cache_path: RocksDB takes one writer per directory, so parallel encodes write apart."""
    from rocksdict import AccessType, Options, Rdict

    from bench.quality import bench_settings
    from store.embedding_cache import EmbeddingCache

    src = Rdict(str(args.src), options=Options(raw_mode=True), access_type=AccessType.read_only())
    with EmbeddingCache(bench_settings().cache_path) as dst:
        n = 0
        for k, v in src.items():
            dst._db[k] = v
            n += 1
    src.close()
    print(f"merged {n} vectors from {args.src}")


def cmd_encode(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    s, data = load(args.data)
    prompts = sorted(set(data.prompts(s.encoder.template)))
    if args.longer_than:
        lengths = prompt_lengths(prompts, tokenizer_for(s))
        prompts = [p for p, n in zip(prompts, lengths) if n > args.longer_than]
    enc = encoder_at(s, args.max_tokens)
    t0 = time.perf_counter()
    enc.encode(prompts, progress=True)
    st = enc.last_stats
    print(f"{args.data} cap {args.max_tokens}: {st.n} prompts, {st.cache_hits} cached, {st.encoded} encoded "
          f"({st.truncated} truncated) in {time.perf_counter() - t0:.0f}s", flush=True)  # fmt: skip


def main() -> None:
    logging.basicConfig(level=logging.INFO)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("tokens")
    for name in ("encode", "share"):
        p = sub.add_parser(name)
        p.add_argument("--data", default="amazon-scientific-lcrec")
        p.add_argument("--max-tokens", type=int, required=True)
        p.add_argument("--longer-than", type=int, default=0 if name == "encode" else 128)
        p.add_argument("--threads", type=int, default=1)
        if name == "share":
            p.add_argument("--check", type=int, default=16, help="encode this many shared prompts afresh and compare")
    p = sub.add_parser("merge")
    p.add_argument("--from", dest="src", type=Path, required=True, help="another embedding-cache directory")
    p = sub.add_parser("run")
    p.add_argument("--split", choices=("unisrec", "lcrec"), default="unisrec")
    p.add_argument("--text", choices=("own", "lcrec"), default="lcrec")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--model", choices=("learn", "zero-training"), default="zero-training")
    p.add_argument("--seed", type=int, default=2024)
    p.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    {"tokens": cmd_tokens, "encode": cmd_encode, "share": cmd_share, "run": cmd_run, "merge": cmd_merge}[args.cmd](args)


if __name__ == "__main__":
    main()
