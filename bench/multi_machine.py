"""The multi-machine benchmark (issue 16): three "machines" on this one, sharing only the broker, the
object store and the Milvus server; machine A dies mid-stream and nothing is lost or applied twice.

    .venv/bin/python -m bench.multi_machine [--users 300] [--duration 120] [--kill-at 0.4] [--kill-by 0.7]
                                            [--encoder minilm] [--out bench/results/scale/multi_machine.json]

What is shared (one of each, started here, on 127.0.0.1 with free ports):
- the broker: Tansu on its S3 engine, writing to the local S3-compatible server (deploy/s3_server.py,
  nanio), as `learn up` runs it; every machine is a client (`broker.bootstrap_servers`);
- a second bucket on that S3 server for the model registry (`s3://<bucket>/<prefix>`), when the tree
  has the S3 registry (h10);
- a Milvus 2.3.5 server (deploy/milvus_server.py): it runs in a private network namespace and one
  forwarded port on this machine's loopback is its address, so every machine's processes reach it
  as `http://127.0.0.1:<port>` from outside that namespace (no need to run the simulation inside it).

The machines, each a data directory of its own (`<root>/A/data` ...: state, titles, caches, logs),
its own ports, and processes started with its own settings (deploy/stack.py):
- A and B: an interaction worker and an encoder worker each, in the same consumer groups, so they
  share the partitions of `interactions` and `items`;
- C: the incremental trainer and an API replica, reading the users' sequences from a local replica
  fed by the changelog topic (`state.reader = "changelog"`, h9) and the model versions from the
  object store.

The stream: real Scientific users (the UniSRec split, `streams/datasets.py`), each user's events in
order with event times a second apart, interleaved at random (streams/replay.py), ~3% sent twice, the
items' texts spread over the first 60% of the stream; half through kafka-python, half through
confluent-kafka at its default partitioner, one in ten interactions keyless (bench/chaos.py's
producers: every record retried until acknowledged). At `--kill-at` of the stream, once C's API
follows a first model version (at `--kill-by` of the stream at the latest), machine A's two workers
get SIGKILL and stay dead: B's workers take over A's partitions, and B's interaction worker
restores their state from the changelog (time from the kill until B's databases hold at least the
offsets A had stored: `restore_s_on_b`).

Checked at the end, once B's state and the vector store are quiet: every valid interaction in B's
state exactly once and every user's sequence equal to the rule applied to the events
(store/state.apply_event, as tests/integration/test_exactly_once.py), every item in Milvus once
(bench/chaos.py's accounting), the API on C serving every user's newest events exactly as the rule
has them, and the API following versions the trainer published after the kill. An API client asks
for recommendations all along; its answers are counted. Like an orchestrator, the harness starts
again any program of B or C that exits; every such exit is reported (`exits`, with its log's tail).

Writes bench/results/scale/multi_machine.json (`multi_machine_lost`, `multi_machine_duplicated`, ...).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import httpx

from bench.chaos import Plan, Producers, Record, check_interactions, check_items, quiet
from config import Settings, load_settings
from config.settings import StateSettings
from deploy.broker import broker_dir, free_port
from deploy.stack import Stack, settings_env, worker_command
from serving.api import command as api_command
from serving.recommend import RECENT
from store.state import Entry, StateReader, apply_event
from streams.datasets import RawDataset, read_unisrec, subsample
from streams.replay import item_records, plan_interactions
from streams.schemas import Interaction, encode
from trainer.incremental import read_windows

RESULTS = Path(__file__).parent / "results" / "scale" / "multi_machine.json"
WORKER_MODULES = {"interactions": "streams.interaction_worker", "encoder": "encoder.worker"}
ROLES = {"A": ("interactions", "encoder"), "B": ("interactions", "encoder"), "C": ("trainer", "api")}
REGISTRY_BUCKET = "registry"


# ---- the stream (pure, seeded) -------------------------------------------------------------------
@dataclass
class Stream:
    plan: Plan  # bench/chaos.py's plan: records in send order, valid event id -> user, items
    events: list[Interaction]  # every valid interaction in send order, each once


def make_stream(ds: RawDataset, seed: int, now: float, keyless: float = 0.1, dup: float = 0.03,
                items_until: float = 0.6) -> Stream:  # fmt: skip
    """The dataset's items and interactions as records to send (see the module doc). Pure."""
    rng = random.Random(seed)
    client = lambda: rng.choice(("kafka-python", "confluent"))  # noqa: E731
    events = plan_interactions(ds, end=now, events_per_s=1.0, seed=seed).interactions()
    items = item_records(ds, (events[0].event_time if events else now) - 3600)
    plan = Plan()
    placed: list[tuple[float, int, Record]] = []
    for j, item in enumerate(items):
        placed.append((items_until * j / max(1, len(items)), 0, Record("items", item.item_id.encode(), encode(item), client())))
        plan.items.add(item.item_id)
    for i, ev in enumerate(events):
        key = None if rng.random() < keyless else ev.user_id.encode()
        placed.append((i / max(1, len(events)), 1, Record("interactions", key, encode(ev), client())))
        if rng.random() < dup:  # the same event again (a producer's retry, a replayed source)
            placed.append((i / max(1, len(events)), 1, Record("interactions", ev.user_id.encode(), encode(ev), client())))
        plan.interactions[ev.event_id] = ev.user_id
    placed.sort(key=lambda x: (x[0], x[1]))  # stable: each user's events stay in order
    plan.records = [r for _, _, r in placed]
    return Stream(plan, events)


