"""Chaos benchmark (issue 14): the `learn up` stack on the durable broker, a steady stream with every
bad-record class mixed in, and SIGKILLs of every process while it flows; then the stores are compared
with what was produced.

    .venv/bin/python -m bench.chaos [--interactions 5000] [--users 300] [--items 600] [--kills 3]
                                    [--duration 240] [--encoder minilm] [--out bench/results/chaos.json]

- Producers: half the interactions through kafka-python (murmur2 key hash), half through
  confluent-kafka at its default partitioner (librdkafka's CRC32 `consistent_random`), one in ten
  keyless; items through both. Every send is retried until the broker acknowledges it, so a record
  counts as sent only once it is in the log (a retry after a lost acknowledgement may store it twice:
  event-id deduplication must absorb that).
- Bad records (each with its own key "bad-<n>", so its dead letter can be found): malformed JSON,
  non-UTF-8, a null value on `interactions`, missing and wrong-typed fields, NaN and Infinity, a
  record over the size limit, a control character in an id, an event a week in the future. Null
  values on `items` are tombstones (the item must end up absent), as are `deleted: true` records.
  Valid but awkward: duplicates (the same event id again), out-of-order times (within the allowed
  lateness), items nobody knows yet.
- Kills: `--kills` rounds; in each, every supervised program (encoder, interactions, trainer, api,
  broker, s3), in random order, at random moments, gets SIGKILL; supervisord starts it again and the
  harness waits for the new pid before the next kill.
- API: a client asks for recommendations all along; non-2xx answers are counted, 5xx separately, and
  those during a broker or S3 outage separately again; refused connections (the API itself killed)
  are counted as `api_unreachable`.
- At the end, once the state and the vector store are quiet: every valid interaction must be in its
  user's one sequence exactly once, every valid item present once and deleted ones absent, every bad
  record in a dead-letter topic with a reason. `worker_crashes_on_input` counts the worker exits the
  harness did not cause (restarts minus kills; an exit caused by a broker outage counts too).

Writes bench/results/chaos.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from config import Settings, load_settings
from deploy.broker import free_port
from deploy.supervisor import START_ORDER, health
from deploy.supervisor import down as stack_down
from deploy.supervisor import up as stack_up
from store.state import StateReader
from store.vectors import CONTENT, open_store
from streams.schemas import MAX_RECORD_BYTES, Interaction, ItemRecord, encode

RESULTS = Path(__file__).parent / "results" / "chaos.json"
OUTAGE = ("broker", "s3")  # killing these makes the broker unavailable for a while


# ---- what is produced (pure, seeded) ------------------------------------------------------------
@dataclass
class Record:
    topic: str  # "items" | "interactions" (the settings' names are filled in when sending)
    key: bytes | None
    value: bytes | None
    client: str  # "kafka-python" | "confluent"


@dataclass
class Plan:
    records: list[Record] = field(default_factory=list)  # in send order
    interactions: dict[str, str] = field(default_factory=dict)  # valid event id -> user id
    items: set[str] = field(default_factory=set)  # valid items that must end up present
    deleted: set[str] = field(default_factory=set)  # items that must end up absent
    bad: dict[str, str] = field(default_factory=dict)  # bad record key -> its class


def bad_records(now: float) -> list[tuple[str, str, bytes | None]]:
    """(topic, class, value) for every bad-record class the schemas know."""
    ok = {"event_id": "bad", "user_id": "u-bad", "item_id": "i-bad", "event_time": now}
    item = {"item_id": "i-bad", "title": "t", "event_time": now}

    def j(d: dict, **kw) -> bytes:
        return json.dumps({**d, **kw}).encode()

    return [
        ("interactions", "malformed JSON", b'{"event_id": "x", "user_id": '),
        ("interactions", "non-UTF-8", b"\xff\xfe\x00 not text"),
        ("interactions", "null value", None),
        ("interactions", "missing fields", b'{"event_id": "x", "user_id": "u"}'),
        ("interactions", "wrong types", j(ok, event_time="yesterday", item_id=5)),
        ("interactions", "NaN", j(ok).replace(str(now).encode(), b"NaN")),
        ("interactions", "Infinity", j(ok).replace(str(now).encode(), b"Infinity")),
        ("interactions", "control character in an id", j(ok, user_id="u\x01bad")),
        ("interactions", "future time", j(ok, event_time=now + 7 * 86400)),
        ("interactions", "not an object", b"[1, 2, 3]"),
        ("items", "malformed JSON", b'{"item_id": '),
        ("items", "non-UTF-8", b"\xc3\x28"),
        ("items", "missing text", j({"item_id": "i-bad", "event_time": now})),
        ("items", "wrong types", j(item, categories="not a list")),
        ("items", "Infinity", j(item).replace(str(now).encode(), b"Infinity")),
        ("items", "huge text", j(item, description="x" * (MAX_RECORD_BYTES + 1000))),
        ("items", "future time", j(item, event_time=now + 7 * 86400)),
    ]


def make_plan(n_interactions: int, n_users: int, n_items: int, seed: int, now: float) -> Plan:
    rng = random.Random(seed)
    plan = Plan()
    client = lambda: rng.choice(("kafka-python", "confluent"))  # noqa: E731
    items = [f"item-{i}" for i in range(n_items)]
    item_client = {}
    for item_id in items:
        rec = ItemRecord(item_id=item_id, title=f"Item {item_id}", brand=rng.choice(("Acme", "Lab", "Sci")),
                         categories=["Industrial & Scientific"], description=f"text {rng.random():.6f}",
                         event_time=now - 3600)  # fmt: skip
        item_client[item_id] = client()
        plan.records.append(Record("items", item_id.encode(), encode(rec), item_client[item_id]))
        plan.items.add(item_id)
    # a few deletions: explicit `deleted` records and null-value tombstones, after the item's record and
    # through the same client (same partition, so in order: the issue asks no repartitioning of items)
    for i, item_id in enumerate(rng.sample(items, max(2, n_items // 50))):
        value = None if i % 2 else encode(ItemRecord(item_id=item_id, deleted=True, event_time=now - 1800))
        plan.records.append(Record("items", item_id.encode(), value, item_client[item_id]))
        plan.items.discard(item_id)
        plan.deleted.add(item_id)
    # interactions: users round-robin (each well under the sequence limit), times a second apart,
    # some out of order (up to 10 min back, within the allowed lateness), some on unknown items
    users = [f"user-{u}" for u in range(n_users)]
    events = []
    for i in range(n_interactions):
        user = users[i % n_users]
        t = now - n_interactions + i - (rng.uniform(0, 600) if rng.random() < 0.05 else 0)
        item = f"unknown-{i}" if rng.random() < 0.02 else rng.choice(items)
        ev = Interaction(event_id=f"ev-{i}", user_id=user, item_id=item, event_time=t)
        keyless = rng.random() < 0.1
        events.append(Record("interactions", None if keyless else user.encode(), encode(ev), client()))
        plan.interactions[ev.event_id] = user
        if rng.random() < 0.03:  # the same event again
            events.append(Record("interactions", user.encode(), encode(ev), client()))
    # bad records spread over the stream
    for n, (topic, kind, value) in enumerate(bad_records(now)):
        key = f"bad-{n}"
        plan.bad[key] = f"{topic}: {kind}"
        events.insert(rng.randrange(len(events)), Record(topic, key.encode(), value, client()))
    plan.records += events
    return plan


# ---- producing (I/O) ----------------------------------------------------------------------------
class Producers:
    """kafka-python and confluent-kafka, each retrying until the broker acknowledges every record."""

    def __init__(self, settings: Settings):
        from confluent_kafka import Producer

        bs = settings.broker.bootstrap
        self.names = {"items": settings.topics.items, "interactions": settings.topics.interactions}
        self.kp = KafkaProducer(bootstrap_servers=bs, acks="all", linger_ms=5, retries=10,
                                max_request_size=16 * 1024 * 1024, request_timeout_ms=15000)  # fmt: skip
        # default partitioner (consistent_random); long message timeout: librdkafka retries through outages
        self.cp = Producer({"bootstrap.servers": bs, "message.max.bytes": 16 * 1024 * 1024,
                            "message.timeout.ms": 300000})  # fmt: skip
        self.resends = 0

    def send(self, batch: list[Record], attempts: int = 30) -> list[Record]:
        """Send until acknowledged; returns the records still refused after `attempts` rounds."""
        pending = list(batch)
        for _ in range(attempts):
            if not pending:
                break
            failed: list[Record] = []
            futures = []
            for r in pending:
                if r.client == "kafka-python":
                    futures.append((r, self.kp.send(self.names[r.topic], key=r.key, value=r.value)))
                else:
                    self.cp.produce(self.names[r.topic], key=r.key, value=r.value,
                                    on_delivery=lambda err, msg, r=r: err and failed.append(r))  # fmt: skip
            for r, f in futures:
                try:
                    f.get(timeout=60)
                except Exception:
                    failed.append(r)
            if self.cp.flush(300) > 0:
                raise RuntimeError("confluent-kafka could not deliver within 300 s")
            self.resends += len(failed)
            pending = failed
            if pending:
                time.sleep(1.0)
        return pending

    def close(self) -> None:
        self.kp.close()
        self.cp.flush(60)


# ---- kills and the API client (threads) ---------------------------------------------------------
@dataclass
class Chaos:
    run_dir: Path
    kills: Counter = field(default_factory=Counter)
    outages: list[tuple[float, float]] = field(default_factory=list)  # broker/S3 down, monotonic
    restart_s: dict[str, list[float]] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)
    errors: list[str] = field(default_factory=list)

    def pids(self) -> dict[str, int]:
        return {h.name: h.pid for h in health(self.run_dir) if h.state == "RUNNING" and h.pid}

    def running_pid(self, name: str, timeout_s: float) -> int | None:
        """The program's pid once supervisord reports it RUNNING (None after `timeout_s`)."""
        deadline = time.monotonic() + timeout_s
        while True:
            pid = self.pids().get(name)
            if pid or time.monotonic() > deadline:
                return pid
            time.sleep(0.2)

    def kill(self, name: str, timeout_s: float = 180.0) -> None:
        old = self.running_pid(name, timeout_s)
        if old is None:
            self.errors.append(f"{name} was not running within {timeout_s:.0f} s of its kill being due")
            return
        t0 = time.monotonic()
        os.kill(old, signal.SIGKILL)
        self.kills[name] += 1
        while time.monotonic() - t0 < timeout_s:
            new = self.pids().get(name)
            if new and new != old:
                break
            time.sleep(0.2)
        else:
            self.errors.append(f"{name} was not back within {timeout_s:.0f} s of its SIGKILL")
        t1 = time.monotonic()
        self.restart_s.setdefault(name, []).append(t1 - t0)
        if name in OUTAGE:
            self.outages.append((t0, t1 + 5.0))  # clients reconnect a little after the port is back

    def run_kills(self, rounds: int, duration_s: float, rng: random.Random, spare: tuple[str, ...] = ()) -> None:
        # Every supervised program, also one still starting when the kills begin (kill() waits for it).
        names = [n for n in START_ORDER if n not in spare]
        gap = duration_s / max(1, rounds * len(names))
        for _ in range(rounds):
            for name in rng.sample(names, len(names)):
                if self.stop.wait(rng.uniform(0.3, 1.7) * gap):
                    return
                self.kill(name)

    def in_outage(self, t: float) -> bool:
        return any(a <= t <= b for a, b in self.outages)


