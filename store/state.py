"""The state store: each user's recent item sequence, in rocksdict, one database per topic partition.

Why one database per partition: a partition is the unit that moves between worker processes, so its
state moves with it (the new owner opens the directory; the old one closed it on revocation, or the OS
released its lock when it was killed). The partition's next offset is written in the same atomic write
batch as the state changes it caused, so after any crash the worker skips what is already applied:
every event changes the state exactly once, whatever offset the consumer group resumes from.

A partition's database follows more than one input partition with the same number (the source topic's
partition p and the repartition topic's partition p, streams/interaction_worker.py): each input has its
own next offset and the *fingerprint* of the last record consumed from it (its timestamp and a hash of
its key and value), both written with the state. The fingerprint lets the worker tell "the broker still
has what I applied" from "this offset now names another record" (a recreated topic, a memory broker
that restarted at offset 0).

Readers (the trainer, the query path) open the partition databases as RocksDB *secondary* instances,
which follow the writer without blocking it (`StateReader.catch_up`).

Keys (raw bytes): `u/<user>` -> JSON list of [event_time, item_id, action, event_id] (oldest first);
`o/next` -> next offset to apply from the source partition (`o/next/<input>` from another input);
`o/fp` (`o/fp/<input>`) -> the fingerprint of the record at next - 1; `w/<slot start>/<user>` -> b"" (users changed per event-time slot
of `slot_s` seconds, for the incremental trainer, whose windows are whole slots);
`c/<counter>` -> count (applied, duplicate, late_dropped); `m/max_event_time` -> the newest event
time applied (the partition's event-time watermark); `o/changelog` -> the next offset of the
partition's changelog (store/changelog.py) that this database does not hold yet.

A batch is written in two steps, `prepare` (compute the new sequences and bookkeeping, write
nothing) and `commit` (one atomic write), so the worker can send the changed sequences to the
changelog and wait for the broker between them; `apply` does both at once.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import orjson
import shutil
import tempfile
import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from rocksdict import AccessType, Options, Rdict, WriteBatch, WriteOptions
from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_fixed

USER = b"u/"
OFFSET = b"o/next"
FINGERPRINT = b"o/fp"
SOURCE = ""  # the input whose offset lives under the historical key `o/next`
WINDOW = b"w/"
COUNTER = b"c/"
WATERMARK = b"m/max_event_time"
CHANGELOG_NEXT = b"o/changelog"  # the changelog offset up to which this database holds the changelog

APPLIED, DUPLICATE, LATE_DROPPED = "applied", "duplicate", "late_dropped"


@dataclass(frozen=True)
class Entry:
    """One interaction as kept in a user's sequence."""

    event_time: float
    item_id: str
    action: str
    event_id: str


# ---- the sequence rule: small and pure ------------------------------------------------------------


def apply_event(seq: list[list], e: Entry, max_len: int, lateness_s: float) -> str:
    """Insert `e` into `seq` (sorted by (time, event id), oldest first) in place; return the outcome.

    Rule: an event id already in the sequence is a duplicate and changes nothing; an event older than
    the user's newest event by more than `lateness_s` is dropped (counted); any other event is inserted
    at its place in time, and the sequence keeps its newest `max_len` entries.
    """
    eid = e.event_id
    for x in seq:
        if x[3] == eid:
            return DUPLICATE
    row = [e.event_time, e.item_id, e.action, eid]
    if not seq or (row[0], eid) >= (seq[-1][0], seq[-1][3]):
        seq.append(row)  # the common case: events arrive in order
    elif e.event_time < seq[-1][0] - lateness_s:
        return LATE_DROPPED
    else:
        bisect.insort(seq, row, key=_order)
    if len(seq) > max_len:
        del seq[:-max_len]
    return APPLIED


def _order(x: list) -> tuple:
    return (x[0], x[3])


