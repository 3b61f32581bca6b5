"""ContentEncoder with a tiny fake LLM: caching, order, pooling, truncation (no real model loaded)."""

from types import SimpleNamespace

import numpy as np
import torch

from config.settings import EncoderSettings
from encoder.content import ContentEncoder
from encoder.llm import LoadedLLM
from store.embedding_cache import EmbeddingCache


class _Enc(dict):
    def to(self, device):
        return self


class FakeTokenizer:
    def __call__(self, texts, padding=False, truncation=False, max_length=None, return_tensors=None, add_special_tokens=True):
        ids = [[ord(c) % 50 + 1 for c in t] for t in texts]
        if truncation and max_length:
            ids = [x[:max_length] for x in ids]
        if return_tensors is None:
            return {"input_ids": ids}
        T = max(len(x) for x in ids)
        return _Enc(
            input_ids=torch.tensor([x + [0] * (T - len(x)) for x in ids]),
            attention_mask=torch.tensor([[1] * len(x) + [0] * (T - len(x)) for x in ids]),
        )


class FakeModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = torch.nn.Embedding(64, 8)
        self.calls = 0

    def forward(self, input_ids, attention_mask):
        self.calls += 1
        return SimpleNamespace(last_hidden_state=self.emb(input_ids))


def make(tmp_path, max_tokens=16, batch_size=2):
    model = FakeModel()
    llm = LoadedLLM("fake", "fake:1", model, FakeTokenizer(), 8, torch.device("cpu"), torch.float32)
    s = EncoderSettings(model="fake", max_tokens=max_tokens, batch_size=batch_size)
    return ContentEncoder(s, models_path=tmp_path, cache=EmbeddingCache(tmp_path / "c"), llm=llm), model


def test_encode_pools_keeps_order_and_caches(tmp_path):
    enc, model = make(tmp_path)
    prompts = ["abcdef", "ab", "abcdef", "xyz"]
    x = enc.encode(prompts)
    assert x.shape == (4, 8) and x.dtype == np.float32
    assert np.allclose(np.linalg.norm(x, axis=1), 1, atol=1e-5)
    assert np.allclose(x[0], x[2])
    # the padded batch gives the same vector as the prompt alone (padding is ignored by the pooling)
    alone, _ = make(tmp_path / "other")
    assert np.allclose(alone.encode(["ab"])[0], x[1], atol=1e-6)
    assert enc.last_stats.encoded == 3 and enc.last_stats.cache_hits == 0
    calls = model.calls
    y = enc.encode(["xyz", "abcdef"])
    assert model.calls == calls and enc.last_stats.cache_hits == 2
    assert np.allclose(y, x[[3, 0]])


def test_truncation_is_reported(tmp_path):
    enc, _ = make(tmp_path, max_tokens=3)
    enc.encode(["abcdef", "ab"])
    assert enc.last_stats.truncated == 1
    assert enc.model_id.endswith("max3")


def test_bfloat16_on_cpu_is_its_own_cache_namespace_and_close_to_float32(tmp_path):
    """The real packaged MiniLM in fp32 and in bf16: different model ids (two cache namespaces, never
    mixed), vectors that agree to cosine > 0.99, both float32 and unit length."""
    prompts = ["Title: Pyrex beaker 250 ml Brand: Pyrex", "Title: nitrile gloves, size M", "Title: pH meter"]
    cache = EmbeddingCache(tmp_path / "c")
    fp32 = ContentEncoder(EncoderSettings(model="minilm", device="cpu"), models_path=tmp_path, cache=cache)
    bf16 = ContentEncoder(EncoderSettings(model="minilm", device="cpu", dtype="bfloat16"), models_path=tmp_path,
                          cache=cache)  # fmt: skip
    assert bf16.model_id == fp32.model_id.replace("|mean", "|bf16|mean") != fp32.model_id  # before loading
    a, b = fp32.encode(prompts), bf16.encode(prompts)
    assert bf16.llm.dtype == torch.bfloat16 and bf16.model_id.endswith("|bf16|mean|l2|max128")
    assert bf16.last_stats.encoded == 3 and bf16.last_stats.cache_hits == 0  # fp32's rows are not reused
    assert a.dtype == b.dtype == np.float32 and np.allclose(np.linalg.norm(b, axis=1), 1, atol=1e-3)
    assert (a * b).sum(1).min() > 0.99 and not np.array_equal(a, b)


def test_every_layer_ends_with_the_content_embedding(tmp_path):
    """The real MiniLM: one vector per hidden layer (token embeddings first), the last one exactly what
    `encode` returns, every row unit length, and the layers really differ."""
    prompts = ["Title: Pyrex beaker 250 ml Brand: Pyrex", "Title: nitrile gloves, size M", "Title: pH meter"]
    enc = ContentEncoder(EncoderSettings(model="minilm", device="cpu"), models_path=tmp_path, cache=None)
    layers = enc.encode_every_layer(prompts)
    assert layers.shape == (enc.llm.model.config.num_hidden_layers + 1, 3, enc.dim)
    assert np.allclose(layers[-1], enc.encode(prompts), atol=1e-5)
    assert np.allclose(np.linalg.norm(layers, axis=-1), 1, atol=1e-5)
    assert (layers[0] * layers[-1]).sum(-1).max() < 0.99
