"""Interaction-stream benchmark (issue 5): worker ingest rate vs a bare consumer, latency, memory.

    .venv/bin/python -m bench.interactions [--synthetic-events 1000000] [--synthetic-users 100000]

For each stream (the Scientific interactions replayed; a synthetic stream over many users) it
produces the events once, then measures in the same run:
- a bare kafka-python consumer that only reads the topic (events/s);
- the faust interaction worker from topic to committed state (events/s, from its first applied event to
  its last, read from the state store's counters);
then, at a steady 1,000 events/s, the latency from the producer's send to the state being visible to a
reader (p50/p99), and the state's size on disk and the worker's RSS. Writes bench/results/interactions.json.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
from kafka import KafkaConsumer

from config import load_settings
from deploy.broker import free_port
from deploy.stack import Stack
from store.state import StateReader
from streams.datasets import read_unisrec
from streams.producer import make_producer
from streams.replay import interaction_events, interleave
from streams.schemas import Interaction, encode

RESULTS = Path(__file__).parent / "results" / "interactions.json"


def produce_all(settings, topic: str, payloads: list[tuple[bytes, bytes]]) -> float:
    producer = make_producer(settings, linger_ms=20)
    t = time.perf_counter()
    for key, value in payloads:
        producer.send(topic, key=key, value=value)
    producer.flush()
    producer.close()
    return len(payloads) / (time.perf_counter() - t)


def bare_consumer_rate(settings, topic: str, n: int) -> float:
    """Read n records with a plain kafka-python consumer (fresh group); events/s from first to last."""
    consumer = KafkaConsumer(topic, bootstrap_servers=settings.broker.bootstrap,
                             group_id=f"bare-{random.random()}", auto_offset_reset="earliest",
                             session_timeout_ms=settings.broker.session_timeout_ms,
                             max_poll_records=5000, fetch_max_bytes=64 * 1024 * 1024,
                             consumer_timeout_ms=30000)  # fmt: skip
    count, first = 0, None
    for _ in consumer:
        if first is None:
            first = time.perf_counter()
        count += 1
        if count >= n:
            break
    rate = (count - 1) / (time.perf_counter() - first)
    consumer.close()
    if count < n:
        raise RuntimeError(f"bare consumer read only {count} of {n}")
    return rate


def worker_rate(stack: Stack, settings, n: int, timeout_s: float = 900) -> dict:
    """Start the worker, follow the state store until n events are applied; rate from first to last."""
    stack.start_worker("interactions", free_port())
    proc = psutil.Process(stack.procs["interactions"].pid)
    reader = StateReader(settings.state_path, settings.topics.interactions)
    first = None
    rss = 0.0
    deadline = time.monotonic() + timeout_s
    done = 0
    while time.monotonic() < deadline:
        reader.catch_up()
        c = reader.counters()
        done = c["applied"] + c["duplicate"] + c["late_dropped"]
        now = time.perf_counter()
        rss = max(rss, proc.memory_info().rss / 2**20)
        if done and first is None:
            first = (now, done)
        if done >= n:
            break
        time.sleep(0.05)
    end = time.perf_counter()
    reader.close()
    if done < n:
        raise RuntimeError(f"worker applied only {done} of {n} in {timeout_s}s")
    return {"events_per_s": (n - first[1]) / (end - first[0]), "rss_mb": rss}


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def latency_run(stack: Stack, settings, rate: float, seconds: float) -> dict:
    """Produce at a steady rate; a reader thread marks when each event's offset becomes visible."""
    topic = settings.topics.interactions
    reader = StateReader(settings.state_path, topic)
    sent: list[tuple[int, int, float]] = []  # (partition, offset, send time)
    lock = threading.Lock()
    visible: dict[tuple[int, int], float] = {}
    stop = threading.Event()

    def follow():
        # per partition: events in offset order, and how many of them are already visible
        pending: dict[int, list[tuple[int, float]]] = {}
        seen = 0
        while True:
            with lock:
                for p, o, t in sent[seen:]:
                    pending.setdefault(p, []).append((o, t))
                seen = len(sent)
            reader.catch_up()
            now = time.perf_counter()
            for name, off in reader.next_offsets().items():
                queue = pending.get(int(name.rsplit("-p", 1)[1]), [])
                while queue and queue[0][0] < off:
                    o, _ = queue.pop(0)
                    visible[(int(name.rsplit("-p", 1)[1]), o)] = now
            done = stop.is_set() and len(visible) >= len(sent)
            if done or (stop.is_set() and time.perf_counter() - stop_time[0] > 10):
                break
            time.sleep(0.002)

    stop_time = [0.0]
    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    producer = make_producer(settings, linger_ms=0)
    n = int(rate * seconds)
    t0 = time.perf_counter()
    now = time.time()
    for i in range(n):
        target = t0 + i / rate
        while time.perf_counter() < target:
            time.sleep(max(0.0, min(0.001, target - time.perf_counter())))
        user = f"lat-{i % 5000}"
        ev = Interaction(event_id=f"lat-{i}", user_id=user, item_id=f"i{i % 3000}", event_time=now + i / rate)
        sent_at = time.perf_counter()
        md = producer.send(topic, key=user.encode(), value=encode(ev)).get(timeout=10)
        with lock:
            sent.append((md.partition, md.offset, sent_at))
    producer.flush()
    stop_time[0] = time.perf_counter()
    stop.set()
    thread.join(30)
    reader.close()
    lat = sorted((visible[(p, o)] - t) * 1000 for p, o, t in sent if (p, o) in visible)
    if len(lat) < len(sent):
        raise RuntimeError(f"only {len(lat)} of {len(sent)} events became visible")
    q = statistics.quantiles(lat, n=100)
    return {"rate": rate, "events": n, "p50_ms": statistics.median(lat), "p99_ms": q[98], "max_ms": lat[-1]}


