#!/usr/bin/env python3
"""What does the frozen LLM add? Mean-pooled vectors of every hidden layer, scored (issue 3).

    .venv/bin/python bench/llm_layers.py [--encoder smollm2] [--train 0 -1]

LEARN's content embedding is the mean of the LLM's last hidden layer. Layer 0 of the same model is
the mean of its input token embeddings: a bag of words that no transformer layer has touched. If the
last layer scores no better than layer 0, the LLM's contextual processing brings no knowledge the
recommender can use, and the model, not the towers, is what limits LEARN here.

One forward pass over the UniSRec Scientific catalogue (`ContentEncoder.encode_every_layer`; the
vectors are kept under runs/llm_layers/ and reused), then for every layer, on the same whitened
features the model would get: the zero-training baseline's validation metrics and the raw vectors'
mean pairwise cosine. `--train` also trains LEARN-(a) (defaults, seed 2024) on the listed layers
(-1: the last) and records validation and test: a diagnostic, nothing is chosen by it. Writes the
encoder's entry of `bench/results/llm_layers.json` (one entry per `--encoder`, the others kept).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.quality import DATASET, bench_settings  # noqa: E402

OUT = ROOT / "bench" / "results" / "llm_layers.json"
SEED = 2024


def every_layer(settings, data, threads: int) -> tuple[np.ndarray, str, float | None]:
    """(L + 1, N, d) pooled vectors of the catalogue, from runs/llm_layers/ when already computed
    (then no encode time)."""
    import torch

    from encoder.content import ContentEncoder

    enc = ContentEncoder(settings.encoder, models_path=settings.models_path, cache=None)
    path = ROOT / "runs" / "llm_layers" / (enc.model_id.replace(":", "_").replace("|", "_") + ".npy")
    if path.exists():
        return np.load(path), enc.model_id, None
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    layers = enc.encode_every_layer(data.prompts(settings.encoder.template), progress=True)
    seconds = time.perf_counter() - t0
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, layers)
    return layers, enc.model_id, seconds


def main() -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--encoder", default="smollm2")
    ap.add_argument("--train", type=int, nargs="*", default=[0, -1], help="layers to train LEARN-(a) on")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch

    from encoder.pooling import mean_pairwise_cosine
    from trainer.data import load_dataset
    from trainer.evaluation import evaluate_examples
    from trainer.offline import content_features, train_model, zero_training_scorer

    s = bench_settings()
    s = s.model_copy(update={"encoder": s.encoder.model_copy(update={"model": args.encoder})})
    ms = s.model.model_copy(update={"seed": SEED, "item_tower": "a"})
    data = load_dataset(DATASET, s.shared_data_dir, history_cap=ms.max_seq_len)
    layers, model_id, encode_s = every_layer(s, data, args.threads)
    n = len(layers) - 1
    rows = []
    for layer in range(n + 1):
        features = content_features(layers[layer], ms.whiten, ms.whiten_dim)
        valid = evaluate_examples(zero_training_scorer(features), data.valid)
        rows.append({"layer": layer, "raw_mean_pairwise_cosine": mean_pairwise_cosine(layers[layer]),
                     "zero_training_valid": valid})  # fmt: skip
        print(f"layer {layer:2d}  zero-training valid NDCG@10 {valid['ndcg@10']:.4f}  "
              f"cosine {rows[-1]['raw_mean_pairwise_cosine']:.3f}", flush=True)  # fmt: skip
    trained = []
    torch.set_num_threads(1)
    for layer in args.train:
        layer = layer % (n + 1)
        out = train_model(data, layers[layer], ms, progress=True)
        trained.append({"layer": layer, "valid": out.valid_metrics, "test": out.test_metrics,
                        "best_epoch": out.best_epoch, "seconds": out.seconds})  # fmt: skip
        print(f"LEARN-(a) on layer {layer}: valid NDCG@10 {out.valid_metrics['ndcg@10']:.4f}, "
              f"test {out.test_metrics['ndcg@10']:.4f} (best epoch {out.best_epoch})", flush=True)  # fmt: skip
    result = {
        "encoder": model_id, "dataset": DATASET, "layers": n, "seed": SEED, "encode_seconds": encode_s,
        "whiten": ms.whiten, "zero_training_by_layer": rows, "learn_a_by_layer": trained,
        "command": " ".join(["python bench/llm_layers.py", *sys.argv[1:]]),
    }  # fmt: skip
    entries = json.loads(OUT.read_text()) if OUT.exists() else {}
    entries[args.encoder] = result
    OUT.write_text(json.dumps(entries, indent=2))
    return result


if __name__ == "__main__":
    main()
