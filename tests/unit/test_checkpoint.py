import json

import torch

from trainer.checkpoint import load_checkpoint, save_checkpoint
from trainer.towers import LEARN, TowerConfig


def test_round_trip(tmp_path):
    torch.manual_seed(0)
    content = torch.randn(15, 10)
    m = LEARN(TowerConfig(n_items=15, d_llm=10, d_model=8, n_heads=2, d_out=4, item_tower="b"), content).eval()
    save_checkpoint(m, tmp_path / "ck", metrics={"ndcg@10": 0.1}, extra={"encoder": "x"})
    assert (tmp_path / "ck" / "model.safetensors").exists()
    meta = json.loads((tmp_path / "ck" / "model.json").read_text())
    assert meta["config"]["item_tower"] == "b" and meta["metrics"]["ndcg@10"] == 0.1
    m2, meta2 = load_checkpoint(tmp_path / "ck", content)
    assert meta2 == meta
    assert torch.allclose(m.item_vectors(), m2.item_vectors())