def api_client(chaos: Chaos, base: str, users: list[str], items: list[str], out: Counter, rng: random.Random) -> None:
    """Ask for recommendations until the end. A 503 while no model version is served yet is the API's
    documented "not ready" answer: counted apart (`api_503_no_model_yet`), every other 5xx as a failure."""
    with httpx.Client(base_url=base, timeout=10.0) as client:
        while not chaos.stop.is_set():
            t = time.monotonic()
            try:
                if rng.random() < 0.5:
                    r = client.get(f"/users/{rng.choice(users)}/recommendations", params={"k": 10})
                else:
                    r = client.post("/recommendations", json={"history": rng.sample(items, 3), "k": 10,
                                                              "fallback": "popular"})  # fmt: skip
                no_model = r.status_code == 503 and _no_model_yet(client)
            except httpx.HTTPError:
                out["unreachable"] += 1
                time.sleep(0.2)
                continue
            out["requests"] += 1
            if no_model:
                out["503_no_model_yet"] += 1
            elif r.status_code >= 500:
                out["5xx_in_outage" if chaos.in_outage(t) else "5xx"] += 1
            elif r.status_code >= 300:
                out[f"{r.status_code}"] += 1
            else:
                out["2xx"] += 1
            time.sleep(0.1)


def _no_model_yet(client: httpx.Client) -> bool:
    r = client.get("/ready", params={"require_model": "true"})
    return r.status_code == 503 and r.json().get("model_version") is None


