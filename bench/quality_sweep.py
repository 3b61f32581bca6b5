#!/usr/bin/env python3
"""The validation sweep behind LEARN's training defaults (issue 3): one seed, validation only.

    .venv/bin/python bench/quality_sweep.py [--adopt runs/exp3/*]

LEARN-(a), SmolLM2, seed 2024, one setting of config/settings.py's ModelSettings changed at a time
from the defaults; each run is `learn train` with that override (the JSON's "command"). Only
validation metrics are recorded (history excluded, the early-stopping metric, and since issue 17 the
same scores under RecBole's convention): `learn train` scores the test split
too, but this sweep neither records nor prints it, so a default chosen here is not tuned on test. Runs are written to
`bench/results/quality_sweep.json` as each finishes; finished ones are skipped on a restart, and
`--adopt DIR...` records finished `learn train` run dirs whose configuration matches a planned run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.quality import bench_settings, env_prefix, run_in_child  # noqa: E402
OUT = ROOT / "bench" / "results" / "quality_sweep.json"
SEED = 2024

# name -> ModelSettings overrides; "default" is the reference row
SWEEP = {
    "default": {},
    "dropout=0.0": {"dropout": 0.0},
    "dropout=0.1": {"dropout": 0.1},
    "dropout=0.35": {"dropout": 0.35},
    "dropout=0.5": {"dropout": 0.5},
    "temperature=0.05": {"temperature": 0.05},
    "temperature=0.1": {"temperature": 0.1},
    "lr=0.002": {"lr": 0.002},
    "weight_decay=0.1": {"weight_decay": 0.1},
    "whiten_dim=256": {"whiten_dim": 256},
    "max_epochs=80": {"max_epochs": 80},
    "n_layers=1": {"n_layers": 1},
    "n_layers=3": {"n_layers": 3},
    "use_id_embedding=True": {"use_id_embedding": True},  # off by default: cold items must score
    # issue 17: what to do with items already seen (trainer/history.py), chosen on validation under
    # both conventions. Rule, fixed before the runs: a setting replaces the default when its validation
    # NDCG@10 under RecBole's convention is higher AND its history-excluded one is not lower by more
    # than 0.001 (about one seed-to-seed standard deviation of the default).
    "history=negatives+age_bias": {"history_in_loss": "negatives", "history_age_bias": True},
    "history=negatives+age_bias+knn": {"history_in_loss": "negatives", "history_age_bias": True, "history_knn": True},
    "history=negatives+age_bias+knn_blend": {"history_in_loss": "negatives", "history_age_bias": True, "history_knn_blend": True},
    "history=masked+penalty+knn_blend": {"history_age_bias": True, "history_knn_blend": True},
    "history=masked+knn": {"history_knn": True},
    "history=negatives": {"history_in_loss": "negatives"},
}


def model_settings(overrides: dict):
    from config.settings import Settings

    return Settings().model.model_copy(update={"seed": SEED, "item_tower": "a", **overrides})


def command_for(overrides: dict) -> str:
    return f"{env_prefix(overrides)} learn train --dataset amazon-scientific-unisrec --encoder smollm2 --item-tower a --seed {SEED}".strip()


def record(name: str, overrides: dict, res: dict) -> dict:
    """Validation figures only (see the module docstring)."""
    return {"name": name, "overrides": overrides, "seed": SEED, "encoder": res["encoder"],
            "valid_metrics": res["valid_metrics"], "valid_metrics_recbole_protocol": res.get("valid_metrics_recbole_protocol"),
            "best_epoch": res["best_epoch"],
            "epochs_run": len(res["curve"]), "seconds": res["seconds"], "peak_rss_mb": res["peak_rss_mb"],
            "command": command_for(overrides)}  # fmt: skip


def _child(overrides: dict, queue) -> None:
    import torch

    torch.set_num_threads(1)
    from trainer.offline import run_train

    s = bench_settings().model_copy(update={"model": model_settings(overrides)})
    name = "sweep-" + "-".join(f"{k}{v}" for k, v in overrides.items()) if overrides else "sweep-default"
    queue.put(run_train(s, "amazon-scientific-unisrec", ROOT / "runs" / "quality" / name, progress=False))


def load() -> list[dict]:
    return json.loads(OUT.read_text()) if OUT.exists() else []


def save(rows: list[dict]) -> None:
    order = list(SWEEP)
    rows = sorted(rows, key=lambda r: order.index(r["name"]) if r["name"] in order else len(order))
    OUT.write_text(json.dumps(rows, indent=2))


def same_config(got: dict, want: dict) -> bool:
    """A run's recorded model config equals `want`; a field the run predates counts as its default
    (every field was added with a default that keeps the earlier behaviour)."""
    from config.settings import ModelSettings

    return all(got.get(k, ModelSettings.model_fields[k].default) == v for k, v in want.items())


def adopt(run_dirs: list[Path]) -> None:
    rows = {r["name"]: r for r in load()}
    for d in run_dirs:
        res = json.loads((d / "results.json").read_text())
        if res.get("model") != "learn-a":
            continue
        for name, overrides in SWEEP.items():
            if res["config"]["encoder"]["model"] == "smollm2" and same_config(res["config"]["model"], model_settings(overrides).model_dump()):
                rows[name] = {**record(name, overrides, res), "adopted_from": str(d)}
                print(f"adopted {d} as {name}")
    save(list(rows.values()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--adopt", type=Path, nargs="*", default=[], help="record finished `learn train` run dirs")
    ap.add_argument("--only", default="", help="comma-separated setting names: run only these")
    args = ap.parse_args()
    only = set(filter(None, args.only.split(",")))
    if only - set(SWEEP):
        raise SystemExit(f"unknown settings: {sorted(only - set(SWEEP))}")
    if args.adopt:
        adopt([d for d in args.adopt if (d / "results.json").exists()])
    else:
        for name, overrides in SWEEP.items():
            if name in {r["name"] for r in load()} or (only and name not in only):
                continue
            print(f"[{time.strftime('%H:%M:%S')}] {name}: {command_for(overrides)}", flush=True)
            res = run_in_child(_child, overrides)
            save(load() + [record(name, overrides, res)])
    rows = load()
    ref = next((r["valid_metrics"]["ndcg@10"] for r in rows if r["name"] == "default"), None)
    print(f"{'setting':32s} valid NDCG@10   vs default  RecBole convention  best epoch")
    for r in rows:
        v = r["valid_metrics"]["ndcg@10"]
        rb = (r.get("valid_metrics_recbole_protocol") or {}).get("ndcg@10")
        rb = f"{rb:.4f}" if rb is not None else "  –   "
        print(f"{r['name']:32s} {v:.4f}          {v / ref:5.3f}x      {rb}              {r['best_epoch']}" if ref else f"{r['name']:32s} {v:.4f}")


if __name__ == "__main__":
    main()
