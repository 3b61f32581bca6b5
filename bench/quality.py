#!/usr/bin/env python3
"""The LEARN quality benchmark on the UniSRec Scientific split (issue 3).

    .venv/bin/python bench/quality.py [--only learn-a] [--threads 1]

Runs, in priority order, each in its own process (so its time and peak memory are its own), and
writes `bench/results/quality/<model>-<encoder>-<variant>-seed<seed>.json` as soon as it finishes;
a run whose file exists is skipped, so the benchmark can be stopped and resumed:
- LEARN item towers (a), (b), (c) with the default encoder (SmolLM2-135M) x 3 seeds;
- ablations of LEARN-(a) (model "learn-a-ablation", so the headline "learn-a" mean is the default
  configuration only): the MiniLM encoder; whitening off;
- the zero-training baseline (whitened / raw; SmolLM2 / MiniLM) and popularity (deterministic:
  one run each).
Every run uses trainer/offline.run_train, i.e. `learn train` with the same options (the JSON's
"command"), and the one protocol of trainer/evaluation.py. Run dirs (checkpoints, curves) go to
runs/quality/ (not committed). Then `bench/quality_table.py` builds the table.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
OUT = ROOT / "bench" / "results" / "quality"
RUNS_DIR = ROOT / "runs" / "quality"
DATASET = "amazon-scientific-unisrec"
SEEDS = (2024, 2025, 2026)

# (model name, encoder, variant, item tower, model-settings overrides)
VARIANTS = {"default": {}, "nowhiten": {"whiten": False}}


def planned_runs() -> list[dict]:
    runs = []
    for enc, variant in (("smollm2", "default"), ("smollm2", "nowhiten"), ("minilm", "default"), ("minilm", "nowhiten")):
        runs.append(dict(model="zero-training", kind="zero-training", encoder=enc, variant=variant, seed=SEEDS[0], tower="a"))
    runs.append(dict(model="popularity", kind="popularity", encoder="none", variant="default", seed=SEEDS[0], tower="a"))
    for seed in SEEDS:  # the headline first: one seed of a, b, c, then the next seed
        for tower in "acb":
            runs.append(dict(model=f"learn-{tower}", kind="learn", encoder="smollm2", variant="default", seed=seed, tower=tower))
    for seed in SEEDS:
        for enc, variant in (("minilm", "default"), ("smollm2", "nowhiten")):
            runs.append(dict(model="learn-a-ablation", kind="learn", encoder=enc, variant=variant, seed=seed, tower="a"))
    return runs


def file_for(run: dict) -> Path:
    return OUT / f"{run['model']}-{run['encoder']}-{run['variant']}-seed{run['seed']}.json"


def command_for(run: dict) -> str:
    cmd = f"learn train --dataset {DATASET} --model {run['kind']} --seed {run['seed']}"
    if run["kind"] != "popularity":
        cmd += f" --encoder {run['encoder']}"
    if run["kind"] == "learn":
        cmd += f" --item-tower {run['tower']}"
    if VARIANTS[run["variant"]].get("whiten") is False:
        cmd += " --no-whiten"
    return cmd


def _child(run: dict, threads: int, queue) -> None:
    import torch

    torch.set_num_threads(threads)
    from config.settings import Settings
    from trainer.offline import run_train

    # a data dir of the benchmark's own (its embedding cache was seeded from .learn/), so nothing
    # another job does to .learn/ can force a 7-minute SmolLM2 re-encode in the middle of the table
    s = Settings(data_dir=Path(os.environ.get("LEARN_BENCH_DATA_DIR", ROOT / "runs" / "bench-data")))
    ms = s.model.model_copy(update={"seed": run["seed"], "item_tower": run["tower"], **VARIANTS[run["variant"]]})
    enc = s.encoder.model_copy(update={"model": run["encoder"] if run["encoder"] != "none" else s.encoder.model})
    s = s.model_copy(update={"model": ms, "encoder": enc})
    name = file_for(run).stem
    res = run_train(s, DATASET, RUNS_DIR / name, model=run["kind"], progress=False)
    queue.put(res)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="", help="run only models whose name starts with this")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("LEARN_BENCH_THREADS", "1")))
    ap.add_argument("--shard", default="0/1", help="k/n: run only the runs whose index %% n == k")
    args = ap.parse_args()
    k, n = (int(x) for x in args.shard.split("/"))
    OUT.mkdir(parents=True, exist_ok=True)
    ctx = mp.get_context("spawn")
    for i, run in enumerate(planned_runs()):
        path = file_for(run)
        if path.exists() or not run["model"].startswith(args.only) or i % n != k:
            continue
        print(f"[{time.strftime('%H:%M:%S')}] {path.name}: {command_for(run)}", flush=True)
        q = ctx.Queue()
        p = ctx.Process(target=_child, args=(run, args.threads, q))
        p.start()
        res = q.get()
        p.join()
        record = {
            "model": run["model"],
            "encoder": res["encoder"] or "none",
            "encoder_name": run["encoder"],
            "variant": run["variant"],
            "dataset": DATASET,
            "seed": run["seed"],
            "metrics": res["metrics"],
            "valid_metrics": res["valid_metrics"],
            "history_excluded": True,
            "seconds": res["seconds"],
            "peak_rss_mb": res["peak_rss_mb"],
            "config": res["config"],
            "command": command_for(run),
            "threads": args.threads,
            "best_epoch": res.get("best_epoch"),
            "train_seconds": res.get("train_seconds"),
            "encode": res.get("encode"),
            "baselines": res.get("baselines"),
        }
        path.write_text(json.dumps(record, indent=2))
        print(f"    test ndcg@10 {res['metrics']['ndcg@10']:.4f} valid {res['valid_metrics']['ndcg@10']:.4f} "
              f"{res['seconds']:.0f}s {res['peak_rss_mb']:.0f}MB", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
