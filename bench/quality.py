#!/usr/bin/env python3
"""The LEARN quality benchmark on the UniSRec Scientific split (issue 3).

    .venv/bin/python bench/quality.py [--only learn-a] [--threads 1] [--data PATH]

Runs, in priority order, each in its own process (so its time and peak memory are its own), and
writes `bench/results/quality/<model>-<encoder>-<variant>-seed<seed>.json` as soon as it finishes;
a run whose file exists is skipped, so the benchmark can be stopped and resumed:
- LEARN item towers (a), (b), (c) with the default encoder (SmolLM2-135M) x 3 seeds;
- the three towers again with the paper's dense all-action loss added to the full softmax
  (models "learn-{a,b,c}-dense"): under the default next-item loss (a) computes exactly what (b)
  does, so this is where the towers can be compared;
- ablations of LEARN-(a) (model "learn-a-ablation", so the headline "learn-a" mean is the default
  configuration only): the MiniLM encoder; whitening off; wider towers (d 128, d 256);
- the zero-training baseline (whitened / raw; SmolLM2 / MiniLM) and popularity (deterministic:
  one run each).
Every run uses trainer/offline.run_train, i.e. `learn train` with the same options (the JSON's
"command"), and the one protocol of trainer/evaluation.py. Run dirs (checkpoints, curves) go to
runs/quality/ (not committed). Then `bench/quality_table.py` builds the table.

`--data PATH` (any supported dataset folder, or a dataset name from the settings) runs the same plan
on another dataset: results under bench/results/quality-<name>/, run dirs under runs/quality-<name>/,
and the split written as RecBole atomic files (runs/quality-<name>/recbole-data/) for the peer,
with the bench/recbole/sasrec.py command that runs it on them.
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

# variant name -> model-settings overrides of the defaults (config/settings.py: ModelSettings)
VARIANTS = {
    "default": {},
    # the default before issue 17: no penalty on history items, no content-kNN term, no EASE term
    "history-masked": {"history_age_bias": False, "history_knn_blend": False, "collab_rank": 0},
    # the default before the EASE term (trainer/collab.py): the kNN term and the history penalty only
    "no-collab": {"collab_rank": 0},
    "nowhiten": {"whiten": False},
    "dense0.5": {"dense_weight": 0.5},
    "d128": {"d_model": 128, "d_out": 128},
    "d256": {"d_model": 256, "d_out": 256, "n_heads": 4},
}


def planned_runs() -> list[dict]:
    runs = []
    for enc, variant in (("smollm2", "default"), ("smollm2", "nowhiten"), ("minilm", "default"), ("minilm", "nowhiten")):
        # the headline "zero-training" is the default encoder's, as LEARN's; the others are ablations
        model = "zero-training" if (enc, variant) == ("smollm2", "default") else "zero-training-ablation"
        runs.append(dict(model=model, kind="zero-training", encoder=enc, variant=variant, seed=SEEDS[0], tower="a"))
    runs.append(dict(model="popularity", kind="popularity", encoder="none", variant="default", seed=SEEDS[0], tower="a"))
    for seed in SEEDS:  # the headline first: one seed of a, b, c, then the next seed
        for tower in "acb":
            runs.append(dict(model=f"learn-{tower}", kind="learn", encoder="smollm2", variant="default", seed=seed, tower=tower))
    for seed in SEEDS:
        # the three towers where they differ: the full softmax plus the paper's dense all-action term
        for tower in "cab":
            runs.append(dict(model=f"learn-{tower}-dense", kind="learn", encoder="smollm2", variant="dense0.5", seed=seed, tower=tower))
        for enc, variant in (("smollm2", "no-collab"), ("smollm2", "history-masked"), ("minilm", "default"), ("smollm2", "nowhiten"), ("smollm2", "d128"), ("smollm2", "d256")):
            runs.append(dict(model="learn-a-ablation", kind="learn", encoder=enc, variant=variant, seed=seed, tower="a"))
    return runs


def outputs_for(data: str) -> tuple[Path, Path]:
    """(results folder, run folders) of a dataset: the default's are OUT and RUNS_DIR."""
    if data == DATASET:
        return OUT, RUNS_DIR
    name = Path(data).name
    return OUT.parent / f"quality-{name}", RUNS_DIR.parent / f"quality-{name}"


