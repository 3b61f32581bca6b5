"""The interaction path's pure parts: partition ownership, routing a batch, fingerprints and the
resume check (no broker)."""

import time
from types import SimpleNamespace

import pytest

import streams.repartition as rp
from streams.repartition import Resume, canonical_partition, check_resume, fingerprint, route
from streams.schemas import Interaction, decode_interaction, encode

NOW = time.time()


def rec(offset, value, key=None, partition=0, timestamp=1_700_000_000_000):
    return SimpleNamespace(topic="interactions", partition=partition, offset=offset, key=key, value=value,
                           timestamp=timestamp)  # fmt: skip


def event(user, eid, t=NOW):
    return encode(Interaction(event_id=eid, user_id=user, item_id="i1", event_time=t))


@pytest.mark.parametrize("key, partition", [(b"", 681), (b"a", 524), (b"ab", 434), (b"abc", 107),
                                            (b"123456789", 566), (b"\x00 ", 742)])  # fmt: skip
def test_canonical_partition_is_the_java_clients_default_partitioner(key, partition):
    # reference partitions of the Java client's murmur2 partitioner over 1000 partitions
    assert canonical_partition(key.decode(), 1000) == partition


def test_a_batch_is_split_into_applied_forwarded_and_dead_lettered_records():
    users = {canonical_partition(f"u{i}", 4): f"u{i}" for i in range(50)}
    mine, other = users[1], users[3]
    padded = b"  " + event(other, "e2") + b" " * 1000  # valid, padded: forwarded compactly
    batch = [rec(10, event(mine, "e1"), partition=1), rec(11, padded, key=b"whatever", partition=1),
             rec(12, None, key=b"k", partition=1), rec(13, b"{bad", partition=1)]  # fmt: skip
    out = route(batch, "interactions", 1, 4)
    assert [r[0] for r in out.rows] == [10, 11, 12, 13]
    assert out.rows[0][2] == mine and out.rows[0][1].event_id == "e1"
    assert all(r[1] is None for r in out.rows[1:])  # forwarded and dead-lettered: the offset moves only
    (fwd,) = out.forwards
    assert (fwd.partition, fwd.key) == (3, other.encode()) and fwd.timestamp_ms == batch[1].timestamp
    assert decode_interaction(fwd.value).event_id == "e2" and len(fwd.value) < len(padded)
    null, bad = out.letters
    assert null.null_value and null.payload == "" and "tombstone" in null.reason and null.offset == 12
    assert "malformed JSON" in bad.reason and bad.offset == 13


def test_any_exception_on_one_record_dead_letters_it_and_the_batch_goes_on(monkeypatch):
    real = rp.decode_interaction

    def flaky(raw):
        if b"boom" in raw:
            raise KeyError("surprise")
        return real(raw)

    monkeypatch.setattr(rp, "decode_interaction", flaky)
    user = next(f"u{i}" for i in range(50) if canonical_partition(f"u{i}", 2) == 0)
    out = route([rec(0, event(user, "boom")), rec(1, event(user, "ok"))], "interactions", 0, 2)
    (letter,) = out.letters
    assert "unexpected KeyError" in letter.reason and "surprise" in letter.reason and letter.offset == 0
    assert [r[1].event_id for r in out.rows if r[1]] == ["ok"]


def test_fingerprint_tells_records_apart():
    a = rec(5, b"x", key=b"k")
    assert fingerprint(a) == fingerprint(rec(5, b"x", key=b"k"))
    assert fingerprint(a) != fingerprint(rec(5, b"y", key=b"k"))
    assert fingerprint(a) != fingerprint(rec(5, b"x", key=b"k", timestamp=1))
    assert fingerprint(rec(0, b"x", key=None)) != fingerprint(rec(0, b"x", key=b""))
    assert fingerprint(rec(0, None)) != fingerprint(rec(0, b""))


def test_check_resume():
    fp, other = b"1:abc", b"2:def"
    # sought the record applied last (offset 9): it is there, or another record is, or the log restarted
    assert check_resume([(9, fp), (10, b"")], 9, 9, fp, complete=True) == (Resume.OK, 1)
    assert check_resume([(9, other)], 9, 9, fp, complete=True)[0] is Resume.REGRESSED
    assert check_resume([(0, other)], 9, 9, fp, complete=True)[0] is Resume.REGRESSED  # reset to the start
    assert check_resume([(12, b""), (13, b"")], 9, 9, fp, complete=True) == (Resume.GAP, 0)  # trimmed
    assert check_resume([(9, other)], 9, 9, None, complete=True) == (Resume.OK, 1)  # no fingerprint stored
    # sought the start of the log's last batch (offset 6): scan up to 9
    assert check_resume([(6, b""), (7, b""), (8, b""), (9, fp)], 6, 9, fp, complete=True) == (Resume.OK, 4)
    assert check_resume([(6, b""), (7, b"")], 6, 9, fp, complete=False) == (Resume.PENDING, 2)
    assert check_resume([(6, b""), (7, b"")], 6, 9, fp, complete=True)[0] is Resume.REGRESSED  # log ends early
    assert check_resume([], 6, 9, fp, complete=True)[0] is Resume.REGRESSED
