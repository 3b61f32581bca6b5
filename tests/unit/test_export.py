import numpy as np
import pytest
import torch

from encoder.pooling import Whitening, l2_normalize
from trainer.export import export_towers, load_tower
from trainer.towers import LEARN, TowerConfig, pad_sequences


@pytest.mark.parametrize("variant", ["a", "b", "c"])
def test_exported_towers_match_the_model(tmp_path, variant):
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    raw = l2_normalize(rng.normal(size=(30, 16)) + 3.0).astype(np.float32)  # anisotropic, like LLM vectors
    whitening = Whitening.fit(raw, dim=12)
    features = l2_normalize(whitening(raw)).astype(np.float32)
    cfg = TowerConfig(n_items=30, d_llm=12, d_model=8, n_layers=1, n_heads=2, d_out=8, item_tower=variant, max_seq_len=10)
    model = LEARN(cfg, torch.from_numpy(features)).eval()
    item_path, user_path = export_towers(model, whitening, tmp_path)
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
        export_towers(LEARN(cfg, torch.zeros(5, 4)), None, tmp_path)


def test_exported_knn_residual_gives_the_models_scores(tmp_path):
    # the kNN residual travels as extra dimensions: one inner product = the model's full-sort score
    torch.manual_seed(0)
    rng = np.random.default_rng(1)
    raw = l2_normalize(rng.normal(size=(30, 16)) + 3.0).astype(np.float32)
    whitening = Whitening.fit(raw, dim=12)
    features = l2_normalize(whitening(raw)).astype(np.float32)
    cfg = TowerConfig(n_items=30, d_llm=12, d_model=8, n_layers=1, n_heads=2, d_out=8, max_seq_len=10,
                      loss="full_softmax", history_in_loss="negatives", history_age_bias=True, history_knn=True)  # fmt: skip
    model = LEARN(cfg, torch.from_numpy(features)).eval()
    with torch.no_grad():
        model.history.knn_weight.fill_(3.0)
    item, user = (load_tower(p) for p in export_towers(model, whitening, tmp_path))
    histories = [[1, 2, 3, 4, 5], [7], [9, 8, 7]]
    seq, lens = pad_sequences(histories, model.pad_id, 10)
    with torch.no_grad():
        items = item(torch.from_numpy(raw))
        assert items.shape == (30, 8 + 12)
        served = user(torch.from_numpy(raw)[seq.clamp_max(29)], lens) @ items.T
        expected = model.full_sort_predict({"item_seq": seq, "item_seq_len": lens})
        plain = model.user_vectors(seq, lens) @ model.item_vectors().T
    assert not torch.allclose(expected, plain, atol=1e-3)  # the residual is there
    assert torch.allclose(served, expected, atol=1e-5)  # (no age bias set: it is zero here)
