from collections import defaultdict

from streams.datasets import parse_unisrec_text
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