def expected_sequences(events: list[Interaction], max_len: int, lateness_s: float) -> dict[str, list[list]]:
    """Every user's sequence by the state's rule applied directly to the events (send order = each
    user's order: one user, one partition). Pure."""
    seqs: dict[str, list[list]] = {}
    for ev in events:
        apply_event(seqs.setdefault(ev.user_id, []), Entry(ev.event_time, ev.item_id, ev.action.value, ev.event_id),
                    max_len, lateness_s)  # fmt: skip
    return seqs


def newest(seq: list[list], n: int = RECENT) -> list[tuple[str, float]]:
    """(item, event time) of a sequence's newest `n` entries, newest first: what the API echoes."""
    return [(e[1], round(float(e[0]), 3)) for e in reversed(seq[-n:])]


def sequence_mismatches(stored: dict[str, list[list]], expected: dict[str, list[list]]) -> list[str]:
    """Users whose stored sequence is not the expected one (missing users included). Pure."""
    return sorted(u for u in expected.keys() | stored.keys() if stored.get(u) != expected.get(u))


_ASSIGNED = re.compile(r"assigned TopicPartition\(topic='([^']+)', partition=(\d+)\): resuming")
_REVOKING = re.compile(r"Revoking previously assigned partitions")
_RESTORED = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3})\].* restored ([^ ]+)\[(\d+)\] from offset", re.M)


def assigned_partitions(log_text: str, topic: str) -> set[int]:
    """The partitions of `topic` an interaction worker held last, from its log (each revocation
    empties the set, each "assigned ... resuming" line adds one). Pure."""
    held: set[int] = set()
    for line in log_text.splitlines():
        if _REVOKING.search(line):
            held.clear()
        elif (m := _ASSIGNED.search(line)) and m.group(1) == topic:
            held.add(int(m.group(2)))
    return held


def restored_partitions(log_text: str, changelog: str, since: float) -> set[int]:
    """The changelog partitions an interaction worker restored at or after `since` (epoch seconds; the
    log's times are UTC), from its "restored <topic>[p] from offset" lines. Pure."""
    out = set()
    for m in _RESTORED.finditer(log_text):
        t = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc).timestamp()
        if m.group(3) == changelog and t + int(m.group(2)) / 1000 >= since:
            out.add(int(m.group(4)))
    return out


def offsets_reached(have: dict[str, int], need: dict[str, int]) -> bool:
    """Whether every input offset in `need` (db/input -> next offset) is reached in `have`. Pure."""
    return all(have.get(k, -1) >= v for k, v in need.items())


