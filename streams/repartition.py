"""Pure logic of the interaction path: which partition owns a user, what each record becomes, and
whether the broker still holds what the state says was applied. No I/O (the worker does that).

Partition ownership: a user's state lives in the partition database `murmur2(user id) % N` (Kafka's
default partitioner, the one kafka-python and the Java client use for keyed records), whatever
partitioner or key the producer used. A record consumed from any other partition is forwarded to that
partition of the repartition topic, as Kafka Streams' repartition topics and faust's `group_by` do; a
record already on its partition is applied where it is.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from enum import Enum
from functools import lru_cache
from typing import Any

from kafka.partitioner.default import murmur2

from store.state import Entry
from streams.schemas import DeadLetter, RecordError, dead_letter, decode_interaction, encode, unexpected_error


@lru_cache(maxsize=1 << 17)
def canonical_partition(user_id: str, n_partitions: int) -> int:
    """The partition of a user: Kafka's default partitioner applied to the UTF-8 user id."""
    return (murmur2(user_id.encode("utf-8")) & 0x7FFFFFFF) % n_partitions


def fingerprint(record: Any) -> bytes:
    """What identifies a consumed record besides its offset: its timestamp and a hash of key and value."""
    h = hashlib.blake2b(digest_size=12)
    for part in (record.key, record.value):
        h.update(b"\x00" if part is None else b"\x01%d:" % len(part) + bytes(part))
    return b"%d:%s" % (record.timestamp or 0, h.hexdigest().encode())


@dataclass
class Forward:
    """A valid record whose user lives in another partition: send it to `partition` of the
    repartition topic (key: the user id, value: the record re-encoded compactly, so a valid record
    padded with whitespace cannot exceed a request's size limit)."""

    partition: int
    key: bytes
    value: bytes
    timestamp_ms: int | None


@dataclass
class Routed:
    """What one partition's batch becomes. `rows` are (offset, entry, user) for PartitionState.apply:
    `entry=None` for a record that only moves the offset (forwarded or dead-lettered)."""

    rows: list[tuple[int, Entry | None, str | None]] = field(default_factory=list)
    forwards: list[Forward] = field(default_factory=list)
    letters: list[DeadLetter] = field(default_factory=list)


def route(records: list, topic: str, partition: int, n_partitions: int) -> Routed:
    """Split a batch of one partition. Any exception while handling a record (not only a RecordError)
    dead-letters that record with its reason; the others go on."""
    out = Routed()
    for m in records:
        try:
            rec = decode_interaction(m.value)
            owner = canonical_partition(rec.user_id, n_partitions)
            if owner == partition:
                out.rows.append((m.offset, Entry(rec.event_time, rec.item_id, rec.action.value, rec.event_id), rec.user_id))
                continue
            out.forwards.append(Forward(owner, rec.user_id.encode("utf-8"), encode(rec), m.timestamp))
        except RecordError as e:
            out.letters.append(letter_for(m, e, topic))
        except Exception as e:  # noqa: BLE001 - a record must never stop its partition
            out.letters.append(letter_for(m, unexpected_error(e), topic))
        out.rows.append((m.offset, None, None))
    return out


def letter_for(m: Any, error: RecordError, topic: str) -> DeadLetter:
    value = getattr(m, "value", None)
    raw = value if value is None or isinstance(value, (bytes, bytearray)) else repr(value).encode()
    return dead_letter(raw, error, topic, getattr(m, "partition", None), getattr(m, "offset", None), getattr(m, "key", None))


class Resume(str, Enum):
    OK = "ok"  # the record at the stored next offset - 1 is the one applied last
    GAP = "gap"  # it is gone (retention), the log goes on after it: nothing of ours regressed
    REGRESSED = "regressed"  # the offset now names another record, or lies beyond the broker's log
    PENDING = "pending"  # not seen yet: keep looking


def check_resume(
    delivered: list[tuple[int, bytes]],
    sought: int,
    expected_offset: int,
    expected_fp: bytes | None,
    complete: bool,
) -> tuple[Resume, int]:
    """After seeking to `sought` (<= `expected_offset`, the stored next offset - 1), compare the
    (offset, fingerprint) pairs delivered with the fingerprint stored for `expected_offset`. Returns
    the verdict and the index of the first delivered record still to apply.

    - a first offset below `sought`: the consumer reset to the log's start because the position did
      not exist: the log was replaced (REGRESSED);
    - the record at `expected_offset` with its fingerprint: OK (apply what follows it), with another
      fingerprint: REGRESSED (no fingerprint stored, state written before they existed: the offset
      alone decides);
    - records only after it: GAP (removed by retention; apply them);
    - records only before it: PENDING, or REGRESSED when `complete` (the fetch returned the whole
      rest of the log, which ends before what the state applied). Pure."""
    if not delivered:
        return (Resume.REGRESSED if complete else Resume.PENDING), 0
    if delivered[0][0] < sought:
        return Resume.REGRESSED, 0
    for i, (offset, fp) in enumerate(delivered):
        if offset == expected_offset:
            if expected_fp is not None and fp != expected_fp:
                return Resume.REGRESSED, 0
            return Resume.OK, i + 1
        if offset > expected_offset:
            return Resume.GAP, i
    return (Resume.REGRESSED if complete else Resume.PENDING), len(delivered)
