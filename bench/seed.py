"""A servable deployment without the stream, for benchmarks and tests (bench/serving.py,
tests/integration/test_api.py); not part of the installed package.

Each piece is written by the same code the running system uses: content embeddings into the vector
store's `content` collection and titles into store/titles (as the encoder worker does), users'
sequences into the per-partition state databases (store/state.py `PartitionState`, as the
interaction worker does), and a model version written by the publisher (trainer/publish.py, as the
trainer does). The published towers are freshly initialised (untrained): they cost exactly what
trained ones cost, which is what the benchmark measures.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from config import Settings
from store.registry import Version, open_registry
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
    """Publish an untrained model (the settings' config) over `content`: its item vectors go into the
    version's collection before it is marked published (and promoted)."""
    from trainer.publish import Publisher
    from trainer.towers import LEARN, TowerConfig

    torch.manual_seed(seed)
    raw = np.ascontiguousarray(content, np.float32)
    model = LEARN(TowerConfig.from_settings(settings.model, len(ids), raw.shape[1]), torch.from_numpy(raw)).eval()
    publisher = Publisher(open_registry(settings), store, settings.trainer.keep_versions)
    return publisher.publish(model, ids, raw, {"source": "seed", "seed": seed}, promote)


def random_unit(n: int, d: int, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)
