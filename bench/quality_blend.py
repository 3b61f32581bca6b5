#!/usr/bin/env python3
"""The validation-chosen blends (trainer/history.choose_knn_blend, then the EASE term of
trainer/collab.choose_collab_blend: trainer/offline.choose_blends) applied to a finished run.

    .venv/bin/python bench/quality_blend.py RUN_DIR OUT_DIR

`learn train` with `history_knn_blend` holds the kNN weight at zero while training (its similarity is
then never computed), so its training is the one without the switch; after early stopping it picks
the weight on validation and scores the splits. This does that last step for a run trained without the
switch, from its checkpoint (a run trained with history masked also gets the validation-chosen
penalty on history items: `history_age_bias` on, held at zero in training): OUT_DIR/results.json is the run's record with the switch on in its
config, the blend's validation grid, both splits re-scored (test once, with the chosen weight), and
"derived_from". bench/quality.py --adopt and bench/quality_sweep.py --adopt record it like any run.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def load_run(src: Path):
    """A finished run's checkpoint as a model with the blend switch on (its history terms at zero, as
    in training), its data and its record: -> (res, ms, data, model), the model in eval mode."""
    import torch
    from safetensors.torch import load_file

    from bench.quality import bench_settings
    from config.settings import ModelSettings
    from trainer.data import load_dataset
    from trainer.offline import build_model, encode_catalogue

    res = json.loads((src / "results.json").read_text())
    cfg = res["config"]["model"]
    # a run trained with history masked gets the validation-chosen penalty on history items too
    masked = cfg.get("history_in_loss", "masked") == "masked"
    s = bench_settings()
    # a run recorded before the EASE term (trainer/collab.py) gets the settings' rank (LEARN_MODEL__COLLAB_RANK)
    ms = ModelSettings(**{"collab_rank": s.model.collab_rank, **cfg, "history_knn_blend": True,
                          **({"history_age_bias": True} if masked else {})})  # fmt: skip
    enc = s.encoder.model_copy(update=res["config"]["encoder"])
    data = load_dataset(res["dataset"], s.shared_data_dir, history_cap=ms.max_seq_len)
    raw, _, _ = encode_catalogue(data, enc, s, progress=False)
    model = build_model(ms, raw)  # its feature step fitted on the catalogue, as `learn train` fits it
    state = load_file(str(src / "checkpoint" / "model.safetensors"))
    # a checkpoint written before trainer/towers.py held the feature step and the item towers as
    # modules: tower (c)'s projection was `item_proj`, the features were fitted outside the model
    state = {("item_tower.proj." + k[len("item_proj."):] if k.startswith("item_proj.") else k): v for k, v in state.items()}
    fresh = model.state_dict()
    missing = {k: torch.zeros_like(v) if k.startswith("history.") else v for k, v in fresh.items() if k not in state}
    model.load_state_dict({**state, **missing})  # the blend's terms start at zero, as in training
    with torch.no_grad():  # a run that chose a blend already: back to the towers alone
        for p in model.history.parameters():
            p.zero_()
    model.eval()
    return res, ms, data, model


def main(src: Path, dst: Path) -> None:
    import torch

    from trainer.checkpoint import save_checkpoint
    from trainer.evaluation import evaluate_both_protocols
    from trainer.offline import choose_blends, collab_extra, model_scorer

    torch.set_num_threads(1)
    t0, load_before = time.perf_counter(), os.getloadavg()
    res, ms, data, model = load_run(src)
    valid_examples = sorted(data.valid, key=lambda e: len(e[0]))
    blend, collab = choose_blends(model, data.train, valid_examples, ms)
    scorer = model_scorer(model, ms.max_seq_len)
    valid = evaluate_both_protocols(scorer, valid_examples)
    test = evaluate_both_protocols(scorer, sorted(data.test, key=lambda e: len(e[0])))
    res.update(
        metrics=test["history_excluded"], valid_metrics=valid["history_excluded"],
        metrics_recbole_protocol=test["recbole"], valid_metrics_recbole_protocol=valid["recbole"],
        knn_blend=blend, collab_blend=collab, derived_from=str(src), blend_seconds=time.perf_counter() - t0,
        blend_load_before=load_before, blend_load_after=os.getloadavg(),
    )  # fmt: skip
    res["config"]["model"] = ms.model_dump()
    dst.mkdir(parents=True, exist_ok=True)
    (dst / "results.json").write_text(json.dumps(res, indent=2))
    save_checkpoint(model, dst / "checkpoint", metrics=res["metrics"], extra={"derived_from": str(src), **collab_extra(model, data)})
    chosen = f", EASE lambda {collab['lambda']} weight {collab['collab_weight']} kNN {collab['knn_weight']} penalty {collab['penalty']}" if collab else ""
    print(f"kNN weight {blend['weight']}, history penalty {blend['penalty']}{chosen} on validation: valid NDCG@10 {valid['history_excluded']['ndcg@10']:.4f} "
          f"history excluded / {valid['recbole']['ndcg@10']:.4f} RecBole -> {dst}/results.json")  # fmt: skip


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
