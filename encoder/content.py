"""`ContentEncoder`: prompts -> LEARN content embeddings (frozen LLM, mean pool, L2 norm), cached.

One object serves the offline trainer (the whole catalogue) and the streaming encoder worker (one
micro-batch at a time): `encode(prompts)` looks every prompt up in the embedding cache, runs the LLM
only on the misses, and stores each batch's vectors as soon as they are computed (an interrupted
encode resumes where it stopped). Misses are sorted by token length and padded per batch (length
bucketing), so short texts never pay for long ones; the batches then run in a seeded shuffled order
(long and short mixed, not longest first), so the rate the progress bar sees early is the rate of
the whole encode and its ETA holds from the first batches. No gradients, `inference_mode`,
fp32 on CPU and bf16 on CUDA unless settings.encoder.dtype says otherwise; vectors come back as
float32 whatever the compute dtype.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from config.settings import EncoderSettings, Settings
from encoder.llm import LoadedLLM, load_llm
from encoder.pooling import content_embedding
from store.embedding_cache import EmbeddingCache

log = logging.getLogger(__name__)


@dataclass
class EncodeStats:
    """What the last `encode` call did (for logs and metrics)."""

    n: int = 0
    cache_hits: int = 0
    encoded: int = 0
    truncated: int = 0  # prompts longer than max_tokens, cut to max_tokens
    seconds: float = 0.0
    truncated_examples: list[int] = field(default_factory=list)


class ContentEncoder:
    def __init__(
        self,
        settings: EncoderSettings | None = None,
        models_path: str | Path | None = None,
        cache: EmbeddingCache | str | Path | None = "default",
        llm: LoadedLLM | None = None,
    ):
        root = Settings()
        self.settings = settings or root.encoder
        self.models_path = Path(models_path or root.models_path)
        if cache == "default":
            cache = root.cache_path
        self.cache = EmbeddingCache(cache) if isinstance(cache, (str, Path)) else cache
        self._llm = llm
        self.last_stats = EncodeStats()

    # -- identity ------------------------------------------------------------------------------
    @property
    def llm(self) -> LoadedLLM:
        """Loaded on first use, so a fully cached catalogue never loads the model."""
        if self._llm is None:
            s = self.settings
            self._llm = load_llm(s.model, self.models_path, s.device, s.dtype)
        return self._llm

    @property
    def model_id(self) -> str:
        """Stable id of the model + pooling + max tokens: the cache's namespace."""
        from encoder.llm import resolve_model_id

        s = self.settings
        base = self._llm.model_id if self._llm else resolve_model_id(s.model, s.device, s.dtype)
        return f"{base}|mean|l2|max{s.max_tokens}"

    @property
    def template(self) -> str:
        return self.settings.template

    # -- encoding ------------------------------------------------------------------------------
    def _forward_batches(self, prompts: list[str], progress: bool, **model_kwargs):
        """Length-bucketed forward passes over `prompts`: yields (row indices, attention mask, output)."""
        llm = self.llm
        tok = llm.tokenizer
        ids = tok(prompts, add_special_tokens=True, truncation=False)["input_ids"]
        lengths = np.array([len(x) for x in ids])
        over = np.nonzero(lengths > self.settings.max_tokens)[0]
        self.last_stats.truncated += len(over)
        self.last_stats.truncated_examples = over[:5].tolist()
        batches = batch_plan(lengths, self.settings.batch_size)
        bar = tqdm(total=len(prompts), desc=f"encode {self.settings.model}", unit="item", disable=not progress,
                   mininterval=1.0)  # fmt: skip
        with torch.inference_mode():
            for b in batches:
                enc = tok(
                    [prompts[i] for i in b],
                    padding=True,
                    truncation=True,
                    max_length=self.settings.max_tokens,
                    return_tensors="pt",
                ).to(llm.device)
                yield b, enc["attention_mask"], llm.model(**enc, **model_kwargs)
                bar.update(len(b))
        bar.close()

    def _encode_uncached(self, prompts: list[str], progress: bool,
                         on_batch: Callable[[np.ndarray, np.ndarray], None] | None = None) -> np.ndarray:  # fmt: skip
        """(N, d) vectors; `on_batch(row indices, their vectors)` after every forward pass."""
        out = np.zeros((len(prompts), self.llm.hidden_size), dtype=np.float32)
        for b, mask, res in self._forward_batches(prompts, progress):
            hidden = res.last_hidden_state  # (B, T, d)
            out[b] = content_embedding(hidden, mask).cpu().numpy()  # (B, d)
            if on_batch is not None:
                on_batch(b, out[b])
        return out

    def encode_every_layer(self, prompts: list[str], progress: bool = False) -> np.ndarray:
        """Mean-pooled, L2-normalised vectors of every hidden layer, uncached: (L + 1, N, d), index 0
        the token embeddings (a bag of words), index L the last layer (= `encode`). For measuring
        what the LLM's layers add (bench/llm_layers.py), not for serving."""
        self.last_stats = EncodeStats(n=len(prompts))
        out = None
        for b, mask, res in self._forward_batches(prompts, progress, output_hidden_states=True):
            if out is None:
                out = np.zeros((len(res.hidden_states), len(prompts), self.llm.hidden_size), dtype=np.float32)
            for layer, hidden in enumerate(res.hidden_states):  # each (B, T, d)
                out[layer, b] = content_embedding(hidden, mask).cpu().numpy()
        return out

    def encode(self, prompts: list[str], progress: bool = False) -> np.ndarray:
        """Content embeddings for `prompts`: float32 (N, d), rows L2-normalised, order kept."""
        t0 = time.perf_counter()
        self.last_stats = EncodeStats(n=len(prompts))
        if not prompts:
            return np.zeros((0, self.dim), dtype=np.float32)
        cached = (
            self.cache.get_many(self.model_id, self.template, prompts)
            if self.cache is not None
            else [None] * len(prompts)
        )
        missing = sorted({p for p, v in zip(prompts, cached) if v is None})
        self.last_stats.cache_hits = len(prompts) - sum(v is None for v in cached)
        computed: dict[str, np.ndarray] = {}
        if missing:
            if self.cache is None:
                vecs = self._encode_uncached(missing, progress)
            else:
                def commit(rows: np.ndarray, vectors: np.ndarray) -> None:  # each batch is kept at once
                    self.cache.put_many(self.model_id, self.template, [missing[i] for i in rows], vectors)

                with self.cache.writing():
                    vecs = self._encode_uncached(missing, progress, on_batch=commit)
            self.last_stats.encoded = len(missing)
            computed = dict(zip(missing, vecs))
            if self.last_stats.truncated:
                log.warning(
                    "%d of %d prompts longer than max_tokens=%d were truncated",
                    self.last_stats.truncated, len(missing), self.settings.max_tokens,
                )
        out = np.stack([v if v is not None else computed[p] for p, v in zip(prompts, cached)])
        self.last_stats.seconds = time.perf_counter() - t0
        return out.astype(np.float32, copy=False)

    @property
    def dim(self) -> int:
        return self.llm.hidden_size


def batch_plan(lengths: np.ndarray, batch_size: int, seed: int = 0) -> list[np.ndarray]:
    """Forward passes over texts of these token lengths: cut in length order (little padding), run in
    a seeded shuffled order, so any prefix is a fair sample of the cost and the ETA is honest."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    np.random.default_rng(seed).shuffle(batches)
    return batches
