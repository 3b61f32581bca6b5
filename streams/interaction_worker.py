"""The interaction worker: `interactions` -> per-user sequences in the state store.

Run it with `faust -A streams.interaction_worker worker` (deploy/ does). Each batch of events is
validated; bad records go to `interactions.dlq` with their reason first, then the good ones and the
batch's last offset are written in one atomic rocksdict write (store/state.py), so a kill at any
moment neither loses nor double-applies an event.
"""

from __future__ import annotations

import time
from collections import defaultdict

from config import load_settings
from store.state import Entry, StateStore
from streams.app import make_app, raw_topic
from streams.metrics import BATCH_SIZE, DEAD_LETTERS, LATENCY, RECORDS, register_pages
from streams.schemas import RecordError, dead_letter, decode_interaction, encode

WORKER = "interactions"

settings = load_settings()
app = make_app(WORKER, settings)
interactions = raw_topic(app, settings.topics.interactions)
dead_letters = raw_topic(app, settings.topics.interactions_dlq)
state = StateStore(settings.state_path, settings.topics.interactions, sync=settings.worker.sync_writes)
owned: set[int] = set()
register_pages(app, WORKER)


def parse_batch(events, topic: str):
    """Split a batch into per-partition (offset, entry, user) rows and dead letters. Pure."""
    rows: dict[int, list] = defaultdict(list)
    rejected = []
    for ev in events:
        m = ev.message
        try:
            rec = decode_interaction(ev.value)
        except RecordError as e:
            rejected.append(dead_letter(ev.value, e, topic, m.partition, m.offset, ev.key))
            rows[m.partition].append((m.offset, None, None))
            continue
        entry = Entry(rec.event_time, rec.item_id, rec.action.value, rec.event_id)
        rows[m.partition].append((m.offset, entry, rec.user_id))
    return rows, rejected


async def handle_batch(events) -> None:
    events = [ev for ev in events if ev.message.partition in owned]
    if not events:
        return
    rows, rejected = parse_batch(events, settings.topics.interactions)
    for letter in rejected:  # dead letters first: a crash after this re-sends, never loses them
        await dead_letters.send(key=letter.key.encode() if letter.key else None, value=encode(letter))
    if rejected:
        DEAD_LETTERS.labels(WORKER).inc(len(rejected))
        RECORDS.labels(WORKER, "dead_lettered").inc(len(rejected))
    s = settings.state
    for partition, part_rows in rows.items():
        counts = state.partition(partition).apply(
            part_rows, s.max_seq_len, s.allowed_lateness_s, settings.trainer.window_s
        )
        for outcome, n in counts.items():
            RECORDS.labels(WORKER, outcome).inc(n)
    now = time.time()
    BATCH_SIZE.labels(WORKER).observe(len(events))
    for ev in events:
        LATENCY.labels(WORKER).observe(max(0.0, now - ev.message.timestamp / 1000))


@app.agent(interactions)
async def ingest(stream):
    async for events in stream.take_events(settings.worker.take_max, within=settings.worker.take_within_s):
        await handle_batch(events)


@app.on_partitions_assigned.connect
async def on_assigned(sender, assigned, **kwargs) -> None:
    owned.update(tp.partition for tp in assigned if tp.topic == settings.topics.interactions)


@app.on_partitions_revoked.connect
async def on_revoked(sender, revoked, **kwargs) -> None:
    for tp in revoked:
        if tp.topic == settings.topics.interactions:
            owned.discard(tp.partition)
            state.release(tp.partition)
