import sys

import numpy as np

from store.embedding_cache import EmbeddingCache, cache_key


def test_store_imports_no_torch():
    assert "store.embedding_cache" in sys.modules
    import store.embedding_cache as m

    assert "torch" not in m.__dict__


def test_get_put_round_trip_and_keys(tmp_path):
    c = EmbeddingCache(tmp_path / "cache")
    assert c.get_many("m", "t", ["a", "b"]) == [None, None]
    v = np.arange(6, dtype=np.float32).reshape(2, 3)
    c.put_many("m", "t", ["a", "b"], v)
    got = c.get_many("m", "t", ["b", "x", "a"])
    assert np.array_equal(got[0], v[1]) and got[1] is None and np.array_equal(got[2], v[0])
    assert got[0].dtype == np.float32
    # another model or template is another namespace
    assert c.get_many("m2", "t", ["a"]) == [None]
    assert c.get_many("m", "t2", ["a"]) == [None]
    assert cache_key("m", "t", "a") != cache_key("m", "t", "b")
    assert len(c) == 2
    # persists across opens
    assert np.array_equal(EmbeddingCache(tmp_path / "cache").get_many("m", "t", ["a"])[0], v[0])


def test_writing_commits_each_put_and_releases_the_lock(tmp_path):
    """Inside writing() every put is visible to another reader at once (committed), and the database
    is not held past hold_s, so a second writer can open it between puts."""
    from rocksdict import AccessType, Options, Rdict

    c = EmbeddingCache(tmp_path / "cache")
    v = np.ones((1, 3), dtype=np.float32)
    with c.writing(hold_s=0.0):
        c.put_many("m", "t", ["a"], v)
        assert c._db is None  # hold_s 0: closed after every put
        other = EmbeddingCache(tmp_path / "cache", lock_wait_s=0.5)
        other.put_many("m", "t", ["b"], v)  # took the lock: not served read-only
        assert not other._read_only
    with c.writing(hold_s=60.0):
        c.put_many("m", "t", ["c"], v)
        assert c._db is not None  # held between puts
        ro = Rdict(str(tmp_path / "cache"), options=Options(raw_mode=True), access_type=AccessType.read_only())
        assert ro.get(cache_key("m", "t", "c")) is not None  # committed, not waiting for the block's end
        ro.close()
    assert c._db is None and len(c) == 3


def test_a_locked_cache_never_waits_keeps_puts_pending_and_writes_them_later(tmp_path):
    """While another process holds the lock (two encoder workers share the directory), reads are
    served read-only at once and puts return at once, kept in memory (this instance reads them back);
    the next put or flush that finds the lock free writes them all."""
    import threading
    import time

    v = np.ones((1, 3), dtype=np.float32)
    holder = EmbeddingCache(tmp_path / "cache")
    holder.put_many("m", "t", ["a"], v)
    with holder:  # holds the lock
        t0 = time.monotonic()
        other = EmbeddingCache(tmp_path / "cache", lock_wait_s=60)
        assert np.array_equal(other.get_many("m", "t", ["a"])[0], v[0]) and other._read_only
        with other.writing():
            other.put_many("m", "t", ["b"], v)  # kept pending, not skipped
        assert time.monotonic() - t0 < 5  # neither call waited for the lock (it is held for the whole block)
        assert other.pending == 1 and other.get_many("m", "t", ["b", "a"])[0] is not None
        assert EmbeddingCache(tmp_path / "cache").get_many("m", "t", ["b"]) == [None]  # not written yet
    other.put_many("m", "t", ["c"], v)  # the lock is free: b and c are written
    assert other.pending == 0
    fresh = EmbeddingCache(tmp_path / "cache")
    assert all(x is not None for x in fresh.get_many("m", "t", ["a", "b", "c"]))
    # flush waits for a lock released during its wait
    with holder:
        other.put_many("m", "t", ["d"], v)
        assert other.pending == 1
        releaser = threading.Timer(0.5, holder.__exit__, (None, None, None))
        releaser.start()
        assert other.flush(wait_s=60)
        releaser.join()
    assert other.pending == 0 and fresh.get_many("m", "t", ["d"])[0] is not None


def test_pending_puts_are_bounded(tmp_path):
    v = np.ones((5, 3), dtype=np.float32)
    holder = EmbeddingCache(tmp_path / "cache")
    holder.put_many("m", "t", ["a"], v[:1])
    with holder:
        other = EmbeddingCache(tmp_path / "cache", max_pending=3)
        other.put_many("m", "t", list("vwxyz"), v)
        assert other.pending == 3 and other.get_many("m", "t", ["v", "z"])[0] is None  # the oldest dropped
        assert not other.flush(wait_s=0.3)  # still locked: reported, not hidden
