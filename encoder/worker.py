"""The encoder worker: `items` -> content embeddings (and item-tower vectors) in the vector store.

Run it with `faust -A encoder.worker worker` (deploy/ does). The agent takes micro-batches of up to
`encoder.pool_batches * encoder.batch_size` records or `encoder.flush_ms` and hands each to plain
functions (the encoder sorts a micro-batch by token length into forward passes of `batch_size`:
a backlog is encoded with as little padding as the encoder alone; a trickle, one small pass each):

1. `parse_batch` (pure): decode each record, build its prompt; the last record of an item id in the
   batch wins. A record with a null value and a key (a Kafka tombstone) deletes the key's item, like
   one with `"deleted": true`. Any error while reading one record makes it a dead letter with its
   reason; the rest of the batch goes on.
2. `Pipeline.count_tokens` (in the executor): prompts longer than `encoder.max_tokens` are truncated;
   each is recorded (row flag `truncated`, a notice on `items.dlq`, a counter).
3. the dead letters are sent and their delivery awaited: a crash after this re-sends, never loses them.
4. `Pipeline.write` (in the executor, so the event loop keeps heart-beating while the LLM runs): the
   forward passes for the batch's cache misses (`ContentEncoder`), then upserts into `content` and, when
   the registry has a current model version, the item tower's vectors into that version's collection;
   tombstones delete the item from `content`, from every `items_<version>` collection and from the titles.
Steps 2 and 4 run the whole batch at once and, if that fails, each record alone: a record that fails
alone is dead-lettered, unless a known-good probe text fails too (the model or the device is broken,
not the record), and errors that are not about one record (the store down) are retried with backoff.

The agent acknowledges a batch's records itself (`noack_take`), only after `write` returns (rows
durably in the store); faust commits acknowledged offsets only. A SIGKILL at any moment therefore at
worst re-delivers records whose rows are already written, and primary-key upserts make that harmless.
A dead letter that cannot be delivered within `worker.send_timeout_ms`, or any unexpected error,
stops the process at once with a non-zero exit (`stop_loudly`): its batch stays unacknowledged and is
read again after the restart, never skipped.

Importing this module declares the faust app and its topics only; the model, the vector store and the
executor are built when the worker starts (`pipeline()`, `executor()`).

This process is the host of a milvus-lite vector store (see store/vectors.py): readers in other
processes are served through it.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import hashlib
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import NoReturn

import numpy as np
from prometheus_client import Counter, Histogram
from pydantic import ValidationError
from tenacity import AsyncRetrying, RetryCallState, retry_if_not_exception_type, stop_before_delay, wait_exponential

from config import Settings, load_settings
from encoder.content import ContentEncoder
from encoder.item_tower import ItemTower
from encoder.prompt import build_prompt
from store.registry import open_registry
from store.titles import write_titles
from store.vectors import CONTENT, ITEMS_PREFIX, VectorStore
from streams.app import make_app, raw_topic
from streams.metrics import BATCH_SIZE, DEAD_LETTERS, LATENCY, RECORDS, register_pages
from streams.schemas import (
    MAX_DLQ_PAYLOAD_BYTES,
    MIN_EVENT_TIME,
    DeadLetter,
    ItemRecord,
    RecordError,
    dead_letter,
    decode_item,
    encode,
    unexpected_error,
)

log = logging.getLogger(__name__)

WORKER = "encoder"
CHARS_PER_TOKEN_CAP = 32  # prompts are cut to max_tokens * 32 characters before tokenizing (megabyte texts)
MAX_LETTER_BYTES = 900_000  # a dead letter's key + value at most (a Kafka request's default limit is 1 MB)
MAX_REASON_CHARS = 2000  # a dead letter's reason is cut to this (a record can break thousands of rules)
MAX_ERRORS = 100  # and its list of field errors to this
# A text every model and tokenizer handles: when records fail one by one, it tells a broken model
# (the probe fails too: retry the batch) from bad records (the probe passes: dead-letter them).
PROBE = "Title: Glass beaker, 250 ml Brand: Pyrex Category: Labware"
EXIT_STOPPED = 3  # the exit status of `stop_loudly`

ITEMS_ENCODED = Counter("learn_encoder_items_encoded_total", "Item texts run through the LLM")
CACHE_HITS = Counter("learn_encoder_cache_hits_total", "Item texts whose embedding came from the cache")
TRUNCATED = Counter("learn_encoder_truncated_total", "Item texts cut at encoder.max_tokens")
TOKENS = Counter("learn_encoder_tokens_total", "Tokens run through the LLM (after truncation)")
STORE_RETRIES = Counter("learn_encoder_store_retries_total",
                        "Batch steps (token count, encode and store write) retried after an error not about one record")
ENCODE_SECONDS = Histogram(
    "learn_encoder_encode_seconds", "Time of one batch's encode (cache lookups + forward pass)",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32),
)  # fmt: skip
WRITE_SECONDS = Histogram(
    "learn_encoder_write_seconds", "Time of one batch's vector-store writes",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5),
)  # fmt: skip
FRESHNESS = Histogram(
    "learn_encoder_freshness_seconds", "From an item record's event_time to the item being searchable",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 3600),
)  # fmt: skip


# ---- parsing (pure) ------------------------------------------------------------------------------
@dataclass
class Pending:
    """One item to (re-)encode."""

    item_id: str
    prompt: str
    event_time: float
    raw: bytes
    partition: int | None = None
    offset: int | None = None
    key: bytes | None = None
    cut: bool = False  # the prompt was cut by characters (megabyte text)
    title: str = ""  # for display by the query path (store/titles.py)

    @property
    def text_hash(self) -> str:
        return hashlib.sha256(self.prompt.encode()).hexdigest()


@dataclass
class Batch:
    upserts: dict[str, Pending] = field(default_factory=dict)
    deletes: dict[str, float] = field(default_factory=dict)  # item id -> event time
    rejected: list[DeadLetter] = field(default_factory=list)
    superseded: int = 0  # records replaced by a later record of the same item in the batch

    def refuse(self, p: Pending, reason: str, topic: str) -> None:
        """Take an upsert out of the batch and dead-letter its record instead."""
        self.upserts.pop(p.item_id, None)
        self.rejected.append(letter(p.raw, RecordError(reason), topic, p.partition, p.offset, p.key))


def parse_batch(events, settings: Settings) -> Batch:
    """Decode a batch of faust events into upserts, deletes (last record per item wins) and dead letters."""
    topic = settings.topics.items
    max_chars = settings.encoder.max_tokens * CHARS_PER_TOKEN_CAP
    batch = Batch()
    for ev in events:
        m = ev.message
        try:
            rec = decode_record(ev.value, ev.key, m.timestamp)
            prompt = "" if rec.deleted else build_prompt(rec.text_fields(), settings.encoder.template)
            if not rec.deleted and not prompt:
                raise RecordError(f"no text for the template: fields {sorted(rec.text_fields())} fill none of it")
        except Exception as e:  # noqa: BLE001 - whatever one record breaks, it is that record's dead letter
            batch.rejected.append(letter(ev.value, as_record_error(e, "reading the record"), topic, m.partition,
                                         m.offset, ev.key))  # fmt: skip
            continue
        if rec.item_id in batch.upserts or rec.item_id in batch.deletes:
            batch.superseded += 1
        batch.upserts.pop(rec.item_id, None)
        batch.deletes.pop(rec.item_id, None)
        if rec.deleted:
            batch.deletes[rec.item_id] = rec.event_time
        else:
            batch.upserts[rec.item_id] = Pending(rec.item_id, prompt[:max_chars], rec.event_time, ev.value,
                                                 m.partition, m.offset, ev.key, cut=len(prompt) > max_chars,
                                                 title=(rec.title or "").strip())  # fmt: skip
    return batch


def decode_record(value: bytes | None, key: bytes | None, timestamp_ms: float | None) -> ItemRecord:
    """One `items` record as an ItemRecord. A null value is a tombstone: it deletes the item its key names."""
    if value is not None:
        return decode_item(value)
    if key is None:
        raise RecordError("null value (a tombstone) without a key: no item id to delete")
    return tombstone(key, timestamp_ms)


def tombstone(key: bytes, timestamp_ms: float | None) -> ItemRecord:
    """The deletion of the item whose id is `key` (validated like any item id), at the record's time."""
    try:
        item_id = key.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RecordError(f"null value (a tombstone) whose key is not UTF-8 (byte {e.start}): no item id") from None
    now = time.time()
    t = (timestamp_ms or 0) / 1000
    try:
        return ItemRecord(item_id=item_id, deleted=True, event_time=t if MIN_EVENT_TIME <= t <= now else now)
    except ValidationError as e:
        rules = "; ".join(err["msg"] for err in e.errors(include_url=False))
        raise RecordError(f"null value (a tombstone) whose key {item_id[:80]!r} is not an item id: {rules}") from None


