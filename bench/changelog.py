"""Changelog benchmark (issue 16): cold restore of 100k users' state, the worker's cost of the changelog,
and whether the broker compacts.

    .venv/bin/python -m bench.changelog [--users 100000] [--events 300000] [--storage memory]

1. Restore: `--users` users, each with a sequence of ~5 real Scientific item ids, are written to the
   changelog topic as the worker writes it (a batch of user records, then its offsets record), then a
   worker with an empty data directory restores every partition (streams/interaction_worker.py
   `InteractionWorker.restore`: marker, read, fold, one atomic write per partition). Timed from the
   first marker to the last write; then a read replica (streams/replica.py) materialises the same
   changelog from scratch.
2. Compaction: 2,000 records with one key are written to a `cleanup.policy=compact` topic; after a
   wait the topic is read from the start: a broker that compacts returns fewer.
3. Cost: `--events` synthetic events (bench/interactions.py's stream) through the interaction worker
   with `state.changelog` off and on (same broker, fresh topics each), events/s from first to last.

Writes bench/results/scale/changelog.json (its part of scale.json, bench/scale.py assembles it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from bench.interactions import produce_all, synthetic_payloads, worker_rate
from config import load_settings
from deploy.broker import free_port
from deploy.stack import Stack
from store.changelog import Offsets, offsets_record, user_record
from store.state import SOURCE
from streams.datasets import read_unisrec
from streams.interaction_worker import REPARTITION, InteractionWorker, make_clients
from streams.repartition import canonical_partition
from streams.replica import ChangelogReplica
from streams.topics import ensure_topics, topic_specs

RESULTS = Path(__file__).parent / "results" / "scale" / "changelog.json"
BATCH_USERS = 500  # users per written batch (one offsets record each), as a worker's batch would carry


def fresh_topics(settings, tag: str):
    suffix = f"{tag}-{uuid.uuid4().hex[:6]}"
    t = settings.topics.model_copy(update={"interactions": f"interactions-{suffix}", "items": f"items-{suffix}",
                                           "interactions_dlq": f"interactions-{suffix}.dlq", "items_dlq": f"items-{suffix}.dlq"})  # fmt: skip
    w = settings.worker.model_copy(update={"app_prefix": f"bench-{suffix}"})
    s = settings.model_copy(update={"topics": t, "worker": w})
    ensure_topics(s.broker.bootstrap, topic_specs(s), timeout_ms=60_000)
    return s


def scientific_sequences(settings, n_users: int, per_user: int, seed: int = 0) -> dict[str, list[list]]:
    """n_users users, each with ~per_user events of real Scientific item ids (as stored sequences)."""
    ds = read_unisrec(settings.shared_data_dir)
    items = sorted(ds.items)
    rng = random.Random(seed)
    t0 = time.time() - 30 * 86400
    out = {}
    for u in range(n_users):
        n = max(1, per_user + rng.randint(-2, 2))
        start = t0 + rng.random() * 25 * 86400
        out[f"user-{u}"] = [[start + k * 60.0, rng.choice(items), "view", f"e{u}-{k}"] for k in range(n)]
    return out


def write_changelog(settings, seqs: dict[str, list[list]]) -> int:
    """The users' sequences to their changelog partitions, in batches closed by an offsets record."""
    n = settings.topics.partitions
    topic = settings.topics.changelog_topic
    producer = KafkaProducer(bootstrap_servers=settings.broker.bootstrap, acks="all", linger_ms=20,
                             batch_size=512 * 1024, max_request_size=16 * 1024 * 1024)  # fmt: skip
    by_part: dict[int, list[str]] = {}
    for u in seqs:
        by_part.setdefault(canonical_partition(u, n), []).append(u)
    sent = 0
    for p, users in by_part.items():
        applied = 0
        for i in range(0, len(users), BATCH_USERS):
            batch = users[i : i + BATCH_USERS]
            for u in batch:
                key, value = user_record(u, seqs[u])
                producer.send(topic, key=key, value=value, partition=p)
                applied += len(seqs[u])
            o = Offsets({SOURCE: applied, REPARTITION: 0}, {SOURCE: None, REPARTITION: None}, {"applied": applied}, 0.0)
            key, value = offsets_record(o)
            producer.send(topic, key=key, value=value, partition=p)
            sent += len(batch) + 1
    producer.flush()
    producer.close()
    return sent


async def cold_restore(settings) -> dict:
    """Restore every partition into an empty data directory with the worker's own code."""
    _, producer = make_clients(settings, f"{settings.worker.app_prefix}-restore")  # the worker's producer
    await producer.start()
    worker = InteractionWorker(settings, None, producer, settings.topics.partitions)  # restore needs no group
    per_part = {}
    try:
        t = time.perf_counter()
        for p in range(settings.topics.partitions):
            tp = time.perf_counter()
            part = worker.state.partition(p)
            await worker.restore(p, part)
            per_part[p] = {"seconds": time.perf_counter() - tp, "next_offset": part.next_offset}
        seconds = time.perf_counter() - t
    finally:
        worker.state.close()
        await producer.stop()
    return {"seconds": seconds, "partitions": per_part}


