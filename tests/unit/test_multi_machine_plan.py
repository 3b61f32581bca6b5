"""The pure parts of bench/multi_machine.py: the stream it sends, the rule's expected sequences, the
checks it makes (no broker, no processes)."""

import json

from bench.multi_machine import (assigned_partitions, expected_sequences, make_stream, newest, offsets_reached,
                                 part, restored_partitions, sequence_mismatches)
from streams.datasets import CatalogItem, RawDataset


def tiny() -> RawDataset:
    items = {f"i{k}": CatalogItem(f"i{k}", f"Item {k}") for k in range(12)}
    seqs = {f"u{u}": [f"i{(u * 3 + k) % 12}" for k in range(4 + u % 3)] for u in range(8)}
    return RawDataset("tiny", items, seqs)


def decoded(stream, topic):
    return [json.loads(r.value) for r in stream.plan.records if r.topic == topic]


def test_stream_sends_every_event_and_item_in_each_users_order():
    ds = tiny()
    stream = make_stream(ds, seed=3, now=1_700_000_000.0, dup=0.3)
    sent = decoded(stream, "interactions")
    assert {e["event_id"] for e in sent} == set(stream.plan.interactions) == {ev.event_id for ev in stream.events}
    assert len(sent) > len(stream.events)  # some sent twice
    for user, seq in ds.sequences.items():  # each user's items in order, in the events and in what is sent
        assert [ev.item_id for ev in stream.events if ev.user_id == user] == seq
        firsts = list(dict.fromkeys(e["event_id"] for e in sent if e["user_id"] == user))
        assert [e.split(":")[1] for e in firsts] == [str(k) for k in range(len(seq))]
    assert {e["item_id"] for e in decoded(stream, "items")} == stream.plan.items == set(ds.items)
    clients = {r.client for r in stream.plan.records}
    assert clients == {"kafka-python", "confluent"}
    assert make_stream(ds, seed=3, now=1_700_000_000.0, dup=0.3).plan.records == stream.plan.records  # seeded


def test_expected_sequences_apply_the_rule_once_per_event():
    stream = make_stream(tiny(), seed=1, now=1_700_000_000.0)
    doubled = [ev for ev in stream.events for _ in (0, 1)]  # every event twice: duplicates change nothing
    seqs = expected_sequences(doubled, max_len=64, lateness_s=3600.0)
    assert seqs == expected_sequences(stream.events, 64, 3600.0)
    assert sum(map(len, seqs.values())) == len(stream.events)
    u = stream.events[0].user_id
    assert newest(seqs[u], 2) == [(e[1], round(e[0], 3)) for e in seqs[u][::-1][:2]]
    wrong = {**seqs, u: seqs[u][:-1]}
    assert sequence_mismatches(seqs, seqs) == [] and sequence_mismatches(wrong, seqs) == [u]
    assert sequence_mismatches({k: v for k, v in seqs.items() if k != u}, seqs) == [u]


def test_offsets_reached():
    need = {"interactions-p0": 20, "interactions-p0/repartition": 4}
    assert offsets_reached({"interactions-p0": 21, "interactions-p0/repartition": 4, "interactions-p1": 0}, need)
    assert not offsets_reached({"interactions-p0": 21}, need)
    assert not offsets_reached({"interactions-p0": 19, "interactions-p0/repartition": 9}, need)


def test_partitions_from_the_workers_logs():
    log = "\n".join([
        "[2026-12-01 13:10:50,312] [1] [INFO] Revoking previously assigned partitions set() for group g-state",
        "[2026-12-01 13:10:56,700] [1] [INFO] assigned TopicPartition(topic='interactions', partition=0): resuming at stored offset 0",
        "[2026-12-01 13:10:56,701] [1] [INFO] assigned TopicPartition(topic='interactions.repartition', partition=3): resuming at stored offset 0",
        "[2026-12-01 13:10:56,702] [1] [INFO] assigned TopicPartition(topic='interactions', partition=3): resuming at stored offset 0",
        "[2026-12-01 13:11:19,068] [1] [INFO] Revoking previously assigned partitions {...} for group g-state",
        "[2026-12-01 13:11:23,115] [1] [INFO] restored interactions.changelog[1] from offset 0: 30 records, 9 users",
        "[2026-12-01 13:11:23,116] [1] [INFO] assigned TopicPartition(topic='interactions', partition=1): resuming at stored offset 21",
        "[2026-12-01 13:11:23,722] [1] [INFO] restored interactions.changelog[3] from offset 47: 2 records, 1 users",
    ])  # fmt: skip
    assert assigned_partitions(log, "interactions") == {1}
    assert assigned_partitions("\n".join(log.splitlines()[:4]), "interactions") == {0, 3}
    t = 1796130683.5  # 2026-12-01 13:11:23.500 UTC
    assert restored_partitions(log, "interactions.changelog", 0.0) == {1, 3}
    assert restored_partitions(log, "interactions.changelog", t) == {3}
    assert restored_partitions(log, "other.changelog", 0.0) == set()


def test_results_part_has_the_issues_figures_on_top_and_the_run_below():
    r = {"multi_machine_lost": 0, "multi_machine_duplicated": 1, "restore_s_on_b": 2.5, "versions_followed_after_kill": ["v2"],
         "served_users_wrong": 0, "served_users_missing": 1, "served_errors": 0, "api_5xx": 2, "api_unreachable": 1,
         "command": "python -m bench.multi_machine", "load_avg_before": [1, 1, 1], "load_avg_after": [2, 2, 2],
         "wall_s": 9.0, "cpu_count": 2, "encoder": "minilm", "users": 3, "interactions_sent": 9, "items_sent": 4,
         "events_sent_before_kill": 4, "items_lost": 0}  # fmt: skip
    out = part(r)
    figures = {k for k, v in out.items() if isinstance(v, (int, float))} - {"wall_s", "cpu_count"}
    assert all(k.startswith("multi_machine_") for k in figures)
    assert out["multi_machine_duplicated"] == 1 and out["multi_machine_served_users_wrong"] == 1
    assert out["multi_machine_api_errors"] == 3 and out["load_avg"] == {"before": [1, 1, 1], "after": [2, 2, 2]}
    assert out["details"] is r