def window_start(event_time: float, window_s: float) -> int:
    return int(event_time // window_s * window_s)


def window_key(start: int, user: str) -> bytes:
    return b"%s%012d/%s" % (WINDOW, start, user.encode())


def merge_sequences(seqs: list[list[list]], max_len: int | None = None) -> list[list]:
    """One sequence from several copies of a user's (written before events were repartitioned by
    user): the union by event id, ordered by (time, event id), the newest `max_len` kept. Pure."""
    by_id = {x[3]: x for seq in seqs for x in seq}
    out = sorted(by_id.values(), key=_order)
    return out[-max_len:] if max_len else out


def offset_key(source: str) -> bytes:
    return OFFSET if source == SOURCE else OFFSET + b"/" + source.encode()


def fingerprint_key(source: str) -> bytes:
    return FINGERPRINT if source == SOURCE else FINGERPRINT + b"/" + source.encode()


# ---- one partition's database -------------------------------------------------------------------


def _options() -> Options:
    opt = Options(raw_mode=True)
    opt.create_if_missing(True)
    return opt


def open_with_retry(path: Path, timeout_s: float = 30.0) -> Rdict:
    """Open a database read-write, waiting while a previous owner still holds its lock."""
    retrying = Retrying(stop=stop_after_delay(timeout_s), wait=wait_fixed(0.1), reraise=True,
                        retry=retry_if_exception(_is_lock_error))  # fmt: skip
    return retrying(Rdict, str(path), _options())


def _is_lock_error(e: BaseException) -> bool:
    # rocksdict raises a plain Exception for "lock hold by current process" / "While lock file"
    return "lock" in str(e).lower()


@dataclass
class Pending:
    """A prepared batch: what `commit` writes, and what the changelog gets (`users`: changed ones)."""

    counts: Counter
    users: dict[str, list[list]] = field(default_factory=dict)
    windows: set[bytes] = field(default_factory=set)
    source: str = SOURCE
    next_offset: int | None = None  # None: nothing to write
    fingerprint: bytes | None = None
    counters: Counter = field(default_factory=Counter)
    watermark: float = 0.0

    @property
    def empty(self) -> bool:
        return self.next_offset is None


class PartitionState:
    """The writer of one partition's state (one process at a time)."""

    def __init__(self, path: Path, sync: bool = False, sources: tuple[str, ...] = (SOURCE,)):
        path.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.db = open_with_retry(path)
        wo = WriteOptions()
        wo.sync = sync
        self.db.set_write_options(wo)
        self.sources = sources
        self._load()

    def _load(self) -> None:
        self.next_offsets: dict[str, int] = {}
        self.fingerprints: dict[str, bytes | None] = {}
        for source in self.sources:
            raw = self.db.get(offset_key(source))
            self.next_offsets[source] = int(raw) if raw is not None else 0
            self.fingerprints[source] = self.db.get(fingerprint_key(source))
        self.counters = Counter(
            {n: int(self.db.get(COUNTER + n.encode()) or 0) for n in (APPLIED, DUPLICATE, LATE_DROPPED)}
        )
        self.watermark = float(self.db.get(WATERMARK) or 0.0)
        raw = self.db.get(CHANGELOG_NEXT)
        self.changelog_next: int | None = int(raw) if raw is not None else None
        self.has_users = self._first_is_user()

    def _first_is_user(self) -> bool:
        for k in self.db.keys(from_key=USER):
            return k.startswith(USER)
        return False

    @property
    def next_offset(self) -> int:
        """The source partition's next offset."""
        return self.next_offsets.get(SOURCE, 0)

    def rebase(self, source: str, offset: int) -> None:
        """Consume `source` from `offset` on (its stored position no longer exists on the broker).

        In memory only: the next write stores it with the records applied from there; a crash before
        that finds the old position again and detects the same regression again."""
        self.next_offsets[source] = offset
        self.fingerprints[source] = None

    def apply(self, *args, **kwargs) -> Counter:
        """`prepare` (same arguments) and `commit` at once, without a changelog."""
        pending = self.prepare(*args, **kwargs)
        self.commit(pending)
        return pending.counts

    def prepare(
        self,
        events: Iterable[tuple[int, Entry | None, str | None]],
        max_len: int,
        lateness_s: float,
        slot_s: float,
        source: str = SOURCE,
        fingerprint: bytes | None = None,
    ) -> Pending:
        """Apply (offset, entry, user_id) events of input `source` in memory; skip offsets already
        applied. `fingerprint` identifies the last record (stored with the next offset). Writes nothing.

        An event with `entry=None` (a record that went to the dead-letter topic, or one forwarded to
        its user's partition) only moves the offset.
        """
        seqs: dict[str, list[list]] = {}
        changed: set[str] = set()
        windows: set[bytes] = set()
        counts: Counter = Counter()
        last = None
        watermark = self.watermark
        get = self.db.get
        next_offset = self.next_offsets.get(source, 0)
        for offset, entry, user in events:
            if offset < next_offset:
                counts["skipped_already_applied"] += 1
                continue
            last = offset
            if entry is None or user is None:
                continue
            seq = seqs.get(user)
            if seq is None:
                raw = get(USER + user.encode())
                seq = seqs[user] = orjson.loads(raw) if raw is not None else []
            outcome = apply_event(seq, entry, max_len, lateness_s)
            counts[outcome] += 1
            if outcome == APPLIED:
                changed.add(user)
                windows.add(window_key(window_start(entry.event_time, slot_s), user))
                watermark = max(watermark, entry.event_time)
        totals = self.counters.copy()
        for name in (APPLIED, DUPLICATE, LATE_DROPPED):
            totals[name] += counts[name]
        return Pending(counts, {u: seqs[u] for u in changed}, windows, source,
                       None if last is None else last + 1, fingerprint, totals, watermark)  # fmt: skip

    def commit(self, p: Pending, changelog_next: int | None = None) -> None:
        """Write a prepared batch in one atomic write (with the changelog offset it reaches, if any)."""
        if p.empty:
            return
        wb = WriteBatch(raw_mode=True)
        for key in p.windows:
            wb.put(key, b"")
        for user, seq in p.users.items():
            wb.put(USER + user.encode(), orjson.dumps(seq))
        for name in (APPLIED, DUPLICATE, LATE_DROPPED):
            if p.counters[name] != self.counters[name]:
                wb.put(COUNTER + name.encode(), str(p.counters[name]).encode())
        wb.put(offset_key(p.source), str(p.next_offset).encode())
        if p.fingerprint is not None:
            wb.put(fingerprint_key(p.source), p.fingerprint)
        else:
            wb.delete(fingerprint_key(p.source))
        wb.put(WATERMARK, repr(p.watermark).encode())
        if changelog_next is not None:
            wb.put(CHANGELOG_NEXT, str(changelog_next).encode())
        self.db.write(wb)
        self.next_offsets[p.source] = p.next_offset
        self.fingerprints[p.source] = p.fingerprint
        self.counters = p.counters
        self.watermark = p.watermark
        self.has_users = self.has_users or bool(p.users)
        if changelog_next is not None:
            self.changelog_next = changelog_next

    def write_restored(self, puts: list[tuple[bytes, bytes | None]], changelog_next: int) -> None:
        """Writes rebuilt from the changelog (store/changelog.py `state_puts`) in one atomic write,
        then the in-memory bookkeeping read again from the database."""
        write_puts(self.db, puts, changelog_next)
        self._load()

    def close(self) -> None:
        self.db.close()


def write_puts(db: Rdict, puts: list[tuple[bytes, bytes | None]], changelog_next: int) -> None:
    """(key, value) writes (None: delete) and the changelog offset they reach, in one atomic write."""
    wb = WriteBatch(raw_mode=True)
    for key, value in puts:
        if value is None:
            wb.delete(key)
        else:
            wb.put(key, value)
    wb.put(CHANGELOG_NEXT, str(changelog_next).encode())
    db.write(wb)


class StateStore:
    """The writer side: the partition databases this process owns, under `<root>/<topic>-p<N>`."""

    def __init__(self, root: Path, topic: str, sync: bool = False, sources: tuple[str, ...] = (SOURCE,)):
        self.root, self.topic, self.sync, self.sources = root, topic, sync, sources
        self.partitions: dict[int, PartitionState] = {}
        self._lock = threading.Lock()  # opened from an executor thread and used from the event loop

    def partition(self, p: int) -> PartitionState:
        """The partition's state, opened on first use (one open per process, whichever thread asks)."""
        with self._lock:
            if p not in self.partitions:
                self.partitions[p] = PartitionState(self.root / f"{self.topic}-p{p}", self.sync, self.sources)
            return self.partitions[p]

    def is_open(self, p: int) -> bool:
        return p in self.partitions

    def release(self, p: int) -> None:
        with self._lock:
            state = self.partitions.pop(p, None)
        if state is not None:
            state.close()

    def close(self) -> None:
        for p in list(self.partitions):
            self.release(p)


# ---- readers ----------------------------------------------------------------------------------


class StateReader:
    """Reads every partition's state while the workers write it (RocksDB secondary instances)."""

    def __init__(self, root: Path, topic: str):
        self.root, self.topic = root, topic
        self._tmp = Path(tempfile.mkdtemp(prefix="learn-state-reader-"))
        self.dbs: dict[Path, Rdict] = {}
        self.catch_up()

    def _discover(self) -> None:
        for path in sorted(self.root.glob(f"{self.topic}-p*")):
            if path not in self.dbs and (path / "CURRENT").exists():
                secondary = self._tmp / path.name
                self.dbs[path] = Rdict(
                    str(path), _options(), access_type=AccessType.secondary(str(secondary))
                )

    def catch_up(self) -> None:
        """See everything the writers have committed so far."""
        self._discover()
        for db in self.dbs.values():
            db.try_catch_up_with_primary()

    def sequence(self, user_id: str) -> list[Entry] | None:
        """The user's sequence. A user is in one partition database; one found in several (state
        written before events were repartitioned by user) is read as the merge of its copies."""
        key = USER + user_id.encode()
        found = [raw for db in self.dbs.values() if (raw := db.get(key)) is not None]
        if not found:
            return None
        rows = orjson.loads(found[0]) if len(found) == 1 else merge_sequences([orjson.loads(r) for r in found])
        return [Entry(*x) for x in rows]

    def users(self) -> Iterator[tuple[str, list[Entry]]]:
        """Every user once, in key order (a user found in several databases: the merge, as above)."""
        merged = heapq.merge(*(self._user_rows(db) for db in self.dbs.values()), key=lambda kv: kv[0])
        for key, group in itertools.groupby(merged, key=lambda kv: kv[0]):
            values = [v for _, v in group]
            rows = orjson.loads(values[0]) if len(values) == 1 else merge_sequences([orjson.loads(v) for v in values])
            yield key[len(USER):].decode(), [Entry(*x) for x in rows]

    def sequences(self) -> dict[str, list[list]]:
        """Every user's sequence as its rows ([event_time, item_id, action, event_id], oldest first)."""
        return {u: [[e.event_time, e.item_id, e.action, e.event_id] for e in seq] for u, seq in self.users()}

    @staticmethod
    def _user_rows(db: Rdict) -> Iterator[tuple[bytes, bytes]]:
        for k, v in db.items(from_key=USER):
            if not k.startswith(USER):
                break
            yield k, v

    def changed_users(self, start: float, end: float) -> set[str]:
        """Users with an applied event in an event-time slot that starts in [start, end)."""
        out: set[str] = set()
        lo = b"%s%012d/" % (WINDOW, int(start))
        for db in self.dbs.values():
            for k in db.keys(from_key=lo):
                if not k.startswith(WINDOW) or int(k[2:14]) >= end:
                    break
                out.add(k[15:].decode())
        return out

    def counters(self) -> Counter:
        c: Counter = Counter()
        for db in self.dbs.values():
            for name in (APPLIED, DUPLICATE, LATE_DROPPED):
                raw = db.get(COUNTER + name.encode())
                c[name] += int(raw) if raw else 0
        return c

    def watermark(self) -> float:
        """The newest event time applied in any partition (0 before any event)."""
        return max((float(db.get(WATERMARK) or 0.0) for db in self.dbs.values()), default=0.0)

    def next_offsets(self) -> dict[str, int]:
        """Next offset of every input of every partition database: `<db>` for the source partition,
        `<db>/<input>` for another input (the repartition topic's partition)."""
        out = {}
        for p, db in self.dbs.items():
            for k, v in db.items(from_key=OFFSET):
                if not k.startswith(OFFSET):
                    break
                out[p.name + k[len(OFFSET):].decode()] = int(v)
        return out

    def close(self) -> None:
        for db in self.dbs.values():
            db.close()
        self.dbs.clear()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def first_slot(self) -> float | None:
        """The start of the earliest event-time slot with an applied event (None before any)."""
        starts = []
        for db in self.dbs.values():
            for k in db.keys(from_key=WINDOW):
                if k.startswith(WINDOW):
                    starts.append(float(int(k[len(WINDOW) : len(WINDOW) + 12])))
                break
        return min(starts, default=None)