# ---- checking the stores ------------------------------------------------------------------------
def quiet(settings: Settings, still_s: float = 30.0, timeout_s: float = 600.0) -> bool:
    """Wait until the state counters and the content collection's size stop changing for still_s."""
    reader = StateReader(settings.state_path, settings.topics.interactions)
    last, since = None, time.monotonic()
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            reader.catch_up()
            with open_store(settings) as store:
                n_items = store.count(CONTENT) if store.has(CONTENT) else 0
            now = (tuple(sorted(reader.counters().items())), n_items)
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= still_s:
                return True
            time.sleep(2.0)
        return False
    finally:
        reader.close()


def check_interactions(settings: Settings, plan: Plan) -> dict:
    reader = StateReader(settings.state_path, settings.topics.interactions)
    seen_in: Counter = Counter()  # user -> partition databases holding a sequence for them
    found: Counter = Counter()  # event id -> times present
    wrong_user = 0
    for user, seq in reader.users():
        seen_in[user] += 1
        for e in seq:
            found[e.event_id] += 1
            if plan.interactions.get(e.event_id, user) != user:
                wrong_user += 1
    counters = dict(reader.counters())
    reader.close()
    expected = set(plan.interactions)
    return {
        "interactions_sent": len(expected),
        "interactions_applied": sum(1 for e in expected if found[e] >= 1),
        "interactions_lost": sum(1 for e in expected if found[e] == 0),
        "interactions_duplicated": sum(n - 1 for e, n in found.items() if n > 1),
        "interactions_unexpected": sum(1 for e in found if e not in expected),
        "interactions_under_wrong_user": wrong_user,
        "split_users": sum(1 for n in seen_in.values() if n > 1),
        "state_counters": counters,
    }


