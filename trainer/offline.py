"""Offline LEARN: encode the catalogue (cached), train the twin towers, evaluate; plus two baselines.

`run_train(...)` is what `learn train` calls. It writes into a run directory:
    results.json   test metrics (best-validation weights, evaluated once), validation metrics,
                   the per-epoch curve, both baselines, timings, peak memory, the full config
    curve.png      training loss and validation NDCG@10 per epoch
    checkpoint/    the model artefact, safetensors + JSON (trainer/checkpoint.py), the same format
                   as a published version's: `learn model publish RUN_DIR` serves it

Protocol: trainer/evaluation.py (full ranking over all items, history excluded). Early stopping on
validation NDCG@10; the test split is scored once, at the end, with the best weights.

Content features: the frozen LLM's mean-pooled, L2-normalised vectors, then (settings.model.whiten)
mean-centred and PCA-whitened on the catalogue (item text only, no interaction data), then
L2-normalised again: the model's own feature step (trainer/towers.py `Features`), fitted here and
saved with the weights, so the checkpoint is servable as it is (`learn model publish RUN_DIR`).
Whitening matters for decoder LLMs: raw SmolLM2 vectors have mean pairwise cosine ~0.93, so every
item looks like every other until the common direction is removed.

Baselines, same protocol, same features:
- zero-training: user = recency-weighted mean (0.7^age) of the history's feature vectors, cosine;
- popularity: training interaction counts.

Defaults and why (chosen on validation NDCG@10 only, full UniSRec split, SmolLM2 whitened, d 64,
2 layers, dropout 0.2, lr 1e-3, temperature 0.07, batch 256 users, every position an anchor):
- zero-training baseline (no training):                         valid NDCG@10 0.0835
- the paper's dense all-action loss, in-batch negatives, (a):   0.0584 (best epoch 5, then overfits)
- the same dense targets, full-catalogue negatives, (a):        0.0446 (collapses: (a)'s positives
  are contextual window vectors and the catalogue's are context-free, so the model separates the
  two kinds instead of the items; its loss falls while validation falls)
- next-item full softmax with history masking (default):        0.0904 (best epoch 36 of 40)
- the default plus 0.5 x the dense all-action loss, (a):        0.0864 (best epoch 38 of 40)
In-batch negatives are a popularity-skewed sample of 1,024 items and lose to the exact softmax over
all 4,385 items, which is cheap here. Consequence, stated plainly: under a next-item loss the target
window has one item, so item tower (a) computes exactly what (b) computes, and (a) == (b) for the
same seed; the towers differ only under the dense losses (`--loss dense_all_action`, or the dense
term added to the default with `--dense-weight`; bench/quality.py compares a, b, c that way).

Items already seen (issue 17; trainer/history.py; validation NDCG@10 history excluded / RecBole's
convention, seed 2024): the default above 0.0906 / 0.0631; history kept as negatives with a learned
age bias 0.0887 / 0.0805, plus the kNN blend 0.0934 / 0.0787; the default plus, after training, a
penalty on every history item and a content-kNN weight chosen on a validation grid (the mean of both
conventions' NDCG@10; history_age_bias + history_knn_blend) 0.0924 / 0.0909; then, the default
now, an EASE item-item term fitted on the training sequences, rank 1024 (trainer/collab.py, chosen on
the same grid criterion with the kNN weight and the penalty; `choose_blends`) 0.1059 / 0.1033.
"""

from __future__ import annotations

import copy
import json
import logging
import random
import resource
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from config.settings import EncoderSettings, ModelSettings, Settings
from encoder.pooling import l2_normalize, mean_pairwise_cosine
from streams.datasets import DatasetSource, resolve
from trainer import distributed
from trainer.checkpoint import save_checkpoint
from trainer.data import RecData, load_source
from trainer.distributed import SINGLE, DistContext
from trainer.evaluation import PROTOCOLS, evaluate_both_protocols, metrics_from_ranks, split_ranks
from trainer.collab import choose_collab_blend
from trainer.history import choose_knn_blend
from trainer.towers import LEARN, Features, TowerConfig, item_tower_class, pad_sequences

