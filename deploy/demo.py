"""The main job (`learn demo` / `make demo`): the whole pipeline live on a dataset (default: the real
Scientific data; `--data PATH` any supported dataset, streams/datasets.py).

1. starts the embedded stack as separate processes, each with its own log file: the broker, the
   encoder worker, the interaction worker, then the incremental trainer and the API;
2. replays the dataset (streams/replay.py): the catalogue's item texts to `items`, waits until every
   item has its content embedding, then the users' interactions to `interactions` (in the data's
   time order, compressed to last about n / `events_per_s` seconds of event time, when it has
   timestamps; otherwise each user's order kept, users interleaved, at `events_per_s`), plus a few
   malformed records that must end in the dead-letter topic;
3. the trainer refreshes the towers on each closed event-time window and prints its prequential
   NDCG@10 (test, then train) next to a popularity ranking tested on the same events;
4. queries the API (serving/client.py) for a few users and prints their last items and their
   recommendations;
5. writes report.md, report.json and PNG plots under the run directory.
Every process is stopped at the end, also on Ctrl-C (the Stack context manager).
"""

from __future__ import annotations

import json
import os
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from kafka import KafkaConsumer
from rich.console import Console
from rich.table import Table
from tqdm import tqdm

from config import REPO_ROOT, Settings
from deploy.broker import free_port
from deploy.stack import Stack, settings_env
from serving.api import command as api_command
from serving.client import ApiError, fetch_recommendations
from store.state import StateReader
from streams.kafka_options import client_options
from store.vectors import CONTENT, VectorStore
from streams.datasets import UNISREC, DatasetSource, read_source, resolve, subsample
from streams.producer import EventProducer
from streams.replay import plan_interactions, replay_interactions, replay_items
from streams.schemas import Interaction
from trainer.incremental import plot_windows, read_windows

# Records a careless producer might send; each must end up in the dead-letter topic with a reason.
BAD_INTERACTIONS = [
    b"{not json",
    b'{"event_id": "x1", "user_id": "u", "item_id": "i"}',  # no event_time
    b'{"event_id": "x2", "user_id": "u", "item_id": "i", "event_time": NaN}',
    b"\xff\xfe not utf-8",
]
SENTINEL_USER = "demo-clock"  # one event past the last window closes it (a live stream never ends)


