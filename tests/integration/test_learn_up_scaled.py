"""`learn up` with two processes per stage: partitions spread over the workers, nothing lost when one
of each is SIGKILLed mid-stream (supervisord starts it again) and a third interaction worker joins.

Two encoder workers share the milvus-lite file (one hosts it, the other is its guest: store/vectors.py),
two interaction workers open only their own partitions' databases, two API replicas read the state as
RocksDB secondaries. At the end every user's stored sequence equals the one computed from the events
(test_exactly_once's comparison), every distinct event was applied once, every item is in the vector
store once, and both API replicas serve each user's newest items.
"""

import os
import random
import subprocess
import sys
import threading
import time

import httpx
import psutil
import pytest

from deploy.broker import free_port
from deploy.stack import Stack
from deploy.supervisor import down as stack_down
from deploy.supervisor import health, stack_programs, stack_settings, worker_ports
from deploy.supervisor import up as stack_up
from store.state import StateReader
from store.vectors import CONTENT, VectorStore
from streams.producer import EventProducer
from streams.schemas import ItemRecord
from tests.integration.helpers import state_settled, wait_for
from tests.integration.test_exactly_once import expected_state, make_events
from tests.integration.test_learn_up import alive

pytestmark = pytest.mark.integration


def free_block(n: int) -> int:
    """A port p with p .. p + n - 1 all free (the workers' web ports)."""
    import socket

    while True:
        p = free_port()
        if p + n > 65535:
            continue
        ok = True
        for q in range(p + 1, p + n):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", q))
                except OSError:
                    ok = False
                    break
        if ok:
            return p


def open_partitions(pid: int, state_dir) -> set[str]:
    """The partition databases a process holds open (RocksDB keeps each one's LOCK file open)."""
    files = psutil.Process(pid).open_files()
    return {os.path.basename(os.path.dirname(f.path)) for f in files
            if f.path.endswith("/LOCK") and f.path.startswith(str(state_dir))}  # fmt: skip


