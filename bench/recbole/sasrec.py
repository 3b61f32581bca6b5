#!/usr/bin/env python3
"""An independent peer: RecBole 1.2.1's SASRec on the UniSRec Amazon Scientific split.

Run with the RecBole virtualenv (bench/recbole/install.sh), not the project's:

    .venv-recbole/bin/python bench/recbole/sasrec.py --seed 2020

RecBole trains and early-stops on validation NDCG@10 (its own evaluator); the best model's full score
matrix for the test (and validation) users is then scored by the project's one protocol,
trainer/evaluation.py, both ways: history items excluded (the headline, "metrics") and RecBole's
convention of masking only the padding id ("metrics_recbole_protocol"). RecBole's own test result for
the same model is kept as "recbole_reported" and cross-checked against the latter.

Everything is scored in the files' item index space (0..4384): RecBole's internal ids (padding 0) are
mapped back through its token vocabulary, and targets/histories come from the files themselves.
"""

from __future__ import annotations

import os

# One core for this process (the machine has two and others work on it). Set before torch loads.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import copy
import json
import logging
import resource
import shlex
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT))
from trainer.evaluation import metrics_from_ranks, ranks_for_batch  # noqa: E402

DATASET_NAME = "amazon-scientific-unisrec"
DEFAULT_DATA = Path("/work/shared/data/amazon-scientific-unisrec")
PREFIX = "Scientific"
SPLITS = ("train", "valid", "test")
OUR_KEYS = ("ndcg@10", "recall@10", "ndcg@50", "recall@50", "mrr")


def read_split(data_dir: Path, split: str, prefix: str = PREFIX) -> list[tuple[int, list[int], int]]:
    """Rows (user index, history item indices oldest first, target item index) of one .inter file."""
    rows = []
    with open(data_dir / f"{prefix}.{split}.inter") as f:
        header = f.readline().rstrip("\n").split("\t")
        assert header == ["user_id:token", "item_id_list:token_seq", "item_id:token"], header
        for line in f:
            u, hist, target = line.rstrip("\n").split("\t")
            rows.append((int(u), [int(i) for i in hist.split()], int(target)))
    return rows


def link_atomic_dir(data_dir: Path, work_root: Path, prefix: str = PREFIX) -> Path:
    """RecBole wants <data_path>/<name>/<name>.<suffix>.inter: symlink the read-only files there."""
    ds_dir = work_root / prefix
    ds_dir.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        link = ds_dir / f"{prefix}.{split}.inter"
        src = (data_dir / f"{prefix}.{split}.inter").resolve()
        if link.is_symlink() or link.exists():
            if link.resolve() == src:
                continue
            link.unlink()
        link.symlink_to(src)
    return work_root


def known_histories(
    data_dir: Path, n_items: int, prefix: str = PREFIX
) -> tuple[dict[str, dict[int, tuple[list[int], int]]], torch.Tensor]:
    """Per split, user -> (history to exclude, target); and item popularity from the training file.

    A split's history is the row's own item_id_list (capped at 50 by the files), exactly as the
    project's loader (trainer/data.py, load_unisrec) hands it to LEARN, so both sides exclude the same
    items. Popularity counts each training interaction once (each user's longest training row: its
    history plus its target).
    """
    rows = {s: read_split(data_dir, s, prefix) for s in SPLITS}
    longest: dict[int, tuple[list[int], int]] = {}
    for u, hist, t in rows["train"]:
        if u not in longest or len(hist) > len(longest[u][0]):
            longest[u] = (hist, t)
    out: dict[str, dict[int, tuple[list[int], int]]] = {}
    for split in ("valid", "test"):
        out[split] = {}
        for u, hist, t in rows[split]:
            assert u not in out[split], f"user {u} twice in {split}"
            out[split][u] = (hist[-50:], t)
    pop = torch.zeros(n_items)
    for hist, t in longest.values():
        for i in (*hist, t):
            pop[i] += 1
    return out, pop


def score_split(
    model, loader, item_cols: torch.Tensor, n_items: int, dataset
) -> tuple[dict[int, torch.Tensor], dict[int, int]]:
    """user index -> full score row over the files' item indices (from the model's full_sort_predict),
    and user index -> the row's target mapped back to the files' item index."""
    uid_field, iid_field = dataset.uid_field, dataset.iid_field
    user_tokens = dataset.field2id_token[uid_field]
    item_tokens = dataset.field2id_token[iid_field]
    out: dict[int, torch.Tensor] = {}
    targets: dict[int, int] = {}
    model.eval()
    with torch.no_grad():
        for interaction, _hist_idx, _pos_u, _pos_i in loader:
            raw = model.full_sort_predict(interaction).float()  # (B, 1 + n_items), column 0 = [PAD]
            scores = torch.empty(raw.shape[0], n_items)
            scores[:, item_cols] = raw[:, 1:]
            for row, (u, t) in enumerate(zip(interaction[uid_field].tolist(), interaction[iid_field].tolist())):
                user = int(user_tokens[u])
                assert user not in out, f"user {user} twice"
                out[user] = scores[row]
                targets[user] = int(item_tokens[t])
    return out, targets


