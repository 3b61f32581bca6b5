"""Does the durable embedded broker keep every acknowledged record when a process is SIGKILLed while
producers send? (issue 14; tests/integration/test_broker_durability.py covers kills between sends.)

    .venv/bin/python -m bench.broker_kills [--kills 3] [--every-s 4] [--no-idempotence]

For each victim (Tansu, the S3 server): a fresh S3-engine broker, one kafka-python producer sending
numbered records (acks=all, retries) without pause, the victim SIGKILLed `--kills` times `--every-s`
apart and started again at once; then every record in the log is read back and compared with the
set the broker acknowledged. Writes bench/results/broker_kills.json. The producer is idempotent
(kafka-python's default) unless --no-idempotence.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from bench.broker import engine_settings
from deploy.stack import Stack

RESULTS = Path(__file__).parent / "results" / "broker_kills.json"


def produce_until(bs: str, topic: str, stop: threading.Event, acked: set[bytes], idempotence: bool = True) -> None:
    producer = KafkaProducer(bootstrap_servers=bs, acks="all", linger_ms=5, retries=20, request_timeout_ms=10000,
                             enable_idempotence=idempotence)  # fmt: skip
    i = 0
    while not stop.is_set():
        futures = [(b"v%d" % j, producer.send(topic, key=str(j % 13).encode(), value=b"v%d" % j)) for j in range(i, i + 20)]
        for value, f in futures:
            try:
                f.get(30)
                acked.add(value)
            except Exception:  # not acknowledged: not counted
                pass
        i += 20
    producer.close()


def read_back(bs: str, topic: str, partitions: int) -> list[bytes]:
    consumer = KafkaConsumer(bootstrap_servers=bs, group_id=None, consumer_timeout_ms=8000)
    consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
    consumer.seek_to_beginning()
    out = [m.value for m in consumer]
    consumer.close()
    return out


def measure(victim: str, root: Path, kills: int, every_s: float, idempotence: bool = True) -> dict:
    s = engine_settings(root / victim, "s3")
    topic = s.topics.interactions
    acked: set[bytes] = set()
    stop = threading.Event()
    with Stack(s, s.data_dir / "run") as stack:
        stack.start_broker()
        stack.create_topics()
        producer = threading.Thread(target=produce_until, args=(s.broker.bootstrap, topic, stop, acked, idempotence))
        producer.start()
        for _ in range(kills):
            time.sleep(every_s)
            stack.kill(victim, signal.SIGKILL)
            stack.start_broker(names=(victim,))
        time.sleep(5)
        stop.set()
        producer.join()
        log = read_back(s.broker.bootstrap, topic, s.topics.partitions)
    out = {"victim": victim, "kills": kills, "acknowledged": len(acked), "in_log": len(log),
           "distinct_in_log": len(set(log)), "acknowledged_but_missing": len(acked - set(log))}  # fmt: skip
    print(json.dumps(out), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=3)
    ap.add_argument("--every-s", type=float, default=4.0)
    ap.add_argument("--no-idempotence", dest="idempotence", action="store_false")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-broker-kills-"))
    load = os.getloadavg()
    try:
        runs = [measure(v, root, args.kills, args.every_s, args.idempotence) for v in ("broker", "s3")]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    result = {"command": "python -m bench.broker_kills " + " ".join(sys.argv[1:]), "storage": "s3 (nanio)",
              "idempotent_producer": args.idempotence,
              "runs": runs, "load_average_before": load, "load_average_after": os.getloadavg()}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
