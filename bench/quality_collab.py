#!/usr/bin/env python3
"""Issue 17 probe: a late-fusion collaborative term beside a finished LEARN run, chosen on validation.

    .venv/bin/python bench/quality_collab.py RUN_DIR [--out bench/results/quality_collab-seed2024.json]

The run's checkpoint (bench/quality_blend.load_run: its towers, history terms at zero) scores the
validation split once; the score parts are kept (towers, content kNN, in-history indicator, as
trainer/history.choose_knn_blend splits them) and a collaborative item-item score is added:

- `ease`: EASE (Steck 2019), B = I - P / diag(P), P = (X^T X + lambda I)^-1, diag(B) = 0, the user's
  score x_u B (x_u binary over the history);
- `ease_recency`: the same B, x_u weighted 0.7^age (the zero-training baseline's decay);
- `transition`: first-order transitions i -> j counted in the training sequences, each row divided
  by its item's count + 1, the user's score sum_h 0.7^age T[h].

X holds the TRAINING sequences only when validation is scored (the validation target is never in
it); for the test split it is refitted on the test histories (train + the validation target), the
history the evaluator gives. For each term: (a) the term alone, (b) towers + kNN w + penalty p + c x
the term, (w, p, c, lambda) on a grid, the best by the mean of both conventions' valid NDCG@10 (the
criterion choose_knn_blend uses). The test split is scored once, with the chosen point, and only
with --test. Writes one JSON (the grid, the choice, the zero-training figures beside it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

KNN_GRID = (0.0, 0.3, 0.5, 0.7, 1.0)
PENALTY_GRID = (0.0, -0.3, -1.0)
LAMBDAS = (20.0, 100.0, 300.0, 1000.0)
C_GRID = (0.0, 0.2, 0.5, 0.8, 1.2, 2.0, 3.0)
SCREEN = 2  # lambdas that get the blend grid, the best alone on validation
DECAY = 0.7


def history_matrix(histories, n_items: int, decay: float | None = None):
    """(U, N) float64: 1 (trainer/collab.interaction_matrix) or, with `decay`, decay^age (age 0 = the
    last item) at each history item, the most recent occurrence's weight where an item repeats."""
    import torch

    from trainer.collab import interaction_matrix

    if decay is None:
        return interaction_matrix(histories, n_items)
    x = torch.zeros(len(histories), n_items, dtype=torch.float64)
    for r, h in enumerate(histories):
        for j, i in enumerate(h):
            x[r, i] = decay ** (len(h) - 1 - j)
    return x


def transitions(seqs, n_items: int):
    """(N, N) float64: count of i directly followed by j in `seqs`, row i divided by count(i) + 1."""
    import torch

    t = torch.zeros(n_items, n_items, dtype=torch.float64)
    for s in seqs:
        for a, b in zip(s[:-1], s[1:]):
            t[a, b] += 1.0
    return t / (t.sum(1, keepdim=True) + 1.0)


def parts(model, ms, examples):
    """(towers, kNN cosine, in-history) score matrices over `examples` (what choose_knn_blend splits)."""
    import torch

    from trainer.history import full_matrix
    from trainer.offline import model_scorer

    h, tau = model.history, model.cfg.temperature
    hist = [list(x) for x, _ in examples]
    with torch.no_grad():
        h.knn_weight.fill_(0.0)
        h.age_bias.fill_(0.0)
        base = full_matrix(model_scorer(model, ms.max_seq_len), hist)
        h.knn_weight.fill_(1.0 / tau)
        knn = full_matrix(model_scorer(model, ms.max_seq_len), hist) - base
        h.knn_weight.fill_(0.0)
    seen = torch.zeros_like(base)
    seen[[r for r, x in enumerate(hist) for _ in x], [i for x in hist for i in x]] = 1.0
    return base, knn, seen


def ndcgs(scores, examples) -> dict:
    import torch

    from trainer.evaluation import PROTOCOLS, metrics_from_ranks, ranks_for_batch

    hist = [list(x) for x, _ in examples]
    targets = torch.tensor([t for _, t in examples], dtype=torch.long)
    return {name: metrics_from_ranks(ranks_for_batch(scores, targets, hist, excl)) for name, excl in PROTOCOLS.items()}


def collab_scores(kind: str, lam: float, fit_rows, examples, n_items: int):
    """(U, N) float32 collaborative scores of `examples`, the model fitted on `fit_rows` (sequences)."""
    from trainer.collab import fit_ease

    hist = [list(x) for x, _ in examples]
    if kind == "transition":
        return (history_matrix(hist, n_items, DECAY) @ transitions(fit_rows, n_items)).float()
    b = fit_ease(history_matrix(fit_rows, n_items), lam)
    return (history_matrix(hist, n_items, DECAY if kind == "ease_recency" else None) @ b).float()


