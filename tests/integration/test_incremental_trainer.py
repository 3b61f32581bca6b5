"""The incremental trainer on a real state store and a real milvus-lite file: windows, prequential
metrics, publishing, restart without retraining, and a SIGKILL in the middle of a publish."""

import os
import random
import signal
import subprocess
import sys

import numpy as np
import pytest

from config import load_settings
from deploy.stack import settings_env
from config.settings import RegistrySettings
from store.registry import ModelRegistry, open_registry
from store.state import Entry, PartitionState
from store.vectors import CONTENT, VectorStore
from tests.integration.helpers import wait_for
from trainer.incremental import IncrementalTrainer, read_windows

pytestmark = pytest.mark.integration

T0 = 1_700_000_000.0
N_ITEMS, D_RAW = 60, 24


def make_settings(tmp_path, **trainer):
    return load_settings(
        data_dir=tmp_path / "data",
        model={"d_model": 16, "n_heads": 2, "n_layers": 1, "d_out": 16, "batch_size": 32, "seed": 1},
        trainer={"window_s": 60, "steps_per_window": 5, "promote_margin": 1.0, **trainer},
        state={"slot_s": 10},
    )


def write_events(settings, users: range, start: float, end: float, rng: random.Random, offset0: int = 0) -> int:
    """Users browse item 'clusters' (u % 6) so there is something to learn; one partition."""
    part = PartitionState(settings.state_path / f"{settings.topics.interactions}-p0")
    rows, off = [], part.next_offset
    for u in users:
        t = start + rng.random() * 5
        while t < end:
            item = (u % 6) * 10 + rng.randrange(10)
            rows.append((off, Entry(t, f"item{item}", "view", f"{u}-{t:.3f}"), f"user{u}"))
            off += 1
            t += rng.uniform(5, 20)
    rows.sort(key=lambda r: r[1].event_time)
    rows = [(offset0 + i, e, u) for i, (_, e, u) in enumerate(rows)]
    part.apply(rows, 50, 3600, settings.state.slot_s)
    part.close()
    return offset0 + len(rows)


def write_content(settings) -> None:
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(6, D_RAW))
    vecs = np.stack([centers[i // 10] + 0.3 * rng.normal(size=D_RAW) for i in range(N_ITEMS)]) + 2.0
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    with VectorStore(settings.vector_uri).open() as store:
        store.ensure_collection(CONTENT, D_RAW)
        store.upsert(CONTENT, [f"item{i}" for i in range(N_ITEMS)], vecs)


def test_windows_are_tested_trained_published_and_resumed(tmp_path):
    s = make_settings(tmp_path)
    rng = random.Random(0)
    write_content(s)
    n = write_events(s, range(40), T0, T0 + 200, rng)  # windows close at +60, +120, +180
    with VectorStore(s.vector_uri).open() as store:
        trainer = IncrementalTrainer(s, store)
        results = list(trainer.run(poll_s=0.1, idle_exit_s=1.0))
        assert [r.window for r in results] == [0, 1, 2]
        assert results[0].prequential == {} and results[1].prequential["ndcg@10"] > 0
        assert all(r.promoted and r.events > 0 for r in results)
        registry = ModelRegistry(s.registry_path)
        current = registry.current()
        assert current.name == results[-1].version and current.published
        assert store.count(current.collection) == N_ITEMS
        assert current.config["window"]["end"] == T0 + 180

        # a restarted trainer resumes after the last window and retrains nothing
        again = IncrementalTrainer(s, store)
        assert list(again.run(poll_s=0.1, idle_exit_s=1.0)) == []
        write_events(s, range(40), T0 + 200, T0 + 260, rng, offset0=n)
        more = list(again.run(poll_s=0.1, idle_exit_s=1.0))
        assert [r.window for r in more] == [3]
    rows = read_windows(s.data_dir / "trainer" / "windows.jsonl")
    assert [r["window"] for r in rows] == [0, 1, 2, 3]


def test_a_version_worse_on_the_holdout_is_kept_but_not_promoted(tmp_path):
    s = make_settings(tmp_path, promote_margin=-1.0)  # any candidate counts as a regression
    write_content(s)
    write_events(s, range(30), T0, T0 + 130, random.Random(1))
    with VectorStore(s.vector_uri).open() as store:
        results = list(IncrementalTrainer(s, store).run(poll_s=0.1, idle_exit_s=1.0))
    assert results[0].promoted and not results[1].promoted
    registry = ModelRegistry(s.registry_path)
    assert registry.current().name == results[0].version
    assert results[1].version in [v.name for v in registry.versions()]


@pytest.mark.parametrize("backend", ["folder", "s3"])
def test_a_kill_mid_publish_leaves_serving_on_the_previous_version(tmp_path, backend, request):
    s = make_settings(tmp_path)
    if backend == "s3":  # the registry on the local S3 server (tests/s3_server.py): the trainer uploads
        s3 = request.getfixturevalue("s3_server").registry(request.getfixturevalue("s3_bucket"))
        s = s.model_copy(update={"registry": RegistrySettings(**s3)})
    write_content(s)
    write_events(s, range(30), T0, T0 + 70, random.Random(2))  # one window closes
    with VectorStore(s.vector_uri).open() as store:
        first = list(IncrementalTrainer(s, store).run(poll_s=0.1, idle_exit_s=1.0))
    assert len(first) == 1
    write_events(s, range(30), T0 + 70, T0 + 140, random.Random(3), offset0=10_000)

    paused = s.model_copy(update={"trainer": s.trainer.model_copy(update={"pause_at": "mid_vectors", "pause_s": 60})})
    log = tmp_path / "trainer.log"
    env = {**os.environ, **settings_env(paused)}
    proc = subprocess.Popen([sys.executable, "-m", "deploy.cli", "trainer", "--idle-exit-s", "5"],
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT, env=env, start_new_session=True)  # fmt: skip
    try:
        wait_for(lambda: "fault injection" in log.read_text(), timeout_s=120)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    registry = open_registry(s)
    assert registry.current().name == first[0].version  # serving never saw the half-written version
    assert not registry.versions()[-1].published

    with VectorStore(s.vector_uri).open() as store:
        trainer = IncrementalTrainer(s, store)
        resumed = list(trainer.run(poll_s=0.1, idle_exit_s=1.0))
        assert [r.window for r in resumed] == [1]  # the crashed window is trained again, once
        current = registry.current()
        assert current.name == resumed[0].version and store.count(current.collection) == N_ITEMS
        assert all(v.published for v in registry.versions())
