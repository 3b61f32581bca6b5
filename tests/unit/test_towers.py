import pytest
import torch

from trainer.towers import ITEM_TOWERS, LEARN, TowerConfig, UnknownItemTower, pad_sequences


def make(tower="a", loss="dense_all_action", **kw):
    torch.manual_seed(0)
    cfg = TowerConfig(n_items=20, d_llm=12, d_model=8, n_heads=2, d_out=6, dropout=0.0,
                      max_seq_len=10, item_tower=tower, loss=loss, target_window=3, **kw)  # fmt: skip
    return LEARN(cfg, torch.randn(20, 12))


@pytest.mark.parametrize("tower", sorted(ITEM_TOWERS))
@pytest.mark.parametrize("loss", ["dense_all_action", "dense_full", "in_batch", "full_softmax"])
def test_three_calls_shapes_and_backward(tower, loss):
    m = make(tower, loss)
    seq, lens = pad_sequences([[1, 2, 3, 4], [5, 6], [7, 8, 9]], m.pad_id, 10)
    batch = {"item_seq": seq, "item_seq_len": lens, "test_item": torch.tensor([0, 1, 2])}
    loss_v = m.calculate_loss(batch)
    assert loss_v.dim() == 0 and torch.isfinite(loss_v)
    loss_v.backward()
    assert m.predict(batch).shape == (3,)
    full = m.full_sort_predict(batch)
    assert full.shape == (3, 20)
    assert torch.allclose(full.gather(1, batch["test_item"].view(-1, 1)).squeeze(1), m.predict(batch), atol=1e-5)
    assert m.item_vectors().shape == (20, 6)
    assert torch.allclose(m.item_vectors().norm(dim=-1), torch.ones(20), atol=1e-5)


def test_user_tower_is_causal_and_ignores_padding():
    m = make().eval()
    a, _ = pad_sequences([[1, 2, 3, 4]], m.pad_id, 10)
    b, _ = pad_sequences([[1, 2, 3, 9]], m.pad_id, 10)
    sa, sb = m.sequence_states(a), m.sequence_states(b)
    assert torch.allclose(sa[:, :3], sb[:, :3], atol=1e-6)  # earlier positions never see later items
    assert not torch.allclose(sa[:, 3], sb[:, 3])
    short, lens = pad_sequences([[1, 2], [1, 2, 3, 4, 5]], m.pad_id, 10)
    alone, alone_len = pad_sequences([[1, 2]], m.pad_id, 10)
    assert torch.allclose(m.user_vectors(short, lens)[0], m.user_vectors(alone, alone_len)[0], atol=1e-6)


def test_item_towers():
    a, b, c = make("a").eval(), make("b").eval(), make("c").eval()
    # (a) scores a candidate alone exactly like (b): same weights, a target sequence of length one
    assert torch.allclose(a.item_vectors(), b.item_vectors(), atol=1e-6)
    # (a) is contextual inside a target window, (b) is not
    w = torch.tensor([[3, 4], [5, 4]])
    va, vb = a.window_vectors(w), b.window_vectors(w)
    assert torch.allclose(va[:, 0], vb[:, 0], atol=1e-6)
    assert not torch.allclose(va[0, 1], va[1, 1])  # item 4 after 3 differs from item 4 after 5
    assert torch.allclose(vb[0, 1], vb[1, 1])
    # (c) is the content embedding through a linear projection (dims differ), no transformer
    expect = torch.nn.functional.normalize(c.content[:20] @ c.item_tower.proj.weight.T, dim=-1)
    assert torch.allclose(c.item_vectors(), expect, atol=1e-6)


def test_id_embedding_switch():
    assert make().pcm.id_emb is None
    assert make(use_id_embedding=True).pcm.id_emb is not None


def test_dense_weight_adds_the_dense_loss_where_towers_a_and_b_differ():
    seq, lens = pad_sequences([[1, 2, 3, 4, 5], [6, 7, 8], [9, 10, 11, 12]], 20, 10)
    batch = {"item_seq": seq, "item_seq_len": lens}
    plain_a, plain_b = (make(t, "full_softmax").calculate_loss(batch) for t in "ab")
    assert torch.allclose(plain_a, plain_b)  # next-item only: (a) computes what (b) computes
    dense_a, dense_b = (make(t, "full_softmax", dense_weight=0.5).calculate_loss(batch) for t in "ab")
    assert dense_a > plain_a and dense_b > plain_b  # a positive term was added
    assert (dense_a - dense_b).abs() > 1e-6  # (a)'s window vectors are contextual (small at init)
    dense_only = make("a", "dense_all_action").calculate_loss(batch)
    assert torch.allclose(dense_a, plain_a + 0.5 * dense_only, atol=1e-5)


