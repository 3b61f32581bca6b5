"""store/vectors.py on a real milvus-lite file AND a real Milvus server (tests/milvus_server.py):
upserts, deletes, search with exclusions; the one-process-per-file design of milvus-lite (host +
guests over loopback gRPC, re-opening after the host is killed); a server restart (collections
released until loaded)."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import store.vectors as vectors_module
from store.vectors import CONTENT, VectorStore, items_collection
from tests.milvus_server import drop_all

ODD_IDS = ['a"quote', "back\\slash", "ünï-ç", "space d", "x" * 128]


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(params=["lite", "server"])
def store(request, tmp_path):
    """An empty store: a milvus-lite file, or the test run's Milvus server emptied."""
    uri = tmp_path / "vectors.db"
    if request.param == "server":
        uri = request.getfixturevalue("milvus_server").uri
        drop_all(uri)
    with VectorStore(uri) as s:
        yield s


def test_upsert_replaces_and_delete_removes(store):
    store.ensure_collection(CONTENT, 8)
    vecs = unit(np.random.default_rng(0).standard_normal((5, 8)))
    ids = [f"i{k}" for k in range(5)]
    store.upsert(CONTENT, ids, vecs, text_hashes=["h"] * 5, model_id="m", event_times=[1e9 + k for k in range(5)])
    store.upsert(CONTENT, ids[:2], vecs[:2], text_hashes=["h2"] * 2, model_id="m", truncated=[True, False])
    assert store.count(CONTENT) == 5
    rows = store.get(CONTENT, ids + ["absent"], with_vectors=True)
    assert set(rows) == set(ids)
    assert rows["i0"].text_hash == "h2" and rows["i0"].truncated and not rows["i1"].truncated
    assert rows["i4"].event_time == 1e9 + 4 and rows["i4"].model_id == "m"
    np.testing.assert_allclose(rows["i3"].vector, vecs[3], rtol=1e-6)
    store.delete(CONTENT, ["i1", "absent"])
    assert store.count(CONTENT) == 4 and "i1" not in store.get(CONTENT, ["i1"])
    assert sorted(store.ids(CONTENT)) == ["i0", "i2", "i3", "i4"]


def test_search_is_inner_product_top_k_with_exclusions(store):
    name = items_collection("v000001")
    store.ensure_collection(name, 4)
    vecs = np.eye(4, dtype=np.float32)[[0, 0, 1, 2, 3]] * np.array([[1.0], [0.5], [1], [1], [1]], np.float32)
    store.upsert(name, ["a", "b", "c", "d", "e"], vecs)
    q = np.array([1.0, 0.2, 0.0, 0.0], np.float32)
    (hits,) = store.search(name, q, k=3)
    assert [h[0] for h in hits] == ["a", "b", "c"]
    assert hits[0][1] == pytest.approx(1.0) and hits[1][1] == pytest.approx(0.5)
    (hits,) = store.search(name, q, k=2, exclude=["a"])
    assert [h[0] for h in hits] == ["b", "c"]
    two = store.search(name, np.stack([q, np.array([0, 0, 0, 1], np.float32)]), k=1)
    assert [h[0][0] for h in two] == ["a", "e"]


def test_odd_ids_round_trip(store, monkeypatch):
    monkeypatch.setattr(vectors_module, "PAGE", 2)  # exercise paging
    store.ensure_collection(CONTENT, 3)
    store.upsert(CONTENT, ODD_IDS, unit(np.ones((len(ODD_IDS), 3))))
    assert set(store.get(CONTENT, ODD_IDS)) == set(ODD_IDS)
    assert sorted(store.ids(CONTENT)) == sorted(ODD_IDS)
    (hits,) = store.search(CONTENT, np.ones(3), k=10, exclude=ODD_IDS[:2])
    assert {h[0] for h in hits} == set(ODD_IDS[2:])
    store.delete(CONTENT, ODD_IDS[:2])
    assert store.count(CONTENT) == len(ODD_IDS) - 2


def test_scan_pages_through_every_row(store, monkeypatch):
    monkeypatch.setattr(vectors_module, "SCAN_BATCH", 3)  # several pages
    ids = [f"s{k:02d}" for k in range(10)]
    store.ensure_collection(CONTENT, 4)
    store.upsert(CONTENT, ids, unit(np.random.default_rng(1).standard_normal((10, 4))), text_hashes=["h"] * 10)
    rows = list(store.scan(CONTENT, ["text_hash", "vector"]))
    assert sorted(r["item_id"] for r in rows) == ids and {r["text_hash"] for r in rows} == {"h"}
    assert all(len(r["vector"]) == 4 for r in rows)
    assert sorted(r["item_id"] for r in store.scan(CONTENT, [], filter='text_hash == "h"')) == ids


def test_another_dimension_is_refused(store):
    store.ensure_collection(CONTENT, 8)
    store.ensure_collection(CONTENT, 8)  # idempotent
    with VectorStore(store.uri) as second:  # a guest of the fixture's store (same process), or a client
        assert second.mode == {"host": "guest", "server": "server"}[store.mode]
        with pytest.raises(ValueError, match="dim 8, not 4"):
            second.ensure_collection(CONTENT, 4)


HOST = textwrap.dedent("""
    import sys, numpy as np
    from store.vectors import VectorStore, CONTENT
    s = VectorStore(sys.argv[1]).open()
    s.ensure_collection(CONTENT, 4)
    s.upsert(CONTENT, ["from-host"], np.ones((1, 4), np.float32))
    print(s.mode, flush=True)
    for line in sys.stdin:  # commands from the test: "count" or "get <id>"
        cmd = line.split()
        out = s.count(CONTENT) if cmd[0] == "count" else sorted(s.get(CONTENT, cmd[1:]))
        print(out, flush=True)
""")


