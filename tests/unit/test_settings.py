from config import load_settings


def test_env_and_toml_override_defaults(tmp_path, monkeypatch):
    toml = tmp_path / "learn.toml"
    toml.write_text('[broker]\nport = 12345\n[encoder]\nmodel = "minilm"\n')
    monkeypatch.setenv("LEARN_CONFIG", str(toml))
    monkeypatch.setenv("LEARN_ENCODER__BATCH_SIZE", "7")
    s = load_settings()
    assert s.broker.port == 12345 and s.encoder.model == "minilm" and s.encoder.batch_size == 7
    assert s.broker.bootstrap == "127.0.0.1:12345"
    assert load_settings(data_dir=tmp_path).vector_uri == str(tmp_path / "vectors.db")
