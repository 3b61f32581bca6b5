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


def test_a_locked_cache_is_retried_then_read_only_and_taken_once_released(tmp_path):
    """While another holder keeps the lock, an open retries for lock_wait_s, then serves reads
    read-only and skips puts; a lock released during the wait is taken (read-write)."""
    import threading
    import time

    v = np.ones((1, 3), dtype=np.float32)
    holder = EmbeddingCache(tmp_path / "cache")
    holder.put_many("m", "t", ["a"], v)
    with holder:  # holds the lock
        t0 = time.monotonic()
        other = EmbeddingCache(tmp_path / "cache", lock_wait_s=0.6)
        assert np.array_equal(other.get_many("m", "t", ["a"])[0], v[0]) and other._read_only
        assert time.monotonic() - t0 >= 0.6  # it waited before giving up the write access
        other.put_many("m", "t", ["b"], v)  # skipped, with a warning
        releaser = threading.Timer(0.5, holder.__exit__, (None, None, None))
        releaser.start()
        waiting = EmbeddingCache(tmp_path / "cache", lock_wait_s=60)
        waiting.put_many("m", "t", ["c"], v)  # took the lock once it was released
        releaser.join()
    assert not waiting._read_only and waiting.get_many("m", "t", ["b", "c"])[0] is None
    assert waiting.get_many("m", "t", ["c"])[0] is not None