def as_record_error(e: Exception, doing: str) -> RecordError:
    """A record's own error as is; anything else it raised, named with what was being done."""
    return e if isinstance(e, RecordError) else RecordError(f"{doing}: {unexpected_error(e).reason}")


def letter(raw: bytes | None, e: RecordError, topic: str, partition, offset, key) -> DeadLetter:
    """`dead_letter` (payload cut at MAX_DLQ_PAYLOAD_BYTES, payload_bytes the real size, null_value for a
    tombstone), made sure to be sendable: escapes can make the JSON text of a payload 6x its bytes
    (\\u0001), and a record can have thousands of field errors, so the reason and the error list are
    cut, then the payload and the key are halved until key + letter fit MAX_LETTER_BYTES."""
    x = dead_letter(raw, e, topic, partition, offset, key, max_payload=MAX_DLQ_PAYLOAD_BYTES)
    reason = x.reason if len(x.reason) <= MAX_REASON_CHARS else x.reason[: MAX_REASON_CHARS - 3] + "..."
    x = x.model_copy(update={"reason": reason, "errors": x.errors[:MAX_ERRORS]})
    for name in ("payload", "key"):
        while getattr(x, name) and len(encode(x)) + len((x.key or "").encode()) > MAX_LETTER_BYTES:
            value = getattr(x, name)
            x = x.model_copy(update={name: value[: len(value) // 2], "payload_truncated": True})
    return x


def batch_or_each(fn: Callable[[list], Sequence], xs: list, doing: str,
                  probe: Callable[[], object] | None = None) -> tuple[dict[int, object], dict[int, str]]:  # fmt: skip
    """`fn(xs)` at once or, if that raises, `fn([x])` for each x alone: ({index: result}, {index: reason}).

    When some fail alone, `probe()` (default: `fn([PROBE])`) decides whose fault it is: if it raises
    too, the error is not about those records (a broken model or device) and propagates, so the batch
    is retried instead of dead-lettered."""
    try:
        return dict(enumerate(fn(xs))), {}
    except Exception:  # noqa: BLE001 - find the records that fail alone
        log.exception("%s of %d records at once failed: trying each alone", doing, len(xs))
    done, failed = {}, {}
    for i, x in enumerate(xs):
        try:
            done[i] = fn([x])[0]
        except Exception as e:  # noqa: BLE001
            failed[i] = as_record_error(e, doing).reason
    if failed:
        (probe or (lambda: fn([PROBE])))()
    return done, failed


def truncation_letter(p: Pending, n_tokens: int, settings: Settings) -> DeadLetter:
    """The notice for an item that was encoded from its first max_tokens tokens only."""
    m = settings.encoder.max_tokens
    size = f"at least {n_tokens}" if p.cut else str(n_tokens)
    e = RecordError(f"truncated: the prompt has {size} tokens, over encoder.max_tokens={m}; "
                    f"the item was encoded from its first {m} tokens and is searchable")  # fmt: skip
    return letter(p.raw, e, settings.topics.items, p.partition, p.offset, p.key)


# ---- the work (blocking; runs in the executor) -----------------------------------------------
@dataclass
class WriteResult:
    encoded: int = 0
    cache_hits: int = 0
    upserted: int = 0
    deleted: int = 0
    tokens: int = 0
    encode_s: float = 0.0
    write_s: float = 0.0
    version: str | None = None
    failed: list[tuple[Pending, str]] = field(default_factory=list)  # items the encoder refused


class Pipeline:
    """The encoder, the vector store and the item tower of one worker process."""

    def __init__(self, settings: Settings):
        self.settings = settings
        if settings.encoder.threads > 0:
            import torch

            torch.set_num_threads(settings.encoder.threads)
        self.encoder = ContentEncoder(settings.encoder, settings.models_path, settings.cache_path)
        self.store = VectorStore(settings.vector_uri, settings.vectors.token)
        self.tower = ItemTower(open_registry(settings))

    def warm_up(self) -> None:
        """Load the model and open the store before the first record, so it waits for neither."""
        self.store.open()
        self.store.ensure_collection(CONTENT, self.encoder.dim)
        self.follow_registry()

    def close(self) -> None:
        self.store.close()
        if self.encoder.cache is not None:  # vectors put while another worker held the cache's lock
            self.encoder.cache.flush()

    def count_tokens(self, prompts: list[str]) -> tuple[dict[int, int], dict[int, str]]:
        """Token counts by prompt index, and the prompts the tokenizer refused (index -> reason)."""
        tok = self.encoder.llm.tokenizer  # loading the model is about no record: its errors propagate

        def lengths(xs: list[str]) -> list[int]:
            return [len(x) for x in tok(xs, add_special_tokens=True, truncation=False)["input_ids"]]

        return batch_or_each(lengths, prompts, "counting tokens")

    def follow_registry(self) -> None:
        """Pick up a newly promoted version; fill its collection with the items it lacks."""
        if not self.tower.refresh():
            return
        name = self.tower.version.collection
        have = set(self.store.ids(name)) if self.store.has(name) else set()
        missing = [i for i in self.store.ids(CONTENT) if i not in have]
        for start in range(0, len(missing), 512):
            rows = list(self.store.get(CONTENT, missing[start : start + 512], with_vectors=True).values())
            if rows:
                self._upsert_items([r.item_id for r in rows], np.stack([r.vector for r in rows]),
                                   [r.text_hash for r in rows], [r.event_time for r in rows],
                                   [r.truncated for r in rows])  # fmt: skip
        log.info("model version %s: %d items added to %s", self.tower.version.name, len(missing), name)

    def _upsert_items(self, ids, content, hashes, times, truncated) -> None:
        if not ids:
            return
        vecs = self.tower(content, ids)  # ids: a version's EASE rows are looked up by item id
        name = self.tower.version.collection
        self.store.ensure_collection(name, vecs.shape[1])
        self.store.upsert(name, ids, vecs, hashes, f"{self.tower.version.name}|{self.encoder.model_id}",
                          times, truncated)  # fmt: skip

    def _encode(self, pending: list[Pending], result: WriteResult) -> tuple[list[Pending], np.ndarray]:
        """One pass over the batch; if it fails, item by item, refusing the ones that fail alone."""

        def encode(prompts: list[str]) -> np.ndarray:
            vecs = self.encoder.encode(prompts)
            result.encoded += self.encoder.last_stats.encoded
            result.cache_hits += self.encoder.last_stats.cache_hits
            return vecs

        done, failed = batch_or_each(encode, [p.prompt for p in pending], "encoding", probe=self._probe)
        result.failed += [(pending[i], reason) for i, reason in failed.items()]
        ok = sorted(done)
        vecs = np.stack([done[i] for i in ok]) if ok else np.zeros((0, self.encoder.dim), np.float32)
        return [pending[i] for i in ok], vecs

    def _probe(self) -> None:
        """Run the model on PROBE past the embedding cache (a cache hit would prove nothing)."""
        ContentEncoder(self.settings.encoder, self.settings.models_path, cache=None, llm=self.encoder.llm).encode([PROBE])

    def write(self, batch: Batch, truncated: set[str], n_tokens: dict[str, int]) -> WriteResult:
        result = WriteResult()
        self.follow_registry()
        t0 = time.perf_counter()
        pending, content = self._encode(list(batch.upserts.values()), result)
        result.encode_s = time.perf_counter() - t0
        result.tokens = sum(min(n_tokens.get(p.item_id, 0), self.settings.encoder.max_tokens) for p in pending)

        t1 = time.perf_counter()
        if pending:
            ids = [p.item_id for p in pending]
            hashes = [p.text_hash for p in pending]
            times = [p.event_time for p in pending]
            cut = [p.item_id in truncated for p in pending]
            # The searchable item-tower rows first: a content row then implies the item is searchable
            # (a crash in between re-delivers the record, and both upserts are idempotent).
            if self.tower.version is not None:
                self._upsert_items(ids, content, hashes, times, cut)
            self.store.ensure_collection(CONTENT, content.shape[1])
            self.store.upsert(CONTENT, ids, content, hashes, self.encoder.model_id, times, cut)
            result.upserted = len(pending)
        if batch.deletes:
            for name in self.store.collections():
                if name == CONTENT or name.startswith(ITEMS_PREFIX):
                    self.store.delete(name, batch.deletes)
            result.deleted = len(batch.deletes)
        # Titles for the query path's results (serving/ reads them; the vector store holds no display text).
        write_titles(self.settings.titles_path, {p.item_id: p.title for p in pending if p.title}, batch.deletes)
        result.write_s = time.perf_counter() - t1
        result.version = self.tower.version.name if self.tower.version else None
        return result


# ---- the faust app ---------------------------------------------------------------------------
settings = load_settings()
app = make_app(WORKER, settings)
items = raw_topic(app, settings.topics.items)
dead_letters = raw_topic(app, settings.topics.items_dlq)
register_pages(app, WORKER)


@functools.cache
def pipeline() -> Pipeline:
    """This process's pipeline, built on first use (the warm-up task at start), never at import."""
    p = Pipeline(settings)
    atexit.register(p.close)
    return p


@functools.cache
def executor() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(1, thread_name_prefix="encoder")  # one batch at a time, in order


async def in_executor(fn, *args):
    return await asyncio.get_running_loop().run_in_executor(executor(), fn, *args)


def stop_loudly(why: str) -> NoReturn:
    """Log and end the process now, with EXIT_STOPPED: no shutdown path runs that could commit the
    current batch's offsets (they were never acknowledged), so a restart reads the batch again."""
    log.critical("%s: stopping the encoder worker (exit status %d); the batch is not acknowledged and is "
                 "read again after a restart", why, EXIT_STOPPED, exc_info=sys.exc_info()[0] is not None)  # fmt: skip
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(EXIT_STOPPED)


class _NoAck(TimeoutError):
    """A send still pending at the deadline: not retried (it is never cancelled, see below)."""


async def send_dead_letters(letters: list[DeadLetter]) -> None:
    """Send each and wait for the broker's acks, retrying with backoff (0.5 s doubling to 5 s) while
    the next try starts within `worker.send_timeout_ms`; then stop the worker (a record that cannot be
    dead-lettered must not be acknowledged)."""
    if not letters:
        return
    timeout = settings.worker.send_timeout_ms / 1000
    deadline = time.monotonic() + timeout

    async def send_once() -> None:
        # Waited on with a deadline, never cancelled: a send that is still pending at the deadline (the
        # producer waits for metadata of a topic the broker lacks) ends with the process in stop_loudly.
        send = asyncio.ensure_future(_send_all(letters))
        done, _ = await asyncio.wait({send}, timeout=max(0.0, deadline - time.monotonic()))
        if not done:
            raise _NoAck(f"no ack within {timeout}s")
        send.result()

    def warn(state: RetryCallState) -> None:
        error = state.outcome.exception()
        log.warning("sending %d dead letters failed (%s: %s): retrying in %.1fs", len(letters),
                    type(error).__name__, error, state.upcoming_sleep)  # fmt: skip

    retrying = AsyncRetrying(retry=retry_if_not_exception_type(_NoAck), wait=wait_exponential(0.5, max=5.0),
                             stop=stop_before_delay(timeout), before_sleep=warn, reraise=True)  # fmt: skip
    try:
        await retrying(send_once)
    except Exception as error:  # noqa: BLE001 - every failure stops the worker, with its reason
        stop_loudly(f"{len(letters)} dead letters could not be sent to {settings.topics.items_dlq!r} within "
                    f"{timeout}s (worker.send_timeout_ms): {type(error).__name__}: {error}")  # fmt: skip
    DEAD_LETTERS.labels(WORKER).inc(len(letters))


async def _send_all(letters: list[DeadLetter]) -> None:
    futures = [await dead_letters.send(key=x.key.encode() if x.key else None, value=encode(x)) for x in letters]
    for fut in futures:
        await fut


async def until_done(fn, *args, doing: str):
    """Run `fn` in the executor; retry on errors, forever, backing off from 0.5 s doubling to 30 s
    (they are not about one record, and giving up on the batch would skip it)."""

    def count_and_log(state: RetryCallState) -> None:
        STORE_RETRIES.inc()
        log.error("%s failed: retrying in %.1fs", doing, state.upcoming_sleep, exc_info=state.outcome.exception())

    retrying = AsyncRetrying(wait=wait_exponential(0.5, max=30.0), before_sleep=count_and_log)
    return await retrying(in_executor, fn, *args)


async def handle_batch(events) -> None:
    batch = parse_batch(events, settings)
    topic, max_tokens = settings.topics.items, settings.encoder.max_tokens
    pending = list(batch.upserts.values())
    counts, refused = ({}, {})
    if pending:
        counts, refused = await until_done(pipeline().count_tokens, [p.prompt for p in pending],
                                           doing=f"counting the tokens of {len(pending)} items")  # fmt: skip
    for i, reason in refused.items():
        batch.refuse(pending[i], reason, topic)
    n_tokens = {pending[i].item_id: n for i, n in counts.items()}
    over = [p for p in batch.upserts.values() if p.cut or n_tokens[p.item_id] > max_tokens]
    # dead letters first: a crash after this re-sends, never loses them
    await send_dead_letters(batch.rejected + [truncation_letter(p, n_tokens[p.item_id], settings) for p in over])
    result = await until_done(pipeline().write, batch, {p.item_id for p in over}, n_tokens,
                              doing=f"writing a batch of {len(batch.upserts)} items")  # fmt: skip
    await send_dead_letters([letter(p.raw, RecordError(reason), topic, p.partition, p.offset, p.key)
                             for p, reason in result.failed])  # fmt: skip
    record_metrics(events, batch, result, len(over))


def record_metrics(events, batch: Batch, result: WriteResult, truncated: int) -> None:
    now = time.time()
    # Each record has one outcome: upserted after an LLM pass or from the cache, deleted, replaced by a
    # later record of the same item in its batch, or refused. (Truncation notices are dead letters too.)
    outcomes = {"encoded": result.upserted - result.cache_hits, "cache_hit": result.cache_hits,
                "deleted": result.deleted, "superseded": batch.superseded,
                "dead_lettered": len(batch.rejected) + len(result.failed)}  # fmt: skip
    for outcome, n in outcomes.items():
        if n:
            RECORDS.labels(WORKER, outcome).inc(n)
    ITEMS_ENCODED.inc(result.encoded)
    CACHE_HITS.inc(result.cache_hits)
    TRUNCATED.inc(truncated)
    TOKENS.inc(result.tokens)
    BATCH_SIZE.labels(WORKER).observe(len(events))
    ENCODE_SECONDS.observe(result.encode_s)
    WRITE_SECONDS.observe(result.write_s)
    for ev in events:
        LATENCY.labels(WORKER).observe(max(0.0, now - ev.message.timestamp / 1000))
    for t in [p.event_time for p in batch.upserts.values()] + list(batch.deletes.values()):
        FRESHNESS.observe(max(0.0, now - t))


@app.agent(items)
async def encode_items(stream):
    within = settings.encoder.flush_ms / 1000
    take = settings.encoder.batch_size * max(1, settings.encoder.pool_batches)
    # noack_take: faust acknowledges nothing by itself, not even when this agent crashes or is cancelled.
    async for events in stream.noack_take(take, within=within):
        try:
            await handle_batch(events)
        except Exception:  # noqa: BLE001 - a bug, not a record: never let the batch be acknowledged
            stop_loudly(f"handling a batch of {len(events)} records failed")
        for ev in events:
            await stream.ack(ev)


@app.task
async def warm_up() -> None:
    try:
        await in_executor(pipeline().warm_up)
    except Exception:  # noqa: BLE001 - the first batch retries
        log.exception("warm-up failed")
