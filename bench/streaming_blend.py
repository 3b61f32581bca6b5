#!/usr/bin/env python3
"""A bench.streaming run's final version on the offline test split, three ways: as published (the
issue-17 blend chosen on the stream), with the blend cleared, and with it chosen on the offline
validation split (trainer/history.choose_knn_blend, as `learn train` does): separates the towers
from the blend. NDCG@10 in both conventions; prints one JSON line.

    .venv/bin/python -m bench.streaming_blend /tmp/bench-streaming-XXXX   (the run's data dir, kept)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from config import load_settings
from store.registry import ModelRegistry
from store.vectors import CONTENT, VectorStore
from trainer.data import load_dataset
from trainer.evaluation import evaluate_both_protocols
from trainer.history import choose_knn_blend
from trainer.offline import model_scorer
from trainer.publish import load_version, read_content


def main() -> None:
    torch.set_num_threads(1)
    s = load_settings(data_dir=Path(sys.argv[1]))
    data = load_dataset("amazon-scientific-unisrec", s.shared_data_dir)
    version = ModelRegistry(s.registry_path).current()
    with VectorStore(s.vector_uri).open() as store:
        ids, raw = read_content(store, store.ids(CONTENT))
    model, _ = load_version(version, torch.from_numpy(raw))
    index = {x: i for i, x in enumerate(ids)}
    to = [index[x] for x in data.item_ids]

    def examples(split):
        return sorted([([to[i] for i in h], to[t]) for h, t in split], key=lambda e: len(e[0]))

    test, valid = examples(data.test), examples(data.valid)

    def ndcg10() -> dict:
        both = evaluate_both_protocols(model_scorer(model, model.cfg.max_seq_len), test)
        return {name: m["ndcg@10"] for name, m in both.items()}

    h, tau = model.history, model.cfg.temperature
    out = {"version": version.name, "published": {"weight": float(h.knn_weight) * tau, **ndcg10()}}
    with torch.no_grad():
        h.knn_weight.fill_(0.0)
        h.age_bias.fill_(0.0)
    out["cleared"] = ndcg10()
    chosen = choose_knn_blend(model, lambda m: model_scorer(m, m.cfg.max_seq_len), valid)
    out["chosen_on_offline_valid"] = {"weight": chosen["weight"], "penalty": chosen["penalty"], **ndcg10()}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