def check_items(settings: Settings, plan: Plan) -> dict:
    with open_store(settings) as store:
        ids = store.ids(CONTENT) if store.has(CONTENT) else []
    present = Counter(ids)
    return {
        "items_sent": len(plan.items) + len(plan.deleted),
        "items_expected_present": len(plan.items),
        "items_lost": sum(1 for i in plan.items if present[i] == 0),
        "items_duplicated": sum(n - 1 for n in present.values() if n > 1),
        "items_deleted": len(plan.deleted),
        "items_not_deleted": sum(1 for i in plan.deleted if present[i] > 0),
    }


def dead_lettered(settings: Settings, plan: Plan, timeout_s: float = 20.0) -> dict:
    """Which bad records (by their key) are in a dead-letter topic with a reason."""
    topics = [settings.topics.items_dlq, settings.topics.interactions_dlq]
    consumer = KafkaConsumer(bootstrap_servers=settings.broker.bootstrap, group_id=None,
                             consumer_timeout_ms=int(timeout_s * 1000))  # fmt: skip
    tps = [TopicPartition(t, p) for t in topics for p in range(settings.topics.dlq_partitions)]
    consumer.assign(tps)
    consumer.seek_to_beginning()
    found, letters = set(), 0
    for m in consumer:
        letters += 1
        try:
            d = json.loads(m.value)
        except ValueError:
            continue
        if d.get("reason") and d.get("key") in plan.bad:
            found.add(d["key"])
    consumer.close()
    return {
        "bad_records_sent": len(plan.bad),
        "bad_records_dead_lettered": len(found),
        "bad_records_missing": sorted(plan.bad[k] for k in plan.bad if k not in found),
        "dead_letters_read": letters,
    }


# ---- the run ------------------------------------------------------------------------------------
def chaos_settings(root: Path, encoder: str) -> Settings:
    web = free_port()
    while True:  # the encoder worker's web port is the next one
        try:
            import socket

            with socket.socket() as s:
                s.bind(("127.0.0.1", web + 1))
            break
        except OSError:
            web = free_port()
    return load_settings(
        data_dir=root / "data",
        broker={"storage": "s3", "port": free_port(), "s3_port": free_port()},
        worker={"web_port": web, "app_prefix": "chaos"},
        serving={"port": free_port()},
        encoder={"model": encoder},
        trainer={"window_s": 600.0, "max_train_s": 10.0, "steps_per_window": 30},
    )  # fmt: skip


