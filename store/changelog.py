"""The state changelog's records and how a partition database is rebuilt from them. Pure (no Kafka,
no database): streams/interaction_worker.py produces and consumes the records, store/state.py and
store/replica.py write what `fold` and `state_puts` return.

The changelog topic (`topics.changelog_topic`, compacted, one partition per state partition) is the
Kafka Streams / faust-table design: for every batch the interaction worker writes, it first produces

- one record per user the batch changed: key = the user id (UTF-8), value = the user's whole new
  sequence (the JSON of the `u/<user>` value), so the last value of a key is the user's state;
- then ONE record with the reserved key `\\x00offsets`: the partition's input next-offsets, their
  fingerprints, the counters and the watermark after the batch.

A user id cannot collide with the reserved keys: ids are 1-128 characters without control characters
(streams/schemas.py), and every reserved key starts with NUL. `\\x00marker` records (a worker that
restores a partition writes one to find the partition's end, streams/interaction_worker.py) carry
no state.

Rebuilding (`fold`): last value per key wins, read in log order, so a log that was never compacted
(Tansu does not compact) gives the same state as a compacted one. The user records after the last
offsets record belong to a batch whose writer stopped before its offsets record was acknowledged:
that batch's input records are applied again by the next owner, so those records are left out (kept
in, they would count the re-applied events as duplicates). Window keys `w/<slot>/<user>` are derived
from the event times of each user's sequence: a slot whose events have all been trimmed from the
sequence (more than `max_seq_len` newer events) is not found again, which only matters for a trainer
window that old.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import orjson

from store.state import (
    APPLIED,
    CHANGELOG_NEXT,
    COUNTER,
    DUPLICATE,
    LATE_DROPPED,
    USER,
    WATERMARK,
    fingerprint_key,
    offset_key,
    window_key,
    window_start,
)

OFFSETS_KEY = b"\x00offsets"
MARKER_KEY = b"\x00marker"
COUNTERS = (APPLIED, DUPLICATE, LATE_DROPPED)


class ChangelogError(ValueError):
    """A changelog record that is not one this module writes."""


@dataclass(frozen=True)
class Offsets:
    """A partition's bookkeeping after a batch: what the `o/`, `c/` and `m/` keys hold."""

    next_offsets: dict[str, int]
    fingerprints: dict[str, bytes | None]
    counters: dict[str, int] = field(default_factory=dict)
    watermark: float = 0.0


@dataclass
class Restored:
    """A partition's state folded from its changelog records (`users`: id -> sequence JSON bytes)."""

    users: dict[str, bytes] = field(default_factory=dict)
    offsets: Offsets | None = None
    records: int = 0  # records read
    discarded: int = 0  # user records after the last offsets record (an unfinished batch)


# ---- records ----------------------------------------------------------------------------------


def user_record(user: str, seq: list[list]) -> tuple[bytes, bytes]:
    return user.encode("utf-8"), orjson.dumps(seq)


def offsets_record(o: Offsets) -> tuple[bytes, bytes]:
    fps = {k: (v.decode("ascii") if v is not None else None) for k, v in o.fingerprints.items()}
    return OFFSETS_KEY, orjson.dumps({"next": o.next_offsets, "fp": fps, "c": o.counters, "wm": o.watermark})


def marker_record(token: bytes) -> tuple[bytes, bytes]:
    return MARKER_KEY, token


def decode_offsets(value: bytes) -> Offsets:
    try:
        d = orjson.loads(value)
        return Offsets(
            next_offsets={str(k): int(v) for k, v in d["next"].items()},
            fingerprints={str(k): (v.encode("ascii") if v is not None else None) for k, v in d["fp"].items()},
            counters={str(k): int(v) for k, v in d.get("c", {}).items()},
            watermark=float(d.get("wm", 0.0)),
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as e:
        raise ChangelogError(f"bad offsets record {value[:80]!r}: {e!r}") from e


def is_user_key(key: bytes | None) -> bool:
    return bool(key) and key[0] != 0


# ---- folding ----------------------------------------------------------------------------------


class Folder:
    """Changelog records in, state out, incrementally (a replica feeds it as records come)."""

    def __init__(self) -> None:
        self.done = Restored()
        self.pending: dict[str, bytes] = {}  # user records since the last offsets record

    def add(self, key: bytes | None, value: bytes | None) -> bool:
        """One record, in log order. True when it closed a batch (an offsets record)."""
        self.done.records += 1
        if key == OFFSETS_KEY:
            self.done.users.update(self.pending)
            self.pending.clear()
            self.done.offsets = decode_offsets(value or b"")
            return True
        if key == MARKER_KEY:
            return False
        if not is_user_key(key) or value is None:
            raise ChangelogError(f"changelog record with key {key!r} and value {value!r:.80}: not a user's sequence")
        self.pending[key.decode("utf-8")] = value
        return False

    def take(self) -> Restored:
        """The batches closed so far (cleared), the unfinished one counted as discarded."""
        out, self.done = self.done, Restored()
        out.discarded = len(self.pending)
        return out


def fold(records: Iterable[tuple[bytes | None, bytes | None]]) -> Restored:
    """A partition's state from its changelog records in log order: last value per key wins. Pure."""
    f = Folder()
    for key, value in records:
        f.add(key, value)
    return f.take()


def windows_of(user: str, seq: list[list], slot_s: float) -> set[bytes]:
    """The `w/<slot>/<user>` keys of a user's sequence (one per slot its events fall in). Pure."""
    return {window_key(window_start(x[0], slot_s), user) for x in seq}


def state_puts(restored: Restored, slot_s: float, watermark: float = 0.0) -> tuple[list[tuple[bytes, bytes | None]], float]:
    """The database writes that hold `restored` (a value None: delete the key), and the watermark
    (the newest event time seen, at least `watermark` and the offsets record's). Pure."""
    puts: list[tuple[bytes, bytes | None]] = []
    for user, raw in restored.users.items():
        seq = orjson.loads(raw)
        puts.append((USER + user.encode("utf-8"), raw))
        puts.extend((k, b"") for k in windows_of(user, seq, slot_s))
        watermark = max([watermark, *(x[0] for x in seq)])
    o = restored.offsets
    if o is not None:
        watermark = max(watermark, o.watermark)
        for source, nxt in o.next_offsets.items():
            puts.append((offset_key(source), str(nxt).encode()))
            puts.append((fingerprint_key(source), o.fingerprints.get(source)))  # None: delete
        puts.extend((COUNTER + n.encode(), str(v).encode()) for n, v in o.counters.items() if n in COUNTERS)
    puts.append((WATERMARK, repr(watermark).encode()))
    return puts, watermark


__all__ = [
    "CHANGELOG_NEXT", "ChangelogError", "Folder", "MARKER_KEY", "OFFSETS_KEY", "Offsets", "Restored",
    "decode_offsets", "fold", "is_user_key", "marker_record", "offsets_record", "state_puts", "user_record",
    "windows_of",
]  # fmt: skip