log = logging.getLogger(__name__)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# -- content ---------------------------------------------------------------------------------
def encode_catalogue(data: RecData, enc: EncoderSettings, settings: Settings, progress: bool = True):
    """(N, d_llm) raw content embeddings of every item (cache first), the encoder's model id, stats."""
    from encoder.content import ContentEncoder

    encoder = ContentEncoder(enc, models_path=settings.models_path, cache=settings.cache_path)
    raw = encoder.encode(data.prompts(enc.template), progress=progress)
    return raw, encoder.model_id, encoder.last_stats


def content_features(raw: np.ndarray, whiten: bool, whiten_dim: int = 0) -> np.ndarray:
    """Raw pooled vectors -> model input features (see the module docstring). (N, d) -> (N, k)."""
    with torch.no_grad():
        return Features.fit(raw, whiten, whiten_dim)(torch.from_numpy(np.asarray(raw, np.float32))).numpy()


# -- baselines ---------------------------------------------------------------------------------
def zero_training_scorer(features: np.ndarray, decay: float = 0.7):
    """histories -> (B, N) cosine between the recency-weighted mean history vector and every item."""
    items = torch.from_numpy(l2_normalize(features))

    def scores(histories: list[list[int]]) -> torch.Tensor:
        users = torch.zeros(len(histories), items.shape[1])
        for r, h in enumerate(histories):
            w = torch.tensor([decay ** (len(h) - 1 - j) for j in range(len(h))])
            users[r] = (w.view(-1, 1) * items[h]).sum(0)
        return torch.nn.functional.normalize(users, dim=-1) @ items.T

    return scores


def popularity_scorer(data: RecData):
    pop = torch.tensor(data.item_popularity(), dtype=torch.float32)
    return lambda histories: pop.expand(len(histories), -1)


def split_metrics(scorer, data: RecData) -> dict:
    """{"valid", "test"}: history excluded; {"valid_recbole", "test_recbole"}: RecBole's convention;
    each split scored once (trainer/evaluation.evaluate_both_protocols)."""
    out = {}
    for split in ("valid", "test"):
        both = evaluate_both_protocols(scorer, getattr(data, split))
        out[split], out[f"{split}_recbole"] = both["history_excluded"], both["recbole"]
    return out


def evaluate_baselines(data: RecData, features: np.ndarray | None) -> dict:
    out = {"popularity": split_metrics(popularity_scorer(data), data)}
    if features is not None:
        out["zero-training"] = split_metrics(zero_training_scorer(features), data)
    return out


# -- training ----------------------------------------------------------------------------------
def build_model(ms: ModelSettings, raw: np.ndarray, features: Features | None = None) -> LEARN:
    """A fresh model over the catalogue's raw content embeddings (N, d_raw), its feature step fitted
    on them as the settings say (or `features`, already fitted). Seed the RNG first."""
    if features is None:
        features = Features.fit(raw, ms.whiten, ms.whiten_dim)
    cfg = TowerConfig.from_settings(ms, len(raw), raw.shape[1], features.d_out)
    return LEARN(cfg, torch.from_numpy(np.asarray(raw, np.float32)), features)


def train_step(model: LEARN, opt: torch.optim.Optimizer, seqs: list[list[int]], max_len: int,
               loss_of=None, weight: float = 1.0) -> float:  # fmt: skip
    """One optimiser step on a batch of training sequences (ids, oldest first); -> the loss.
    `loss_of`: batch -> loss (default the model's; DDP's wrapper in a distributed run), whose
    gradient is taken `weight` times (trainer/distributed.py: shard_weight)."""
    seq, lens = pad_sequences(seqs, model.pad_id, max_len)
    loss = (loss_of or model.calculate_loss)({"item_seq": seq, "item_seq_len": lens})
    opt.zero_grad(set_to_none=True)
    (loss * weight).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return loss.item()