def run(args) -> dict:
    root = Path(tempfile.mkdtemp(prefix="bench-chaos-"))
    s = chaos_settings(root, args.encoder)
    run_dir = s.data_dir / "run"
    rng = random.Random(args.seed)
    now = time.time()
    plan = make_plan(args.interactions, args.users, args.items, args.seed, now)
    load_before = os.getloadavg()
    t_start = time.monotonic()
    chaos = Chaos(run_dir)
    api = Counter()
    result: dict = {}
    try:
        stack_up(s, run_dir)
        producers = Producers(s)
        users = sorted(set(plan.interactions.values()))
        threads = [
            threading.Thread(target=chaos.run_kills, args=(args.kills, args.duration, random.Random(args.seed + 1),
                                                          tuple(getattr(args, "spare", ()) or ()))),
            threading.Thread(target=api_client, args=(chaos, f"http://{s.serving.host}:{s.serving.port}", users,
                                                      sorted(plan.items), api, random.Random(args.seed + 2))),
        ]  # fmt: skip
        for t in threads:
            t.start()
        chunk = 50
        per_chunk_s = args.duration / max(1, len(plan.records) / chunk)
        unsent: list[Record] = []
        for i in range(0, len(plan.records), chunk):
            t0 = time.monotonic()
            unsent += producers.send(plan.records[i:i + chunk])
            time.sleep(max(0.0, per_chunk_s - (time.monotonic() - t0)))
        produced_s = time.monotonic() - t_start
        threads[0].join()  # every kill done
        producers.close()
        settled = quiet(s)
        chaos.stop.set()
        threads[1].join()
        restarts = {h.name: h.restarts for h in health(run_dir)}
        result = {
            **check_interactions(s, plan),
            **check_items(s, plan),
            **dead_lettered(s, plan),
            "worker_crashes_on_input": sum(max(0, restarts.get(w, 0) - chaos.kills[w]) for w in ("encoder", "interactions")),
            "exits_not_caused_by_a_kill": {n: max(0, r - chaos.kills[n]) for n, r in restarts.items()},
            "kills": dict(chaos.kills),
            "restart_s_max": {n: max(v) for n, v in chaos.restart_s.items()},
            "harness_errors": chaos.errors,
            "api_requests": api["requests"],
            "api_5xx": api["5xx"],
            "api_5xx_during_broker_outages": api["5xx_in_outage"],
            "api_unreachable": api["unreachable"],
            "api_2xx": api["2xx"],
            "api_4xx": {k: v for k, v in api.items() if k.isdigit()},
            "api_503_no_model_yet": api["503_no_model_yet"],
            "producer_resends": producers.resends,
            "records_never_acknowledged": len(unsent),
            "stores_settled": settled,
            "produce_s": produced_s,
        }  # fmt: skip
    finally:
        chaos.stop.set()
        stack_down(run_dir)
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    result.update({
        "command": "python -m bench.chaos " + " ".join(sys.argv[1:]),
        "stack": "learn up (deploy/supervisor.py): Tansu on the S3 engine (nanio), encoder "
                 f"({args.encoder}), interaction worker, trainer, API",
        "wall_s": time.monotonic() - t_start,
        "machine": f"{psutil.cpu_count()} cores, shared with other jobs",
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
    })  # fmt: skip
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--interactions", type=int, default=5000)
    ap.add_argument("--users", type=int, default=300)
    ap.add_argument("--items", type=int, default=600)
    ap.add_argument("--kills", type=int, default=3, help="kill rounds: each program this many times")
    ap.add_argument("--duration", type=float, default=240.0, help="seconds over which records and kills are spread")
    ap.add_argument("--encoder", default="minilm")
    ap.add_argument("--seed", type=int, default=14)
    ap.add_argument("--spare", nargs="*", default=[], choices=START_ORDER, help="programs never killed")
    ap.add_argument("--keep", action="store_true", help="keep the data dir (logs) under /tmp")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    result = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
