from collections import defaultdict

from streams.datasets import RawDataset, parse_unisrec_text
from streams.replay import interaction_events, interleave


def test_interleave_keeps_each_users_order_and_every_event():
    seqs = {"u1": ["a", "b", "c"], "u2": ["x", "y"], "u3": ["z"]}
    order = interleave(seqs, seed=3)
    per_user = defaultdict(list)
    for user, item, k in order:
        per_user[user].append(item)
    assert dict(per_user) == seqs
    events = list(interaction_events(order, start=1.7e9, events_per_s=2))
    assert [ev.event_time for ev in events] == [1.7e9 + i / 2 for i in range(6)]
    assert len({ev.event_id for ev in events}) == 6


def test_unisrec_text_is_split_into_fields():
    item = parse_unisrec_text("A", "Drill 18V. Industrial & Scientific Power Tools. DeWalt. ", ["Industrial & Scientific"])
    assert (item.title, item.categories, item.brand) == ("Drill 18V", ["Power Tools"], "DeWalt")
    item = parse_unisrec_text("B", "Tube 5/16 ID. . Learn To Brew LLC. ")
    assert (item.title, item.categories, item.brand) == ("Tube 5/16 ID", [], "Learn To Brew LLC")
    assert parse_unisrec_text("C", "no structure").title == "no structure"


def _timed():
    from streams.datasets import CatalogItem, RawDataset

    items = {i: CatalogItem(i, f"title {i}") for i in "abcd"}
    return RawDataset("t", items, {"u1": ["a", "b", "c"], "u2": ["d", "a"]},
                      times={"u1": [100.0, 400.0, 1000.0], "u2": [200.0, 1000.0]},
                      actions={"u1": ["view", "cart", "purchase"], "u2": ["view", "view"]})  # fmt: skip


T0 = 1.7e9


def test_a_replay_with_timestamps_follows_real_time_at_the_speedup():
    from streams.replay import plan_interactions

    plan = plan_interactions(_timed(), start=T0, speedup=10.0)
    events = plan.interactions()
    assert [(e.user_id, e.item_id) for e in events] == [("u1", "a"), ("u2", "d"), ("u1", "b"), ("u1", "c"), ("u2", "a")]
    assert [e.event_time - T0 for e in events] == [0.0, 10.0, 30.0, 90.0, 90.0]  # the data's gaps / 10
    assert [e.action.value for e in events][:3] == ["view", "view", "cart"] and plan.span_s == 90.0
    # no speed-up given: the one that makes the replay last n / events_per_s; no start: it ends at `end`
    auto = plan_interactions(_timed(), events_per_s=1.0, end=T0)
    assert auto.speedup == 900.0 / 5 and auto.span_s == 5.0 and auto.rows[-1][4] == T0
    # a dataset without timestamps keeps the rate-based times
    plain = plan_interactions(RawDataset("n", _timed().items, _timed().sequences), start=T0, events_per_s=2.0)
    assert plain.speedup is None and [e.event_time - T0 for e in plain.interactions()] == [0.0, 0.5, 1.0, 1.5, 2.0]


def test_an_event_the_schema_refuses_is_counted_not_sent():
    from streams.datasets import CatalogItem, RawDataset
    from streams.replay import plan_interactions

    ds = RawDataset("x", {"a": CatalogItem("a", "A")}, {"ok": ["a", "a"], "bad\x01user": ["a"]})
    plan = plan_interactions(ds, start=T0)
    assert [e.user_id for e in plan.interactions()] == ["ok", "ok"] and plan.skipped == 1


def test_a_realtime_replay_sends_each_event_when_its_time_comes():
    import time

    from streams.replay import plan_interactions, send_realtime

    t0 = time.time()
    plan = plan_interactions(_timed(), start=t0, speedup=2000.0)  # 0.45 s in all
    sent = []
    assert send_realtime(lambda e: sent.append((time.time(), e)), plan, progress=False) == 5
    assert sent[-1][0] - t0 >= 0.45 and all(at >= e.event_time - 1e-3 for at, e in sent)
def test_subsample_keeps_times_and_actions():
    from streams.datasets import subsample

    ds = subsample(_timed(), users=1, seed=0)
    (user,) = ds.sequences
    assert ds.times[user] == _timed().times[user] and ds.actions[user] == _timed().actions[user]