def shard_step(model: LEARN, loss_of, opt: torch.optim.Optimizer, seqs: list[list[int]], max_len: int,
               ctx: DistContext) -> float:  # fmt: skip
    """One optimiser step on the global batch `seqs`, this rank computing its share (all of it in
    one process); -> this rank's part of the batch's mean loss (the parts sum to it over the ranks).
    A rank whose share is empty (a batch smaller than the world) still joins the all-reduce, with a
    zero-weighted sequence."""
    mine = distributed.shard(seqs, ctx)
    weight = distributed.shard_weight(distributed.anchors(mine, max_len), distributed.anchors(seqs, max_len), ctx.world_size)
    if not mine:
        mine, weight = seqs[:1], 0.0
    return train_step(model, opt, mine, max_len, loss_of, weight) * weight / ctx.world_size


def evaluate_split(scorer, examples: list, ctx: DistContext = SINGLE) -> dict:
    """evaluate_both_protocols over `examples`; in a distributed run each rank ranks its share and
    every rank gets the metrics of all of them (the same numbers on every rank)."""
    if not ctx.active:
        return evaluate_both_protocols(scorer, examples)
    mine = distributed.shard(examples, ctx)
    ranks = split_ranks(scorer, mine, PROTOCOLS) if mine else {n: torch.zeros(0, dtype=torch.long) for n in PROTOCOLS}
    return {n: metrics_from_ranks(distributed.gather_interleaved(ranks[n], len(examples), ctx)) for n in PROTOCOLS}


def model_scorer(model: LEARN, max_len: int):
    """A LEARN model as a `histories -> (B, N)` scorer (item vectors computed once)."""
    model.eval()
    with torch.no_grad():
        items = model.item_vectors()

    def scores(histories: list[list[int]]) -> torch.Tensor:
        seq, lens = pad_sequences(histories, model.pad_id, max_len)
        return model.full_sort_predict({"item_seq": seq, "item_seq_len": lens}, items)

    return scores


