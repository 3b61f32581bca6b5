"""The interaction worker: `interactions` -> per-user sequences in the state store, exactly once.

Run it with `faust -A streams.interaction_worker worker` (deploy/ does). The faust app gives the
process its lifecycle, logging, web server (/metrics, /counts) and signals; the consumption itself is
a batch loop over an aiokafka consumer in its own consumer group, because faust's per-message stream
path tops out below the ingest target here (measured: ~8.7k events/s for an agent that does nothing,
against ~28k for a bare kafka-python consumer on the same 2 cores).

Exactly once: on assignment each partition's state database is opened and the consumer *seeks to the
offset stored in it*; each batch's bad records go to `interactions.dlq` first, then the state changes
and the next offset are written in one atomic rocksdict write (store/state.py). A kill at any moment,
or a partition moving to another worker, neither loses nor double-applies an event. Offsets are also
committed to Kafka after each write, for lag monitoring only.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from config import load_settings
from store.state import Entry, StateStore
from streams.app import make_app, raw_topic
from streams.metrics import BATCH_SIZE, DEAD_LETTERS, LATENCY, RECORDS, register_pages
from streams.schemas import DeadLetter, RecordError, dead_letter, decode_interaction, encode

WORKER = "interactions"
log = logging.getLogger(__name__)

settings = load_settings()
app = make_app(WORKER, settings, has_agents=False)
dead_letters = raw_topic(app, settings.topics.interactions_dlq)
state = StateStore(settings.state_path, settings.topics.interactions, sync=settings.worker.sync_writes)
register_pages(app, WORKER)


def parse_records(records: Iterable, topic: str) -> tuple[list, list[DeadLetter]]:
    """(offset, entry, user) rows for the state and dead letters for the bad records. Pure."""
    rows, rejected = [], []
    for m in records:
        try:
            rec = decode_interaction(m.value)
        except RecordError as e:
            rejected.append(dead_letter(m.value, e, topic, m.partition, m.offset, m.key))
            rows.append((m.offset, None, None))  # only moves the offset
            continue
        rows.append((m.offset, Entry(rec.event_time, rec.item_id, rec.action.value, rec.event_id), rec.user_id))
    return rows, rejected


async def handle_partition_batch(tp: TopicPartition, records: list) -> int:
    """Dead letters first (a crash after this re-sends, never loses them), then one atomic write."""
    rows, rejected = parse_records(records, tp.topic)
    for letter in rejected:
        await dead_letters.send(key=letter.key.encode() if letter.key else None, value=encode(letter))
    if rejected:
        DEAD_LETTERS.labels(WORKER).inc(len(rejected))
        RECORDS.labels(WORKER, "dead_lettered").inc(len(rejected))
    s = settings.state
    counts = state.partition(tp.partition).apply(rows, s.max_seq_len, s.allowed_lateness_s, s.slot_s)
    for outcome, n in counts.items():
        RECORDS.labels(WORKER, outcome).inc(n)
    now = time.time()
    BATCH_SIZE.labels(WORKER).observe(len(records))
    observe = LATENCY.labels(WORKER).observe
    for m in records[:: max(1, len(records) // 100)]:  # a sample: the histogram, not the hot path
        observe(max(0.0, now - m.timestamp / 1000))
    return state.partition(tp.partition).next_offset


class SeekToStoredOffsets(ConsumerRebalanceListener):
    """Partitions follow their state: open it and resume from its offset; close it when revoked."""

    def __init__(self, consumer: AIOKafkaConsumer):
        self.consumer = consumer

    async def on_partitions_revoked(self, revoked) -> None:
        for tp in revoked:
            state.release(tp.partition)

    async def on_partitions_assigned(self, assigned) -> None:
        for tp in assigned:
            # Opening waits while a previous owner (another process) still holds the database.
            part = await asyncio.get_running_loop().run_in_executor(None, state.partition, tp.partition)
            self.consumer.seek(tp, part.next_offset)
            log.info("assigned %s: resuming at stored offset %d", tp, part.next_offset)


@app.task
async def consume() -> None:
    b, w = settings.broker, settings.worker
    consumer = AIOKafkaConsumer(
        bootstrap_servers=b.bootstrap,
        group_id=f"{app.conf.id}-state",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=b.session_timeout_ms,
        heartbeat_interval_ms=b.heartbeat_interval_ms,
        rebalance_timeout_ms=w.rebalance_timeout_ms,
        max_partition_fetch_bytes=8 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
        # Short broker-side wait: an idle fetch returns quickly, so a new event is seen within ~ms.
        fetch_max_wait_ms=w.fetch_max_wait_ms,
    )
    consumer.subscribe([settings.topics.interactions], listener=SeekToStoredOffsets(consumer))
    await consumer.start()
    try:
        while True:
            batches = await consumer.getmany(timeout_ms=int(w.take_within_s * 1000), max_records=w.take_max)
            done = {}
            for tp, records in batches.items():
                # Only partitions whose state the rebalance listener has opened (and sought to the
                # stored offset): records fetched before that are fetched again after the seek.
                if tp in consumer.assignment() and state.is_open(tp.partition):
                    done[tp] = OffsetAndMetadata(await handle_partition_batch(tp, records), "")
            if done:
                try:
                    await consumer.commit(done)
                except Exception as e:  # lag bookkeeping only: the state holds the real offsets
                    log.warning("offset commit failed (harmless, state keeps its own offsets): %s", e)
    finally:
        await consumer.stop()
        state.close()
