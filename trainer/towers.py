"""LEARN's twin towers, read top to bottom: config, the feature step, attention, MLP, block, the
preference comprehension module (PCM), the user tower, the item towers (a | b | c), then the model
that wires them to the losses. This file is the one definition of the model: training, evaluation,
publishing (trainer/publish.py) and serving (serving/index.py) all call these modules.

Inputs are the encoder's raw content embeddings (one row per item, mean-pooled and L2-normalised LLM
states), never item ids by default: an item nobody has interacted with is scored like any other.
The feature step (`Features`: catalogue whitening fitted once per model, then L2) is part of the model
and of its weights, so a raw vector from the vector store goes through exactly what training saw.
Sequences are right-padded with the id `n_items` (a zero feature row), so causal attention alone keeps
real positions from seeing padding.

Item towers (LEARN, Fig. 3), one small module each, chosen by `TowerConfig.item_tower` in ITEM_TOWERS:
  (a) the PCM itself, same weights, causal attention over the user's target sequence (the window of
      next items during training); a candidate scored alone (serving, evaluation) is the first
      position of its own target sequence, which is (b)'s computation;
  (b) the PCM, same weights, one item at a time (a sequence of length 1);
  (c) the content features, through a linear projection only because d_llm != d_out.
Under a next-item loss the target window is one item, where (a) computes what (b) computes; the dense
losses (alone, or as an auxiliary term with `dense_weight`) are where the three towers differ.
A new variant is one module here (forward + windows) plus its entry in ITEM_TOWERS and a test.

Every model answers RecBole's three calls, so trainer and evaluator never know which one they drive:
  calculate_loss(batch) -> scalar;  predict(batch) -> (B,);  full_sort_predict(batch) -> (B, N).
A batch is a dict: "item_seq" (B, T) right-padded ids, "item_seq_len" (B,), and for predict
"test_item" (B,). For calculate_loss, item_seq is a user's training sequence and every position is
an anchor that predicts what follows it. Serving calls the raw-input pair instead:
  encode_items(raw (N, d_raw)) -> (N, d);  encode_users(raw (B, T, d_raw), lengths (B,)) -> (B, d),
d = `served_dim()`: d_out, or d_out + d_llm when the model has a non-zero content-kNN weight
(trainer/history.py, issue 17: items [v, f], users [u, tau * w * z]), plus collab_rank when it has a
chosen EASE term and the calls are given item ids (trainer/collab.py: items [.., Q[id]], users
[.., c * sum_h P[h]]; without ids the vectors are the content model's), so the served inner product is `full_sort_predict`'s score for every
item outside the history, whichever item tower.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from config.settings import ModelSettings
from trainer import losses
from trainer.collab import CollabScore
from trainer.history import HistoryScore, last_positions, recency_weighted_mean


@dataclass
class TowerConfig:
    """The model's shape and loss. Every field but the three widths comes from
    config.settings.ModelSettings (`from_settings`), whose defaults these repeat (a test keeps them equal)."""

    n_items: int = 4385
    d_llm: int = 576  # width of the features fed to the towers (d_raw, or fewer principal components)
    d_raw: int = 0  # width of the encoder's raw content embeddings, the feature step's input (0: d_llm)
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 2
    d_out: int = 64
    dropout: float = 0.2
    max_seq_len: int = 50
    item_tower: str = "a"  # a name in ITEM_TOWERS (checked here: item_tower_class)
    use_id_embedding: bool = False
    loss: str = "full_softmax"  # full_softmax | dense_all_action | dense_full | in_batch
    temperature: float = 0.07
    target_window: int = 5
    max_negatives: int = 1024  # in-batch negatives per anchor (a random pool when the batch has more)
    dense_weight: float = 0.0  # > 0: add this times the dense all-action loss to a next-item loss
    # items already seen (trainer/history.py): masked out of the full softmax, or kept as negatives;
    # learned terms added to the logits in training and scoring
    history_in_loss: str = "masked"  # masked | negatives
    history_age_bias: bool = True  # defaults = config/settings.py ModelSettings (issue 17)
    history_knn: bool = False
    history_knn_blend: bool = True  # the kNN weight held at 0 in training, chosen on validation after
    collab_rank: int = 1024  # the EASE term's served rank (trainer/collab.py; 0: none), chosen after training

    def __post_init__(self) -> None:
        self.d_raw = self.d_raw or self.d_llm
        item_tower_class(self.item_tower)  # the settings accept any name: an unknown one stops here

    @classmethod
    def from_settings(cls, ms: ModelSettings, n_items: int, d_raw: int, d_llm: int | None = None) -> "TowerConfig":
        """The config of a model over `n_items` raw vectors of width `d_raw` (features `d_llm` wide)."""
        shared = {f.name: getattr(ms, f.name) for f in fields(cls) if hasattr(ms, f.name)}
        return cls(**shared, n_items=n_items, d_raw=d_raw, d_llm=d_llm or d_raw)

    @classmethod
    def from_dict(cls, d: dict) -> "TowerConfig":
        """Read back `to_dict` (unknown keys ignored; a config without `d_raw` had d_raw == d_llm)."""
        return cls(**{k: v for k, v in d.items() if k in {f.name for f in fields(cls)}})

    def to_dict(self) -> dict:
        return asdict(self)


def fit_whitening(raw: np.ndarray, dim: int | None = None, eps: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """Mean-centring + PCA-whitening fitted on the catalogue: (mean (d,), W (d, k)) with
    W = V diag(1/sqrt(eigval + eps)), the top `dim` components (None: all). Mean-pooled decoder states
    are very anisotropic (SmolLM2: mean pairwise cosine ~0.93 on this catalogue), so every cosine is
    close to 1 until the common direction is removed."""
    x = np.asarray(raw, dtype=np.float64)
    mean = x.mean(0)
    cov = np.cov(x - mean, rowvar=False)  # (d, d)
    eigval, eigvec = np.linalg.eigh(cov)
    order = np.argsort(eigval)[::-1][: dim or len(eigval)]
    eigval, eigvec = np.clip(eigval[order], 0.0, None), eigvec[:, order]
    return mean.astype(np.float32), (eigvec / np.sqrt(eigval + eps)[None, :]).astype(np.float32)


class Features(nn.Module):
    """The feature step: raw content embeddings -> (x - mean) @ W -> L2. (..., d_raw) -> (..., d_llm).
    Not trained; fitted once per model (`fit`) and saved with its weights. Identity W = no whitening."""

    def __init__(self, d_raw: int, d_llm: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(d_raw))  # (d_raw,)
        self.register_buffer("transform", torch.eye(d_raw, d_llm))  # (d_raw, d_llm)

    @classmethod
    def fit(cls, raw: np.ndarray, whiten: bool = True, dim: int = 0) -> "Features":
        """Whitening fitted on the catalogue's raw vectors (N, d_raw); `whiten=False`: L2 only."""
        d_raw = raw.shape[1]
        if not whiten:
            return cls(d_raw, d_raw)
        mean, transform = fit_whitening(raw, dim or None)
        f = cls(d_raw, transform.shape[1])
        f.mean.copy_(torch.from_numpy(mean))
        f.transform.copy_(torch.from_numpy(transform))
        return f

    @property
    def d_out(self) -> int:
        return int(self.transform.shape[1])

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        return F.normalize((raw - self.mean) @ self.transform, dim=-1)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: TowerConfig):
        super().__init__()
        assert cfg.d_model % cfg.n_heads == 0
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.n_heads = cfg.n_heads
        self.dropout = cfg.dropout
        self.resid_drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=2)  # 3 x (B, T, d)
        q, k, v = (t.view(B, T, self.n_heads, d // self.n_heads).transpose(1, 2) for t in (q, k, v))
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)  # (B, h, T, d/h)
        y = y.transpose(1, 2).reshape(B, T, d)
        return self.resid_drop(self.proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: TowerConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.d_model, 4 * cfg.d_model)
        self.proj = nn.Linear(4 * cfg.d_model, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    def __init__(self, cfg: TowerConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class PreferenceComprehension(nn.Module):
    """Linear(d_llm -> d) -> causal transformer -> Linear(d -> d_out), all positions out."""

    def __init__(self, cfg: TowerConfig):
        super().__init__()
        self.cfg = cfg
        self.in_proj = nn.Linear(cfg.d_llm, cfg.d_model)
        self.id_emb = (
            nn.Embedding(cfg.n_items + 1, cfg.d_model, padding_idx=cfg.n_items)
            if cfg.use_id_embedding
            else None
        )
        self.pos_emb = nn.Embedding(cfg.max_seq_len, cfg.d_model)
        self.in_ln = nn.LayerNorm(cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.out_proj = nn.Linear(cfg.d_model, cfg.d_out)

    def forward(self, content: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
        """content (B, T, d_llm), ids (B, T) (only read with the ID switch on) -> (B, T, d_out)."""
        B, T, _ = content.shape
        x = self.in_proj(content)  # (B, T, d)
        if self.id_emb is not None and ids is not None:
            x = x + self.id_emb(ids)
        x = x + self.pos_emb(torch.arange(T, device=content.device))  # (B, T, d)
        x = self.drop(self.in_ln(x))
        for block in self.blocks:
            x = block(x)
        return self.out_proj(self.ln_f(x))  # (B, T, d_out)


class UserTower(nn.Module):
    """The PCM read at the user's last real position. Holds no weights of its own: the PCM is shared
    with item towers (a) and (b), so it is passed in."""

    def forward(self, pcm: PreferenceComprehension, x: torch.Tensor, lengths: torch.Tensor,
                ids: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        """x (B, T, d_llm) right-padded features, lengths (B,) -> (B, d_out) L2-normalised."""
        states = F.normalize(pcm(x, ids), dim=-1)  # (B, T, d_out)
        idx = (lengths - 1).clamp_min(0).view(-1, 1, 1).expand(-1, 1, states.size(-1))
        return states.gather(1, idx).squeeze(1)


class SingleItemTower(nn.Module):
    """(b): the PCM over a sequence of one item. Candidates in a target window are scored alone."""

    contextual = False  # window items are independent: LEARN scores each distinct item once

    def __init__(self, cfg: TowerConfig):
        super().__init__()  # no weights of its own: the user tower's PCM is passed in

    def forward(self, pcm: PreferenceComprehension, x: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
        """x (N, d_llm), ids (N,) -> (N, d_out) L2-normalised."""
        out = pcm(x.unsqueeze(1), None if ids is None else ids.unsqueeze(1))  # (N, 1, d_out)
        return F.normalize(out.squeeze(1), dim=-1)


class ContextualItemTower(SingleItemTower):
    """(a): the PCM over the target window, causally; alone, an item is (b)'s one-item sequence."""

    contextual = True

    def windows(self, pcm: PreferenceComprehension, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """x (M, W, d_llm), ids (M, W) -> (M, W, d_out): each item after the window's earlier items."""
        return F.normalize(pcm(x, ids), dim=-1)


class ContentItemTower(nn.Module):
    """(c): the content features themselves, projected only when the widths differ; no ID term."""

    contextual = False

    def __init__(self, cfg: TowerConfig):
        super().__init__()
        self.proj = nn.Linear(cfg.d_llm, cfg.d_out, bias=False) if cfg.d_llm != cfg.d_out else nn.Identity()

    def forward(self, pcm: PreferenceComprehension, x: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
        return F.normalize(self.proj(x), dim=-1)  # (N, d_out)


ITEM_TOWERS = {"a": ContextualItemTower, "b": SingleItemTower, "c": ContentItemTower}  # TowerConfig.item_tower


class UnknownItemTower(ValueError):
    """`model.item_tower` names no variant of ITEM_TOWERS."""


def item_tower_class(name: str) -> type[nn.Module]:
    """The item tower variant called `name` (settings `model.item_tower`): the one list is ITEM_TOWERS."""
    if name not in ITEM_TOWERS:
        raise UnknownItemTower(f"unknown item tower {name!r} (model.item_tower): one of {', '.join(sorted(ITEM_TOWERS))}")
    return ITEM_TOWERS[name]


class LEARN(nn.Module):
    """Features + user tower + item tower + loss, over a table of the catalogue's features."""

    def __init__(self, cfg: TowerConfig, raw: torch.Tensor | None = None, features: Features | None = None):
        super().__init__()
        self.cfg = cfg
        self.features = features if features is not None else Features(cfg.d_raw, cfg.d_llm)
        assert (self.features.mean.shape[0], self.features.d_out) == (cfg.d_raw, cfg.d_llm), cfg
        self.pcm = PreferenceComprehension(cfg)
        self.user_tower = UserTower()
        self.item_tower = item_tower_class(cfg.item_tower)(cfg)
        # (N + 1, d_llm) features of the catalogue; the last row is the padding item. Not saved.
        self.register_buffer("content", torch.zeros(1, cfg.d_llm), persistent=False)
        self.history = (
            HistoryScore(cfg.max_seq_len, cfg.history_age_bias, cfg.history_knn or cfg.history_knn_blend,
                         learn_knn=not cfg.history_knn_blend, learn_age_bias=cfg.history_in_loss == "negatives")  # fmt: skip
            if cfg.history_age_bias or cfg.history_knn or cfg.history_knn_blend
            else None
        )
        # the EASE term (trainer/collab.py): no factors and a zero weight until chosen after training
        self.collab = CollabScore(cfg.collab_rank) if cfg.collab_rank > 0 else None
        self.apply(self._init)
        if raw is not None:
            self.set_catalogue(raw)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)

    def set_catalogue(self, raw: torch.Tensor) -> None:
        """The catalogue the ids index: raw content embeddings (N, d_raw) -> the feature table."""
        with torch.no_grad():
            feats = self.features(torch.as_tensor(raw, dtype=torch.float32))  # (N, d_llm)
        self.content = torch.cat([feats, torch.zeros(1, feats.shape[1])])
        self.cfg.n_items = feats.shape[0]
        if self.collab is not None and self.collab.active and not self.collab.fits(feats):
            self.collab.weight.zero_()  # its ids index another catalogue: content alone from here

    @property
    def pad_id(self) -> int:
        return self.cfg.n_items

    # -- towers over raw content (what serving and publishing call) ---------------------------
    def knn_scale(self) -> float | None:
        """The content-kNN term's weight in cosine units (temperature x the learned or chosen weight), or
        None when the model has none or it is zero (a blend never chosen, as in the incremental
        trainer): then the served vectors are the plain towers'. Eager only (reads a parameter)."""
        h = self.history
        if h is None or h.knn_weight is None or float(h.knn_weight) == 0.0:
            return None
        return float(self.cfg.temperature * h.knn_weight)

    def collab_active(self) -> bool:
        """Whether the EASE term has a non-zero weight (chosen after training). Eager only."""
        return self.collab is not None and self.collab.active

    def served_dim(self, ids: bool = False) -> int:
        """Width of `encode_items` / `encode_users` vectors: d_out, plus d_llm with a kNN term, plus
        collab_rank with an EASE term when they are given the item ids (`ids`)."""
        knn = self.cfg.d_llm if self.knn_scale() is not None else 0
        return self.cfg.d_out + knn + (self.cfg.collab_rank if ids and self.collab_active() else 0)

    def encode_items(self, raw: torch.Tensor, knn: bool | None = None, ids: torch.Tensor | None = None) -> torch.Tensor:
        """(N, d_raw) raw content embeddings -> (N, served_dim) item vectors: the item tower's (L2-
        normalised), then, with a kNN term, the item's features: [v, f], then, given the items' ids
        (N,) and a chosen EASE term, the item's factor Q[id] (trainer/collab.py; a zero row for an id
        unknown to the fit: such an item scores as content alone). `knn` None: decided from the
        weight (pass it explicitly where the call is traced, as torch.export does)."""
        x = self.features(raw)  # (N, d_llm), L2-normalised
        out = [self.item_tower(self.pcm, x)]
        if self.knn_scale() is not None if knn is None else knn:
            out.append(x)
        if ids is not None and self.collab_active():
            out.append(self.collab.items(ids))
        return torch.cat(out, -1) if len(out) > 1 else out[0]

    def encode_users(self, raw_seq: torch.Tensor, lengths: torch.Tensor, knn: bool | None = None,
                     ids: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        """(B, T, d_raw) right-padded raw histories (any values in the padding), (B,) lengths >= 1
        -> (B, served_dim) user vectors: the user tower's (L2-normalised), then, with a kNN term,
        temperature x weight x the recency-weighted history features: [u, tau * w * z], so that
        [u, tau w z] . [v, f] = u . v + tau w cos(z, f), the score `full_sort_predict` gives every
        item outside the history (serving never returns history items, where the age bias acts); with
        an EASE term and the history's ids (B, T), then weight x the sum of P over them."""
        B, T, _ = raw_seq.shape
        real = torch.arange(T, device=raw_seq.device).view(1, T) < lengths.view(B, 1)  # (B, T)
        x = self.features(raw_seq) * real.unsqueeze(-1)  # padding = zero features, as in training
        u = self.user_tower(self.pcm, x, lengths)
        out = [u]
        if self.knn_scale() is not None if knn is None else knn:
            z = recency_weighted_mean(x, lengths, self.history.decay)  # the zero-training user vector
            out.append(self.cfg.temperature * self.history.knn_weight * z)
        if ids is not None and self.collab_active():  # `ids` (B, T): the history's item ids
            out.append(self.collab.users(ids, lengths))
        return torch.cat(out, -1) if len(out) > 1 else out[0]

    # -- towers over catalogue ids (training, evaluation) -------------------------------------
    def sequence_states(self, item_seq: torch.Tensor) -> torch.Tensor:
        """(B, T) ids -> (B, T, d_out) L2-normalised user vectors at every position."""
        return F.normalize(self.pcm(self.content[item_seq], item_seq), dim=-1)

    def user_vectors(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        """(B, T), (B,) -> (B, d_out): the output at the last real position."""
        return self.user_tower(self.pcm, self.content[item_seq], item_seq_len, item_seq)

    def item_vectors(self, content: torch.Tensor | None = None, ids: torch.Tensor | None = None) -> torch.Tensor:
        """Context-free item vectors of features (N, d_llm) -> (N, d_out), L2-normalised. With no
        argument, the whole catalogue."""
        if content is None:
            content, ids = self.content[: self.cfg.n_items], torch.arange(self.cfg.n_items, device=self.content.device)
        return self.item_tower(self.pcm, content, ids)

    def window_vectors(self, window_ids: torch.Tensor) -> torch.Tensor:
        """Item-tower vectors of target windows. (M, W) ids (-1 = none) -> (M, W, d_out)."""
        if self.item_tower.contextual:  # each item read after the window's earlier items
            safe = torch.where(window_ids >= 0, window_ids, torch.full_like(window_ids, self.pad_id))
            return self.item_tower.windows(self.pcm, self.content[safe], safe)
        ids = window_ids.clamp_min(0)
        M, W = ids.shape
        uniq, inverse = torch.unique(ids, return_inverse=True)
        v = self.item_vectors(self.content[uniq], uniq)  # (U, d_out)
        return v[inverse.view(-1)].view(M, W, -1)

    # -- the three calls -----------------------------------------------------------------------
    def calculate_loss(self, batch: dict) -> torch.Tensor:
        seq, lens = batch["item_seq"], batch["item_seq_len"]  # (B, T), (B,)
        B, T = seq.shape
        cfg = self.cfg
        W = cfg.target_window if cfg.loss.startswith("dense") or cfg.dense_weight > 0 else 1
        states = self.sequence_states(seq)  # (B, T, d_out)
        pos = torch.arange(T, device=seq.device)
        is_anchor = pos.view(1, T) < (lens.view(B, 1) - 1)  # an anchor has at least one next item
        anchors = is_anchor.nonzero()  # (M, 2) rows of (b, t)
        user = states[anchors[:, 0], anchors[:, 1]]  # (M, d_out)
        # the next W items of each anchor, -1 past the end of its sequence
        offs = anchors[:, 1].view(-1, 1) + 1 + torch.arange(W, device=seq.device).view(1, W)  # (M, W)
        inside = offs < lens[anchors[:, 0]].view(-1, 1)
        window_ids = torch.where(
            inside, seq[anchors[:, 0].view(-1, 1), offs.clamp_max(T - 1)], torch.full_like(offs, -1)
        )  # (M, W)
        if cfg.loss == "full_softmax":
            items = self.item_vectors()  # (N, d_out)
            exclude = losses.history_mask(seq, anchors, cfg.n_items, self.pad_id) if cfg.history_in_loss == "masked" else None
            extra = self.history(seq, anchors, self.content) if self.history is not None else None
            loss = losses.full_softmax(user, items, window_ids[:, 0], cfg.temperature, exclude, extra)
            if cfg.dense_weight > 0:  # the paper's dense targets as an auxiliary term (towers differ)
                loss = loss + cfg.dense_weight * self._dense_all_action(user, anchors, window_ids)
            return loss
        window = self.window_vectors(window_ids)  # (M, W, d_out)
        if cfg.loss == "dense_full":
            items = self.item_vectors()  # (N, d_out)
            exclude = losses.history_mask(seq, anchors, cfg.n_items, self.pad_id)
            return losses.dense_full_softmax(user, items, window, window_ids, cfg.temperature, exclude)
        if cfg.loss == "in_batch":
            return losses.in_batch_softmax(user, window[:, 0], window_ids[:, 0], cfg.temperature, cfg.max_negatives)
        return self._dense_all_action(user, anchors, window_ids, window)

    def _dense_all_action(self, user, anchors, window_ids, window=None) -> torch.Tensor:
        """The paper's loss for anchors (M, 2) with user vectors (M, d_out) and windows (M, W)."""
        window = self.window_vectors(window_ids) if window is None else window  # (M, W, d_out)
        return losses.dense_all_action(
            user, window, window_ids, self.cfg.temperature, groups=anchors[:, 0], max_negatives=self.cfg.max_negatives
        )

    def predict(self, batch: dict) -> torch.Tensor:
        """(B,) cosine scores of batch["test_item"] for each user."""
        user = self.user_vectors(batch["item_seq"], batch["item_seq_len"])  # (B, d_out)
        items = self.item_vectors(self.content[batch["test_item"]], batch["test_item"])  # (B, d_out)
        scores = (user * items).sum(-1)
        if self.history is not None:
            extra = self.history(batch["item_seq"], last_positions(batch["item_seq_len"]), self.content)  # (B, N)
            scores = scores + self.cfg.temperature * extra.gather(1, batch["test_item"].view(-1, 1)).squeeze(1)
        if self.collab_active():
            user = self.collab.users(batch["item_seq"], batch["item_seq_len"])  # (B, r)
            scores = scores + (user * self.collab.items(batch["test_item"])).sum(-1)
        return scores

    def full_sort_predict(self, batch: dict, items: torch.Tensor | None = None) -> torch.Tensor:
        """(B, N) cosine scores against every item (pass `items` to reuse precomputed vectors)."""
        user = self.user_vectors(batch["item_seq"], batch["item_seq_len"])  # (B, d_out)
        items = self.item_vectors() if items is None else items  # (N, d_out)
        scores = user @ items.T
        if self.history is not None:  # the learned history terms, in cosine units (logits x temperature)
            anchors = last_positions(batch["item_seq_len"])
            scores = scores + self.cfg.temperature * self.history(batch["item_seq"], anchors, self.content)
        if self.collab_active():  # the EASE term, already in cosine units
            scores = scores + self.collab(batch["item_seq"], batch["item_seq_len"], self.cfg.n_items)
        return scores

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())



def pad_sequences(seqs: list[list[int]], pad_id: int, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad the last `max_len` items of each sequence. -> (B, T) ids, (B,) lengths."""
    seqs = [s[-max_len:] if s else [pad_id] for s in seqs]
    T = max(len(s) for s in seqs)
    out = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return out, torch.tensor([len(s) for s in seqs], dtype=torch.long)