def file_for(run: dict) -> Path:
    out = outputs_for(run.get("data", DATASET))[0]
    return out / f"{run['model']}-{run['encoder']}-{run['variant']}-seed{run['seed']}.json"


def command_for(run: dict) -> str:
    data = run.get("data", DATASET)
    where = f"--dataset {DATASET}" if data == DATASET else f"--data {data}"
    cmd = f"learn train {where} --model {run['kind']} --seed {run['seed']}"
    if run["kind"] != "popularity":
        cmd += f" --encoder {run['encoder']}"
    if run["kind"] == "learn":
        cmd += f" --item-tower {run['tower']}"
    if VARIANTS[run["variant"]].get("whiten") is False:
        cmd += " --no-whiten"
    overrides = VARIANTS[run["variant"]]
    if "dense_weight" in overrides:
        cmd += f" --dense-weight {overrides['dense_weight']}"
    env = env_prefix({k: v for k, v in overrides.items() if k not in ("whiten", "dense_weight")})
    cmd = f"{env} {cmd}" if env else cmd
    return cmd


def env_prefix(overrides: dict) -> str:
    """Model-settings overrides as the environment `learn train` reads (`LEARN_MODEL__X=v ...`)."""
    return " ".join(f"LEARN_MODEL__{k.upper()}={v}" for k, v in overrides.items())


def bench_settings():
    """Settings on a data dir of the benchmark's own (its embedding cache was seeded from .learn/), so
    nothing another job does to .learn/ can force a 7-minute SmolLM2 re-encode in the middle of a table."""
    from config.settings import Settings

    return Settings(data_dir=Path(os.environ.get("LEARN_BENCH_DATA_DIR", ROOT / "runs" / "bench-data")))


def run_in_child(target, *args) -> dict:
    """`target(*args, queue)` in a fresh spawned process (so its time and peak memory are its own);
    what it put on the queue."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=target, args=(*args, q))
    p.start()
    res = q.get()
    p.join()
    return res


def _child(run: dict, threads: int, queue) -> None:
    import torch

    torch.set_num_threads(threads)
    from trainer.offline import run_train

    s = bench_settings()
    ms = s.model.model_copy(update={"seed": run["seed"], "item_tower": run["tower"], **VARIANTS[run["variant"]]})
    enc = s.encoder.model_copy(update={"model": run["encoder"] if run["encoder"] != "none" else s.encoder.model})
    s = s.model_copy(update={"model": ms, "encoder": enc})
    name = file_for(run).stem
    data = run.get("data", DATASET)
    res = run_train(s, data, outputs_for(data)[1] / name, model=run["kind"], progress=False)
    queue.put(res)


def record_for(run: dict, res: dict, threads: int) -> dict:
    """One results file: the run's identity, its metrics and costs (what quality_table.py reads)."""
    return {
        "model": run["model"],
        "encoder": res["encoder"] or "none",
        "encoder_name": run["encoder"],
        "variant": run["variant"],
        "dataset": res["dataset"],
        "seed": run["seed"],
        "metrics": res["metrics"],
        "valid_metrics": res["valid_metrics"],
        "history_excluded": True,
        # the same score matrices ranked under RecBole's convention (only the padding id masked)
        "metrics_recbole_protocol": res["metrics_recbole_protocol"],
        "valid_metrics_recbole_protocol": res["valid_metrics_recbole_protocol"],
        "seconds": res["seconds"],
        "peak_rss_mb": res["peak_rss_mb"],
        "config": res["config"],
        "command": command_for(run),
        "threads": threads,
        "best_epoch": res.get("best_epoch"),
        "train_seconds": res.get("train_seconds"),
        "encode": res.get("encode"),
        "baselines": res.get("baselines"),
        "knn_blend": res.get("knn_blend"),  # the validation-chosen history penalty and kNN weight
        "collab_blend": res.get("collab_blend"),  # the validation-chosen EASE term (trainer/collab.py)
        "derived_from": res.get("derived_from"),  # bench/quality_blend.py: the run it was computed from
    }


