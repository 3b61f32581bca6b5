"""Data-parallel training's pure parts (trainer/distributed.py) and `learn train --nproc`'s launcher
(deploy/torchrun.py), without starting torchrun."""

import random

import pytest
import torch
from typer.testing import CliRunner

from deploy import torchrun
from deploy.cli import app
from trainer import distributed
from trainer.distributed import DistContext, context_from_env


def test_the_context_comes_from_torchruns_environment():
    assert context_from_env({}) == DistContext(0, 1, 0) and not context_from_env({}).active
    ctx = context_from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert ctx == DistContext(3, 4, 1) and ctx.active and not ctx.is_main
    with pytest.raises(ValueError, match="inconsistent"):
        context_from_env({"RANK": "2", "WORLD_SIZE": "2"})


def test_shards_are_disjoint_cover_the_batch_and_interleave_back():
    batch = list(range(11))
    parts = [distributed.shard(batch, DistContext(r, 3)) for r in range(3)]
    assert sorted(x for p in parts for x in p) == batch and sum(map(len, parts)) == len(batch)
    assert distributed.interleave([torch.tensor(p) for p in parts], len(batch)).tolist() == batch
    assert distributed.shard(batch, distributed.SINGLE) == batch


def test_share_weights_make_the_ranks_average_the_whole_batch_mean():
    rng = random.Random(0)
    seqs = [[0] * rng.randrange(2, 70) for _ in range(9)]
    max_len, world = 50, 2
    assert distributed.anchors([[1, 2, 3], [4] * 80], max_len) == 2 + 49
    total = distributed.anchors(seqs, max_len)
    weights = [distributed.shard_weight(distributed.anchors(distributed.shard(seqs, DistContext(r, world)), max_len),
                                        total, world) for r in range(world)]  # fmt: skip
    # DDP averages the gradients: sum_r (w_r x mean_r) / world == the mean over all anchors
    assert sum(weights) / world == pytest.approx(1.0) and weights[0] != weights[1]
    assert distributed.shard_weight(7, 7, 1) == 1.0


def test_threads_per_rank_never_oversubscribe():
    assert distributed.threads_per_rank(2, cores=2) == 1 and distributed.threads_per_rank(1, cores=2) == 2
    assert distributed.threads_per_rank(4, cores=2) == 1


def test_train_args_and_the_namespaced_torchrun_command():
    args = torchrun.train_args({"--seed": 7, "--whiten": False, "--progress": True, "--users": None})
    assert args == ["--seed", "7", "--no-whiten", "--progress"]
    cmd = torchrun.torchrun_command(2, args, python="py", euid=1000)
    assert cmd[:4] == ["unshare", "-r", "-n", "--"] and "ip link set lo up" in cmd[6]
    assert cmd[cmd.index("py"):] == ["py", "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                                     "-m", "deploy.cli", "train", *args]  # fmt: skip
    assert torchrun.unshare_command(euid=0) == ["unshare", "-n"]


def test_without_unshare_nproc_fails_with_a_clear_message_and_starts_nothing(monkeypatch, tmp_path):
    real_which = torchrun.shutil.which
    monkeypatch.setattr(torchrun.shutil, "which", lambda t: None if t == "unshare" else real_which(t))
    started = []
    monkeypatch.setattr(torchrun.subprocess, "run", lambda *a, **k: started.append(a))
    assert "unshare not found" in torchrun.unavailable_reason()
    res = CliRunner().invoke(app, ["train", "--nproc", "2", "--run-dir", str(tmp_path / "run")])
    assert res.exit_code == 2 and "unshare not found" in res.output and "private network namespace" in res.output
    assert "Traceback" not in res.output and not started and not (tmp_path / "run").exists()


def test_a_namespace_the_kernel_refuses_is_reported(monkeypatch, tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "unshare").write_text("#!/bin/sh\necho 'unshare: unshare failed: Operation not permitted' >&2\nexit 1\n")
    (fake / "unshare").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{torchrun.os.environ['PATH']}")
    reason = torchrun.unavailable_reason(euid=1000)
    assert "cannot create a private network namespace" in reason and "Operation not permitted" in reason
    with pytest.raises(torchrun.TorchrunError, match="Operation not permitted"):
        torchrun.launch(2, [], threads=1)


def test_nproc_needs_a_model_to_train():
    res = CliRunner().invoke(app, ["train", "--nproc", "2", "--model", "popularity"])
    assert res.exit_code == 2 and "nothing to train" in res.output
