"""The content-embedding cache: (model id, template, sha256(text)) -> float32 vector bytes, in rocksdict.

The same text is never encoded twice by the same model under the same template, across runs and
processes. Values are raw little-endian float32 bytes (no pickle). This module imports no torch and no
model code, so any process (the API, a worker) can read it cheaply.

RocksDB allows one writer process per directory, and N encoder workers on one machine share the
directory: the database is opened only for the duration of a `get_many` / `put_many` call (or a
`with cache:` block), and no call ever waits for another process's lock (an encoder that waited
would leave its core idle: two workers sharing the cache scaled 1.23x, issue 16). An open that
finds the lock held is served read-only at once (it reads what is committed), and a put that cannot
take the lock keeps its vectors in memory (this process's reads see them) until a later put, or
`flush` (the worker's close), takes it; past `max_pending` vectors the oldest are dropped, with a
warning (a dropped vector is encoded again the next time: the cache is derived data).
A long encode writes inside `with cache.writing():` (encoder/content.py): every `put_many` is
committed at once when the lock is free (one write batch in RocksDB's log, which a killed process
keeps), while the database stays open between puts for at most `hold_s` (an open costs ~60 ms, more
than a small model's forward pass), then is closed so another process can take the lock.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from rocksdict import AccessType, Options, Rdict, WriteBatch
from tenacity import Retrying, before_sleep_log, retry_if_result, stop_after_delay, wait_fixed

log = logging.getLogger(__name__)


def cache_key(model_id: str, template: str, text: str) -> bytes:
    """model id, then a short hash of the template, then sha256 of the text."""
    t = hashlib.sha256(template.encode()).hexdigest()[:16]
    h = hashlib.sha256(text.encode()).hexdigest()
    return f"{model_id}\x00{t}\x00{h}".encode()


class EmbeddingCache:
    def __init__(self, path: str | Path, lock_wait_s: float = 10.0, max_pending: int = 20_000):
        self.path = Path(path)
        self.lock_wait_s = lock_wait_s  # how long `flush` (and only it) waits for another process's lock
        self.max_pending = max_pending
        self._db: Rdict | None = None
        self._read_only = False
        self._depth = 0
        self._hold_s = 0.0  # inside writing(): keep the database open between puts this long at most
        self._held_since: float | None = None
        self._pending: dict[bytes, bytes] = {}  # put while another process held the lock: not written yet

    # -- opening -------------------------------------------------------------------------------
    def _open(self) -> None:
        """Read-write if no other process holds the lock, else read-only at once (never waits)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = Rdict(str(self.path), options=Options(raw_mode=True))
            self._read_only = False
        except Exception as e:  # the lock is held by another process
            if not self.path.exists():
                raise
            log.debug("embedding cache %s is locked (%s): opening read-only", self.path, e)
            self._db = Rdict(str(self.path), options=Options(raw_mode=True), access_type=AccessType.read_only())
            self._read_only = True

    def __enter__(self) -> "EmbeddingCache":
        if self._depth == 0:
            self._open()
        self._depth += 1
        return self

    def __exit__(self, *exc) -> None:
        self._depth -= 1
        if self._depth == 0 and self._db is not None:
            self._db.close()
            self._db = None

    @contextmanager
    def writing(self, hold_s: float = 2.0) -> Iterator["EmbeddingCache"]:
        """A block of many `put_many` calls, each committed when it returns (or kept pending while
        another process holds the lock); the database is kept open between them for at most `hold_s`
        seconds at a time."""
        self._hold_s = hold_s
        try:
            yield self
        finally:
            self._hold_s = 0.0
            self._release()

    def _hold(self) -> None:
        if self._hold_s and self._held_since is None:
            self.__enter__()
            self._held_since = time.monotonic()
            if self._read_only:  # another process writes: do not keep a read-only view, retry next put
                self._release()

    def _release(self, older_than_s: float = 0.0) -> None:
        if self._held_since is not None and time.monotonic() - self._held_since >= older_than_s:
            self._held_since = None
            self.__exit__(None, None, None)

    # -- access --------------------------------------------------------------------------------
    def get_many(
        self, model_id: str, template: str, texts: Sequence[str]
    ) -> list[np.ndarray | None]:
        """One float32 vector (or None when absent) per text."""
        if not texts:
            return []
        keys = [cache_key(model_id, template, t) for t in texts]
        raw = [self._pending.get(k) for k in keys]
        if any(r is None for r in raw):
            with self:
                stored = self._db.get([k for k, r in zip(keys, raw) if r is None])
            it = iter(stored)
            raw = [r if r is not None else next(it) for r in raw]
        return [None if r is None else np.frombuffer(r, dtype="<f4").copy() for r in raw]

    def put_many(
        self, model_id: str, template: str, texts: Sequence[str], vectors: np.ndarray
    ) -> None:
        """Store one vector per text (rows of `vectors`): at once if the lock is free, else later."""
        vectors = np.asarray(vectors, dtype="<f4")
        assert len(texts) == len(vectors), (len(texts), vectors.shape)
        if not texts:
            return
        for t, v in zip(texts, vectors):
            self._pending[cache_key(model_id, template, t)] = v.tobytes()
        self._hold()
        try:
            with self:
                self._write_pending()
        finally:
            self._release(older_than_s=self._hold_s)

    def _write_pending(self) -> None:
        """Inside `with self:` write what is pending if this process has the write lock; else keep
        at most `max_pending` of it."""
        if not self._pending:
            return
        if not self._read_only:
            wb = WriteBatch(raw_mode=True)
            for k, v in self._pending.items():
                wb.put(k, v)
            self._db.write(wb)
            self._pending.clear()
            return
        over = len(self._pending) - self.max_pending
        if over > 0:
            log.warning("embedding cache %s stayed locked by another process: %d vectors dropped (they will "
                        "be encoded again when next seen)", self.path, over)  # fmt: skip
            for k in list(self._pending)[:over]:
                del self._pending[k]

    @property
    def pending(self) -> int:
        """Vectors put but not written yet (another process held the lock)."""
        return len(self._pending)

    def flush(self, wait_s: float | None = None) -> bool:
        """Write what is pending, waiting for another process's lock up to `wait_s` (default
        `lock_wait_s`), retried every 0.2 s; True if nothing is left pending."""
        def attempt() -> int:
            with self:
                self._write_pending()
            return len(self._pending)

        retrying = Retrying(stop=stop_after_delay(self.lock_wait_s if wait_s is None else wait_s), wait=wait_fixed(0.2),
                            retry=retry_if_result(bool), retry_error_callback=lambda state: state.outcome.result(),
                            before_sleep=before_sleep_log(log, logging.DEBUG))  # fmt: skip
        left = retrying(attempt) if self._pending else 0
        if left:
            log.warning("embedding cache %s: %d vectors not written (locked by another process)", self.path, left)
        return not left

    def __len__(self) -> int:
        with self:
            return sum(1 for _ in self._db.keys())