def adopt(run_dir: Path, threads: int) -> Path:
    """Record a finished `learn train` run (its results.json) as the planned run with the same
    model, tower, encoder, seed and settings, instead of training it again."""
    from config.settings import Settings

    res = json.loads((run_dir / "results.json").read_text())
    cfg = res["config"]["model"]
    for run in planned_runs():
        want = Settings().model.model_copy(update={"seed": run["seed"], "item_tower": run["tower"], **VARIANTS[run["variant"]]})
        if (run["kind"] == "learn" and res["model"] == f"learn-{run['tower']}" and run["encoder"] == res["config"]["encoder"]["model"]
                and cfg == want.model_dump()):  # fmt: skip
            path = file_for(run)
            path.write_text(json.dumps({**record_for(run, res, threads), "adopted_from": str(run_dir)}, indent=2))
            return path
    raise SystemExit(f"{run_dir}: no planned run has exactly this configuration")


def prepare_dataset(data: str) -> str:
    """Check the dataset (one short error when it cannot be read), write its split as RecBole atomic
    files for the peer and say how to run it; the dataset's folder, as the runs will name it."""
    from streams.datasets import DatasetError, resolve
    from trainer.data import load_source, write_atomic_split

    s = bench_settings()
    try:
        src = resolve(data, s.datasets, s.shared_data_dir)
        split = load_source(src, history_cap=s.model.max_seq_len)
    except DatasetError as e:
        raise SystemExit(f"error: {e}") from None
    folder = str(src.directory.resolve())
    out, runs_dir = outputs_for(folder)
    prefix = "".join(c if c.isalnum() else "_" for c in src.name)
    atomic = runs_dir / "recbole-data"
    write_atomic_split(split, atomic, prefix)
    print(f"{src.name} ({src.format}): {split.n_items} items, {split.n_users} users -> {out}")
    print(f"RecBole peer on the same split: .venv-recbole/bin/python bench/recbole/sasrec.py --seed 2020 "
          f"--data {atomic} --prefix {prefix} --out {out / 'sasrec-recbole-seed2020.json'}")  # fmt: skip
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="", help="run only models whose name starts with this")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("LEARN_BENCH_THREADS", "1")))
    ap.add_argument("--shard", default="0/1", help="k/n: run only the runs whose index %% n == k")
    ap.add_argument("--adopt", type=Path, nargs="*", default=[], help="record finished `learn train` run dirs")
    ap.add_argument("--data", default=DATASET, help="a dataset folder or a dataset name from the settings")
    args = ap.parse_args()
    runs = planned_runs()
    if args.data != DATASET:
        data = prepare_dataset(args.data)
        runs = [{**run, "data": data} for run in runs]
    for d in args.adopt:
        print(f"adopted {d} -> {adopt(d, args.threads)}")
    if args.adopt:
        return
    k, n = (int(x) for x in args.shard.split("/"))
    for i, run in enumerate(runs):
        file_for(run).parent.mkdir(parents=True, exist_ok=True)
        path = file_for(run)
        if path.exists() or not run["model"].startswith(args.only) or i % n != k:
            continue
        print(f"[{time.strftime('%H:%M:%S')}] {path.name}: {command_for(run)}", flush=True)
        res = run_in_child(_child, run, args.threads)
        record = record_for(run, res, args.threads)
        path.write_text(json.dumps(record, indent=2))
        print(f"    test ndcg@10 {res['metrics']['ndcg@10']:.4f} valid {res['valid_metrics']['ndcg@10']:.4f} "
              f"{res['seconds']:.0f}s {res['peak_rss_mb']:.0f}MB", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
