#!/usr/bin/env python3
"""Distributed offline training (issue 16): `learn train` as 1 process (2 threads) vs 2 DDP ranks
(1 thread each, `learn train --nproc 2`: torchrun + gloo in a private network namespace).

    LEARN_CACHE_DIR=/work/cache nice -n 5 .venv/bin/python bench/ddp.py [--epochs N]

Both runs: the default `learn train` data (the UniSRec Scientific split), the default encoder
(SmolLM2, vectors from the embedding cache: the settings' cache, i.e. LEARN_CACHE_DIR, else
bench/quality.py's runs/bench-data/), seed 2024, every other setting the default (`--epochs` caps
max_epochs for BOTH runs, recorded). Each run is the real command in its own process; its wall time
includes start-up and the test evaluation; `train_seconds` is rank 0's training loop alone. Each
finished run is written into bench/results/scale/ddp.json at once and skipped on a restart; the
summary keys appear once both exist:
    ddp_valid_ndcg10_1 / _2        validation NDCG@10 (history excluded) of each run
    ddp_1_s / ddp_2_s              wall seconds of each command
    ddp_2_ranks_vs_1_time          ddp_2_s / ddp_1_s (< 1: the 2 ranks were faster)
Run dirs go to runs/ddp-bench/ (not committed).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = Path(os.environ.get("LEARN_BENCH_OUT", ROOT / "bench" / "results" / "scale" / "ddp.json"))
RUNS = Path(os.environ.get("LEARN_BENCH_RUNS", ROOT / "runs" / "ddp-bench"))
SEED = 2024
PLAN = {1: ["--threads", "2"], 2: ["--nproc", "2"]}  # world size -> the options of its command


def command(world: int, epochs: int | None) -> list[str]:
    cap = ["--epochs", str(epochs)] if epochs else []
    return ["learn", "train", "--seed", str(SEED), *cap, *PLAN[world], "--run-dir", str(RUNS / f"ranks-{world}"),
            "--no-progress"]  # fmt: skip


def overlapping(env: dict) -> str | None:
    """A note when the caller says another run shared the cores (LEARN_BENCH_NOTE)."""
    return env.get("LEARN_BENCH_NOTE") or None


def environment() -> dict:
    """The benchmark's data dir (as bench/quality.py) unless LEARN_DATA_DIR is set; the cache follows
    the settings (LEARN_CACHE_DIR, else under the data dir)."""
    return {"LEARN_DATA_DIR": os.environ.get("LEARN_BENCH_DATA_DIR", str(ROOT / "runs" / "bench-data")), **os.environ}


def run_one(world: int, epochs: int | None) -> dict:
    run_dir = RUNS / f"ranks-{world}"
    shutil.rmtree(run_dir, ignore_errors=True)  # an unfinished earlier try
    cmd = command(world, epochs)
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "deploy.cli", *cmd[1:]], env=environment(), capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    res = json.loads((run_dir / "results.json").read_text())
    return {
        "command": " ".join(cmd), "wall_s": wall, "train_seconds": res["train_seconds"],
        "epochs": len(res["curve"]), "best_epoch": res["best_epoch"], "max_epochs": res["config"]["model"]["max_epochs"],
        "valid_ndcg10": res["valid_metrics"]["ndcg@10"], "test_ndcg10": res["metrics"]["ndcg@10"],
        "valid_curve_ndcg10": [c["valid_ndcg@10"] for c in res["curve"]], "distributed": res["distributed"],
        "encoder": res["encoder"], "encode": res["encode"], "peak_rss_mb_rank0": res["peak_rss_mb"],
        "load_avg_before": load_before, "load_avg_after": os.getloadavg(), "note": overlapping(os.environ),
        "started": time.strftime("%H:%M:%S", time.localtime(time.time() - wall)), "ended": time.strftime("%H:%M:%S"),
    }  # fmt: skip


def summary(record: dict) -> dict:
    one, two = record["runs"].get("1"), record["runs"].get("2")
    if not (one and two):
        return {}
    return {
        "ddp_valid_ndcg10_1": one["valid_ndcg10"], "ddp_valid_ndcg10_2": two["valid_ndcg10"],
        "ddp_valid_ndcg10_diff": two["valid_ndcg10"] - one["valid_ndcg10"],
        "ddp_1_s": one["wall_s"], "ddp_2_s": two["wall_s"], "ddp_2_ranks_vs_1_time": two["wall_s"] / one["wall_s"],
        "ddp_2_ranks_vs_1_train_time": two["train_seconds"] / one["train_seconds"],
        "ddp_epochs_1": one["epochs"], "ddp_epochs_2": two["epochs"],
        "ddp_2_ranks_vs_1_time_direction": "2-rank wall seconds / 1-process wall seconds (< 1: 2 ranks faster)",
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=None, help="cap max_epochs for both runs (default: the settings')")
    ap.add_argument("--only", type=int, choices=sorted(PLAN), help="run only this world size's run")
    args = ap.parse_args()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    record = json.loads(OUT.read_text()) if OUT.exists() else {}
    if record.get("epochs_cap") != args.epochs:
        record = {}  # another plan: start again
    record.update(epochs_cap=args.epochs, cpu_count=os.cpu_count(), runs=record.get("runs", {}),
                  command=f"LEARN_CACHE_DIR={os.environ.get('LEARN_CACHE_DIR', '')} nice -n 5 .venv/bin/python bench/ddp.py"
                          + (f" --epochs {args.epochs}" if args.epochs else ""))  # fmt: skip
    record.setdefault("load_avg", {"before": os.getloadavg()})
    t0 = time.perf_counter()
    for world in [args.only] if args.only else PLAN:
        if str(world) in record["runs"]:
            print(f"ranks {world}: done already ({OUT})")
            continue
        print(f"[{time.strftime('%H:%M:%S')}] {' '.join(command(world, args.epochs))}", flush=True)
        r = run_one(world, args.epochs)
        if OUT.exists():  # another invocation (--only) may have finished a run meanwhile
            record["runs"] = {**json.loads(OUT.read_text()).get("runs", {}), **record["runs"]}
        record["runs"][str(world)] = r
        record["wall_s"] = record.get("wall_s", 0.0) + time.perf_counter() - t0
        t0 = time.perf_counter()
        record["load_avg"]["after"] = os.getloadavg()
        record.update(summary(record))
        OUT.write_text(json.dumps(record, indent=2))
        print(f"    {r['wall_s']:.0f} s ({r['train_seconds']:.0f} s training), {r['epochs']} epochs, "
              f"valid NDCG@10 {r['valid_ndcg10']:.4f}", flush=True)  # fmt: skip
    print(json.dumps({k: v for k, v in record.items() if k.startswith("ddp_")}, indent=2))


if __name__ == "__main__":
    main()