def test_a_host_publishes_its_endpoint_only_once_its_collections_are_loaded(tmp_path, monkeypatch):
    """A guest that read ENDPOINT while a new host was still loading its collections found them
    released ('collection not loaded': seen once in test_encoder_worker's SIGKILL test)."""
    path = tmp_path / "vectors.db"
    with VectorStore(path) as s:
        s.ensure_collection(CONTENT, 4)
        s.upsert(CONTENT, ["a"], np.ones((1, 4), np.float32))
    published_while_loading = []
    load = VectorStore._load_released

    def watched(self):
        published_while_loading.append((path / "ENDPOINT").exists())
        load(self)

    monkeypatch.setattr(VectorStore, "_load_released", watched)
    with VectorStore(path) as s:
        assert s.mode == "host" and published_while_loading == [False] and s.count(CONTENT) == 1
        assert json.loads((path / "ENDPOINT").read_text())["pid"] == os.getpid()


@contextlib.contextmanager
def host_process(path):
    """A process that hosts the milvus-lite path (HOST above), killed at the end if still alive."""
    host = subprocess.Popen([sys.executable, "-c", HOST, str(path)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert host.stdout.readline().strip() == "host"
        yield host
    finally:
        if host.poll() is None:
            host.kill()
        host.wait()


def test_a_guest_loads_a_collection_its_host_holds_released(tmp_path):
    path = tmp_path / "vectors.db"
    with host_process(path):
        guest = VectorStore(path, wait_s=10).open()
        guest._client.release_collection(CONTENT)
        assert "from-host" in guest.get(CONTENT, ["from-host"])  # loaded, then repeated
        guest.close()


def test_second_process_is_a_guest_and_takes_over_after_a_kill(tmp_path):
    path = tmp_path / "vectors.db"
    with host_process(path) as host:
        guest = VectorStore(path, wait_s=10).open()
        assert guest.mode == "guest"
        assert "from-host" in guest.get(CONTENT, ["from-host"])
        guest.upsert(CONTENT, ["from-guest"], np.ones((1, 4), np.float32))
        host.stdin.write("get from-guest\n")
        host.stdin.flush()
        assert host.stdout.readline().strip() == "['from-guest']"
        assert json.loads((path / "ENDPOINT").read_text())["pid"] == host.pid

        host.send_signal(signal.SIGKILL)
        host.wait()
        # The guest's next call finds the host gone, re-opens (now as host), and nothing was lost.
        assert set(guest.get(CONTENT, ["from-host", "from-guest"])) == {"from-host", "from-guest"}
        assert guest.mode == "host" and guest.count(CONTENT) == 2
        guest.close()
        assert not (path / "ENDPOINT").exists()


def search_ids(store: VectorStore, name: str, q: np.ndarray) -> list[str]:
    (hits,) = store.search(name, q, k=3)
    return [h[0] for h in hits]


def test_server_restart_releases_collections_and_the_store_loads_them(milvus_server):
    drop_all(milvus_server.uri)
    vecs = np.eye(3, 4, dtype=np.float32)
    q = np.array([1.0, 0.5, 0.0, 0.0], np.float32)
    with VectorStore(milvus_server.uri) as before:
        before.ensure_collection(CONTENT, 4)
        before.ensure_collection(items_collection("v000001"), 4)
        before.upsert(CONTENT, ["a", "b", "c"], vecs)
        before.upsert(items_collection("v000001"), ["x"], vecs[:1])
        assert search_ids(before, CONTENT, q) == ["a", "b", "c"]
        milvus_server.restart()
        # A store open across the restart re-connects, finds CONTENT released, loads it, repeats.
        assert search_ids(before, CONTENT, q) == ["a", "b", "c"]
    milvus_server.restart()
    with VectorStore(milvus_server.uri) as after:  # opened after a restart: loads what is released
        assert after.mode == "server"
        assert search_ids(after, items_collection("v000001"), q) == ["x"]
        assert search_ids(after, CONTENT, q) == ["a", "b", "c"] and after.count(CONTENT) == 3


def test_an_unreachable_server_is_a_clear_error_after_the_wait():
    from deploy.broker import free_port
    from store.vectors import StoreUnavailable

    with pytest.raises(StoreUnavailable, match="unreachable for 1.0s"):
        VectorStore(f"http://127.0.0.1:{free_port()}", wait_s=1.0).open()


def test_a_path_whose_lock_is_held_by_no_host_is_a_clear_error_after_the_wait(tmp_path):
    """The lock taken (here by a bare flock) and no live host named in ENDPOINT: retried for
    wait_s, then StoreUnavailable; once the lock is free the next open hosts the path."""
    import fcntl
    import json
    import time

    from store.vectors import ENDPOINT_FILE, StoreUnavailable

    path = tmp_path / "vectors.db"
    VectorStore(str(path)).open().close()  # a milvus-lite directory with its LOCK file
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (path / ENDPOINT_FILE).write_text(json.dumps({"uri": "http://127.0.0.1:1", "pid": dead.pid}))
    with open(path / "LOCK", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        t0 = time.monotonic()
        with pytest.raises(StoreUnavailable, match="no host answered within 1.0s"):
            VectorStore(str(path), wait_s=1.0).open()
        assert time.monotonic() - t0 >= 1.0
    with VectorStore(str(path), wait_s=1.0) as store:
        assert store.mode == "host"


def test_store_imports_no_model_code():
    code = "import sys, store.vectors, store.registry; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