def grid_search(base, knn, seen, collab, examples, log, knn_grid=KNN_GRID, c_grid=C_GRID) -> list[dict]:
    rows = []
    for w in knn_grid:
        for p in PENALTY_GRID:
            for c in c_grid:
                m = ndcgs(base + w * knn + p * seen + c * collab, examples)
                rows.append({"knn_weight": w, "penalty": p, "c": c,
                             "valid_history_excluded_ndcg@10": m["history_excluded"]["ndcg@10"],
                             "valid_recbole_ndcg@10": m["recbole"]["ndcg@10"]})  # fmt: skip
    best = max(rows, key=score)
    log(f"      best w={best['knn_weight']} p={best['penalty']} c={best['c']}: "
        f"{best['valid_history_excluded_ndcg@10']:.4f} / {best['valid_recbole_ndcg@10']:.4f}")  # fmt: skip
    return rows


def zero_training() -> dict:
    """The recorded zero-training baseline's NDCG@10 (bench/results/quality), both splits and conventions."""
    z = json.loads((ROOT / "bench/results/quality/zero-training-smollm2-default-seed2024.json").read_text())
    return {"valid": z["valid_metrics"]["ndcg@10"], "valid_recbole": z["valid_metrics_recbole_protocol"]["ndcg@10"],
            "test": z["metrics"]["ndcg@10"], "test_recbole": z["metrics_recbole_protocol"]["ndcg@10"]}  # fmt: skip


def score(r: dict) -> float:
    return (r["valid_history_excluded_ndcg@10"] + r["valid_recbole_ndcg@10"]) / 2


def main() -> None:
    import torch

    from bench.quality_blend import load_run

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--kinds", default="ease,ease_recency,transition")
    ap.add_argument("--lambdas", default=",".join(map(str, LAMBDAS)))
    ap.add_argument("--c-grid", default=",".join(map(str, C_GRID)), help="weights of the collaborative term")
    ap.add_argument("--knn-grid", default=",".join(map(str, KNN_GRID)))
    ap.add_argument("--screen", type=int, default=SCREEN, help="lambdas that get the blend grid")
    ap.add_argument("--test", action="store_true", help="score the test split once with the chosen point")
    args = ap.parse_args()
    lambdas, c_grid, knn_grid = (tuple(float(x) for x in a.split(",")) for a in (args.lambdas, args.c_grid, args.knn_grid))
    torch.set_num_threads(1)
    t0, load0 = time.perf_counter(), os.getloadavg()
    log = lambda msg: print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)  # noqa: E731
    res, ms, data, model = load_run(args.run_dir)
    n = data.n_items
    valid = sorted(data.valid, key=lambda e: len(e[0]))
    base, knn, seen = parts(model, ms, valid)
    ref = ndcgs(base + res["knn_blend"]["weight"] * knn + res["knn_blend"]["penalty"] * seen, valid) if res.get("knn_blend") else None
    out = {"run": str(args.run_dir), "seed": res["seed"], "load_before": load0, "grids": {}, "alone": {},
           "zero_training": zero_training(),
           "towers_only_valid": {k: v["ndcg@10"] for k, v in ndcgs(base, valid).items()}}  # fmt: skip
    log(f"towers alone valid {out['towers_only_valid']}; zero-training {out['zero_training']}")
    best_overall = None
    for kind in args.kinds.split(","):
        lams = lambdas if kind.startswith("ease") else (0.0,)
        screened = {}
        for lam in lams:  # (a) each lambda alone; the blend grid only for the best SCREEN of them
            collab = collab_scores(kind, lam, data.train, valid, n)
            alone = {k: v["ndcg@10"] for k, v in ndcgs(collab, valid).items()}
            out["alone"][f"{kind}:lambda={lam:g}"] = alone
            screened[lam] = (alone["history_excluded"] + alone["recbole"]) / 2
            log(f"{kind}:lambda={lam:g} alone valid {alone}")
        for lam in sorted(lams, key=lambda x: -screened[x])[: args.screen]:
            collab = collab_scores(kind, lam, data.train, valid, n)
            key = f"{kind}:lambda={lam:g}"
            log(f"{key} blend grid")
            rows = grid_search(base, knn, seen, collab, valid, log, knn_grid, c_grid)
            out["grids"][key] = rows
            best = max(rows, key=score)
            if best_overall is None or score(best) > score(best_overall[2]):
                best_overall = (kind, lam, best)
            del collab
    kind, lam, best = best_overall
    out["chosen"] = {"kind": kind, "lambda": lam, **best}
    out["valid_without_collab"] = max((r for r in out["grids"][f"{kind}:lambda={lam:g}"] if r["c"] == 0.0), key=score)
    log(f"chosen {out['chosen']}")
    if args.test:
        test = sorted(data.test, key=lambda e: len(e[0]))
        tb, tk, ts = parts(model, ms, test)
        fit = [list(h) for h, _ in sorted(data.test, key=lambda e: len(e[0]))]
        tc = collab_scores(kind, lam, fit, test, n)
        both = ndcgs(tb + best["knn_weight"] * tk + best["penalty"] * ts + best["c"] * tc, test)
        out["test"] = {k: v for k, v in both.items()}
        log(f"test {{k: v['ndcg@10'] for k, v in both.items()}}")
    out["seconds"], out["load_after"] = time.perf_counter() - t0, os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
