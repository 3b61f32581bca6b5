"""The interaction worker: `interactions` -> per-user sequences in the state store, exactly once.

Run it with `faust -A streams.interaction_worker worker` (deploy/ does). The faust app gives the
process its lifecycle, logging, web server (/metrics, /counts) and signals; the consumption itself is
a batch loop over an aiokafka consumer in its own consumer group, because faust's per-message stream
path tops out below the ingest target here (measured: ~8.7k events/s for an agent that does nothing,
against ~28k for a bare kafka-python consumer on the same 2 cores). Importing this module opens no
database and talks to no broker: the consume task does, when the worker starts.

One user, one partition, whatever the producer's partitioner: the state of partition p holds the
users with `murmur2(user id) % N == p` (streams/repartition.py). A record consumed from partition p of
`interactions` that belongs elsewhere is forwarded to its partition of `interactions.repartition` (same
partition count, range assignor: one worker owns partition p of both topics), and the source offset
moves past it only once the broker has acknowledged the forward.

Exactly once: on assignment each input partition is sought to the offset stored in its state
database; each batch's forwards and dead letters are acknowledged first, then the state changes and
the input's next offset (with the fingerprint of its last record) are written in one atomic rocksdict
write (store/state.py). A kill between the two re-sends them: a forward applied twice is a duplicate
event id, which the sequence rule ignores.

Offset regression: after a seek the first record must be the one the fingerprint names. If the offset
now holds another record, or lies beyond the broker's log (the topic was recreated, a memory broker
restarted at 0), the worker logs it, counts it in `learn_offset_regressions_total` and consumes the
partition again from the log's start (event-id deduplication keeps the effect exactly once). The same
check runs whenever the consumer delivers an offset below the stored one (its position was reset), for
a partition that delivered nothing for `worker.regression_probe_s` (Tansu answers a fetch beyond its
log with no records instead of OFFSET_OUT_OF_RANGE) and for the first records after such a pause.

Changelog (store/changelog.py has the records): each batch's changed sequences and one offsets
record go to partition p of the compacted changelog topic in the same round of sends as its forwards
and dead letters, all acknowledged before the local write, which also stores the changelog offset it
reaches (`o/changelog`). aiokafka keeps one produce request per broker in flight and mutes a
partition while its batch is in flight, so a partition's records land in the order they were sent:
a batch's offsets record comes after its user records.

Restore on assignment: the assigned partitions are paused until their state is restored and they
are sought (a fetch meanwhile would move positions that the seek must decide; measured: without the
pause the exactly-once test lost events). Before a state partition is used, the worker produces a marker record to its
changelog partition and takes the marker's offset M from the acknowledgement, then reads the
partition from the database's `o/changelog` (0 for a missing database) until it sees that marker at
M. That end comes from the broker's answer to our own write, never from an end-offset request
(Tansu reports the start of the last batch + 1, and answers a fetch beyond its log with nothing), and
a read that reaches M has seen every record written before the marker. The records read are folded
(last value per key wins; records after the last offsets record, an unfinished batch, are left out)
and, if their offsets record is ahead of the database's offsets, written over the database in one
atomic write with the window keys derived from the events' times; THEN the inputs are sought to the
(restored) offsets. A database ahead of its changelog (the changelog was recreated or its broker
restarted empty, or the database predates the changelog) publishes its whole state to the changelog
instead. A restore that fails (broker away past `worker.restore_timeout_s`) stops the worker.

A batch whose partition is revoked while its sends are in flight is not written locally (the
database object it was computed from is closed; the partition's owner applies it again, or restored
it from the changelog).

Not fenced: two owners of one partition at once (a paused old owner that wakes up after its
partitions moved) could both write the changelog; the group protocol is the only guard, as it is
for the forwards. Kafka Streams fences them with transactions.

Failures: any exception while handling one record dead-letters that record (with the exception as
the reason) and the rest of its batch is applied. A record that can be neither forwarded nor
dead-lettered stops the worker: the task raises, faust crashes the app, the process exits non-zero,
and the offset is not stored, so a restart tries that record again.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter
from collections.abc import Iterable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.structs import OffsetAndMetadata

from config import Settings, load_settings
from store.changelog import MARKER_KEY, Folder, Offsets, marker_record, offsets_record, state_puts, user_record
from store.state import SOURCE, Pending, PartitionState, StateStore
from streams.app import make_app
from streams.kafka_options import client_options
from streams.metrics import BATCH_SIZE, DEAD_LETTERS, LATENCY, OFFSET_REGRESSIONS, RECORDS, register_pages
from streams.repartition import Forward, Resume, check_resume, fingerprint, letter_for, route
from streams.schemas import DeadLetter, encode, unexpected_error

WORKER = "interactions"
REPARTITION = "repartition"  # the state's name for the repartition topic's input
log = logging.getLogger(__name__)

settings = load_settings()
app = make_app(WORKER, settings, has_agents=False)
register_pages(app, WORKER)


class FatalError(RuntimeError):
    """A record could be neither forwarded nor dead-lettered: stop, do not move past it."""


def input_names(settings: Settings) -> dict[str, str]:
    """Topic -> the name its offsets have in the state."""
    t = settings.topics
    return {t.interactions: SOURCE, t.interactions_repartition_topic: REPARTITION}


def part_number(part: PartitionState) -> int:
    """The partition number of a database `<topic>-p<N>` (StateStore's layout)."""
    return int(part.path.name.rpartition("p")[2])


def check_partition_counts(counts: dict[str, int], names: Iterable[str]) -> int:
    """The common partition count of the co-partitioned topics, or FatalError. Pure."""
    missing = [n for n in names if not counts.get(n)]
    if missing:
        raise FatalError(f"topics {missing} do not exist: create them first (`learn up` / streams.topics)")
    found = {counts[n] for n in names}
    if len(found) != 1:
        raise FatalError(f"co-partitioned topics need one partition count, found {counts}")
    return found.pop()


class InteractionWorker:
    """The consume loop: one aiokafka consumer over both input topics, one producer for forwards and
    dead letters, the partition databases of what it is assigned."""

    def __init__(self, settings: Settings, consumer: AIOKafkaConsumer, producer: AIOKafkaProducer, n_partitions: int):
        t = settings.topics
        self.settings, self.consumer, self.producer, self.n = settings, consumer, producer, n_partitions
        self.inputs = input_names(settings)
        self.repartition_topic, self.dlq_topic = t.interactions_repartition_topic, t.interactions_dlq
        self.state = StateStore(settings.state_path, t.interactions, sync=settings.worker.sync_writes,
                                sources=(SOURCE, REPARTITION))  # fmt: skip
        # tp -> (offset sought, offset applied last, its fingerprint): what the next records must show
        self.verifying: dict[TopicPartition, tuple[int, int, bytes | None]] = {}
        self.delivered_at: dict[TopicPartition, float] = {}  # when records last came
        self.checked_at: dict[TopicPartition, float] = {}  # when the partition was last sought / probed
        self.last_probe = 0.0
        self.changelog = t.changelog_topic if settings.state.changelog else None
        self.ready: set[int] = set()  # state partitions opened (and restored) since their assignment
        self.failed: BaseException | None = None  # a restore that failed in the rebalance listener

    def usable(self, p: int) -> bool:
        return p in self.ready and self.state.is_open(p)

    # ---- assignment ----
    async def on_assigned(self, assigned) -> None:
        """Open (and restore) each state partition, seek its inputs to the stored offsets, then let
        them be fetched: paused until then, so no fetch moves a position the seek must decide."""
        loop = asyncio.get_running_loop()
        assigned = sorted(assigned)
        self.consumer.pause(*assigned)
        try:
            parts = {}
            for p in sorted({tp.partition for tp in assigned}):
                # Opening waits while a previous owner (another process) still holds the database.
                parts[p] = await loop.run_in_executor(None, self.state.partition, p)
                if p not in self.ready and self.changelog:
                    await self.restore(p, parts[p])
            for tp in assigned:
                self.seek_to_stored(tp, parts[tp.partition])
                log.info("assigned %s: resuming at stored offset %d", tp, parts[tp.partition].next_offsets[self.inputs[tp.topic]])
            self.ready.update(parts)
            self.consumer.resume(*[tp for tp in assigned if tp in self.consumer.assignment()])
        except Exception as e:  # noqa: BLE001 - aiokafka would only log it: the loop raises it
            log.critical("cannot take over partitions %s: %r", assigned, e)
            self.failed = e

    def on_revoked(self, revoked) -> None:
        for tp in revoked:
            self.verifying.pop(tp, None)
            self.delivered_at.pop(tp, None)
            self.checked_at.pop(tp, None)
            self.ready.discard(tp.partition)
            self.state.release(tp.partition)

    # ---- the changelog ----
    async def restore(self, p: int, part: PartitionState) -> None:
        """Bring the database of state partition `p` up to its changelog (module docstring)."""
        token = uuid.uuid4().hex.encode()
        key, value = marker_record(token)
        marker = (await self.acked([(key, value)], p)) - 1
        start = part.changelog_next or 0
        if start > marker:  # the changelog holds less than the database: recreated, or emptied
            log.warning("changelog %s[%d] ends at %d, before the %d this database holds: publishing its state",
                        self.changelog, p, marker, start)  # fmt: skip
            await self.publish_all(p, part)
            return
        t0 = time.monotonic()
        restored = await self.read_changelog(p, start, marker, token)
        o = restored.offsets
        local = part.next_offsets
        if o is not None and any(o.next_offsets.get(k, 0) > v for k, v in local.items()):
            loop = asyncio.get_running_loop()
            puts, _ = await loop.run_in_executor(None, state_puts, restored, self.settings.state.slot_s, part.watermark)
            await loop.run_in_executor(None, part.write_restored, puts, marker + 1)
            log.info("restored %s[%d] from offset %d: %d records, %d users, %d left out (unfinished batch) in "
                     "%.2f s; offsets %s -> %s", self.changelog, p, start, restored.records, len(restored.users),
                     restored.discarded, time.monotonic() - t0, local, part.next_offsets)  # fmt: skip
        elif (o is None and part.changelog_next is None and part.has_users) or (
            o is not None and any(v > o.next_offsets.get(k, 0) for k, v in local.items())
        ):
            log.warning("database of partition %d is ahead of changelog %s: publishing its state", p, self.changelog)
            await self.publish_all(p, part)
        else:
            part.write_restored([], marker + 1)

    async def read_changelog(self, p: int, start: int, marker: int, token: bytes):
        """Fold changelog partition `p` from `start` up to our marker record at offset `marker`."""
        tp = TopicPartition(self.changelog, p)
        w = self.settings.worker
        consumer = AIOKafkaConsumer(**client_options(self.settings.broker, "aiokafka"), group_id=None,
                                    enable_auto_commit=False, auto_offset_reset="earliest",
                                    fetch_max_wait_ms=max(w.fetch_max_wait_ms, 100),
                                    max_partition_fetch_bytes=8 * 1024 * 1024)  # fmt: skip
        folder = Folder()
        await consumer.start()
        try:
            consumer.assign([tp])
            consumer.seek(tp, start)
            last_progress = time.monotonic()
            while True:
                batch = await consumer.getmany(tp, timeout_ms=500, max_records=20_000)
                for m in batch.get(tp, ()):
                    if m.offset >= marker:
                        if m.offset == marker and m.key == MARKER_KEY and m.value == token:
                            return folder.take()
                        raise FatalError(f"changelog {tp} holds {m.key!r} at offset {m.offset}, where the "
                                         f"broker acknowledged our marker at {marker}")  # fmt: skip
                    folder.add(m.key, m.value)
                    last_progress = time.monotonic()
                if time.monotonic() - last_progress > w.restore_timeout_s:
                    raise FatalError(f"changelog {tp}: nothing read for {w.restore_timeout_s} s before offset "
                                     f"{marker} (read {folder.done.records} records from {start})")  # fmt: skip
        finally:
            await consumer.stop()

    async def publish_all(self, p: int, part: PartitionState) -> None:
        """Write the whole database to the changelog (users, then its offsets record)."""
        records = [(k[2:], v) for k, v in part.db.items(from_key=b"u/") if k.startswith(b"u/")]
        records.append(offsets_record(self.offsets_of(part)))
        nxt = await self.acked(records, p)
        part.write_restored([], nxt)

    @staticmethod
    def offsets_of(part: PartitionState, p: Pending | None = None) -> Offsets:
        nxt, fps = dict(part.next_offsets), dict(part.fingerprints)
        if p is not None:
            nxt[p.source], fps[p.source] = p.next_offset, p.fingerprint
        counters = p.counters if p is not None else part.counters
        return Offsets(nxt, fps, dict(counters), p.watermark if p is not None else part.watermark)

    def changelog_records(self, part: PartitionState, p: Pending) -> list[tuple[bytes, bytes]]:
        if not self.changelog or p.empty:
            return []
        return [*(user_record(u, seq) for u, seq in p.users.items()), offsets_record(self.offsets_of(part, p))]

    async def acked(self, records: list[tuple[bytes, bytes]], p: int) -> int:
        """Send records to changelog partition `p`; the offset after the last, once all are acknowledged."""
        _, nxt = await self.send_all([], [], records, p)
        return nxt

    async def commit(self, part: PartitionState, p: Pending, forwards=(), letters=()) -> None:
        """Forwards, dead letters and the batch's changelog records acknowledged, then the local write."""
        records = self.changelog_records(part, p)
        n = part_number(part)
        _, nxt = await self.send_all(list(forwards), list(letters), records, n)
        if self.state.partitions.get(n) is not part:
            # Revoked while its sends were in flight (and maybe assigned again: a new database object,
            # restored from the changelog): not written here. Whoever owns the partition now applies
            # these records again from its stored offsets (or restored this batch from the changelog).
            log.info("partition %d was revoked while a batch was in flight: its local write is skipped", n)
            return
        part.commit(p, nxt)

    def seek_to_stored(self, tp: TopicPartition, part: PartitionState, sought: int | None = None) -> None:
        """Seek to the stored next offset - 1 (or earlier, to `sought`), so the record there can be
        checked against its fingerprint before anything after it is applied."""
        source = self.inputs[tp.topic]
        nxt = part.next_offsets[source]
        self.checked_at[tp] = time.monotonic()
        if nxt > 0:
            sought = nxt - 1 if sought is None else min(sought, nxt - 1)
            self.verifying[tp] = (sought, nxt - 1, part.fingerprints[source])
            self.consumer.seek(tp, sought)
        else:
            self.verifying.pop(tp, None)
            self.consumer.seek(tp, 0)

    async def probe(self, idle: list[TopicPartition]) -> None:
        """Partitions that delivered nothing for a while: is the record applied last still in the log?

        Needed because a broker need not say that a position lies beyond its log: Tansu answers such
        a fetch with no records (Apache Kafka with OFFSET_OUT_OF_RANGE), and reports a partition's end
        offset as the start of its last batch + 1. So: seek to that batch (which holds the record at
        stored next - 1 if the log is the one the state was built from) and check what comes."""
        try:
            ends = await asyncio.wait_for(self.consumer.end_offsets(idle), timeout=10)
        except Exception as e:  # broker away: try again at the next probe
            log.debug("end offsets unavailable for %s: %r", idle, e)
            ends = {}
        now = time.monotonic()
        for tp in idle:
            self.checked_at[tp] = now
            end = ends.get(tp)
            if end is None or tp not in self.consumer.assignment() or not self.usable(tp.partition):
                continue
            part = self.state.partition(tp.partition)
            if part.next_offsets[self.inputs[tp.topic]] > 0:
                # Not even an end offset of 0 is trusted (Tansu's s3 engine reported 0 for partitions
                # that had records): the scan decides, and an empty log decides when records come.
                self.seek_to_stored(tp, part, sought=max(end - 1, 0))

    # ---- one partition's batch ----
    async def handle(self, tp: TopicPartition, records: list, complete: bool) -> int | None:
        """Apply one partition's batch; return its next offset, or None when nothing was stored.
        `complete`: the consumer had nothing more buffered (the batch reaches the log's end)."""
        source = self.inputs[tp.topic]
        part = self.state.partition(tp.partition)
        if tp in self.verifying:
            sought, expected, expected_fp = self.verifying[tp]
            delivered = [(m.offset, fingerprint(m) if m.offset == expected else b"") for m in records]
            verdict, start = check_resume(delivered, sought, expected, expected_fp, complete)
            if verdict is Resume.PENDING:
                return None  # records the state already holds: looking further
            if verdict is Resume.REGRESSED:
                self.regressed(tp, part, source, records[0].offset)
                return None
            del self.verifying[tp]
            records = records[start:]
            if verdict is Resume.GAP and records[0].offset > expected + 1:
                log.warning("%s: offsets %d..%d were removed from the log before they were applied",
                            tp, expected + 1, records[0].offset - 1)  # fmt: skip
        elif records[0].offset < part.next_offsets[source]:
            # A record below what the state holds: the consumer's position was reset. Check the
            # record the state applied last before going on.
            self.seek_to_stored(tp, part)
            return None
        if not records:
            return None
        routed = route(records, tp.topic, tp.partition, self.n)
        counts = await self.apply(part, source, routed.rows, records, routed.forwards, routed.letters)
        counts["forwarded"] += len(routed.forwards)
        counts["dead_lettered"] += len(routed.letters)
        self.observe(records, counts)
        return part.next_offsets[source]

    def regressed(self, tp: TopicPartition, part: PartitionState, source: str, seen: int) -> None:
        nxt = part.next_offsets[source]
        log.warning(
            "offset regression on %s: the state applied up to offset %d, but the broker no longer has that "
            "record there (first record delivered: offset %d); the topic was recreated, the broker restarted "
            "empty or records were removed. Consuming it again from the start of its log; event-id "
            "deduplication keeps the effect exactly once", tp, nxt - 1, seen,
        )  # fmt: skip
        OFFSET_REGRESSIONS.labels(WORKER, tp.topic).inc()
        self.verifying.pop(tp, None)
        part.rebase(source, 0)
        self.consumer.seek(tp, 0)  # below the log's start too: the reset policy moves it there

    async def send(self, forwards: list[Forward], letters: list[DeadLetter]) -> None:
        """Forwards and dead letters, each acknowledged by the broker, or FatalError."""
        await self.send_all(forwards, letters, [], None)

    async def send_all(self, forwards: list[Forward], letters: list[DeadLetter],
                       changelog: list[tuple[bytes, bytes]], p: int | None) -> tuple[int, int | None]:  # fmt: skip
        """Forwards, dead letters and changelog records (to changelog partition `p`), all
        acknowledged by the broker, or FatalError. Returns (records sent, the changelog offset after
        the last changelog record, None without any)."""
        if not forwards and not letters and not changelog:
            return 0, None
        futures, what = [], []
        try:
            for f in forwards:
                what.append(f"forward to {self.repartition_topic}[{f.partition}]")
                futures.append(await self.producer.send(self.repartition_topic, f.value, key=f.key,
                                                        partition=f.partition, timestamp_ms=f.timestamp_ms))  # fmt: skip
            for x in letters:
                what.append(f"dead letter to {self.dlq_topic} for {x.source_topic}[{x.partition}]@{x.offset} "
                            f"({x.reason[:120]})")  # fmt: skip
                futures.append(await self.producer.send(self.dlq_topic, encode(x), key=x.key.encode() if x.key else None))
            n_other = len(futures)
            for key, value in changelog:
                what.append(f"changelog record to {self.changelog}[{p}]")
                futures.append(await self.producer.send(self.changelog, value, key=key, partition=p))
            results = await asyncio.gather(*futures, return_exceptions=True)
        except Exception as e:  # the send itself refused (no metadata for the topic, too large, ...)
            raise FatalError(f"cannot send {what[-1] if what else 'a forward or dead letter'}: {e!r}") from e
        failed = [(w, r) for w, r in zip(what, results) if isinstance(r, BaseException)]
        if failed:
            w, r = failed[0]
            raise FatalError(f"{len(failed)} send(s) failed after retries, first: {w}: {r!r}")
        offsets = [getattr(r, "offset", None) for r in results[n_other:]]
        nxt = max((o for o in offsets if o is not None), default=None)
        return len(results), (nxt + 1 if nxt is not None else None)

    async def apply(self, part: PartitionState, source: str, rows: list, records: list,
                    forwards: list[Forward] = (), letters: list[DeadLetter] = ()) -> Counter:  # fmt: skip
        """One atomic write for the batch, after its forwards, dead letters and changelog records are
        acknowledged. If preparing it raises, find the record(s) at fault: each row alone, a failing
        one dead-lettered (acknowledged) before the offset moves past it."""
        s = self.settings.state
        args = (s.max_seq_len, s.allowed_lateness_s, s.slot_s)
        try:
            pending = part.prepare(rows, *args, source=source, fingerprint=fingerprint(records[-1]))
        except Exception as e:  # noqa: BLE001 - isolate the record, never stop the partition
            log.warning("a batch of %d records on %s failed to apply (%r): applying them one by one", len(rows),
                        part.path.name, e)  # fmt: skip
        else:
            await self.commit(part, pending, forwards, letters)
            return pending.counts
        await self.send(list(forwards), list(letters))
        by_offset = {m.offset: m for m in records}
        counts: Counter = Counter()
        for row in rows:
            if self.state.partitions.get(part_number(part)) is not part:
                break  # revoked meanwhile (see commit)
            m = by_offset[row[0]]
            try:
                pending = part.prepare([row], *args, source=source, fingerprint=fingerprint(m))
            except Exception as e:  # noqa: BLE001
                await self.send([], [letter_for(m, unexpected_error(e), m.topic)])
                counts["dead_lettered"] += 1
                pending = part.prepare([(row[0], None, None)], *args, source=source, fingerprint=fingerprint(m))
            await self.commit(part, pending)
            counts += pending.counts
        return counts

    @staticmethod
    def observe(records: list, counts: Counter) -> None:
        for outcome, n in counts.items():
            if n:
                RECORDS.labels(WORKER, outcome).inc(n)
        if counts["dead_lettered"]:
            DEAD_LETTERS.labels(WORKER).inc(counts["dead_lettered"])
        now = time.time()
        BATCH_SIZE.labels(WORKER).observe(len(records))
        record_latency = LATENCY.labels(WORKER).observe
        for m in records[:: max(1, len(records) // 100)]:  # a sample: the histogram, not the hot path
            record_latency(max(0.0, now - m.timestamp / 1000))

    # ---- the loop ----
    async def run(self) -> None:
        w = self.settings.worker
        consumer = self.consumer
        while True:
            if self.failed is not None:
                raise FatalError(f"a partition could not be taken over: {self.failed!r}") from self.failed
            batches = await consumer.getmany(timeout_ms=int(w.take_within_s * 1000), max_records=w.take_max)
            complete = sum(len(r) for r in batches.values()) < w.take_max
            now = time.monotonic()
            done = {}
            for tp, records in batches.items():
                # Only partitions whose state the rebalance listener has opened (and sought to the
                # stored offset): records fetched before that are fetched again after the seek.
                if records and tp in consumer.assignment() and self.usable(tp.partition):
                    quiet_s = now - self.delivered_at.get(tp, now)
                    self.delivered_at[tp] = now
                    if quiet_s >= w.regression_probe_s and tp not in self.verifying:
                        # First records after a quiet stretch (a broker outage, a recreated topic that
                        # grew past our position): check the record applied last before applying.
                        self.seek_to_stored(tp, self.state.partition(tp.partition))
                        continue
                    nxt = await self.handle(tp, records, complete)
                    if nxt is not None:
                        done[tp] = OffsetAndMetadata(nxt, "")
            if done:
                try:
                    await consumer.commit(done)
                except Exception as e:  # lag bookkeeping only: the state holds the real offsets
                    log.warning("offset commit failed (harmless, state keeps its own offsets): %s", e)
            if now - self.last_probe >= w.regression_probe_s / 2:
                self.last_probe = now
                idle = [tp for tp in consumer.assignment() if self.usable(tp.partition)
                        and now - max(self.delivered_at.get(tp, 0.0), self.checked_at.get(tp, now)) >= w.regression_probe_s]  # fmt: skip
                if idle:
                    await self.probe(idle)


class Rebalance(ConsumerRebalanceListener):
    """Partitions follow their state: open it and resume from its offsets; close it when revoked."""

    def __init__(self, worker: InteractionWorker):
        self.worker = worker

    async def on_partitions_revoked(self, revoked) -> None:
        self.worker.on_revoked(revoked)

    async def on_partitions_assigned(self, assigned) -> None:
        await self.worker.on_assigned(assigned)


def make_clients(settings: Settings, group_id: str) -> tuple[AIOKafkaConsumer, AIOKafkaProducer]:
    b, w = settings.broker, settings.worker
    consumer = AIOKafkaConsumer(
        **client_options(b, "aiokafka"),
        group_id=group_id,
        enable_auto_commit=False,
        # Where a position no longer exists: the log's start; the fingerprint check tells a log that
        # was replaced (offset regression) from one that was only trimmed.
        auto_offset_reset="earliest",
        # Partition p of both inputs to one member (same partition counts, same subscription).
        partition_assignment_strategy=(RangePartitionAssignor,),
        session_timeout_ms=b.session_timeout_ms,
        heartbeat_interval_ms=b.heartbeat_interval_ms,
        rebalance_timeout_ms=w.rebalance_timeout_ms,
        max_partition_fetch_bytes=8 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
        # Short broker-side wait: an idle fetch returns quickly (the stack raises it on the s3 engine).
        fetch_max_wait_ms=w.fetch_max_wait_ms,
    )
    producer = AIOKafkaProducer(
        **client_options(b, "aiokafka"),
        acks="all",
        request_timeout_ms=w.send_timeout_ms,  # the producer retries meanwhile
        max_request_size=2 * 1024 * 1024,  # a forward is one compact record, a letter's payload is cut
        linger_ms=0,
    )
    return consumer, producer


@app.task
async def consume() -> None:
    t = settings.topics
    names = [t.interactions, t.interactions_repartition_topic]
    consumer, producer = make_clients(settings, f"{app.conf.id}-state")
    await producer.start()
    await consumer.start()
    worker = None
    try:
        await consumer.topics()  # fetches the cluster's metadata
        # the changelog is co-partitioned too (partition p holds state partition p), but not consumed here
        checked = names + ([t.changelog_topic] if settings.state.changelog else [])
        n = check_partition_counts({x: len(consumer.partitions_for_topic(x) or ()) for x in checked}, checked)
        worker = InteractionWorker(settings, consumer, producer, n)
        consumer.subscribe(names, listener=Rebalance(worker))
        await worker.run()
    except FatalError as e:
        log.critical("interaction worker stops, nothing stored past the failed record: %s", e)
        raise
    finally:
        await consumer.stop()
        await producer.stop()
        if worker is not None:
            worker.state.close()