def test_config_defaults_are_the_settings_defaults():
    from dataclasses import fields

    from config.settings import ModelSettings

    ms, cfg = ModelSettings(), TowerConfig()
    shared = [f.name for f in fields(TowerConfig) if f.name in ModelSettings.model_fields]
    assert len(shared) >= 12 and "loss" in shared
    assert {n: getattr(cfg, n) for n in shared} == {n: getattr(ms, n) for n in shared}
    built = TowerConfig.from_settings(ms.model_copy(update={"item_tower": "c", "dropout": 0.1}), 7, 16, 12)
    assert (built.item_tower, built.dropout, built.n_items, built.d_raw, built.d_llm) == ("c", 0.1, 7, 16, 12)
    assert TowerConfig.from_dict({**built.to_dict(), "unknown": 1}) == built


def test_features_whiten_then_normalise():
    import numpy as np

    from trainer.towers import Features

    rng = np.random.default_rng(0)
    raw = (rng.normal(size=(500, 6)) @ rng.normal(size=(6, 6)) + 2.0).astype(np.float32)
    f = Features.fit(raw)
    centred = (torch.from_numpy(raw) - f.mean) @ f.transform
    cov = np.cov(centred.numpy(), rowvar=False)
    assert np.allclose(cov, np.eye(6), atol=1e-3)  # decorrelated, unit variance
    out = f(torch.from_numpy(raw))
    assert torch.allclose(out.norm(dim=-1), torch.ones(500), atol=1e-5)
    assert Features.fit(raw, dim=3)(torch.from_numpy(raw)).shape == (500, 3)
    plain = Features.fit(raw, whiten=False)(torch.from_numpy(raw))  # L2 only
    assert torch.allclose(plain, torch.nn.functional.normalize(torch.from_numpy(raw), dim=-1))


@pytest.mark.parametrize("tower", sorted(ITEM_TOWERS))
def test_raw_input_towers_compute_what_training_computes(tower):
    import numpy as np

    from trainer.towers import Features

    torch.manual_seed(0)
    raw = np.random.default_rng(1).normal(size=(20, 16)).astype(np.float32) + 1.0
    feats = Features.fit(raw, dim=12)
    cfg = TowerConfig(n_items=20, d_raw=16, d_llm=12, d_model=8, n_heads=2, d_out=6, max_seq_len=10, item_tower=tower)
    m = LEARN(cfg, torch.from_numpy(raw), feats).eval()
    with torch.no_grad():
        assert torch.allclose(m.encode_items(torch.from_numpy(raw)), m.item_vectors(), atol=1e-5)
        seq, lens = pad_sequences([[1, 2, 3], [4], [5, 6, 7, 8, 9]], m.pad_id, 10)
        raw_seq = torch.from_numpy(raw)[seq.clamp_max(19)]  # padding positions hold arbitrary rows
        assert torch.allclose(m.encode_users(raw_seq, lens), m.user_vectors(seq, lens), atol=1e-5)


def test_unknown_item_tower_is_refused():
    from config.settings import ModelSettings

    with pytest.raises(ValueError, match="item tower"):
        LEARN(TowerConfig(n_items=3, d_llm=4, d_model=4, n_heads=1, d_out=4, item_tower="z"))
    ms = ModelSettings(item_tower="z")  # the settings do not repeat the list of variants
    with pytest.raises(UnknownItemTower, match=r"unknown item tower 'z' \(model.item_tower\): one of a, b, c"):
        TowerConfig.from_settings(ms, 3, 4)


@pytest.mark.parametrize("command", [["train", "--item-tower", "z"], ["trainer"]])
def test_the_cli_refuses_an_unknown_item_tower_with_a_short_message(command, tmp_path):
    from typer.testing import CliRunner

    from deploy.cli import app

    env = {"LEARN_DATA_DIR": str(tmp_path), "LEARN_MODEL__ITEM_TOWER": "z"}
    res = CliRunner().invoke(app, command, env=env)
    assert res.exit_code == 2 and isinstance(res.exception, SystemExit), res.output
    assert "unknown item tower 'z'" in res.output and "Traceback" not in res.output
    assert not list(tmp_path.iterdir())  # refused before anything was opened or written