def length_bucketed_batches(lengths: list[int], batch_size: int, rng: random.Random, pool: int = 50):
    """Shuffled batches of indices whose sequences have similar lengths (less padding): shuffle,
    sort each pool of `pool` batches by length, cut into batches, shuffle the batches."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    batches = []
    for i in range(0, len(order), batch_size * pool):
        chunk = sorted(order[i : i + batch_size * pool], key=lambda j: lengths[j])
        batches += [chunk[k : k + batch_size] for k in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


@dataclass
class TrainOutcome:
    model: LEARN
    best_epoch: int
    curve: list[dict]
    valid_metrics: dict
    test_metrics: dict
    seconds: float
    valid_metrics_recbole: dict | None = None  # the same scores under RecBole's convention
    test_metrics_recbole: dict | None = None
    knn_blend: dict | None = None  # the validation-chosen kNN weight (trainer/history.choose_knn_blend)
    collab_blend: dict | None = None  # the validation-chosen EASE term (trainer/collab.choose_collab_blend)


def train_model(
    data: RecData, raw: np.ndarray, ms: ModelSettings, progress: bool = True, features: Features | None = None,
    ctx: DistContext = SINGLE,
) -> TrainOutcome | None:
    """Train on raw content embeddings (N, d_raw) with early stopping on validation NDCG@10; test once
    with the best weights. `features`: the feature step already fitted on `raw` (else fitted here).
    `ctx`: this rank of a data-parallel run (trainer/distributed.py); every rank trains, rank 0 alone
    tests and returns the outcome (the others return None)."""
    t0 = time.perf_counter()
    seed_everything(ms.seed)
    model = build_model(ms, raw, features)
    if ctx.active:  # the same initial weights everywhere, but each rank its own dropout masks
        torch.manual_seed(ms.seed + ctx.rank)
    loss_of = distributed.loss_function(model, ctx)
    opt = torch.optim.AdamW(model.parameters(), lr=ms.lr, weight_decay=ms.weight_decay)
    seqs = [s for s in data.train if len(s) >= 2]
    rng = random.Random(ms.seed)
    # metrics are means over users: evaluate in length order so each batch pads little
    valid_examples = sorted(data.valid, key=lambda e: len(e[0]))
    test_examples = sorted(data.test, key=lambda e: len(e[0]))
    best, best_state, best_epoch, bad, curve = -1.0, None, -1, 0, []
    bar = tqdm(range(1, ms.max_epochs + 1), desc=f"train learn-{ms.item_tower}", disable=not progress)
    for epoch in bar:
        model.train()
        total, n = 0.0, 0
        for batch in length_bucketed_batches([len(x) for x in seqs], ms.batch_size, rng):
            total, n = total + shard_step(model, loss_of, opt, [seqs[j] for j in batch], ms.max_seq_len, ctx), n + 1
        total = distributed.all_sum(total, ctx)
        both = evaluate_split(model_scorer(model, ms.max_seq_len), valid_examples, ctx)
        valid = both["history_excluded"]  # early stopping stays on the history-excluded NDCG@10
        curve.append({"epoch": epoch, "loss": total / max(n, 1), **{f"valid_{k}": v for k, v in valid.items()},
                      **{f"valid_recbole_{k}": v for k, v in both["recbole"].items()}})  # fmt: skip
        if valid["ndcg@10"] > best:
            best, best_epoch, bad = valid["ndcg@10"], epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            bad += 1
        bar.set_postfix(loss=f"{total / max(n, 1):.3f}", valid_ndcg10=f"{valid['ndcg@10']:.4f}", best=f"{best:.4f}@{best_epoch}")
        if not progress:
            log.info("epoch %d loss %.4f valid ndcg@10 %.4f (best %.4f @ %d)", epoch, total / max(n, 1), valid["ndcg@10"], best, best_epoch)
        if bad >= ms.patience:
            break
    model.load_state_dict(best_state)
    if not ctx.is_main:
        return None
    blend, collab = choose_blends(model, data.train, valid_examples, ms)
    scorer = model_scorer(model, ms.max_seq_len)
    valid = evaluate_both_protocols(scorer, valid_examples)
    test = evaluate_both_protocols(scorer, test_examples)
    return TrainOutcome(model, best_epoch, curve, valid["history_excluded"], test["history_excluded"],
                        time.perf_counter() - t0, valid["recbole"], test["recbole"], blend, collab)  # fmt: skip


def choose_blends(model: LEARN, train: list[list[int]], valid_examples: list, ms: ModelSettings) -> tuple[dict | None, dict | None]:
    """After training, on validation: the kNN weight and history penalty (trainer/history.py), then
    the EASE term fitted on the training sequences `train` with them (trainer/collab.py). -> the two
    choices (None where the settings switch them off)."""
    make = lambda m: model_scorer(m, ms.max_seq_len)  # noqa: E731
    blend = choose_knn_blend(model, make, valid_examples) if ms.history_knn_blend else None
    collab = choose_collab_blend(model, make, train, valid_examples, start=blend) if model.collab is not None else None
    return blend, collab


def collab_extra(model: LEARN, data: RecData) -> dict:
    """What the checkpoint records for a chosen EASE term: the external ids its rows index (serving
    maps the live catalogue's items to them)."""
    return {"collab_item_ids": list(data.item_ids)} if model.collab_active() else {}


def plot_curve(curve: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [c["epoch"] for c in curve]
    fig, ax1 = plt.subplots(figsize=(6, 3.5))
    ax1.plot(ep, [c["loss"] for c in curve], color="tab:blue", label="train loss")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("train loss", color="tab:blue")
    ax2 = ax1.twinx()
    ax2.plot(ep, [c["valid_ndcg@10"] for c in curve], color="tab:red", label="valid NDCG@10")
    ax2.set_ylabel("valid NDCG@10", color="tab:red")
    ax1.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


MODELS = ("learn", "zero-training", "popularity")


# -- the whole run -----------------------------------------------------------------------------
def dataset_source(settings: Settings, dataset: str | Path | DatasetSource, data_format: str = "auto",
                   prefix: str = "") -> DatasetSource:  # fmt: skip
    """A dataset name from the settings or a folder (streams/datasets.py: resolve)."""
    if isinstance(dataset, DatasetSource):
        return dataset
    return resolve(dataset, settings.datasets, settings.shared_data_dir, data_format, prefix)


def stopped_at_epoch_cap(curve: list[dict], best_epoch: int, max_epochs: int, patience: int) -> bool:
    """True when the epoch cap, not early stopping, ended training: the best validation epoch is
    among the last `patience` epochs, so validation may still have been rising."""
    return len(curve) >= max_epochs and best_epoch > len(curve) - patience


def run_train(
    settings: Settings | None = None,
    dataset: str | Path | DatasetSource = "amazon-scientific-unisrec",
    run_dir: Path | None = None,
    users: int | None = None,
    model: str = "learn",  # learn | zero-training | popularity
    progress: bool = True,
    threads: int | None = None,
) -> dict:
    """Encode (cached) -> features -> train/evaluate -> results.json, curve.png, checkpoint/.
    `dataset`: a name from the settings' datasets, a folder, or a DatasetSource. The run directory
    is created only once the data is loaded, and removed again if the run fails.
    Under torchrun (trainer/distributed.py) every rank trains its share and rank 0 alone writes the
    run directory and returns the record; the other ranks return {}."""
    t0 = time.perf_counter()
    s = settings or Settings()
    ms = s.model
    if threads:
        torch.set_num_threads(threads)
    ctx = distributed.init()
    try:
        src = dataset_source(s, dataset)
        run_dir = Path(run_dir or Path("runs") / time.strftime("train-%Y%m%d-%H%M%S"))
        data = load_source(src, history_cap=ms.max_seq_len).subsample(users, seed=ms.seed)
        created = not run_dir.exists()
        try:
            return _run_loaded(s, src, data, run_dir, model, progress and ctx.is_main, t0, ctx)
        except BaseException:
            if ctx.is_main and created and run_dir.exists():
                shutil.rmtree(run_dir, ignore_errors=True)
            raise
    finally:
        distributed.cleanup(ctx)


def _run_loaded(s: Settings, src: DatasetSource, data: RecData, run_dir: Path, model: str, progress: bool,
                t0: float, ctx: DistContext = SINGLE) -> dict:  # fmt: skip
    ms, enc = s.model, s.encoder
    dataset = src.name
    raw, features, encoder_id, encode_stats, anisotropy = None, None, None, None, None
    if model != "popularity" and ctx.is_main:  # one process opens the embedding cache
        t_enc = time.perf_counter()
        raw, encoder_id, stats = encode_catalogue(data, enc, s, progress)
        encode_stats = {"seconds": time.perf_counter() - t_enc, "cache_hits": stats.cache_hits,
                        "encoded": stats.encoded, "truncated": stats.truncated}  # fmt: skip
        anisotropy = mean_pairwise_cosine(raw)
        features = content_features(raw, ms.whiten, ms.whiten_dim)
    if not ctx.is_main:  # the other ranks only train; rank 0 evaluates the rest and writes the run
        if model == "learn":
            train_model(data, distributed.broadcast_array(None, ctx), ms, False, ctx=ctx)
        return {}
    if model == "learn":
        raw = distributed.broadcast_array(raw, ctx)

    baselines = evaluate_baselines(data, features)
    run_dir.mkdir(parents=True, exist_ok=True)
    result: dict = {
        "dataset": dataset,
        "data": {**src.describe(), **{k: v for k, v in data.meta.items() if k != "source"}},
        "encoder": encoder_id,
        "seed": ms.seed,
        "history_excluded": True,
        "users": data.n_users,
        "n_items": data.n_items,
        "encode": encode_stats,
        "raw_mean_pairwise_cosine": anisotropy,
        "baselines": baselines,
    }
    if model == "learn":
        out = train_model(data, raw, ms, progress, ctx=ctx)  # the model fits its own feature step on raw
        at_cap = stopped_at_epoch_cap(out.curve, out.best_epoch, ms.max_epochs, ms.patience)
        if at_cap:
            log.warning("training stopped at the epoch cap (%d epochs) while validation NDCG@10 was still "
                        "improving (best epoch %d): more epochs may help", ms.max_epochs, out.best_epoch)  # fmt: skip
        result.update(
            model=f"learn-{ms.item_tower}", metrics=out.test_metrics, valid_metrics=out.valid_metrics,
            metrics_recbole_protocol=out.test_metrics_recbole, valid_metrics_recbole_protocol=out.valid_metrics_recbole,
            best_epoch=out.best_epoch, curve=out.curve, train_seconds=out.seconds, knn_blend=out.knn_blend,
            collab_blend=out.collab_blend,
            parameters=out.model.num_parameters(), stopped_at_epoch_cap=at_cap,
            distributed={"world_size": ctx.world_size, "backend": distributed.BACKEND if ctx.active else None,
                         "threads_per_rank": torch.get_num_threads()},
        )  # fmt: skip
        plot_curve(out.curve, run_dir / "curve.png", f"LEARN-({ms.item_tower}) {enc.model}, {dataset}")
        save_checkpoint(out.model, run_dir / "checkpoint", metrics=out.test_metrics,
                        extra={"encoder": encoder_id, "dataset": dataset, "whiten": ms.whiten,
                               **collab_extra(out.model, data)})  # fmt: skip
    else:
        b = baselines[model]
        result.update(model=model, metrics=b["test"], valid_metrics=b["valid"],
                      metrics_recbole_protocol=b["test_recbole"], valid_metrics_recbole_protocol=b["valid_recbole"])
        if model == "popularity":
            result["encoder"] = None
    result["seconds"] = time.perf_counter() - t0
    result["peak_rss_mb"] = peak_rss_mb()
    result["config"] = {"model": ms.model_dump(), "encoder": enc.model_dump()}
    (run_dir / "results.json").write_text(json.dumps(result, indent=2))
    return result


def train_cli(
    settings: Settings,
    dataset: str,
    encoder: str | None = None,
    item_tower: str | None = None,
    model: str = "learn",
    seed: int | None = None,
    users: int | None = None,
    loss: str | None = None,
    whiten: bool | None = None,
    epochs: int | None = None,
    run_dir: Path | None = None,
    progress: bool = True,
    threads: int | None = None,
    dense_weight: float | None = None,
    data_format: str = "auto",
    prefix: str = "",
) -> dict:
    """`learn train`: command-line options override the settings for this one run, then run_train.
    Prints a short summary; the full record is <run_dir>/results.json."""
    overrides = {"item_tower": item_tower, "seed": seed, "loss": loss, "whiten": whiten, "max_epochs": epochs,
                 "dense_weight": dense_weight}  # fmt: skip
    ms = settings.model.model_copy(update={k: v for k, v in overrides.items() if v is not None})
    ms = ModelSettings.model_validate(ms.model_dump())  # re-validate the overridden values
    item_tower_class(ms.item_tower)  # an unknown variant fails here, before anything loads
    enc = settings.encoder.model_copy(update={"model": encoder} if encoder else {})
    s = settings.model_copy(update={"model": ms, "encoder": enc})
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}: choose one of {', '.join(MODELS)}")
    src = dataset_source(s, dataset, data_format, prefix)  # a wrong folder fails here, before anything runs
    tag = f"{model}-{ms.item_tower}" if model == "learn" else model
    run_dir = Path(run_dir or Path("runs") / time.strftime(f"train-{tag}-%Y%m%d-%H%M%S"))
    res = run_train(s, src, run_dir, users=users, model=model, progress=progress, threads=threads)
    if not res:  # a rank other than 0 of a distributed run: rank 0 reports
        return res
    dataset = src.name
    m, b = res["metrics"], res["baselines"]
    print(f"{res['model']} ({res['encoder']}) on {dataset}, {res['users']} users, seed {res['seed']}: "
          f"test NDCG@10 {m['ndcg@10']:.4f} Recall@10 {m['recall@10']:.4f} NDCG@50 {m['ndcg@50']:.4f} "
          f"MRR {m['mrr']:.4f} | valid NDCG@10 {res['valid_metrics']['ndcg@10']:.4f}")  # fmt: skip
    for name, v in b.items():
        print(f"  baseline {name}: test NDCG@10 {v['test']['ndcg@10']:.4f} (valid {v['valid']['ndcg@10']:.4f})")
    if res.get("stopped_at_epoch_cap"):
        print(f"  warning: stopped at the epoch cap ({ms.max_epochs}) while validation was still improving "
              f"(best epoch {res['best_epoch']}): more epochs may help (--epochs)")  # fmt: skip
    print(f"  {res['seconds']:.0f} s, peak RSS {res['peak_rss_mb']:.0f} MB -> {run_dir}/results.json")
    return res
