"""Replaying a dataset as a live stream: item texts, then the users' interactions, into the topics.

Event order and times:
- a dataset with timestamps (the plain format) is replayed in the order of its real event times,
  and the gaps between events are kept, compressed by `speedup` (10: ten seconds of the data's time
  per second of replay; unset: the speed-up that makes the replay last `n_events / events_per_s`);
- a dataset without (LC-Rec, the UniSRec split) keeps each user's order, interleaves the users at
  random (a random merge of their sequences), and gives the i-th event `start + i / events_per_s`.
`realtime=True` sends each event when its replay time comes (a live producer); otherwise as fast as
the broker takes them (the demo, which then shifts the replay's times to end at the present).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from pydantic import ValidationError
from tqdm import tqdm

from streams.datasets import RawDataset
from streams.producer import EventProducer
from streams.schemas import ActionType, Interaction, ItemRecord

log = logging.getLogger(__name__)


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


def time_order(sequences: dict[str, list[str]], times: dict[str, list[float]]) -> list[tuple[str, str, int]]:
    """Every event in the order of its time (ties: the users' order, then their own order)."""
    keyed = [(times[u][k], n, k, u, item) for n, (u, seq) in enumerate(sequences.items()) for k, item in enumerate(seq)]
    keyed.sort()
    return [(u, item, k) for _, _, k, u, item in keyed]


def interaction_events(
    order: Iterable[tuple[str, str, int]], start: float, events_per_s: float
) -> Iterator[Interaction]:
    for i, (user, item, k) in enumerate(order):
        yield Interaction(event_id=f"{user}:{k}", user_id=user, item_id=item,
                          action=ActionType.review, event_time=start + i / events_per_s)  # fmt: skip


@dataclass
class ReplayPlan:
    """The interactions to send, in order, as rows (user, item, position in the user's sequence,
    action, event time); records are built when sent (the schema refuses event times far ahead of
    the present, and a real-time replay's last events are that far ahead when it starts)."""

    rows: list[tuple[str, str, int, str, float]]
    speedup: float | None  # data seconds per replay second (None: the data has no timestamps)
    skipped: int = 0  # rows the schema refused (e.g. an id with a control character): counted, logged

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def span_s(self) -> float:
        return self.rows[-1][4] - self.rows[0][4] if self.rows else 0.0

    def record(self, row: tuple[str, str, int, str, float]) -> Interaction | None:
        user, item, k, action, t = row
        try:
            return Interaction(event_id=f"{user}:{k}", user_id=user, item_id=item, action=action, event_time=t)
        except ValidationError as e:
            self.skipped += 1
            if self.skipped <= 3:
                log.warning("event %s of user %r not replayable: %s", k, user, e.errors()[0]["msg"])
            return None

    def interactions(self) -> list[Interaction]:
        """Every row as a record (the ones the schema refuses counted in `skipped`, and left out)."""
        out = [ev for ev in map(self.record, self.rows) if ev is not None]
        if self.skipped:
            log.warning("%d of %d interactions skipped: the event schema refuses them", self.skipped, len(self.rows))
        return out


def plan_interactions(ds: RawDataset, start: float | None = None, events_per_s: float = 100.0,
                      speedup: float | None = None, seed: int = 0, end: float | None = None) -> ReplayPlan:  # fmt: skip
    """The replay's interactions from `start`, or ending at `end` (default: now) when no start is
    given (see the module docstring for their order and times)."""
    n = sum(len(s) for s in ds.sequences.values())
    if ds.times is None:
        order, offsets = interleave(ds.sequences, seed), [i / events_per_s for i in range(n)]
        speedup = None
    else:
        order = time_order(ds.sequences, ds.times)
        data_times = [ds.times[u][k] for u, _, k in order]
        t0 = data_times[0] if data_times else 0.0
        if speedup is None:
            speedup = max((data_times[-1] - t0) / (n / events_per_s), 1e-9) if n > 1 else 1.0
        offsets = [(t - t0) / speedup for t in data_times]
    if start is None:
        start = (time.time() if end is None else end) - (offsets[-1] if offsets else 0.0)
    actions = ds.actions or {}
    rows = [(u, item, k, actions[u][k] if u in actions else ActionType.review.value, start + dt)
            for (u, item, k), dt in zip(order, offsets)]  # fmt: skip
    return ReplayPlan(rows, speedup)


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


def replay_items(producer: EventProducer, ds: RawDataset, event_time: float, progress: bool = True) -> int:
    """Every item's text to the items topic (flushed), so they can be encoded before they are needed."""
    n = produce(producer.send_item, item_records(ds, event_time), desc="items", progress=progress)
    producer.flush()
    return n


def send_realtime(send: Callable[[Interaction], None], plan: ReplayPlan, progress: bool = True,
                  clock: Callable[[], float] = time.time) -> int:  # fmt: skip
    """Each row sent when the wall clock reaches its event time (built then); the number sent."""
    n = 0
    for row in tqdm(plan.rows, desc="interactions", unit="ev", disable=not progress, mininterval=0.5):
        ahead = row[4] - clock()
        if ahead > 0:
            time.sleep(ahead)
        ev = plan.record(row)
        if ev is not None:
            send(ev)
            n += 1
    return n


def replay_interactions(producer: EventProducer, events: list[Interaction], progress: bool = True,
                        on_sent: Callable[[Interaction], None] | None = None) -> int:  # fmt: skip
    """The interactions, in order and at once, to the interactions topic (flushed); `on_sent(event)`
    after each."""

    def send(ev: Interaction) -> None:
        producer.send_interaction(ev)
        if on_sent is not None:
            on_sent(ev)

    n = produce(send, events, desc="interactions", progress=progress)
    producer.flush()
    return n


def replay_dataset(
    producer: EventProducer,
    ds: RawDataset,
    events_per_s: float = 100.0,
    speedup: float | None = None,
    realtime: bool = False,
    items: bool = True,
    interactions: bool = True,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Items first, then the interactions: with `realtime` each when its time comes (event times start
    now), otherwise at once (event times end now)."""
    now = time.time()
    plan = plan_interactions(ds, start=now if realtime else None, events_per_s=events_per_s, speedup=speedup,
                             seed=seed, end=now)  # fmt: skip
    start = plan.rows[0][4] if plan.rows else now
    out = {"items": 0, "interactions": 0, "speedup": plan.speedup, "start": start, "span_s": plan.span_s}
    if items:
        out["items"] = replay_items(producer, ds, start, progress)
    if interactions:
        if realtime:
            out["interactions"] = send_realtime(producer.send_interaction, plan, progress)
            producer.flush()
        else:
            out["interactions"] = replay_interactions(producer, plan.interactions(), progress)
    out["skipped"] = plan.skipped
    return out