def test_two_workers_per_stage_lose_nothing_when_killed_and_joined(settings):
    rng = random.Random(16)
    s = settings.model_copy(update={
        # a memory-engine Tansu of its own (see test_exactly_once: concurrent produces to one partition)
        "broker": settings.broker.model_copy(update={"storage": "memory", "port": free_port(), "bootstrap_servers": ""}),
        "worker": settings.worker.model_copy(update={"web_port": free_block(4)}),
        "serving": settings.serving.model_copy(update={"port": free_block(2)}),
        "encoder": settings.encoder.model_copy(update={"model": "minilm"}),
        "state": settings.state.model_copy(update={"max_seq_len": 64}),
        "processes": settings.processes.model_copy(update={"encoder_workers": 2, "interaction_workers": 2,
                                                            "api_replicas": 2}),
    })  # fmt: skip
    run_dir = s.data_dir / "run"
    events = make_events(n_users=80, per_user=25, rng=rng)
    items = [ItemRecord(item_id=f"item-{i}", title=f"Glass beaker {i} ml", brand="Pyrex", categories=["Labware"],
                        event_time=time.time() - 60) for i in range(120)]  # fmt: skip
    produced = threading.Event()

    def produce_slowly():  # ~2k events and 120 items over ~10 s, so the kills land mid-stream
        with EventProducer(s) as producer:
            for i in range(0, len(events), 100):
                for it in items[i // 100 * 6 : i // 100 * 6 + 6]:
                    producer.send_item(it)
                for ev in events[i : i + 100]:
                    producer.send_interaction(ev)
                producer.flush()
                time.sleep(0.5)
            for it in items[len(events) // 100 * 6 + 6 :]:
                producer.send_item(it)
            producer.flush()
        produced.set()

    names = [p.name for p in stack_programs(stack_settings(s))]
    assert names == ["broker", "encoder", "encoder-1", "interactions", "interactions-1", "trainer", "api", "api-1"]
    extra = Stack(stack_settings(s), s.data_dir / "extra")
    try:
        up = stack_up(s, run_dir)
        assert up.started == names
        pids = {h.name: h.pid for h in health(run_dir)}
        # the partitions are spread over the interaction workers, each opening only its own databases
        n = s.topics.partitions
        held = wait_for(lambda: (h := {w: open_partitions(pids[w], s.state_path) for w in ("interactions", "interactions-1")})
                        and all(h.values()) and sum(map(len, h.values())) == n and h, timeout_s=120)  # fmt: skip
        assert held["interactions"].isdisjoint(held["interactions-1"])

        thread = threading.Thread(target=produce_slowly)
        thread.start()
        time.sleep(3.0)
        for victim in ("interactions-1", "encoder-1"):  # SIGKILL mid-stream; supervisord starts it again
            os.kill(pids[victim], 9)
            time.sleep(rng.uniform(0.5, 1.5))
        # a third interaction worker joins the group (not under supervisord: started by hand)
        extra.start_worker("interactions-extra", free_port(), module="streams.interaction_worker")
        thread.join()
        assert produced.is_set()
        wait_for(lambda: all(h.pid not in (None, pids[h.name]) and h.state == "RUNNING"
                             for h in health(run_dir) if h.name in ("interactions-1", "encoder-1")), timeout_s=120)  # fmt: skip

        seqs, counts = expected_state(events, s.state.max_seq_len, s.state.allowed_lateness_s)
        reader = StateReader(s.state_path, s.topics.interactions)

        def stored():
            reader.catch_up()
            return reader.sequences()

        wait_for(state_settled(reader, len(events)), timeout_s=180)
        wait_for(lambda: stored() == seqs, timeout_s=120)
        time.sleep(1.0)  # anything applied twice would show up now
        assert stored() == seqs
        assert reader.counters()["applied"] == counts["applied"] == len({ev.event_id for ev in events})
        reader.close()

        with VectorStore(s.vector_uri) as store:  # a guest of whichever encoder worker hosts the file
            wait_for(lambda: store.count(CONTENT) >= len(items), timeout_s=300)
            ids = store.ids(CONTENT)
        assert sorted(ids) == sorted(it.item_id for it in items)  # every item, each once

        # both API replicas serve each user's newest items from the state (no model yet: popular fallback)
        for port in (s.serving.port, s.serving.port + 1):
            for user in rng.sample(sorted(seqs), 5):
                r = httpx.get(f"http://127.0.0.1:{port}/users/{user}/recommendations",
                              params={"fallback": "popular"}, timeout=30)  # fmt: skip
                assert r.status_code == 200, r.text
                assert [x["item_id"] for x in r.json()["recent_items"]] == [e[1] for e in reversed(seqs[user][-5:])]

        env = {**os.environ, "LEARN_DATA_DIR": str(s.data_dir), "COLUMNS": "400"}  # rich: whole log paths
        out = subprocess.run([sys.executable, "-m", "deploy.cli", "status"], env=env, capture_output=True,
                             text=True, timeout=120)  # fmt: skip
        assert out.returncode == 0, out.stderr
        for name in names:
            assert f"{name}.log" in out.stdout, name  # every instance, with its own log
        assert set(worker_ports(stack_settings(s))) == {"encoder", "encoder-1", "interactions", "interactions-1"}
    finally:
        extra.stop_all()
        stack_down(run_dir)
    assert health(run_dir) == []


def test_learn_up_runs_the_milvus_server_the_encoder_workers_write_to(settings):
    """processes.milvus_server: `learn up` runs the Milvus server as a program, both encoder workers
    write to it through vectors.uri, `learn down` stops it (SIGINT) with everything else."""
    from deploy.milvus_server import unavailable_reason

    reason = unavailable_reason()
    if reason:
        pytest.skip(f"Milvus server unavailable: {reason}")
    s = settings.model_copy(update={
        "broker": settings.broker.model_copy(update={"storage": "memory", "port": free_port(), "bootstrap_servers": ""}),
        "worker": settings.worker.model_copy(update={"web_port": free_block(4)}),
        "serving": settings.serving.model_copy(update={"port": free_port()}),
        "encoder": settings.encoder.model_copy(update={"model": "minilm"}),
        "processes": settings.processes.model_copy(update={"encoder_workers": 2, "milvus_server": True,
                                                            "milvus_port": free_port()}),
    })  # fmt: skip
    run_dir = s.data_dir / "run"
    items = [ItemRecord(item_id=f"m-{i}", title=f"Beaker {i}", event_time=time.time() - 60) for i in range(40)]
    pids: list[int] = []
    try:
        up = stack_up(s, run_dir, ready_timeout_s=400)
        assert up.started[:3] == ["broker", "milvus", "encoder"] and "encoder-1" in up.started
        uri = stack_settings(s).vectors.uri
        assert uri == f"http://127.0.0.1:{s.processes.milvus_port}"
        pids = [h.pid for h in health(run_dir) if h.pid]
        pids += [c.pid for p in pids for c in psutil.Process(p).children(recursive=True)]
        with EventProducer(s) as producer:
            for it in items:
                producer.send_item(it)
            producer.flush()
        with VectorStore(uri) as store:
            wait_for(lambda: CONTENT in store.collections() and store.count(CONTENT) >= len(items), timeout_s=300)
            assert sorted(store.ids(CONTENT)) == sorted(it.item_id for it in items)
    finally:
        stopped = stack_down(run_dir)
    assert "milvus" in {name for name, _ in stopped}
    wait_for(lambda: not [p for p in pids if alive(p)], timeout_s=60)
