import numpy as np
import pytest
import torch

from encoder.pooling import l2_normalize
from trainer.export import export_towers, load_tower
from trainer.towers import LEARN, Features, TowerConfig, pad_sequences


@pytest.mark.parametrize("variant", ["a", "b", "c"])
def test_exported_towers_match_the_model(tmp_path, variant):
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    raw = l2_normalize(rng.normal(size=(30, 16)) + 3.0).astype(np.float32)  # anisotropic, like LLM vectors
    features = Features.fit(raw, dim=12)
    cfg = TowerConfig(n_items=30, d_raw=16, d_llm=12, d_model=8, n_layers=1, n_heads=2, d_out=8, item_tower=variant,
                      max_seq_len=10)  # fmt: skip
    model = LEARN(cfg, torch.from_numpy(raw), features).eval()
    item_path, user_path = export_towers(model, tmp_path)
    item, user = load_tower(item_path), load_tower(user_path)

    with torch.no_grad():
        assert torch.allclose(item(torch.from_numpy(raw)), model.item_vectors(), atol=1e-5)
        histories = [[1, 2, 3, 4, 5], [7], [9, 8, 7]]
        seq, lens = pad_sequences(histories, model.pad_id, 10)
        expected = model.user_vectors(seq, lens)
        raw_seq = torch.from_numpy(raw)[seq.clamp_max(29)]  # padding positions hold arbitrary rows
        assert torch.allclose(user(raw_seq, lens), expected, atol=1e-5)


def test_id_embedding_models_are_not_exported(tmp_path):
    cfg = TowerConfig(n_items=5, d_llm=4, d_model=4, n_layers=1, n_heads=1, d_out=4, use_id_embedding=True)
    with pytest.raises(ValueError, match="ID"):
        export_towers(LEARN(cfg, torch.zeros(5, 4)), tmp_path)
