from store.state import (
    APPLIED,
    DUPLICATE,
    LATE_DROPPED,
    Entry,
    PartitionState,
    StateReader,
    apply_event,
    window_start,
)


def e(t, item, eid=None):
    return Entry(float(t), item, "view", eid or f"e{item}")


def test_events_are_kept_in_time_order_and_capped():
    seq = []
    for t, item in [(10, "a"), (30, "c"), (20, "b"), (40, "d")]:
        assert apply_event(seq, e(t, item), max_len=3, lateness_s=100) == APPLIED
    assert [x[1] for x in seq] == ["b", "c", "d"]


def test_duplicates_apply_once_and_late_events_are_dropped():
    seq = []
    apply_event(seq, e(100, "a"), 50, lateness_s=10)
    assert apply_event(seq, e(100, "a"), 50, lateness_s=10) == DUPLICATE
    assert apply_event(seq, e(95, "b"), 50, lateness_s=10) == APPLIED  # within lateness: inserted
    assert apply_event(seq, e(80, "c"), 50, lateness_s=10) == LATE_DROPPED
    assert [x[1] for x in seq] == ["b", "a"]


def test_window_start():
    assert window_start(125.5, 60) == 120


def test_offsets_make_replays_idempotent(tmp_path):
    part = PartitionState(tmp_path / "t-p0")
    rows = [(0, e(1, "a"), "u1"), (1, None, None), (2, e(2, "b"), "u1")]
    assert part.apply(rows, 50, 100, 60)[APPLIED] == 2
    assert part.next_offset == 3
    again = part.apply(rows + [(3, e(3, "c"), "u2")], 50, 100, 60)
    assert again["skipped_already_applied"] == 3 and again[APPLIED] == 1
    part.close()
    reopened = PartitionState(tmp_path / "t-p0")
    assert reopened.next_offset == 4
    reopened.close()


def test_reader_follows_a_live_writer(tmp_path):
    part = PartitionState(tmp_path / "t-p1")
    part.apply([(0, e(61, "a"), "u1")], 50, 100, 60)
    reader = StateReader(tmp_path, "t")
    assert [x.item_id for x in reader.sequence("u1")] == ["a"]
    part.apply([(1, e(125, "b"), "u1"), (2, e(130, "c"), "u2")], 50, 100, 60)
    assert reader.sequence("u2") is None  # not yet caught up
    reader.catch_up()
    assert [x.item_id for x in reader.sequence("u1")] == ["a", "b"]
    assert reader.changed_users(120, 180) == {"u1", "u2"}
    assert reader.changed_users(60, 120) == {"u1"}
    assert reader.counters()[APPLIED] == 3
    assert reader.watermark() == 130.0
    assert dict(reader.users()).keys() == {"u1", "u2"}
    reader.close()
    part.close()


def test_each_input_keeps_its_offset_and_fingerprint(tmp_path):
    part = PartitionState(tmp_path / "t-p0", sources=("", "repartition"))
    part.apply([(0, e(1, "a"), "u1"), (1, e(2, "b"), "u1")], 50, 100, 60, fingerprint=b"fp-src-1")
    part.apply([(7, e(3, "c"), "u1")], 50, 100, 60, source="repartition", fingerprint=b"fp-rep-7")
    assert part.next_offsets == {"": 2, "repartition": 8}
    part.close()
    back = PartitionState(tmp_path / "t-p0", sources=("", "repartition"))
    assert back.next_offsets == {"": 2, "repartition": 8} and back.next_offset == 2
    assert back.fingerprints == {"": b"fp-src-1", "repartition": b"fp-rep-7"}
    back.rebase("repartition", 0)  # the log was replaced: everything from 0 again, dedup by event id
    counts = back.apply([(0, e(3, "c"), "u1"), (1, e(4, "d"), "u1")], 50, 100, 60, source="repartition",
                        fingerprint=b"fp-new-1")  # fmt: skip
    assert (counts[DUPLICATE], counts[APPLIED]) == (1, 1)
    assert back.next_offsets["repartition"] == 2
    back.close()
    reader = StateReader(tmp_path, "t")
    assert reader.next_offsets() == {"t-p0": 2, "t-p0/repartition": 2}
    assert [x.item_id for x in reader.sequence("u1")] == ["a", "b", "c", "d"]
    reader.close()


def test_a_user_split_over_two_databases_is_read_as_one(tmp_path):
    # state written before events were repartitioned by user: one user in two partition databases
    p0, p1 = PartitionState(tmp_path / "t-p0"), PartitionState(tmp_path / "t-p1")
    p0.apply([(0, e(1, "a"), "u1"), (1, e(3, "c"), "u1"), (2, e(1, "x"), "u0")], 50, 100, 60)
    p1.apply([(0, e(2, "b"), "u1"), (1, e(3, "c"), "u1"), (2, e(1, "y"), "u2")], 50, 100, 60)
    reader = StateReader(tmp_path, "t")
    assert [x.item_id for x in reader.sequence("u1")] == ["a", "b", "c"]
    users = dict(reader.users())
    assert sorted(users) == ["u0", "u1", "u2"]  # each user once
    assert [x.item_id for x in users["u1"]] == ["a", "b", "c"]
    reader.close()
    p0.close()
    p1.close()
