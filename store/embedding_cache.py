"""The content-embedding cache: (model id, template, sha256(text)) -> float32 vector bytes, in rocksdict.

The same text is never encoded twice by the same model under the same template, across runs and
processes. Values are raw little-endian float32 bytes (no pickle). This module imports no torch and no
model code, so any process (the API, a worker) can read it cheaply.

RocksDB allows one writer process per directory: the database is opened only for the duration of a
`get_many` / `put_many` call (or a `with cache:` block), and an open that finds the lock held is
retried for a few seconds, then served read-only (puts are then skipped, with a warning).
A long encode writes inside `with cache.writing():` (encoder/content.py): every `put_many` is
committed at once (one write batch in RocksDB's log, which a killed process keeps), while the
database stays open between puts for at most `hold_s` (an open costs ~60 ms, more than a small
model's forward pass), then is closed so another process can take the lock.
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
from tenacity import Retrying, before_sleep_log, stop_after_delay, wait_fixed

log = logging.getLogger(__name__)


def cache_key(model_id: str, template: str, text: str) -> bytes:
    """model id, then a short hash of the template, then sha256 of the text."""
    t = hashlib.sha256(template.encode()).hexdigest()[:16]
    h = hashlib.sha256(text.encode()).hexdigest()
    return f"{model_id}\x00{t}\x00{h}".encode()


class EmbeddingCache:
    def __init__(self, path: str | Path, lock_wait_s: float = 10.0):
        self.path = Path(path)
        self.lock_wait_s = lock_wait_s
        self._db: Rdict | None = None
        self._read_only = False
        self._depth = 0
        self._hold_s = 0.0  # inside writing(): keep the database open between puts this long at most
        self._held_since: float | None = None

    # -- opening -------------------------------------------------------------------------------
    def _open(self) -> None:
        """Open read-write, retrying every 0.2 s while another process holds the lock, for at most
        `lock_wait_s`; then read-only (puts are skipped)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        retrying = Retrying(stop=stop_after_delay(self.lock_wait_s), wait=wait_fixed(0.2), reraise=True,
                            before_sleep=before_sleep_log(log, logging.DEBUG))  # fmt: skip
        try:
            self._db = retrying(Rdict, str(self.path), options=Options(raw_mode=True))
            self._read_only = False
        except Exception as e:  # the lock is held by another process
            if not self.path.exists():
                raise
            log.warning("embedding cache %s is locked (%s): opening read-only", self.path, e)
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
        """A block of many `put_many` calls, each committed when it returns; the database is kept
        open between them for at most `hold_s` seconds at a time."""
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
        with self:
            raw = self._db.get([cache_key(model_id, template, t) for t in texts])
        return [None if r is None else np.frombuffer(r, dtype="<f4").copy() for r in raw]

    def put_many(
        self, model_id: str, template: str, texts: Sequence[str], vectors: np.ndarray
    ) -> None:
        """Store one vector per text (rows of `vectors`)."""
        vectors = np.asarray(vectors, dtype="<f4")
        assert len(texts) == len(vectors), (len(texts), vectors.shape)
        if not texts:
            return
        self._hold()
        try:
            with self:
                if self._read_only:
                    log.warning("embedding cache is read-only here: %d vectors not stored", len(texts))
                    return
                wb = WriteBatch(raw_mode=True)
                for t, v in zip(texts, vectors):
                    wb.put(cache_key(model_id, template, t), v.tobytes())
                self._db.write(wb)
        finally:
            self._release(older_than_s=self._hold_s)

    def __len__(self) -> int:
        with self:
            return sum(1 for _ in self._db.keys())