def scientific_payloads(settings) -> list[tuple[bytes, bytes]]:
    ds = read_unisrec(settings.shared_data_dir)
    start = time.time() - 86400
    return [(e.user_id.encode(), encode(e)) for e in interaction_events(interleave(ds.sequences), start, 20.0)]


def synthetic_payloads(n_events: int, n_users: int, n_items: int = 100_000, seed: int = 0):
    rng = random.Random(seed)
    start = time.time() - 86400 * 2
    out = []
    for i in range(n_events):
        u = f"user-{rng.randrange(n_users)}"
        ev = Interaction(event_id=f"s{i}", user_id=u, item_id=f"item-{rng.randrange(n_items)}",
                         event_time=start + i * 0.1)  # fmt: skip
        out.append((u.encode(), encode(ev)))
    return out


def measure_stream(name: str, payloads, base_settings, root: Path) -> dict:
    data = root / name
    s = base_settings.model_copy(update={"data_dir": data})
    with Stack(s, data / "run") as stack:
        stack.start_broker()
        stack.create_topics()
        produce_rate = produce_all(s, s.topics.interactions, payloads)
        bare = bare_consumer_rate(s, s.topics.interactions, len(payloads))
        worker = worker_rate(stack, s, len(payloads))
        state_bytes = dir_bytes(s.state_path)
    out = {
        "events": len(payloads),
        "produce_events_per_s": produce_rate,
        "bare_consumer_events_per_s": bare,
        "worker_events_per_s": worker["events_per_s"],
        "worker_vs_bare": worker["events_per_s"] / bare,
        "worker_rss_mb": worker["rss_mb"],
        "state_bytes": state_bytes,
        "state_bytes_per_1m_events": state_bytes * 1_000_000 / len(payloads),
    }
    print(f"[{name}] {json.dumps(out)}", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--synthetic-events", type=int, default=1_000_000)
    ap.add_argument("--synthetic-users", type=int, default=100_000)
    ap.add_argument("--latency-rate", type=float, default=1000.0)
    ap.add_argument("--latency-seconds", type=float, default=30.0)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--latency-only", action="store_true",
                    help="re-measure only the latency, keeping the throughput figures already in --out")
    args = ap.parse_args()

    root = Path(tempfile.mkdtemp(prefix="bench-interactions-"))
    base = load_settings(data_dir=root, broker={"port": free_port()})
    results: dict = {"command": "python -m bench.interactions " + " ".join(sys.argv[1:]),
                     "machine": f"{psutil.cpu_count()} cores", "streams": {}}  # fmt: skip
    if args.latency_only:
        previous = json.loads(args.out.read_text())
        results["streams"] = previous["streams"]
        results["command"] = previous["command"] + "; latency: " + results["command"]
    try:
        if not args.latency_only:
            results["streams"]["scientific"] = measure_stream("scientific", scientific_payloads(base), base, root)
            synthetic = synthetic_payloads(args.synthetic_events, args.synthetic_users)
            results["streams"]["synthetic"] = measure_stream("synthetic", synthetic, base, root)
            del synthetic
        lat_settings = base.model_copy(update={"data_dir": root / "latency"})
        with Stack(lat_settings, root / "latency" / "run") as stack:
            stack.start_broker()
            stack.create_topics()
            stack.start_worker("interactions", free_port())
            time.sleep(8)  # let the group settle before timing
            results["latency"] = latency_run(stack, lat_settings, args.latency_rate, args.latency_seconds)
        print(f"[latency] {json.dumps(results['latency'])}", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    syn = results["streams"]["synthetic"]
    results.update({  # the headline figures: the synthetic 1M-event stream
        "worker_events_per_s": syn["worker_events_per_s"],
        "bare_consumer_events_per_s": syn["bare_consumer_events_per_s"],
        "worker_vs_bare": syn["worker_vs_bare"],
        "latency_p50_ms": results["latency"]["p50_ms"],
        "latency_p99_ms": results["latency"]["p99_ms"],
        "state_bytes_per_1m_events": syn["state_bytes_per_1m_events"],
        "worker_rss_mb": max(s["worker_rss_mb"] for s in results["streams"].values()),
        "load_average_1m_at_end": psutil.getloadavg()[0],
    })
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps({k: v for k, v in results.items() if k != "streams"}, indent=2))


if __name__ == "__main__":
    main()