@dataclass
class DemoReport:
    run_dir: Path
    dataset: dict = field(default_factory=dict)
    stages: dict[str, dict] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    windows: list[dict] = field(default_factory=list)
    freshness: dict = field(default_factory=dict)
    recommendations: list[dict] = field(default_factory=list)
    checks: dict[str, bool] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(self.checks.values())

    def write(self) -> Path:
        data = {"ok": self.ok, "checks": self.checks, "dataset": self.dataset, "stages": self.stages, "seconds": self.seconds,
                "windows": self.windows, "freshness": self.freshness, "recommendations": self.recommendations}  # fmt: skip
        (self.run_dir / "report.json").write_text(json.dumps(data, indent=2))
        d = self.dataset
        lines = ["# learn-stream demo report", "", f"Run directory: `{self.run_dir}`", "",
                 f"Dataset: {d.get('name')} ({d.get('format')}, `{d.get('path')}`), {d.get('items')} items, "
                 f"{d.get('users')} users, {d.get('interactions')} interactions; event times: {d.get('pace')}", "",
                 "## Stages", "", "| stage | records in | processed | other |", "|---|---|---|---|"]  # fmt: skip
        for name, s in self.stages.items():
            other = ", ".join(f"{k}={v}" for k, v in s.items() if k not in ("in", "processed"))
            lines.append(f"| {name} | {s.get('in', '')} | {s.get('processed', '')} | {other} |")
        lines += ["", "## Prequential evaluation per window (test, then train)", "",
                  "| window | events | users | NDCG@10 | Recall@10 | popularity NDCG@10 | train s | version |",
                  "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for w in self.windows:
            lines.append(f"| {w['window']} | {w['events']} | {w['users']} | {_f(w['ndcg10'])} | {_f(w['recall10'])} | "
                         f"{_f(w['pop_ndcg10'])} | {w['train_s']:.1f} | {w['version']}{'' if w['promoted'] else ' (kept)'} |")  # fmt: skip
        lines += ["", "![prequential](prequential.png)", "", "## Freshness", "",
                  f"From an interaction's production to the first published version trained on it: "
                  f"p50 {_f(self.freshness.get('p50_s'), 1)} s, p90 {_f(self.freshness.get('p90_s'), 1)} s "
                  f"over {self.freshness.get('events', 0)} events.", "", "![freshness](freshness.png)", "",
                  "## Throughput per stage", "", "![throughput](throughput.png)", "", "## Recommendations", ""]  # fmt: skip
        for r in self.recommendations:
            lines += [f"**{r['user_id']}** (model {r.get('version')}) — last items: " + "; ".join(r["last_titles"]), ""]
            lines += [f"{i + 1}. {x.get('title') or x['item_id']} ({x['score']:.3f})" for i, x in enumerate(r["items"])]
            lines.append("")
        lines += ["## Checks", ""] + [f"- {k}: {'yes' if v else '**NO**'}" for k, v in self.checks.items()]
        lines += ["", "| step | seconds |", "|---|---|"] + [f"| {k} | {v:.1f} |" for k, v in self.seconds.items()]
        path = self.run_dir / "report.md"
        path.write_text("\n".join(lines) + "\n")
        return path


def _f(x, digits: int = 4) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def count_topic(settings: Settings, topic: str, expected: int, timeout_s: float = 20.0) -> int:
    """Records on a topic, read with a plain consumer (no group) until `expected` or timeout."""
    consumer = KafkaConsumer(topic, **client_options(settings.broker, "kafka-python"), group_id=None,
                             auto_offset_reset="earliest", consumer_timeout_ms=int(timeout_s * 1000))  # fmt: skip
    n = 0
    for _ in consumer:
        n += 1
        if n >= expected:
            break
    consumer.close()
    return n


def follow(desc: str, total: int, poll, timeout_s: float, progress: bool, unit: str = "rec") -> int:
    """Show a progress bar of `poll()` until it reaches `total` or the timeout; return the last value."""
    bar = tqdm(total=total, desc=desc, unit=unit, disable=not progress)
    deadline = time.monotonic() + timeout_s
    n = 0
    while time.monotonic() < deadline:
        n = poll()
        bar.update(max(0, n - bar.n))
        if n >= total:
            break
        time.sleep(0.5)
    bar.close()
    return n


def encoded_count(settings: Settings) -> int:
    with VectorStore(settings.vector_uri, settings.vectors.token) as store:  # a guest of the worker
        return store.count(CONTENT) if store.has(CONTENT) else 0


def plot_report(run_dir: Path, rows: list[dict], fresh: list[float], rates: dict[str, float]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plot_windows(rows, run_dir / "prequential.png")
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.hist(fresh or [0], bins=30, color="tab:green")
    ax.set_xlabel("seconds from production to a published version trained on the event")
    ax.set_title("freshness")
    fig.tight_layout()
    fig.savefig(run_dir / "freshness.png", dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.barh(list(rates), list(rates.values()), color="tab:blue")
    ax.set_xscale("log")
    ax.set_xlabel("records per second (log)")
    ax.set_title("throughput per stage")
    fig.tight_layout()
    fig.savefig(run_dir / "throughput.png", dpi=110)
    plt.close(fig)


def run_demo(
    settings: Settings,
    run_dir: Path,
    dataset: str | Path | DatasetSource = UNISREC,
    users: int | None = None,
    events_per_s: float = 100.0,
    window_s: float = 60.0,
    show_users: int = 3,
    progress: bool = True,
    console: Console | None = None,
    speedup: float | None = None,
) -> DemoReport:
    """`dataset`: a name from the settings' datasets, a folder, or a DatasetSource. `speedup` (data
    with timestamps only): data seconds per second of event time (default: fit `events_per_s`)."""
    console = console or Console()
    # The catalogue is encoded before any interaction is streamed, while every other process idles:
    # unless configured otherwise, the encoder worker's torch gets every core (0) for that stage.
    enc_threads = settings.encoder.threads if "threads" in settings.encoder.model_fields_set else 0
    # The demo's broker lives for this one run: unless configured otherwise it keeps its topics in
    # memory (measured here: with the S3 storage the interaction worker logged offset regressions
    # under load, applied events twice and lost the dead letters).
    storage = settings.broker.storage if "storage" in settings.broker.model_fields_set else "memory"
    settings = settings.model_copy(update={
        "broker": settings.broker.model_copy(update={"storage": storage}),
        "trainer": settings.trainer.model_copy(update={"window_s": window_s}),
        "encoder": settings.encoder.model_copy(update={"threads": enc_threads}),
        "cache_dir": settings.cache_dir or REPO_ROOT / ".learn",  # warm second runs
    })  # fmt: skip
    report = DemoReport(run_dir)
    t0 = time.monotonic()
    src = dataset if isinstance(dataset, DatasetSource) else resolve(dataset, settings.datasets, settings.shared_data_dir)
    ds = subsample(read_source(src), users)
    plan = plan_interactions(ds, events_per_s=events_per_s, speedup=speedup, end=time.time() - 2 * window_s)
    events = plan.interactions()  # the replay's event time ends ~now
    start = events[0].event_time
    n_events = len(events)
    pace = (f"the data's timestamps compressed {plan.speedup:.0f}x" if plan.speedup else f"{events_per_s:.0f} events/s")
    console.print(f"[bold]dataset[/] {src.name} ({src.format}, {src.directory}): {len(ds.items)} items, "
                  f"{len(ds.sequences)} users, {n_events} interactions; windows of {window_s:.0f} s event time, "
                  f"{pace}")  # fmt: skip
    report.dataset = {**src.describe(), "items": len(ds.items), "users": len(ds.sequences), "interactions": n_events,
                      "pace": pace, "speedup": plan.speedup, "skipped": plan.skipped}  # fmt: skip
    env = {**os.environ, **settings_env(settings)}
    with Stack(settings, run_dir) as stack:
        stack.start_broker()
        stack.create_topics()
        producer = EventProducer(settings)
        worker_ports = {name: free_port(settings.worker.web_host) for name in ("encoder", "interactions")}
        for name, port in worker_ports.items():
            stack.start_worker(name, port)
        report.seconds["start stack"] = time.monotonic() - t0

        # -- items -> content embeddings (the first run's slow part; the cache makes later runs fast)
        t = time.monotonic()
        replay_items(producer, ds, start, progress)
        encoded = follow("items -> vectors", len(ds.items), lambda: encoded_count(settings),
                         timeout_s=120 + 0.5 * len(ds.items), progress=progress, unit="item")  # fmt: skip
        report.seconds["encode items"] = time.monotonic() - t
        report.stages["items"] = {"in": len(ds.items), "processed": encoded, "by": "encoder worker",
                                  "model": settings.encoder.model,
                                  "items_per_s": round(encoded / report.seconds["encode items"], 1)}  # fmt: skip

        # -- interactions -> state; the trainer follows the windows
        stack.start_process("trainer", [sys.executable, "-m", "deploy.cli", "trainer"], env)
        t = time.monotonic()
        produced_at: list[float] = []
        replay_interactions(producer, events, progress=progress, on_sent=lambda ev: produced_at.append(time.time()))
        for raw in BAD_INTERACTIONS:
            producer.send_raw(settings.topics.interactions, b"bad-producer", raw)
        last_time = events[-1].event_time
        producer.send_interaction(Interaction(event_id="demo-clock:1", user_id=SENTINEL_USER,
                                              item_id=events[-1].item_id, event_time=last_time + window_s + 1))  # fmt: skip
        producer.flush()
        reader = StateReader(settings.state_path, settings.topics.interactions)

        def applied() -> int:
            reader.catch_up()
            c = reader.counters()
            return c["applied"] + c["duplicate"] + c["late_dropped"]

        processed = follow("interactions -> state", n_events + 1, applied, timeout_s=600, progress=progress, unit="ev")
        report.seconds["interactions -> state"] = time.monotonic() - t
        users_in_state = sum(1 for _ in reader.users())
        reader.close()
        dlq = count_topic(settings, settings.topics.interactions_dlq, len(BAD_INTERACTIONS))
        report.stages["interactions"] = {"in": n_events + len(BAD_INTERACTIONS), "processed": processed - 1,
                                         "dead_lettered": dlq, "users_in_state": users_in_state - 1,
                                         "events_per_s": round(processed / report.seconds["interactions -> state"])}  # fmt: skip

        # -- windows
        metrics_file = settings.data_dir / "trainer" / "windows.jsonl"
        first_window = start // settings.state.slot_s * settings.state.slot_s  # windows start at a slot
        n_windows = int((last_time - first_window) // window_s) + 1
        shown = 0

        def windows_done() -> int:
            nonlocal shown
            rows = read_windows(metrics_file)
            for r in rows[shown:]:
                pq, pop = r["prequential"], r["extra"].get("prequential_popularity", {})
                tqdm.write(f"window {r['window']:>3}: {r['events']:>5} events  prequential NDCG@10 "
                           f"{_f(pq.get('ndcg@10'))}  (popularity {_f(pop.get('ndcg@10'))})  "
                           f"train {r['train_s']:.1f}s -> {r['version']}")  # fmt: skip
            shown = len(rows)
            return len(rows) if not rows or rows[-1]["end"] <= last_time else n_windows

        t = time.monotonic()
        follow("trainer windows", n_windows, windows_done, timeout_s=900, progress=progress, unit="window")
        report.seconds["train windows"] = time.monotonic() - t
        rows = read_windows(metrics_file)

        # -- queries
        t = time.monotonic()
        metrics_urls = [f"http://{settings.worker.web_host}:{p}/metrics" for p in worker_ports.values()]
        api = settings.model_copy(update={"serving": settings.serving.model_copy(
            update={"port": free_port(settings.serving.host), "metrics_urls": metrics_urls})})  # fmt: skip
        stack.start_process("api", api_command(), {**os.environ, **settings_env(api)})
        base = f"http://{api.serving.host}:{api.serving.port}"
        stack.wait_http("api", f"{base}/ready?require_model=true", timeout_s=180)
        rng = random.Random(1)
        for user in rng.sample(sorted(ds.sequences), min(show_users, len(ds.sequences))):
            try:
                rec = fetch_recommendations(base, user, 10, "none", api.serving.token, timeout_s=30)
            except ApiError as e:
                report.recommendations.append({"user_id": user, "status": str(e), "items": [], "last_titles": []})
                continue
            last = [ds.items[i].title if i in ds.items else i for i in ds.sequences[user][-3:]]
            report.recommendations.append({"user_id": user, "status": 200, "version": rec.model_version,
                                           "last_titles": last, "items": [it.model_dump() for it in rec.items]})  # fmt: skip
        report.seconds["queries"] = time.monotonic() - t
        producer.close()

    # -- report
    report.windows = [{"window": r["window"], "events": r["events"], "users": r["users"],
                       "ndcg10": r["prequential"].get("ndcg@10"), "recall10": r["prequential"].get("recall@10"),
                       "pop_ndcg10": r["extra"].get("prequential_popularity", {}).get("ndcg@10"),
                       "train_s": r["train_s"], "version": r["version"], "promoted": r["promoted"]} for r in rows]  # fmt: skip
    fresh = []
    for t_wall, ev in zip(produced_at, events):
        w = next((r for r in rows if r["start"] <= ev.event_time < r["end"]), None)
        if w is not None:
            fresh.append(w["published_at"] - t_wall)
    report.freshness = {"p50_s": statistics.median(fresh) if fresh else None,
                        "p90_s": statistics.quantiles(fresh, n=10)[8] if len(fresh) > 10 else None, "events": len(fresh)}  # fmt: skip
    train_s = sum(r["train_s"] for r in rows)
    report.stages["trainer"] = {"in": len(rows), "processed": sum(1 for r in rows if r["version"]),
                                "promoted": sum(r["promoted"] for r in rows),
                                "samples_per_s": round(sum(r["train"]["samples"] for r in rows) / train_s, 1) if train_s else 0}  # fmt: skip
    answered = sum(1 for r in report.recommendations if r.get("status") == 200 and r["items"])
    report.stages["api"] = {"in": len(report.recommendations), "processed": answered}
    report.seconds["total"] = time.monotonic() - t0
    tested = [w for w in report.windows if w["ndcg10"] is not None]
    model_mean = statistics.mean(w["ndcg10"] for w in tested) if tested else 0.0
    pop_mean = statistics.mean(w["pop_ndcg10"] or 0.0 for w in tested) if tested else 0.0
    report.stages["trainer"].update({"mean_prequential_ndcg10": round(model_mean, 4), "popularity": round(pop_mean, 4)})
    report.checks = {
        "every item encoded": encoded == len(ds.items),
        "every interaction applied": report.stages["interactions"]["processed"] == n_events,
        "every bad record dead-lettered": dlq == len(BAD_INTERACTIONS),
        "every user in the state": users_in_state - 1 == len(ds.sequences),
        "every window trained and published": bool(rows) and rows[-1]["end"] > last_time
        and all(r["version"] for r in rows),
        "the API answered": answered == len(report.recommendations) > 0,
        "the model beats popularity (mean prequential NDCG@10)": model_mean > pop_mean,
    }
    rates = {"items -> vectors": report.stages["items"]["items_per_s"],
             "interactions -> state": report.stages["interactions"]["events_per_s"],
             "trainer samples": report.stages["trainer"]["samples_per_s"]}  # fmt: skip
    plot_report(run_dir, rows, fresh, rates)
    path = report.write()
    show(console, report, path)
    return report


def show(console: Console, report: DemoReport, path: Path) -> None:
    for r in report.recommendations:
        table = Table(title=f"{r['user_id']} — last: {' | '.join(str(x)[:40] for x in r['last_titles'])}")
        table.add_column("#")
        table.add_column("recommended item")
        table.add_column("score")
        for i, x in enumerate(r["items"]):
            table.add_row(str(i + 1), (x.get("title") or x["item_id"])[:80], f"{x['score']:.3f}")
        console.print(table)
    table = Table(title="learn-stream demo")
    for col in ("stage", "in", "processed", "other"):
        table.add_column(col)
    for name, s in report.stages.items():
        other = ", ".join(f"{k}={v}" for k, v in s.items() if k not in ("in", "processed"))
        table.add_row(name, str(s.get("in")), str(s.get("processed")), other)
    console.print(table)
    for k, v in report.checks.items():
        console.print(f"  {'[green]ok[/]' if v else '[red]FAILED[/]'}  {k}")
    console.print(f"report: {path}  ({report.seconds['total']:.0f} s, all checks: {report.ok})")
