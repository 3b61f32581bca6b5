"""Datasets by path, end to end as a user runs them: `learn train --data PATH` on a small generated
dataset in every format (MiniLM, zero-training; popularity; a tiny LEARN run), and the short error
(exit status 2, no traceback, no run folder) for a wrong folder."""

import json

import pytest
from typer.testing import CliRunner

from deploy.cli import app
from tests.gen_data import write_atomic, write_lcrec, write_plain

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("own-data")
    return {"plain": write_plain(root / "plain"), "lcrec": write_lcrec(root / "lcrec", prefix="Toys"),
            "atomic": write_atomic(root / "atomic", prefix="Office"), "root": root}  # fmt: skip


@pytest.fixture(scope="module")
def env(datasets):
    # one embedding cache for the module: the same texts are encoded once, whatever the format
    return {"LEARN_ENCODER__MODEL": "minilm", "LEARN_DATA_DIR": str(datasets["root"] / "learn-data")}


def train(args, env):
    return CliRunner().invoke(app, ["train", *args, "--no-progress", "--threads", "2"], env=env)


@pytest.mark.parametrize("fmt", ["plain", "lcrec", "atomic"])
def test_learn_train_runs_on_every_format(datasets, env, fmt, tmp_path):
    res = train(["--data", str(datasets[fmt]), "--model", "zero-training", "--run-dir", str(tmp_path / "run")], env)
    assert res.exit_code == 0, res.output
    out = json.loads((tmp_path / "run" / "results.json").read_text())
    assert out["dataset"] == fmt and out["data"]["format"] == fmt and out["users"] == 60 and out["n_items"] == 40
    assert out["encoder"].startswith("minilm") and out["model"] == "zero-training"
    zt, pop = out["metrics"]["ndcg@10"], out["baselines"]["popularity"]["test"]["ndcg@10"]
    assert 0 < zt <= 1 and zt > pop, (zt, pop)  # the generated users follow the item text's themes
    assert f"on {fmt}" in res.output


def test_popularity_and_a_tiny_learn_run(datasets, env, tmp_path):
    res = train(["--data", str(datasets["plain"]), "--model", "popularity", "--run-dir", str(tmp_path / "pop")], env)
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "pop" / "results.json").read_text())["encoder"] is None
    res = train(["--data", str(datasets["lcrec"]), "--model", "learn", "--epochs", "2", "--run-dir", str(tmp_path / "learn")], env)
    assert res.exit_code == 0, res.output
    out = json.loads((tmp_path / "learn" / "results.json").read_text())
    assert out["model"] == "learn-a" and len(out["curve"]) == 2 and (tmp_path / "learn" / "checkpoint").is_dir()
    # 2 epochs with patience 5: the cap stopped it, and the run says so
    assert out["stopped_at_epoch_cap"] is True and "stopped at the epoch cap" in res.output


@pytest.mark.parametrize("make, message", [
    (lambda d: (d / "readme.txt").write_text("not a dataset"), "no dataset found in"),
    (lambda d: (d / "interactions.csv").write_text("user_id,item_id,timestamp\n"), "incomplete plain dataset: missing items.jsonl"),
    (lambda d: None, "no such folder"),
])  # fmt: skip
def test_a_wrong_folder_exits_with_a_short_message(env, tmp_path, make, message):
    folder = tmp_path / "data"
    if message != "no such folder":
        folder.mkdir()
        make(folder)
    res = train(["--data", str(folder), "--model", "zero-training", "--run-dir", str(tmp_path / "run")], env)
    assert res.exit_code == 2 and isinstance(res.exception, SystemExit), res.output
    assert message in res.output and "Traceback" not in res.output and len(res.output.splitlines()) <= 3
    assert not (tmp_path / "run").exists()


def test_a_failed_run_leaves_no_run_folder(datasets, tmp_path):
    from config.settings import Settings
    from trainer.offline import run_train

    s = Settings(data_dir=tmp_path / "d")
    s = s.model_copy(update={"encoder": s.encoder.model_copy(update={"model": str(tmp_path / "no-such-model")})})
    with pytest.raises(Exception):
        run_train(s, str(datasets["plain"]), tmp_path / "run", model="zero-training", progress=False)
    assert not (tmp_path / "run").exists()
