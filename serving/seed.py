"""A servable deployment without the stream, for benchmarks, tests and trying the API.

Each piece is written by the same code the running system uses: content embeddings into the vector
store's `content` collection and titles into store/titles (as the encoder worker does), users'
sequences into the per-partition state databases (store/state.py `PartitionState`, as the interaction
worker does), and a model version staged, exported, filled, marked published and promoted in the
registry (as the trainer does). The published towers are freshly initialised (untrained): they cost
exactly what trained ones cost, which is what the benchmark measures.
"""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from config import Settings
from store.registry import ModelRegistry, Version
from store.state import Entry, PartitionState
from store.titles import write_titles
from store.vectors import CONTENT, VectorStore

CHUNK = 4096


def write_catalogue(settings: Settings, store: VectorStore, ids: Sequence[str], content: np.ndarray,
                    titles: Mapping[str, str] | None = None) -> None:  # fmt: skip
    store.ensure_collection(CONTENT, content.shape[1])
    for k in range(0, len(ids), CHUNK):
        store.upsert(CONTENT, ids[k : k + CHUNK], content[k : k + CHUNK], model_id="seed")
    if titles:
        write_titles(settings.titles_path, titles)


def write_sequences(settings: Settings, sequences: Mapping[str, Sequence[str]], t0: float = 1.7e9) -> None:
    """Each user's items, oldest first, as interactions one second apart, into the partition databases."""
    n = settings.topics.partitions
    parts: dict[int, list] = {p: [] for p in range(n)}
    for user, items in sequences.items():
        p = zlib.crc32(user.encode()) % n
        for j, item in enumerate(items):
            parts[p].append((user, Entry(t0 + j, item, "purchase", f"{user}-{j}")))
    for p, events in parts.items():
        state = PartitionState(settings.state_path / f"{settings.topics.interactions}-p{p}")
        try:
            offset = state.next_offset
            state.apply(((offset + o, e, u) for o, (u, e) in enumerate(events)), settings.state.max_seq_len,
                        settings.state.allowed_lateness_s, settings.state.slot_s)  # fmt: skip
        finally:
            state.close()


def publish_version(settings: Settings, store: VectorStore, ids: Sequence[str], content: np.ndarray,
                    seed: int = 0, promote: bool = True) -> Version:  # fmt: skip
    """Stage, export and publish an untrained model version over `content`; its item vectors go into
    the version's collection before it is marked published (and promoted)."""
    from safetensors.torch import save_file

    from trainer.export import export_towers, load_tower
    from trainer.towers import LEARN, TowerConfig

    torch.manual_seed(seed)
    m = settings.model
    cfg = TowerConfig(n_items=len(ids), d_llm=content.shape[1], d_model=m.d_model, n_layers=m.n_layers,
                      n_heads=m.n_heads, d_out=m.d_out, max_seq_len=m.max_seq_len, item_tower=m.item_tower)  # fmt: skip
    model = LEARN(cfg, torch.from_numpy(np.ascontiguousarray(content, np.float32))).eval()
    registry = ModelRegistry(settings.registry_path)
    name = registry.next_name()
    stage = registry.stage(name)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(stage / "weights.safetensors"))
    export_towers(model, stage)
    config = {"version": name, "model": cfg.to_dict(), "items": len(ids), "created_at": time.time(), "seed": seed}
    (stage / "config.json").write_text(json.dumps(config, indent=2))
    version = registry.commit_version(name)
    tower = load_tower(version.item_tower_path)
    store.ensure_collection(version.collection, cfg.d_out)
    for k in range(0, len(ids), CHUNK):
        with torch.inference_mode():
            vecs = tower(torch.from_numpy(np.ascontiguousarray(content[k : k + CHUNK], np.float32))).numpy()
        store.upsert(version.collection, ids[k : k + CHUNK], vecs, model_id=name)
    registry.mark_published(name)
    if promote:
        registry.promote(name)
    return version


def random_unit(n: int, d: int, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)
