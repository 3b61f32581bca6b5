"""LEARN's twin towers, read top to bottom: config, attention, MLP, block, the preference
comprehension module (PCM), then the model that wires the user tower, the item tower and the losses.

Inputs are frozen content embeddings (one row per item, from encoder/), never item ids by default:
an item nobody has interacted with is scored like any other. Sequences are right-padded with the id
`n_items` (a zero content row), so causal attention alone keeps real positions from seeing padding.

Item towers (LEARN, Fig. 3):
  (a) the PCM itself, same weights, causal attention over the user's target sequence (the window of
      next items during training); a candidate scored alone (serving, evaluation) is the first
      position of its own target sequence, which is (b)'s computation;
  (b) the PCM, same weights, one item at a time (a sequence of length 1);
  (c) the raw content embedding, through a linear projection only because d_llm != d_out.
Under a next-item loss the target window is one item, where (a) computes what (b) computes; the dense
losses (alone, or as an auxiliary term with `dense_weight`) are where the three towers differ.

Every model answers RecBole's three calls, so trainer and evaluator never know which one they drive:
  calculate_loss(batch) -> scalar;  predict(batch) -> (B,);  full_sort_predict(batch) -> (B, N).
A batch is a dict: "item_seq" (B, T) right-padded ids, "item_seq_len" (B,), and for predict
"test_item" (B,). For calculate_loss, item_seq is a user's training sequence and every position is
an anchor that predicts what follows it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from trainer import losses
from trainer.history import HistoryScore, last_positions


@dataclass
class TowerConfig:
    n_items: int = 4385
    d_llm: int = 576  # width of the content embeddings fed in
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 2
    d_out: int = 64
    dropout: float = 0.2
    max_seq_len: int = 50
    item_tower: str = "a"  # a | b | c
    use_id_embedding: bool = False
    loss: str = "dense_all_action"  # dense_all_action | dense_full | in_batch | full_softmax
    temperature: float = 0.07
    target_window: int = 5
    max_negatives: int = 1024  # in-batch negatives per anchor (a random pool when the batch has more)
    dense_weight: float = 0.0  # > 0: add this times the dense all-action loss to a next-item loss
    # items already seen (trainer/history.py): masked out of the full softmax, or kept as negatives;
    # learned terms added to the logits in training and scoring
    history_in_loss: str = "masked"  # masked | negatives
    history_age_bias: bool = False
    history_knn: bool = False
    history_knn_blend: bool = False  # the kNN weight held at 0 in training, chosen on validation after

    def to_dict(self) -> dict:
        return asdict(self)


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


class LEARN(nn.Module):
    """User tower + item tower (a | b | c) + loss, over a fixed table of content embeddings."""

    def __init__(self, cfg: TowerConfig, content: torch.Tensor):
        super().__init__()
        assert content.shape == (cfg.n_items, cfg.d_llm), (content.shape, cfg)
        self.cfg = cfg
        self.pcm = PreferenceComprehension(cfg)
        self.item_proj = (
            nn.Linear(cfg.d_llm, cfg.d_out, bias=False)
            if cfg.item_tower == "c" and cfg.d_llm != cfg.d_out
            else None
        )
        # (N + 1, d_llm): the last row is the padding item. Not a parameter, not saved.
        pad = torch.zeros(1, cfg.d_llm, dtype=content.dtype)
        self.register_buffer("content", torch.cat([content.float(), pad]), persistent=False)
        self.history = (
            HistoryScore(cfg.n_items, cfg.max_seq_len, cfg.history_age_bias, cfg.history_knn or cfg.history_knn_blend,
                         learn_knn=not cfg.history_knn_blend, learn_age_bias=cfg.history_in_loss == "negatives")  # fmt: skip
            if cfg.history_age_bias or cfg.history_knn or cfg.history_knn_blend
            else None
        )
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)

    @property
    def pad_id(self) -> int:
        return self.cfg.n_items

    # -- towers --------------------------------------------------------------------------------
    def sequence_states(self, item_seq: torch.Tensor) -> torch.Tensor:
        """(B, T) ids -> (B, T, d_out) L2-normalised user vectors at every position."""
        return F.normalize(self.pcm(self.content[item_seq], item_seq), dim=-1)

    def user_vectors(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        """(B, T), (B,) -> (B, d_out): the output at the last real position."""
        states = self.sequence_states(item_seq)  # (B, T, d_out)
        idx = (item_seq_len - 1).clamp_min(0).view(-1, 1, 1).expand(-1, 1, states.size(-1))
        return states.gather(1, idx).squeeze(1)

    def item_vectors(self, content: torch.Tensor | None = None, ids: torch.Tensor | None = None) -> torch.Tensor:
        """Context-free item vectors, (N, d_llm) -> (N, d_out), L2-normalised. With no argument, the
        whole catalogue. This is what serving puts in the vector store."""
        if content is None:
            content, ids = self.content[: self.cfg.n_items], torch.arange(self.cfg.n_items, device=self.content.device)
        if self.cfg.item_tower == "c":
            v = self.item_proj(content) if self.item_proj is not None else content  # no ID term
            return F.normalize(v, dim=-1)
        out = self.pcm(content.unsqueeze(1), None if ids is None else ids.unsqueeze(1))  # (N, 1, d_out)
        return F.normalize(out.squeeze(1), dim=-1)

    def window_vectors(self, window_ids: torch.Tensor) -> torch.Tensor:
        """Item-tower vectors of target windows. (M, W) ids (-1 = none) -> (M, W, d_out)."""
        ids = window_ids.clamp_min(0)
        if self.cfg.item_tower == "a":  # causal attention over each target window
            safe = torch.where(window_ids >= 0, window_ids, torch.full_like(window_ids, self.pad_id))
            return F.normalize(self.pcm(self.content[safe], safe), dim=-1)
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
        return scores

    def full_sort_predict(self, batch: dict, items: torch.Tensor | None = None) -> torch.Tensor:
        """(B, N) cosine scores against every item (pass `items` to reuse precomputed vectors)."""
        user = self.user_vectors(batch["item_seq"], batch["item_seq_len"])  # (B, d_out)
        items = self.item_vectors() if items is None else items  # (N, d_out)
        scores = user @ items.T
        if self.history is not None:  # the learned history terms, in cosine units (logits x temperature)
            anchors = last_positions(batch["item_seq_len"])
            scores = scores + self.cfg.temperature * self.history(batch["item_seq"], anchors, self.content)
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
