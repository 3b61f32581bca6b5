"""Streaming benchmark (issue 6): the incremental trainer on the Scientific replay, in real time.

    .venv/bin/python -m bench.streaming [--rate 100] [--window-s 60] [--encoder smollm2]

1. The catalogue's content embeddings (the offline trainer's prompts, from the embedding cache) are
   written to the vector store's `content` collection, as the encoder worker would.
2. The broker, the interaction worker and the trainer (`learn trainer`) run as processes.
3. The training part of every user's sequence (all but the last two items, as offline) is replayed in
   order, users interleaved, at `--rate` events per wall-clock second, event time = wall time.
4. Freshness: for each event, production wall time -> publication of the first version whose window
   contains it. Prequential NDCG@10/Recall@10 per window come from the trainer's metrics file.
5. At the end, the final promoted version is scored on the offline test split (trainer/evaluation.py)
   and compared with offline LEARN (bench/results/quality.json, same encoder, tower a).
Writes bench/results/streaming.json and bench/results/streaming.png.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from tqdm import tqdm

from config import load_settings
from deploy.broker import free_port
from deploy.stack import Stack, settings_env
from store.vectors import CONTENT, VectorStore
from streams.producer import EventProducer
from streams.replay import interleave
from streams.schemas import ActionType, Interaction
from trainer.data import load_dataset
from trainer.incremental import IncrementalTrainer, plot_windows, read_windows

RESULTS = Path(__file__).parent / "results"


def offline_reference(encoder: str) -> tuple[float | None, str]:
    path = RESULTS / "quality.json"
    if not path.exists():
        return None, "bench/results/quality.json missing"
    runs = json.loads(path.read_text())
    runs = runs.get("runs", runs) if isinstance(runs, dict) else runs
    vals = [r["metrics"]["ndcg@10"] for r in runs if r.get("model") == "learn-a"
            and encoder in str(r.get("encoder", "")).lower() and r.get("variant", "default") in ("default", None)]  # fmt: skip
    if not vals:
        vals = [r["metrics"]["ndcg@10"] for r in runs if r.get("model") == "learn-a"]
    return (statistics.mean(vals), f"mean of {len(vals)} learn-a runs in quality.json") if vals else (None, "no learn-a runs yet")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=100.0, help="events per wall-clock second")
    ap.add_argument("--window-s", type=float, default=60.0)
    ap.add_argument("--steps", type=int, default=300, help="optimiser steps per window (at most)")
    ap.add_argument("--max-train-s", type=float, default=30.0, help="training time per window (at most)")
    ap.add_argument("--encoder", default="smollm2")
    ap.add_argument("--users", type=int, default=0, help="replay only this many users (0: all)")
    ap.add_argument("--out", type=Path, default=RESULTS / "streaming.json")
    ap.add_argument("--refresh-reference", action="store_true",
                    help="only re-read the offline reference (quality.json) into an existing --out")
    args = ap.parse_args()
    if args.refresh_reference:
        results = json.loads(args.out.read_text())
        offline, note = offline_reference(args.encoder)
        results.update({"offline_test_ndcg10": offline, "offline_reference": note,
                        "streamed_vs_offline": results["final_test_ndcg10"] / offline if offline else None})  # fmt: skip
        args.out.write_text(json.dumps(results, indent=2))
        print(json.dumps({k: results[k] for k in ("final_test_ndcg10", "offline_test_ndcg10", "streamed_vs_offline")}))
        return

    load_before = os.getloadavg()
    base = load_settings()
    root = Path(tempfile.mkdtemp(prefix="bench-streaming-"))
    s = load_settings(
        data_dir=root,
        broker={"port": free_port()},
        encoder={"model": args.encoder},
        trainer={"window_s": args.window_s, "steps_per_window": args.steps, "max_train_s": args.max_train_s,
                 "poll_s": 0.5},
    )
    data = load_dataset("amazon-scientific-unisrec", s.shared_data_dir)
    if args.users:
        data = data.subsample(args.users)

    from encoder.content import ContentEncoder

    enc = ContentEncoder(s.encoder, models_path=base.models_path, cache=base.cache_path)
    raw = enc.encode(data.prompts(s.encoder.template), progress=True)
    with VectorStore(s.vector_uri).open() as store:
        store.ensure_collection(CONTENT, raw.shape[1])
        for k in range(0, len(raw), 4096):
            store.upsert(CONTENT, data.item_ids[k : k + 4096], raw[k : k + 4096], model_id=enc.model_id)

    sequences = {u: [data.item_ids[i] for i in seq] for u, seq in zip(data.users, data.train)}
    order = interleave(sequences, seed=0)
    produced_at: list[float] = []  # wall time = event time of each event
    t_start = time.time()
    with Stack(s, root / "run") as stack:
        stack.start_broker()
        stack.create_topics()
        stack.start_worker("interactions", free_port())
        env = {**os.environ, **settings_env(s)}
        stack.start_process("trainer", [sys.executable, "-m", "deploy.cli", "trainer"], env)
        with EventProducer(s) as producer:
            t0 = time.time()
            for i, (user, item, k) in enumerate(tqdm(order, desc="replay", unit="ev", mininterval=2)):
                target = t0 + i / args.rate
                while time.time() < target:
                    time.sleep(min(0.01, max(0.0, target - time.time())))
                now = time.time()
                producer.send_interaction(Interaction(event_id=f"{user}:{k}", user_id=user, item_id=item,
                                                      action=ActionType.review, event_time=now))  # fmt: skip
                produced_at.append(now)
            last_time = time.time()
            # one sentinel event past the last window's end closes it (a live stream never stops)
            time.sleep(1.0)
            producer.send_interaction(Interaction(event_id="bench:sentinel", user_id="bench-sentinel",
                                                  item_id=data.item_ids[0], event_time=last_time + args.window_s + 1))  # fmt: skip
        metrics_file = s.data_dir / "trainer" / "windows.jsonl"
        deadline = time.time() + 600
        while time.time() < deadline:  # until the window holding the last event is published
            rows = read_windows(metrics_file)
            if rows and rows[-1]["end"] > last_time:
                break
            time.sleep(2)
        stack.stop("trainer")
    rows = read_windows(metrics_file)

    # freshness: production -> the publication of the window that contains the event
    fresh = []
    for t in produced_at:
        w = next((r for r in rows if r["start"] <= t < r["end"]), None)
        if w is not None:
            fresh.append(w["published_at"] - t)

    # the final model on the offline test split
    with VectorStore(s.vector_uri).open() as store:
        trainer = IncrementalTrainer(s, store)
        trainer.recover()
        index = {item: i for i, item in enumerate(trainer.catalogue_ids)}
        trainer.reader.close()
    to_idx = [index[x] for x in data.item_ids]
    examples = sorted([([to_idx[i] for i in h], to_idx[t]) for h, t in data.test], key=lambda e: len(e[0]))
    final = trainer.learner.evaluate(examples)
    offline, offline_note = offline_reference(args.encoder)

    total_samples = sum(r["train"]["samples"] for r in rows)
    total_train_s = sum(r["train_s"] for r in rows)
    results = {
        "command": "python -m bench.streaming " + " ".join(sys.argv[1:]),
        "encoder": enc.model_id,
        "window_s": args.window_s,
        "rate_events_per_s": args.rate,
        "events": len(produced_at),
        "users": data.n_users,
        "freshness_p50_s": statistics.median(fresh) if fresh else None,
        "freshness_p90_s": statistics.quantiles(fresh, n=10)[8] if len(fresh) > 10 else None,
        "freshness_events": len(fresh),
        "windows": [{"window": r["window"], "ndcg10": r["prequential"].get("ndcg@10"),
                     "recall10": r["prequential"].get("recall@10"), "train_s": r["train_s"],
                     "publish_s": r["publish_s"], "events": r["events"], "users": r["users"],
                     "promoted": r["promoted"], "version": r["version"]} for r in rows],  # fmt: skip
        "final_test_metrics": final,
        "final_test_ndcg10": final["ndcg@10"],
        "offline_test_ndcg10": offline,
        "offline_reference": offline_note,
        "streamed_vs_offline": final["ndcg@10"] / offline if offline else None,
        "samples_per_s": total_samples / total_train_s if total_train_s else None,
        "mean_window_train_s": total_train_s / len(rows) if rows else None,
        "wall_s": time.time() - t_start,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_avg": {"before": list(load_before), "after": list(os.getloadavg())},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    plot_windows(rows, args.out.with_suffix(".png"))
    print(json.dumps({k: v for k, v in results.items() if k != "windows"}, indent=2))


if __name__ == "__main__":
    main()