# ---- the machines (I/O) --------------------------------------------------------------------------
def has_changelog_reader() -> bool:
    return "reader" in StateSettings.model_fields


def has_s3_registry() -> bool:
    return "registry" in Settings.model_fields


@dataclass
class Machine:
    name: str
    settings: Settings
    stack: Stack
    ports: dict[str, int] = field(default_factory=dict)

    def start(self, program: str) -> None:
        """Start one program (not waiting for it)."""
        s = self.settings
        if program in WORKER_MODULES:
            port = self.ports[program] = free_port()
            s = s.model_copy(update={"worker": s.worker.model_copy(update={"web_port": port})})
            cmd = worker_command(WORKER_MODULES[program], s.worker.web_host, port)
        elif program == "trainer":
            cmd = [sys.executable, "-m", "deploy.cli", "trainer"]
        else:
            self.ports[program] = s.serving.port
            cmd = api_command()
        self.stack.start_process(program, cmd, {**os.environ, **settings_env(s), "PYTHONUNBUFFERED": "1"})

    def wait(self, program: str, timeout_s: float) -> None:
        if program in WORKER_MODULES:
            self.stack.wait_http(program, f"http://127.0.0.1:{self.ports[program]}/counts", timeout_s)
        elif program == "api":
            self.stack.wait_http(program, f"{self.api}/ready", timeout_s)
        elif self.stack.procs[program].poll() is not None:
            raise RuntimeError(f"{program} on {self.name} exited; see {self.stack.log_path(program)}")

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.settings.serving.port}"

    def log(self, program: str) -> str:
        path = self.stack.log_path(program)
        return path.read_text(errors="replace") if path.exists() else ""


def shared_settings(root: Path, partitions: int) -> Settings:
    """The shared services' settings: the broker on the S3 engine (its S3 server also holds the
    registry's bucket)."""
    return load_settings(data_dir=root / "shared", topics={"partitions": partitions},
                         broker={"storage": "s3", "port": free_port(), "s3_port": free_port()})  # fmt: skip


def machine_settings(root: Path, name: str, shared: Settings, milvus_uri: str, args, run_id: str) -> Settings:
    """One machine's settings: its own data dir and ports, the shared broker, Milvus and registry."""
    b = shared.broker
    over: dict = {
        "data_dir": root / name / "data",
        # a client of the shared broker; the S3 engine needs the longer fetch wait (broker.s3_fetch_wait_ms)
        "broker": {"bootstrap_servers": b.bootstrap},
        "worker": {"app_prefix": f"mm-{run_id}", "fetch_max_wait_ms": b.s3_fetch_wait_ms},
        "topics": shared.topics.model_dump(),
        "vectors": {"uri": milvus_uri},
        "encoder": {"model": args.encoder},
        # longer than any user's sequence here: every event stays in it, so presence is checkable
        "state": {"max_seq_len": args.max_seq_len},
        "serving": {"port": free_port()},
        "trainer": {"window_s": args.window_s, "max_train_s": args.max_train_s,
                    "steps_per_window": args.steps_per_window, "poll_s": 1.0,
                    # every candidate promoted: this run is about following versions, not their quality
                    "promote_margin": 1.0},
    }  # fmt: skip
    if name == "C" and has_changelog_reader():
        over["state"]["reader"] = "changelog"
    if has_s3_registry():
        over["registry"] = registry_overrides(shared, run_id)
    return load_settings(**over)


def registry_overrides(shared: Settings, run_id: str) -> dict:
    """The S3 registry on the shared S3 server (the fields of h10's `registry` settings section)."""
    from deploy.broker import S3_KEY, S3_SECRET

    b = shared.broker
    return {"uri": f"s3://{REGISTRY_BUCKET}/mm-{run_id}", "s3_endpoint_url": f"http://{b.host}:{b.s3_port}",
            "s3_access_key": S3_KEY, "s3_secret_key": S3_SECRET}  # fmt: skip


