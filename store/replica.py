"""A read replica of the state: every partition's database materialised from changelog records, in a
data directory of its own, read through the same interface as `StateReader` (sequence, users,
changed_users, counters, watermark, catch_up, ...), so the API and the trainer can run on a machine
that does not hold the workers' files. No Kafka here: `apply` takes records the consumer shell
(streams/replica.py) fetched.

A partition's user records are held back until their batch's offsets record arrives and then written
with it (and the window keys derived from the sequences, store/changelog.py) in one atomic write that
also stores the changelog offset reached (`o/changelog`), so a reader never sees half a batch and a
replica that restarts resumes where its database ends.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from rocksdict import Rdict

from store.changelog import Folder, state_puts
from store.state import CHANGELOG_NEXT, WATERMARK, StateReader, open_with_retry, write_puts


class ReplicaState(StateReader):
    """The replica's databases `<root>/<topic>-p<N>` (opened read-write: this process is their writer)."""

    def __init__(self, root: Path, topic: str, slot_s: float):
        self.root, self.topic, self.slot_s = root, topic, slot_s
        self.dbs: dict[Path, Rdict] = {}
        self.folders: dict[int, Folder] = {}
        root.mkdir(parents=True, exist_ok=True)

    def db(self, p: int) -> Rdict:
        path = self.root / f"{self.topic}-p{p}"
        if path not in self.dbs:
            self.dbs[path] = open_with_retry(path)
        return self.dbs[path]

    def position(self, p: int) -> int:
        """The changelog offset partition `p` resumes from (after the last batch written)."""
        raw = self.db(p).get(CHANGELOG_NEXT)
        return int(raw) if raw is not None else 0

    def apply(self, p: int, records: Iterable[tuple[int, bytes | None, bytes | None]]) -> int:
        """Changelog records (offset, key, value) of partition `p` in log order; returns the number of
        batches written (each in one atomic write)."""
        folder = self.folders.setdefault(p, Folder())
        db = self.db(p)
        written = 0
        for offset, key, value in records:
            if folder.add(key, value):
                done = folder.take()
                puts, _ = state_puts(done, self.slot_s, float(db.get(WATERMARK) or 0.0))
                write_puts(db, puts, offset + 1)
                written += 1
        return written

    def catch_up(self) -> None:
        """Nothing to fetch at this level: the consumer shell overrides it."""

    def close(self) -> None:
        for db in self.dbs.values():
            db.close()
        self.dbs.clear()
