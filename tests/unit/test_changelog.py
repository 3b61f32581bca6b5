"""The changelog's records and the rebuild of a partition database from them (store/changelog.py)."""

import random

import orjson
import pytest

from store.changelog import (
    MARKER_KEY,
    OFFSETS_KEY,
    ChangelogError,
    Offsets,
    decode_offsets,
    fold,
    marker_record,
    offsets_record,
    state_puts,
    user_record,
    windows_of,
)
from store.state import Entry, PartitionState, StateReader
from streams.schemas import Interaction

ARGS = (50, 3600.0, 10.0)  # max_len, lateness, slot


def test_records_round_trip_and_reserved_keys_cannot_be_user_ids():
    o = Offsets({"": 12, "repartition": 3}, {"": b"17:abc", "repartition": None}, {"applied": 5}, 123.5)
    key, value = offsets_record(o)
    assert key == OFFSETS_KEY and decode_offsets(value) == o
    assert user_record("u1", [[1.0, "i", "view", "e"]]) == (b"u1", b'[[1.0,"i","view","e"]]')
    with pytest.raises(ChangelogError, match="bad offsets record"):
        decode_offsets(b"{not json")
    for reserved in (OFFSETS_KEY, MARKER_KEY):  # the id rule refuses control characters, NUL among them
        with pytest.raises(ValueError):
            Interaction(event_id="e", user_id=reserved.decode(), item_id="i", event_time=1.7e9)


def test_last_value_wins_and_an_unfinished_batch_is_left_out():
    o1 = Offsets({"": 2}, {"": b"a"}, {"applied": 2}, 20.0)
    o2 = Offsets({"": 3}, {"": b"b"}, {"applied": 3}, 30.0)
    records = [
        user_record("u1", [[10.0, "i1", "view", "e1"]]),
        user_record("u2", [[20.0, "i2", "view", "e2"]]),
        offsets_record(o1),
        marker_record(b"token"),
        user_record("u1", [[10.0, "i1", "view", "e1"], [30.0, "i3", "view", "e3"]]),
        offsets_record(o2),
        user_record("u3", [[40.0, "i4", "view", "e4"]]),  # its offsets record never came
    ]
    r = fold(records)
    assert r.offsets == o2 and r.records == 7 and r.discarded == 1
    assert {u: [x[3] for x in orjson.loads(v)] for u, v in r.users.items()} == {"u1": ["e1", "e3"], "u2": ["e2"]}
    with pytest.raises(ChangelogError, match="not a user's sequence"):
        fold([(None, b"[]")])


def test_window_keys_come_from_the_event_times():
    seq = [[100.0, "a", "view", "e1"], [104.0, "b", "view", "e2"], [125.0, "c", "view", "e3"]]
    assert windows_of("u", seq, 10.0) == {b"w/000000000100/u", b"w/000000000120/u"}


def test_a_database_rebuilt_from_the_changelog_equals_the_one_that_wrote_it(tmp_path):
    """A partition applies batches (its changelog records collected as the worker would send them);
    folding those records into an empty database gives the same users, windows, offsets, counters and
    watermark, through the reader interface the API and the trainer use."""
    rng = random.Random(3)
    written = PartitionState(tmp_path / "state" / "t-p0", sources=("", "repartition"))
    log: list[tuple[bytes, bytes]] = []
    offset = 0
    for _ in range(8):
        rows = []
        for _ in range(rng.randrange(1, 30)):
            u = f"u{rng.randrange(12)}"
            eid = f"e{rng.randrange(150)}"  # some duplicates
            rows.append((offset, Entry(1.7e9 + rng.randrange(0, 600), f"i{rng.randrange(40)}", "view", eid), u))
            offset += 1
        p = written.prepare(rows, *ARGS, fingerprint=b"fp%d" % offset)
        log.extend(user_record(u, seq) for u, seq in p.users.items())
        log.append(offsets_record(Offsets({"": p.next_offset, "repartition": 0}, {"": p.fingerprint, "repartition": None},
                                          dict(p.counters), p.watermark)))  # fmt: skip
        written.commit(p, len(log))
    written.close()

    restored = PartitionState(tmp_path / "restored" / "t-p0", sources=("", "repartition"))
    puts, _ = state_puts(fold(log), slot_s=ARGS[2])
    restored.write_restored(puts, len(log))
    assert restored.next_offsets == {"": offset, "repartition": 0} and restored.changelog_next == len(log)
    restored.close()

    a, b = StateReader(tmp_path / "state", "t"), StateReader(tmp_path / "restored", "t")
    try:
        assert list(a.users()) == list(b.users()) and len(list(a.users())) > 5
        assert a.counters() == b.counters() and a.watermark() == b.watermark() and a.first_slot() == b.first_slot()
        assert a.changed_users(0, 2e9) == b.changed_users(0, 2e9)
        assert a.changed_users(1.7e9 + 300, 1.7e9 + 400) == b.changed_users(1.7e9 + 300, 1.7e9 + 400)
    finally:
        a.close()
        b.close()
    x, y = (PartitionState(tmp_path / d / "t-p0", sources=("", "repartition")) for d in ("state", "restored"))
    assert (x.next_offsets, x.fingerprints, x.counters, x.watermark) == (y.next_offsets, y.fingerprints, y.counters, y.watermark)
    x.close()
    y.close()
