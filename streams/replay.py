"""Replaying a dataset as a live stream: item texts, then users' interactions interleaved in time.

Each user's order is kept; users are interleaved at random (a random merge of their sequences); event
times are assigned by the replay: `start + i / events_per_s` of event time for the i-th event.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable, Iterator

from tqdm import tqdm

from streams.datasets import RawDataset
from streams.producer import EventProducer
from streams.schemas import ActionType, Interaction, ItemRecord


def item_records(ds: RawDataset, event_time: float) -> list[ItemRecord]:
    return [
        ItemRecord(item_id=it.item_id, title=it.title or None, brand=it.brand or None,
                   categories=it.categories, description=it.description or None, event_time=event_time)
        for it in ds.items.values()
    ]  # fmt: skip


def interleave(sequences: dict[str, list[str]], seed: int = 0) -> list[tuple[str, str, int]]:
    """A random merge of the users' sequences: (user, item, position in the user's sequence)."""
    rng = random.Random(seed)
    slots = [u for u, seq in sequences.items() for _ in seq]
    rng.shuffle(slots)
    pos: dict[str, int] = {}
    out = []
    for u in slots:
        k = pos.get(u, 0)
        pos[u] = k + 1
        out.append((u, sequences[u][k], k))
    return out


def interaction_events(
    order: Iterable[tuple[str, str, int]], start: float, events_per_s: float
) -> Iterator[Interaction]:
    for i, (user, item, k) in enumerate(order):
        yield Interaction(event_id=f"{user}:{k}", user_id=user, item_id=item,
                          action=ActionType.review, event_time=start + i / events_per_s)  # fmt: skip


def produce(
    send, records: list, wall_rate: float | None = None, desc: str = "produce", progress: bool = True
) -> int:
    """Send records with `send(record)`, at most `wall_rate` per wall-clock second if given."""
    t0 = time.monotonic()
    for i, rec in enumerate(tqdm(records, desc=desc, unit="rec", disable=not progress, mininterval=0.5)):
        send(rec)
        if wall_rate:
            ahead = (i + 1) / wall_rate - (time.monotonic() - t0)
            if ahead > 0:
                time.sleep(ahead)
    return len(records)


def replay_dataset(
    producer: EventProducer,
    ds: RawDataset,
    start: float,
    events_per_s: float,
    seed: int = 0,
    wall_rate: float | None = None,
    progress: bool = True,
) -> dict[str, int]:
    """Items first (so texts can be encoded before they are needed), then the interactions."""
    items = item_records(ds, start)
    n_items = produce(producer.send_item, items, desc="items", progress=progress)
    producer.flush()
    events = list(interaction_events(interleave(ds.sequences, seed), start, events_per_s))
    n_events = produce(producer.send_interaction, events, wall_rate, desc="interactions", progress=progress)
    producer.flush()
    return {"items": n_items, "interactions": n_events}