def count_users(settings) -> int:
    from store.state import StateReader

    r = StateReader(settings.state_path, settings.topics.interactions)
    try:
        return sum(1 for _ in r.users())
    finally:
        r.close()


def compaction_check(settings, n: int = 2000, wait_s: float = 20.0) -> dict:
    topic = f"compact-{uuid.uuid4().hex[:6]}"
    from streams.topics import TopicSpec

    ensure_topics(settings.broker.bootstrap, [TopicSpec(topic, 1, 1, {"cleanup.policy": "compact"})])
    producer = KafkaProducer(bootstrap_servers=settings.broker.bootstrap, acks="all", linger_ms=0)
    for i in range(n):
        producer.send(topic, key=b"same-key", value=str(i).encode()).get(timeout=30)  # one batch each
    producer.close()
    time.sleep(wait_s)
    consumer = KafkaConsumer(bootstrap_servers=settings.broker.bootstrap, group_id=None, enable_auto_commit=False,
                             consumer_timeout_ms=10_000)  # fmt: skip
    consumer.assign([TopicPartition(topic, 0)])
    consumer.seek_to_beginning()
    values = [m.value for m in consumer]
    consumer.close()
    return {"written": n, "read_after_s": wait_s, "read": len(values), "last_value_ok": values[-1:] == [str(n - 1).encode()],
            "compacts": len(values) < n}  # fmt: skip


def worker_cost(stack: Stack, settings, payloads, changelog: bool) -> dict:
    s = fresh_topics(settings.model_copy(update={"state": settings.state.model_copy(update={"changelog": changelog}),
                                                 "data_dir": settings.data_dir / f"cost-{int(changelog)}"}), f"cost{int(changelog)}")  # fmt: skip
    produce_all(s, s.topics.interactions, payloads)
    sub = Stack(s, stack.run_dir)
    try:
        rate = worker_rate(sub, s, len(payloads))
    finally:
        sub.stop_all()
    return {"changelog": changelog, "events": len(payloads), "events_per_s": rate["events_per_s"], "rss_mb": rate["rss_mb"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--per-user", type=int, default=5)
    ap.add_argument("--events", type=int, default=300_000)
    ap.add_argument("--storage", choices=["memory", "s3"], default="memory")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()

    load_before = os.getloadavg()
    t_start = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="h9-bench-changelog-"))
    base = load_settings(data_dir=root / "data", broker={"storage": args.storage, "port": free_port(), "s3_port": free_port()})
    out: dict = {"command": "python -m bench.changelog " + " ".join(sys.argv[1:]), "cpu_count": os.cpu_count(),
                 "broker_storage": args.storage, "load_avg_before": load_before}  # fmt: skip
    try:
        with Stack(base, root / "run") as stack:
            stack.start_broker()
            s = fresh_topics(base.model_copy(update={"data_dir": root / "restore"}), "restore")
            seqs = scientific_sequences(s, args.users, args.per_user)
            t = time.perf_counter()
            records = write_changelog(s, seqs)
            write_s = time.perf_counter() - t
            restored = asyncio.run(cold_restore(s))
            users = count_users(s)
            if users != len(seqs):
                raise RuntimeError(f"restored {users} users, wrote {len(seqs)}")
            t = time.perf_counter()
            replica = ChangelogReplica(s.model_copy(update={"data_dir": root / "replica"}), "bench")
            replica_s = time.perf_counter() - t
            replica_users = sum(1 for _ in replica.users())
            replica.close()
            out.update({
                "changelog_restore_s_per_100k_users": restored["seconds"] * 100_000 / args.users,
                "restore": {"users": args.users, "events_per_user": args.per_user, "records": records,
                            "write_s": write_s, **restored, "users_restored": users},
                "replica_cold_s_per_100k_users": replica_s * 100_000 / args.users,
                "replica_users": replica_users,
            })  # fmt: skip
            print(json.dumps(out, indent=1), flush=True)
            out["tansu_compaction"] = compaction_check(base)
            print(json.dumps(out["tansu_compaction"]), flush=True)
            payloads = synthetic_payloads(args.events, max(1, args.events // 10))
            off = worker_cost(stack, base, payloads, changelog=False)
            on = worker_cost(stack, base, payloads, changelog=True)
            out.update({"interaction_worker_events_per_s_changelog_off": off["events_per_s"],
                        "interaction_worker_events_per_s_changelog_on": on["events_per_s"],
                        "changelog_cost_ratio": on["events_per_s"] / off["events_per_s"], "worker_runs": [off, on]})  # fmt: skip
    finally:
        shutil.rmtree(root, ignore_errors=True)
    out["load_avg_after"] = os.getloadavg()
    out["wall_s"] = time.perf_counter() - t_start
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(json.dumps({k: v for k, v in out.items() if k not in ("restore", "worker_runs")}, indent=2))


if __name__ == "__main__":
    main()
