"""Broker storage benchmark (issue 14): the embedded Tansu on its durable S3 engine vs its memory engine.

    .venv/bin/python -m bench.broker [--records 100000] [--latency-rate 100] [--latency-seconds 30]
                                     [--engines s3,memory,s3-localbucket]

Engines: "s3" (the default: Tansu's S3 engine on nanio, the fsyncing local S3 server), "memory"
(Tansu's memory engine) and "s3-localbucket" (the S3 engine on localbucket, the other candidate).
For each engine, on a fresh embedded broker of its own:
- produce rate: `--records` small interaction records (~100 bytes) sent with kafka-python (acks=all,
  linger 20 ms) to a 4-partition topic, records/s from the first send to the last acknowledgement;
- event -> state latency through the real interaction worker (`Stack.start_worker("interactions")`):
  a steady `--latency-rate` events/s, each sent and acknowledged one at a time, from the send to the
  state store showing it (p50/p99/max; bench/interactions.py's `latency_run`).
The machine's load average (`os.getloadavg()`) is recorded before and after each engine: the machine
is shared with other jobs, so figures from a loaded run are lower than the engines can do.
Writes bench/results/broker.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import psutil

from bench.interactions import dir_bytes, latency_run, produce_all
from config import Settings, load_settings
from deploy.broker import broker_dir, free_port
from deploy.stack import Stack
from streams.schemas import Interaction, encode
from streams.topics import TopicSpec, ensure_topics

RESULTS = Path(__file__).parent / "results" / "broker.json"
PRODUCE_TOPIC = "bench-produce"


def engine_settings(root: Path, storage: str, s3_server: str = "nanio") -> Settings:
    return load_settings(data_dir=root, broker={"storage": storage, "s3_server": s3_server, "port": free_port(),
                                                "s3_port": free_port()})  # fmt: skip


def small_records(n: int) -> list[tuple[bytes, bytes]]:
    now = time.time()
    out = []
    for i in range(n):
        user = f"u{i % 10_000}"
        ev = Interaction(event_id=f"p{i}", user_id=user, item_id=f"i{i % 5000}", event_time=now + i * 0.001)
        out.append((user.encode(), encode(ev)))
    return out


def measure(name: str, s: Settings, records: list, rate: float, seconds: float) -> dict:
    load_before = os.getloadavg()
    with Stack(s, s.data_dir / "run") as stack:
        stack.start_broker()
        stack.create_topics()
        ensure_topics(s.broker.bootstrap, [TopicSpec(PRODUCE_TOPIC, s.topics.partitions)])
        produce_rate = produce_all(s, PRODUCE_TOPIC, records)
        stack.start_worker("interactions", free_port())
        time.sleep(8)  # let the group settle before timing
        try:
            latency = latency_run(stack, s, rate, seconds)
        except RuntimeError as e:  # the worker fell behind the steady rate: say so, measure the others
            latency = {"rate": rate, "events": int(rate * seconds), "error": str(e)}
    out = {
        "storage": s.broker.storage,
        "s3_server": s.broker.s3_server if s.broker.storage == "s3" else None,
        "records": len(records),
        "produce_records_per_s": produce_rate,
        "latency": latency,
        "broker_bytes_on_disk": dir_bytes(broker_dir(s)) if broker_dir(s).exists() else 0,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
    }
    print(f"[{name}] {json.dumps(out)}", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--latency-rate", type=float, default=100.0)
    ap.add_argument("--latency-seconds", type=float, default=30.0)
    ap.add_argument("--engines", default="s3,memory,s3-localbucket", help="which of s3 (nanio), memory, s3-localbucket")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()

    records = small_records(args.records)
    root = Path(tempfile.mkdtemp(prefix="bench-broker-"))
    results: dict = {
        "command": "python -m bench.broker " + " ".join(sys.argv[1:]),
        "machine": f"{psutil.cpu_count()} cores, shared with other jobs (see each engine's load_average_*)",
        "engines": {},
    }
    engines = {"s3": ("s3", "nanio"), "memory": ("memory", "nanio"), "s3-localbucket": ("s3", "localbucket")}
    try:
        for name in args.engines.split(","):
            s = engine_settings(root / name, *engines[name])
            results["engines"][name] = measure(name, s, records, args.latency_rate, args.latency_seconds)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    e = results["engines"]
    if "s3" in e and "memory" in e:
        results["s3_vs_memory"] = {
            "produce_rate": e["s3"]["produce_records_per_s"] / e["memory"]["produce_records_per_s"],
            "latency_p99": e["s3"]["latency"].get("p99_ms", float("nan")) / e["memory"]["latency"].get("p99_ms", float("nan")),
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps({k: v for k, v in results.items() if k != "engines"}, indent=2))


if __name__ == "__main__":
    main()
