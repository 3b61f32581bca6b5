"""The main job (`learn demo` / `make demo`): the pipeline live on the real Scientific data.

It starts the embedded stack, replays the catalogue and the users' interactions through the broker,
shows a few malformed records being dead-lettered, waits until every stage has processed all its
records, and writes a report (Markdown + JSON) under a run directory.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

from kafka import KafkaConsumer
from rich.console import Console
from rich.table import Table
from tqdm import tqdm

from config import Settings
from deploy.broker import free_port
from deploy.stack import Stack
from store.state import StateReader
from store.vectors import CONTENT, VectorStore
from streams.datasets import UNISREC, RawDataset, read_dataset
from streams.producer import EventProducer
from streams.replay import replay_dataset

# Records a careless producer might send; each must end up in the dead-letter topic with a reason.
BAD_INTERACTIONS = [
    b"{not json",
    b'{"event_id": "x1", "user_id": "u", "item_id": "i"}',  # no event_time
    b'{"event_id": "x2", "user_id": "u", "item_id": "i", "event_time": NaN}',
    b"\xff\xfe not utf-8",
]


@dataclass
class DemoReport:
    run_dir: Path
    stages: dict[str, dict] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    ok: bool = False

    def write(self) -> Path:
        (self.run_dir / "report.json").write_text(json.dumps(
            {"ok": self.ok, "stages": self.stages, "seconds": self.seconds}, indent=2))  # fmt: skip
        lines = ["# learn-stream demo report", "", f"Run directory: `{self.run_dir}`", "",
                 "| stage | records in | processed | dead-lettered | other |", "|---|---|---|---|---|"]  # fmt: skip
        for name, s in self.stages.items():
            other = ", ".join(f"{k}={v}" for k, v in s.items() if k not in ("in", "processed", "dead_lettered"))
            lines.append(f"| {name} | {s.get('in', '')} | {s.get('processed', '')} | "
                         f"{s.get('dead_lettered', '')} | {other} |")  # fmt: skip
        lines += ["", "| step | seconds |", "|---|---|"]
        lines += [f"| {k} | {v:.1f} |" for k, v in self.seconds.items()]
        lines += ["", f"All stages processed all their records: **{'yes' if self.ok else 'NO'}**", ""]
        path = self.run_dir / "report.md"
        path.write_text("\n".join(lines))
        return path


def subsample(ds: RawDataset, users: int | None, seed: int = 0) -> RawDataset:
    """The first `users` users of a seeded shuffle, with only the items they touch plus 10% others."""
    if not users or users >= len(ds.sequences):
        return ds
    rng = random.Random(seed)
    chosen = rng.sample(sorted(ds.sequences), users)
    sequences = {u: ds.sequences[u] for u in chosen}
    used = {i for seq in sequences.values() for i in seq}
    others = [i for i in ds.items if i not in used]
    keep = used | set(rng.sample(others, min(len(others), len(used) // 10)))
    return RawDataset(ds.name, {i: it for i, it in ds.items.items() if i in keep}, sequences)


def count_topic(settings: Settings, topic: str, expected: int, timeout_s: float = 20.0) -> int:
    """Records on a topic, read with a plain consumer (no group) until `expected` or timeout."""
    consumer = KafkaConsumer(topic, bootstrap_servers=settings.broker.bootstrap, group_id=None,
                             auto_offset_reset="earliest", consumer_timeout_ms=int(timeout_s * 1000))  # fmt: skip
    n = 0
    for _ in consumer:
        n += 1
        if n >= expected:
            break
    consumer.close()
    return n


def wait_applied(reader: StateReader, expected: int, timeout_s: float, progress: bool) -> dict:
    """Follow the state store until `expected` events are accounted for (applied/duplicate/late)."""
    bar = tqdm(total=expected, desc="interactions -> state", unit="ev", disable=not progress)
    deadline = time.monotonic() + timeout_s
    done = 0
    while time.monotonic() < deadline:
        reader.catch_up()
        c = reader.counters()
        now_done = c["applied"] + c["duplicate"] + c["late_dropped"]
        bar.update(now_done - done)
        done = now_done
        if done >= expected:
            break
        time.sleep(0.25)
    bar.close()
    return dict(reader.counters())


def wait_encoded(settings: Settings, expected: int, timeout_s: float, progress: bool) -> int:
    """Follow the vector store until `expected` items have a content embedding (the encoder worker's
    output). Each poll opens the store briefly as a guest of the worker (store/vectors.py)."""
    bar = tqdm(total=expected, desc="items -> vectors", unit="item", disable=not progress)
    deadline = time.monotonic() + timeout_s
    n = 0
    while time.monotonic() < deadline:
        with VectorStore(settings.vector_uri, settings.vectors.token) as store:
            n = store.count(CONTENT) if store.has(CONTENT) else 0
        bar.update(n - bar.n)
        if n >= expected:
            break
        time.sleep(0.5)
    bar.close()
    return n


def run_demo(
    settings: Settings,
    run_dir: Path,
    dataset: str = UNISREC,
    users: int | None = None,
    events_per_s: float = 20.0,
    progress: bool = True,
    console: Console | None = None,
) -> DemoReport:
    console = console or Console()
    report = DemoReport(run_dir)
    t0 = time.monotonic()
    ds = subsample(read_dataset(settings.shared_data_dir, dataset), users)
    n_events = sum(len(s) for s in ds.sequences.values())
    console.print(f"[bold]dataset[/] {dataset}: {len(ds.items)} items, {len(ds.sequences)} users, "
                  f"{n_events} interactions")  # fmt: skip
    with Stack(settings, run_dir) as stack:
        stack.start_broker()
        stack.create_topics()
        stack.start_worker("interactions", free_port(settings.worker.web_host))
        stack.start_worker("encoder", free_port(settings.worker.web_host))
        report.seconds["start stack"] = time.monotonic() - t0

        t = time.monotonic()
        with EventProducer(settings) as producer:
            start = time.time() - n_events / events_per_s  # the replay's event time ends "now"
            sent = replay_dataset(producer, ds, start, events_per_s, progress=progress)
            for raw in BAD_INTERACTIONS:
                producer.send_raw(settings.topics.interactions, b"bad-producer", raw)
        report.seconds["produce"] = time.monotonic() - t

        t = time.monotonic()
        reader = StateReader(settings.state_path, settings.topics.interactions)
        counts = wait_applied(reader, n_events, timeout_s=600, progress=progress)
        users_in_state = sum(1 for _ in reader.users())
        reader.close()
        dlq = count_topic(settings, settings.topics.interactions_dlq, len(BAD_INTERACTIONS))
        report.seconds["consume"] = time.monotonic() - t
        # The catalogue's first encode is the slow part (SmolLM2 on 2 CPU cores: ~11 items/s).
        t = time.monotonic()
        items_encoded = wait_encoded(settings, sent["items"], 120 + 0.5 * sent["items"], progress)
        report.seconds["encode items"] = time.monotonic() - t

    report.stages["items"] = {"in": sent["items"], "processed": items_encoded, "by": "encoder worker",
                              "model": settings.encoder.model}  # fmt: skip
    report.stages["interactions"] = {
        "in": sent["interactions"] + len(BAD_INTERACTIONS),
        "processed": counts.get("applied", 0) + counts.get("duplicate", 0) + counts.get("late_dropped", 0),
        "dead_lettered": dlq,
        "applied": counts.get("applied", 0),
        "users_in_state": users_in_state,
    }
    report.seconds["total"] = time.monotonic() - t0
    report.ok = (
        items_encoded == sent["items"]
        and report.stages["interactions"]["processed"] == sent["interactions"]
        and dlq == len(BAD_INTERACTIONS)
        and users_in_state == len(ds.sequences)
    )
    path = report.write()
    table = Table(title="learn-stream demo")
    for col in ("stage", "in", "processed", "dead-lettered", "other"):
        table.add_column(col)
    for name, s in report.stages.items():
        other = ", ".join(f"{k}={v}" for k, v in s.items() if k not in ("in", "processed", "dead_lettered"))
        table.add_row(name, str(s.get("in")), str(s.get("processed")), str(s.get("dead_lettered", "")), other)
    console.print(table)
    console.print(f"report: {path}  ({report.seconds['total']:.1f} s, all processed: {report.ok})")
    return report