def protocol_metrics(
    scores: dict[int, torch.Tensor],
    targets: dict[int, int],
    truth: dict[int, tuple[list[int], int]],
    history_excluded: bool,
    batch: int = 1024,
) -> dict[str, float]:
    users = sorted(truth)
    assert set(users) == set(scores), "scored users != the file's users"
    for u in users:  # RecBole's target for the row must be the file's target, after mapping back
        assert targets[u] == truth[u][1], (u, targets[u], truth[u][1])
    ranks = []
    for start in range(0, len(users), batch):
        chunk = users[start : start + batch]
        s = torch.stack([scores[u] for u in chunk])
        targets = torch.tensor([truth[u][1] for u in chunk])
        hists = [truth[u][0] for u in chunk]
        # padding_id=None: the [PAD] column was dropped when mapping back to the files' item space.
        ranks.append(ranks_for_batch(s, targets, hists, history_excluded=history_excluded, padding_id=None))
    return metrics_from_ranks(torch.cat(ranks))


def pop_metrics(pop: torch.Tensor, truth, history_excluded: bool) -> dict[str, float]:
    return protocol_metrics({u: pop for u in truth}, {u: truth[u][1] for u in truth}, truth, history_excluded)


def rnd(d: dict, n: int = 6) -> dict:
    return {k: round(float(v), n) for k, v in d.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--prefix", default=PREFIX, help="file-name prefix of the .inter files (bench/quality.py --data writes them)")
    ap.add_argument("--work", type=Path, default=ROOT / ".learn" / "recbole-work",
                    help="scratch dir (git-ignored): atomic-file links, RecBole's log/ and tensorboard")
    ap.add_argument("--out", type=Path, default=None,
                    help="results JSON (default bench/results/quality/sasrec-recbole-seed<SEED>.json)")
    ap.add_argument("--epochs", type=int, default=None, help="cap on epochs (smoke runs); default: config")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--force", action="store_true", help="rerun even if the results file exists")
    args = ap.parse_args()

    args.data, args.work = args.data.resolve(), args.work.resolve()
    out = (args.out or ROOT / "bench" / "results" / "quality" / f"sasrec-recbole-seed{args.seed}.json").resolve()
    if out.exists() and not args.force:
        print(f"{out} exists: skipping seed {args.seed}")
        return 0
    command = " ".join(shlex.quote(a) for a in [os.path.relpath(sys.executable, ROOT), *sys.argv])

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    t0 = time.time()

    import recbole
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.model.sequential_recommender.sasrec import SASRec
    from recbole.trainer import Trainer
    from recbole.utils import init_logger, init_seed

    data_root = link_atomic_dir(args.data, args.work / "data", args.prefix)
    run_dir = args.work / (f"seed{args.seed}" if args.prefix == PREFIX else f"{args.prefix}-seed{args.seed}")
    run_dir.mkdir(parents=True, exist_ok=True)
    os.chdir(run_dir)  # RecBole writes ./log/ and ./log_tensorboard/ relative to the cwd

    config_dict = {"data_path": str(data_root), "seed": args.seed, "checkpoint_dir": str(run_dir / "saved")}
    if args.epochs is not None:
        config_dict["epochs"] = args.epochs
    config = Config(model="SASRec", dataset=args.prefix, config_file_list=[str(HERE / "sasrec.yaml")],
                    config_dict=config_dict)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    log = logging.getLogger()
    log.info(command)
    log.info(config)

    dataset = create_dataset(config)
    log.info(dataset)
    train_data, valid_data, test_data = data_preparation(config, dataset)

    # RecBole's vocabulary -> the files' item indices (column order of every score row we evaluate).
    item_tokens = dataset.field2id_token[dataset.iid_field]
    assert item_tokens[0] == "[PAD]", item_tokens[0]
    n_items = len(item_tokens) - 1
    item_cols = torch.tensor([int(t) for t in item_tokens[1:]])
    assert sorted(item_cols.tolist()) == list(range(n_items)), "item tokens are not 0..n-1"
    truth, pop = known_histories(args.data, n_items, args.prefix)
    log.info(f"items {n_items}; valid users {len(truth['valid'])}; test users {len(truth['test'])}")
    for split, t in truth.items():
        log.info(f"popularity {split}: excluded {rnd(pop_metrics(pop, t, True), 4)} "
                 f"not excluded {rnd(pop_metrics(pop, t, False), 4)}")

    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = SASRec(config, train_data._dataset).to(config["device"])
    log.info(model)
    trainer = Trainer(config, model)

    # Keep the best state in memory (no checkpoint file: torch>=2.6 refuses RecBole's pickled reload).
    best = {"epoch": None, "state": None, "epochs_run": 0, "curve": []}

    def on_epoch(epoch_idx: int, valid_score: float) -> None:
        best["epochs_run"] = epoch_idx + 1
        best["curve"].append((epoch_idx, round(float(valid_score), 6)))
        if trainer.cur_step == 0:  # early_stopping() just reset its counter: a new best
            best["epoch"] = epoch_idx
            best["state"] = copy.deepcopy(model.state_dict())

    best_valid_score, best_valid_result = trainer.fit(
        train_data, valid_data, saved=False, show_progress=config["show_progress"], callback_fn=on_epoch
    )
    log.info(f"best epoch {best['epoch']} of {best['epochs_run']}; valid NDCG@10 curve {best['curve']}")
    model.load_state_dict(best["state"])
    recbole_test = trainer.evaluate(test_data, load_best_model=False)
    log.info(f"RecBole test result: {dict(recbole_test)}")

    metrics, metrics_recbole, valid_metrics = {}, {}, {}
    for split, loader in (("valid", valid_data), ("test", test_data)):
        scores, targets = score_split(model, loader, item_cols, n_items, dataset)
        users = sorted(scores)
        torch.save(  # exported peer scores (git-ignored), reloadable with weights_only=True
            {"users": torch.tensor(users), "targets": torch.tensor([targets[u] for u in users]),
             "scores": torch.stack([scores[u] for u in users])},
            run_dir / f"scores-{split}.pt",
        )
        for excluded in (True, False):
            m = rnd(protocol_metrics(scores, targets, truth[split], excluded))
            log.info(f"{split} history_excluded={excluded}: {m}")
            if split == "test":
                (metrics if excluded else metrics_recbole).update(m)
            elif excluded:
                valid_metrics.update(m)
        del scores

    # Cross-check: our "not excluded" figures are RecBole's own protocol on the same model.
    diffs = {k: abs(metrics_recbole[k] - float(recbole_test[k])) for k in
             ("ndcg@10", "recall@10", "ndcg@50", "recall@50") if k in recbole_test}
    worst = max(diffs.values())
    log.info(f"cross-check vs RecBole's evaluator, |ours - RecBole|: {rnd(diffs, 6)}")
    if worst > 1e-3:
        log.warning(f"CROSS-CHECK FAILED: our not-excluded metrics differ from RecBole's by {worst:.4f}")

    seconds = round(time.time() - t0, 1)
    peak_rss_mb = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    result = {
        "model": "sasrec-recbole",
        "encoder": None,
        "dataset": DATASET_NAME if args.prefix == PREFIX else args.prefix,
        "seed": args.seed,
        "metrics": {k: metrics[k] for k in OUR_KEYS},
        "metrics_recbole_protocol": {k: metrics_recbole[k] for k in OUR_KEYS},
        "recbole_reported": {k: float(v) for k, v in recbole_test.items()},
        "valid_metrics": {k: valid_metrics[k] for k in OUR_KEYS},
        "history_excluded": True,
        "best_epoch": best["epoch"],
        "epochs_run": best["epochs_run"],
        "seconds": seconds,
        "peak_rss_mb": peak_rss_mb,
        "threads": torch.get_num_threads(),
        "config": {
            "recbole": recbole.__version__,
            "torch": torch.__version__,
            "model": "SASRec",
            **{k: config[k] for k in (
                "n_layers", "n_heads", "hidden_size", "inner_size", "hidden_dropout_prob",
                "attn_dropout_prob", "hidden_act", "loss_type", "MAX_ITEM_LIST_LENGTH", "epochs",
                "train_batch_size", "learner", "learning_rate", "weight_decay", "stopping_step",
                "valid_metric", "eval_batch_size")},
            "n_items": n_items,
            "ranking": "full, all items; ties count against the target (trainer/evaluation.py)",
            "history": "the row's own item_id_list (as trainer/data.py gives LEARN)",
            "scores_export": str(run_dir.relative_to(ROOT)) if run_dir.is_relative_to(ROOT) else str(run_dir),
            "recbole_best_valid": {k: float(v) for k, v in (best_valid_result or {}).items()},
            "valid_curve_ndcg@10": best["curve"],
            "crosscheck_max_abs_diff_vs_recbole": round(worst, 6),
        },
        "command": command,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(out)
    log.info(f"wrote {out} ({seconds} s, peak RSS {peak_rss_mb} MB)")
    print(json.dumps({k: result[k] for k in ("metrics", "metrics_recbole_protocol", "best_epoch",
                                             "epochs_run", "seconds")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