# ---- watching: the API client and B's takeover (threads) -----------------------------------------
@dataclass
class ApiWatch:
    """Asks C's API for recommendations of users already sent, and for its model version, until stopped."""

    base: str
    users: list[str]  # users sent so far (appended by the producer loop)
    stop: threading.Event = field(default_factory=threading.Event)
    counts: Counter = field(default_factory=Counter)
    versions: list[tuple[float, str]] = field(default_factory=list)  # (wall time, version) on each change

    def run(self, rng: random.Random) -> None:
        with httpx.Client(base_url=self.base, timeout=10.0) as client:
            while not self.stop.is_set():
                self.ask_version(client)
                for _ in range(5):
                    if self.users:
                        self.ask_user(client, rng.choice(self.users))
                    time.sleep(0.1)

    def ask_version(self, client: httpx.Client) -> None:
        try:
            version = client.get("/ready").json().get("model_version")
        except (httpx.HTTPError, ValueError):
            return
        if version and (not self.versions or self.versions[-1][1] != version):
            self.versions.append((time.time(), version))

    def ask_user(self, client: httpx.Client, user: str) -> None:
        try:
            r = client.get(f"/users/{user}/recommendations", params={"k": 10, "fallback": "popular"})
        except httpx.HTTPError:
            self.counts["unreachable"] += 1
            return
        self.counts["requests"] += 1
        self.counts["2xx" if r.status_code < 300 else "5xx" if r.status_code >= 500 else str(r.status_code)] += 1


def served_histories(base: str, expected: dict[str, list[list]]) -> dict:
    """Each user's newest events as C's API serves them, against the rule's."""
    wrong, missing, errors = [], [], 0
    with httpx.Client(base_url=base, timeout=30.0) as client:
        for user, seq in sorted(expected.items()):
            r = client.get(f"/users/{user}/recommendations", params={"k": 10, "fallback": "popular"})
            if r.status_code == 404:
                missing.append(user)
            elif r.status_code != 200:
                errors += 1
            elif not (served := [(h["item_id"], round(h["event_time"], 3)) for h in r.json()["recent_items"]]):
                missing.append(user)  # unknown to C: answered from popularity with no history
            elif served != newest(seq):
                wrong.append(user)
    return {"served_users_checked": len(expected), "served_users_wrong": len(wrong), "served_users_missing": len(missing),
            "served_errors": errors, "served_wrong_examples": wrong[:5] + missing[:5]}  # fmt: skip


@dataclass
class Orchestrator:
    """What Kubernetes or supervisord does for the surviving machines: a program of B or C that exits
    is started again (A's killed ones never are). Each exit is recorded with its status and log tail."""

    machines: list[Machine]
    stop: threading.Event = field(default_factory=threading.Event)
    exits: list[dict] = field(default_factory=list)

    def run(self) -> None:
        while not self.stop.wait(1.0):
            for m in self.machines:
                for program, proc in list(m.stack.procs.items()):
                    if proc.poll() is not None and not self.stop.is_set():
                        self.exits.append({"program": f"{m.name}/{program}", "status": proc.returncode,
                                           "at": time.time(), "log_tail": m.log(program)[-2000:]})  # fmt: skip
                        m.start(program)


def takeover_s(b: Machine, need: dict[str, int], since: float, timeout_s: float) -> float | None:
    """Seconds from `since` (monotonic) until B's state databases hold at least the offsets `need`
    (A's at its kill); None on timeout. A fresh reader each look: a restore may replace a database."""
    while time.monotonic() < since + timeout_s:
        try:
            if offsets_reached(stored_offsets(b), need):
                return round(time.monotonic() - since, 2)
        except Exception:  # noqa: BLE001 - a database being rebuilt right now: look again
            pass
        time.sleep(0.5)
    return None


def stored_offsets(m: Machine) -> dict[str, int]:
    """The input offsets a (dead) machine's state databases hold, read from its files."""
    reader = StateReader(m.settings.state_path, m.settings.topics.interactions)
    try:
        return reader.next_offsets()
    finally:
        reader.close()


def stored_sequences(settings: Settings) -> dict[str, list[list]]:
    reader = StateReader(settings.state_path, settings.topics.interactions)
    try:
        return reader.sequences()
    finally:
        reader.close()


def wait_until(cond, timeout_s: float, every_s: float = 1.0):
    """`cond()` until truthy or `timeout_s`; returns its last value."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = cond()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(every_s)


# ---- the run -------------------------------------------------------------------------------------
def start_milvus(root: Path):
    from deploy import milvus_server

    return milvus_server.start(root / "milvus")


def run(args, milvus_uri: str | None = None) -> dict:
    """The whole scenario; `milvus_uri`: an already running Milvus server (tests), else one is started."""
    root = Path(tempfile.mkdtemp(prefix="bench-multi-machine-"))
    run_id = f"{random.Random(args.seed).getrandbits(32):08x}"
    load_before, t_start, wall_start = os.getloadavg(), time.monotonic(), time.time()
    result: dict = {"missing_features": [n for n, ok in (("state.reader = changelog (h9)", has_changelog_reader()),
                                                          ("S3 registry (h10)", has_s3_registry())) if not ok]}  # fmt: skip
    shared = shared_settings(root, args.partitions)
    milvus = None
    machines: dict[str, Machine] = {}
    watch: ApiWatch | None = None
    try:
        with Stack(shared, root / "shared" / "run") as infra:
            infra.start_broker()
            (broker_dir(shared) / REGISTRY_BUCKET).mkdir(parents=True, exist_ok=True)  # a bucket is a folder
            infra.create_topics()
            if milvus_uri is None:
                milvus = start_milvus(root)
                milvus_uri = milvus.uri
            for name in ROLES:
                s = machine_settings(root, name, shared, milvus_uri, args, run_id)
                machines[name] = Machine(name, s, Stack(s, root / name / "run"))
            a, b, c = machines["A"], machines["B"], machines["C"]
            for m in (a, b):  # A first, then B: the groups rebalance once both are in
                for program in ROLES[m.name]:
                    m.start(program)
            for m in (a, b):
                for program in ROLES[m.name]:
                    m.wait(program, args.ready_timeout_s)
            for program in ROLES["C"]:
                c.start(program)
            for program in ROLES["C"]:
                c.wait(program, args.ready_timeout_s)
            result["startup_s"] = round(time.monotonic() - t_start, 1)  # Milvus included when started here
            orchestrator = Orchestrator([b, c])
            restarter = threading.Thread(target=orchestrator.run, daemon=True)
            restarter.start()
            try:
                result.update(stream_and_kill(args, shared, a, b, c, orchestrator))
                watch = result.pop("_watch")
            finally:  # the machines before the shared services they write to
                orchestrator.stop.set()
                restarter.join()
                if watch is not None:
                    watch.stop.set()
                for m in machines.values():
                    m.stack.stop_all()
    finally:
        for m in machines.values():
            m.stack.stop_all()
        if milvus is not None:
            milvus.stop()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    result.update({
        "command": "python -m bench.multi_machine " + " ".join(sys.argv[1:]),
        "layout": {"shared": "Tansu (S3 engine) on nanio; registry bucket on the same S3 server; Milvus 2.3.5 server",
                   "A": list(ROLES["A"]), "B": list(ROLES["B"]), "C": list(ROLES["C"])},
        "encoder": args.encoder,
        "wall_s": round(time.monotonic() - t_start, 1),
        "started_at": wall_start,
        "cpu_count": os.cpu_count(),
        "load_avg_before": load_before,
        "load_avg_after": os.getloadavg(),
        "kept": str(root) if args.keep else None,
    })  # fmt: skip
    return result


def stream_and_kill(args, shared: Settings, a: Machine, b: Machine, c: Machine, orchestrator: Orchestrator) -> dict:
    ds = subsample(read_unisrec(shared.shared_data_dir), args.users, seed=args.seed)
    stream = make_stream(ds, args.seed, time.time())
    longest = max((len(s) for s in ds.sequences.values()), default=0)
    if longest > args.max_seq_len:
        raise ValueError(f"a user has {longest} events > --max-seq-len {args.max_seq_len}: presence would not be checkable")
    watch = ApiWatch(c.api, [])
    watcher = threading.Thread(target=watch.run, args=(random.Random(args.seed + 1),), daemon=True)
    watcher.start()
    producers = Producers(b.settings)
    records = stream.plan.records
    t_produce = time.monotonic()
    chunk = max(1, len(records) // max(1, int(args.duration)))  # ~one chunk a second
    per_chunk_s = args.duration / max(1, len(records) / chunk)
    # A dies once --kill-at of the records are sent and C follows a first version (so versions are
    # followed across the kill), or at --kill-by whatever C serves
    kill_index, kill_by = int(args.kill_at * len(records)), int(max(args.kill_at, args.kill_by) * len(records))
    out: dict = {"_watch": watch}
    unsent: list[Record] = []
    seen_users: set[str] = set()
    kill_mono = restore = None
    for i in range(0, len(records), chunk):
        if kill_mono is None and i >= kill_index and (watch.versions or i >= kill_by):
            kill_mono = time.monotonic()
            out["kill_time"] = time.time()
            for program in ROLES["A"]:
                a.stack.kill(program)  # SIGKILL to the process group; never restarted
            out["killed"] = [f"A/{p}" for p in ROLES["A"]]
            out["a_offsets_at_kill"] = stored_offsets(a)
            out["a_partitions_at_kill"] = sorted(assigned_partitions(a.log("interactions"), shared.topics.interactions))
            out["events_sent_before_kill"] = sum(1 for r in records[:i] if r.topic == "interactions")
            out["versions_followed_before_kill"] = [v for _, v in watch.versions]
            restore = threading.Thread(target=lambda need=out["a_offsets_at_kill"], t=kill_mono: out.update(
                restore_s_on_b=takeover_s(b, need, t, args.settle_timeout_s)), daemon=True)  # fmt: skip
            restore.start()
        t0 = time.monotonic()
        batch = records[i : i + chunk]
        unsent += producers.send(batch)
        for r in batch:
            if r.topic == "interactions" and r.key and r.key.decode() not in seen_users:
                seen_users.add(r.key.decode())
                watch.users.append(r.key.decode())
        time.sleep(max(0.0, per_chunk_s - (time.monotonic() - t0)))
    producers.close()
    out["produce_s"] = round(time.monotonic() - t_produce, 1)
    if kill_mono is not None:
        restore.join()
    t_settle = time.monotonic()
    out["stores_settled"] = quiet(b.settings, still_s=args.still_s, timeout_s=args.settle_timeout_s)
    out["settle_s"] = round(time.monotonic() - t_settle, 1)
    expected = expected_sequences(stream.events, args.max_seq_len, b.settings.state.allowed_lateness_s)
    stored = stored_sequences(b.settings)
    wrong = sequence_mismatches(stored, expected)
    served = wait_until(lambda: (s := served_histories(c.api, expected))["served_users_wrong"] + s["served_users_missing"] == 0 and s,
                        args.settle_timeout_s, 2.0) or served_histories(c.api, expected)  # fmt: skip
    kill_wall = out.get("kill_time", float("inf"))
    windows = read_windows(c.settings.data_dir / "trainer" / "windows.jsonl")
    published = [w for w in windows if w.get("version")]
    after = [w["version"] for w in published if w["published_at"] > kill_wall and w["promoted"]]
    # the API on C follows the newest promoted version (from the object store) within the wait
    if after:
        wait_until(lambda: watch.versions and watch.versions[-1][1] == after[-1], 60.0)
    followed = [v for _, v in watch.versions]
    interactions = check_interactions(b.settings, stream.plan)
    items = check_items(b.settings, stream.plan)
    out.update({
        **interactions,
        **items,
        "multi_machine_lost": interactions["interactions_lost"] + items["items_lost"],
        "multi_machine_duplicated": interactions["interactions_duplicated"] + items["items_duplicated"],
        "users": len(expected),
        "users_state_wrong_on_b": len(wrong),
        "users_state_wrong_examples": wrong[:5],
        "b_partitions": sorted({k.split("/")[0] for k in stored_offsets(b)}),
        "b_restored_after_kill": sorted(restored_partitions(b.log("interactions"), b.settings.topics.changelog_topic,
                                                            kill_wall - 1.0)) if has_changelog_reader() else [],
        "b_restore_log": [ln.strip() for ln in b.log("interactions").splitlines() if "restor" in ln.lower()][:20],
        **served,
        "versions_published": [w["version"] for w in published],
        "versions_published_after_kill": after,
        "versions_followed": followed,
        "versions_followed_after_kill": [v for t, v in watch.versions if t > kill_wall],
        # no program of B or C may exit (A's two are the ones killed): an exit here is a crash
        # exits of B's or C's programs (each started again, as an orchestrator would): crashes
        "restarts": Counter(e["program"] for e in orchestrator.exits),
        "exits": orchestrator.exits,
        "api": dict(watch.counts),
        "api_5xx": watch.counts["5xx"],
        "api_unreachable": watch.counts["unreachable"],
        "records_never_acknowledged": len(unsent),
        "producer_resends": producers.resends,
        "trainer_windows": len(windows),
    })  # fmt: skip
    return out


def part(result: dict) -> dict:
    """The results file (bench/scale.py assembles scale.json from such parts: numeric top-level keys
    are figures): the issue's two figures and a few prefixed ones on top, the run's record under
    `details`. Pure."""
    r = result
    figures = {
        "multi_machine_lost": r["multi_machine_lost"],
        "multi_machine_duplicated": r["multi_machine_duplicated"],
        "multi_machine_restore_s_on_b": r["restore_s_on_b"],
        "multi_machine_versions_followed_after_kill": len(r["versions_followed_after_kill"]),
        "multi_machine_served_users_wrong": r["served_users_wrong"] + r["served_users_missing"] + r["served_errors"],
        "multi_machine_api_errors": r["api_5xx"] + r["api_unreachable"],
    }  # fmt: skip
    meta = {"command": r["command"], "load_avg": {"before": r["load_avg_before"], "after": r["load_avg_after"]},
            "wall_s": r["wall_s"], "cpu_count": r["cpu_count"],
            "notes": f"encoder {r['encoder']}; {r['users']} users, {r['interactions_sent']} interactions, "
                     f"{r['items_sent']} items; A's workers SIGKILLed after {r.get('events_sent_before_kill')} "
                     "events and never restarted; see details"}  # fmt: skip
    return {**figures, **meta, "details": r}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=300, help="Scientific users (a seeded sample)")
    ap.add_argument("--duration", type=float, default=120.0, help="seconds over which the records are sent")
    ap.add_argument("--kill-at", type=float, default=0.4, help="fraction of the records sent when A dies")
    ap.add_argument("--kill-by", type=float, default=0.7, help="A dies by this fraction even if C follows no version yet")
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--encoder", default="minilm", help="minilm (packaged all-MiniLM-L6-v2) or smollm2")
    ap.add_argument("--window-s", type=float, default=300.0, help="the trainer's window, seconds of event time")
    ap.add_argument("--max-train-s", type=float, default=8.0)
    ap.add_argument("--steps-per-window", type=int, default=30)
    ap.add_argument("--max-seq-len", type=int, default=64)
    ap.add_argument("--still-s", type=float, default=20.0, help="quiet this long before checking")
    ap.add_argument("--settle-timeout-s", type=float, default=300.0)
    ap.add_argument("--ready-timeout-s", type=float, default=180.0)
    ap.add_argument("--seed", type=int, default=16)
    ap.add_argument("--keep", action="store_true", help="keep the data dirs (logs) under /tmp")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    result = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(part(result), indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
