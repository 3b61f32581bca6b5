"""Worker scaling (issue 16): one vs two processes per stage, same broker, same records, same run.

    .venv/bin/python -m bench.scale_workers [--items 240] [--copies 40] [--encoder smollm2] [--storage memory]
        [--profile DIR]   # py-spy (pip install ".[profile]") on each encoder worker, raw stacks into DIR

(`--copies` must make the interaction stage outlast the group's settling, ~8 s: 4 copies do not on a
quiet machine, where one worker applies them in under 5 s.)

- **Encoder stage.** For N = 1 and 2: N encoder workers (one consumer group, 1 torch thread each,
  their own data dir and a fresh embedding cache, so every item is really encoded; the vector store
  is the milvus-lite file, shared by the N workers through its host, as `learn up` runs it) are
  started on an empty items topic of 4 partitions and left to join the group and load the model
  (until each is idle). Then the same real Scientific items are produced at once (well under a second)
  and the time runs from the first send to the last vector written (the `content` collection holds
  every item).
- **Interaction stage.** Real Scientific interactions, `--copies` times over (each copy's users
  renamed, so a copy is a new set of real sequences), are produced once into one 4-partition topic.
  For N = 1 and 2, N interaction workers in a consumer group of their own (own data dir, so each
  configuration applies every event from offset 0) are started together; the time runs until every
  event is in the state store. The headline rate counts from the moment every worker holds
  partitions (the group settled) to the last event; the rate from the first applied event (joins
  included) is recorded beside it.

For each run the CPU seconds of the broker, of the workers and of this process (its polling of the
stores) are read with psutil, so the broker's share of the work shows what limits the scaling; the
machine's load average before and after, and the whole machine's busy CPU share, say how loaded it was.
Writes bench/results/scale/workers.json (a part of bench/results/scale.json), each finished
configuration at once; a rerun skips configurations already there (`--fresh` starts over).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

from config import load_settings
from deploy.broker import free_port
from deploy.stack import Stack, settings_env, worker_command
from store.state import StateReader
from store.vectors import CONTENT, VectorStore
from streams.datasets import read_unisrec
from streams.producer import make_producer
from streams.replay import interaction_events, interleave, item_records
from streams.schemas import encode

RESULTS = Path(__file__).parent / "results" / "scale" / "workers.json"
MODULES = {"encoder": "encoder.worker", "interactions": "streams.interaction_worker"}


# ---- records (pure) ------------------------------------------------------------------------------
def interaction_payloads(sequences: dict[str, list[str]], copies: int, start: float) -> list[tuple[bytes, bytes]]:
    """The real sequences `copies` times, each copy's users renamed ("<user>#<copy>"), keyed by user."""
    out = []
    for c in range(copies):
        renamed = {f"{u}#{c}": seq for u, seq in sequences.items()}
        out += [(e.user_id.encode(), encode(e)) for e in interaction_events(interleave(renamed, seed=c), start, 200.0)]
    return out


def ratio(results: dict, stage: str, unit: str) -> float | None:
    one, two = results.get(f"{stage}_workers_1_{unit}"), results.get(f"{stage}_workers_2_{unit}")
    return two / one if one and two else None


# ---- processes (I/O) -----------------------------------------------------------------------------
def start_workers(stack: Stack, settings, stage: str, n: int) -> dict[str, psutil.Process]:
    """Start n workers of a stage at once (not one after the other) and wait until each answers."""
    urls = {}
    for i in range(n):
        name, port = f"{stage}-{i}", free_port()
        s = settings.model_copy(update={"worker": settings.worker.model_copy(update={"web_port": port})})
        env = {**os.environ, **settings_env(s), "PYTHONUNBUFFERED": "1"}
        stack.start_process(name, worker_command(MODULES[stage], s.worker.web_host, port), env)
        urls[name] = f"http://{s.worker.web_host}:{port}/counts"
    for name, url in urls.items():
        stack.wait_http(name, url, timeout_s=600)
    stack.urls = urls
    return {name: psutil.Process(stack.procs[name].pid) for name in urls}


def broker_procs(stack: Stack) -> dict[str, psutil.Process]:
    return {name: psutil.Process(stack.procs[name].pid) for name in ("broker", "s3") if name in stack.procs}


def cpu_s(procs: dict[str, psutil.Process]) -> dict[str, float]:
    """CPU seconds (user + system, with waited-for children) of each process."""
    out = {}
    for name, p in procs.items():
        try:
            t = p.cpu_times()
            out[name] = t.user + t.system + t.children_user + t.children_system
        except psutil.NoSuchProcess:
            out[name] = float("nan")
    return out


def wait_idle(procs: dict[str, psutil.Process], below: float = 10.0, for_s: float = 3.0, timeout_s: float = 600) -> None:
    """Until every process has used less than `below` % of a core for `for_s` seconds (joined, loaded)."""
    deadline = time.monotonic() + timeout_s
    quiet_since = None
    for p in procs.values():
        p.cpu_percent()
    while time.monotonic() < deadline:
        time.sleep(1.0)
        busy = max(p.cpu_percent() for p in procs.values())
        quiet_since = (quiet_since or time.monotonic()) if busy < below else None
        if quiet_since and time.monotonic() - quiet_since >= for_s:
            return
    raise RuntimeError("the workers did not settle")


def machine_busy() -> tuple[float, float]:
    t = psutil.cpu_times()
    return t.user + t.system + t.nice + t.irq + t.softirq, sum(t)


def accounting(procs: dict[str, psutil.Process], before: dict[str, float], busy0: tuple[float, float],
               wall_s: float) -> dict:  # fmt: skip
    after = cpu_s(procs)
    used = {k: after[k] - before[k] for k in before}
    busy1 = machine_busy()
    workers = sum(v for k, v in used.items() if k not in ("broker", "s3", "bench"))
    ours = sum(used.values())
    return {
        "cpu_s": used,
        "broker_cpu_share": (used.get("broker", 0.0) + used.get("s3", 0.0)) / ours if ours else None,
        "workers_cores_used": workers / wall_s,
        "broker_cores_used": (used.get("broker", 0.0) + used.get("s3", 0.0)) / wall_s,
        # the whole machine (other agents included): busy share of all cores, and cores busy beyond ours
        "machine_busy_share": (busy1[0] - busy0[0]) / max(1e-9, busy1[1] - busy0[1]),
        "others_cores_used": max(0.0, (busy1[0] - busy0[0]) - ours) / wall_s,
    }


def encoder_run(stack: Stack, base, root: Path, items: list, warm: list, n: int, encoder: str, tag: str = "") -> dict:
    d = root / f"encoder-{n}{tag}"
    s = base.model_copy(update={
        "data_dir": d, "cache_dir": d / "cache",
        "topics": base.topics.model_copy(update={"items": f"items-{n}{tag}", "items_dlq": f"items-{n}{tag}.dlq"}),
        "worker": base.worker.model_copy(update={"app_prefix": f"scale-enc{n}{tag}"}),
        "encoder": base.encoder.model_copy(update={"model": encoder, "threads": 1}),
    })  # fmt: skip
    (d / "cache").mkdir(parents=True, exist_ok=True)
    (d / "cache" / "models").symlink_to(root / "models")  # the converted LLM weights, once for all runs
    from streams.topics import ensure_topics, topic_specs

    ensure_topics(s.broker.bootstrap, topic_specs(s))
    sub = Stack(s, d / "run")
    try:
        procs = start_workers(sub, s, "encoder", n)
        # warm-up: other items, so every worker has loaded its model and run a batch before the clock starts
        producer = make_producer(s, linger_ms=5)
        for it in warm:
            producer.send(s.topics.items, key=it.item_id.encode(), value=encode(it))
        producer.flush()
        wait_written(sub, s, len(warm))
        wait_idle(procs)
        watched = {**procs, **broker_procs(stack), "bench": psutil.Process()}
        before, busy0 = cpu_s(watched), machine_busy()
        spies = profile_workers(procs, PROFILE_DIR, f"encoder-{n}{tag}") if PROFILE_DIR else []
        t0 = time.perf_counter()
        for it in items:
            producer.send(s.topics.items, key=it.item_id.encode(), value=encode(it))
        producer.flush()
        produced_s = time.perf_counter() - t0
        producer.close()
        before_items = {name: _upserted(url) for name, url in sub.urls.items()}
        end = wait_written(sub, s, len(warm) + len(items))
        per_worker = {name: _upserted(url) - before_items[name] for name, url in sub.urls.items()}
        wall = end - t0
        for spy in spies:
            spy.send_signal(2)  # SIGINT: py-spy writes its samples and exits
            spy.wait(timeout=60)
        out = {"workers": n, "items": len(items), "produce_s": produced_s, "wall_s": wall,
               "items_per_s": len(items) / wall, "upserted_per_worker": per_worker,
               **accounting(watched, before, busy0, wall)}  # fmt: skip
    finally:
        sub.stop_all()
    return out


PROFILE_DIR: Path | None = None  # --profile


def profile_workers(procs: dict[str, psutil.Process], out: Path, tag: str) -> list:
    """py-spy on each worker (idle frames too, so what a worker waits on shows), until stopped."""
    import subprocess

    out.mkdir(parents=True, exist_ok=True)
    spy = Path(sys.executable).with_name("py-spy")
    return [subprocess.Popen([str(spy), "record", "--idle", "--threads", "--format", "raw", "--rate", "50", "--nonblocking",
                              "-o", str(out / f"{tag}-{name}.txt"), "-p", str(p.pid)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for name, p in procs.items()]  # fmt: skip


def wait_written(sub: Stack, s, expected: int, timeout_s: float = 3600) -> float:
    """Until the `content` collection holds `expected` items (the workers' counts first, then the
    store itself); the time it did."""
    deadline = time.monotonic() + timeout_s
    with VectorStore(s.vector_uri) as store:  # a guest of the worker that hosts the milvus-lite file
        written = 0
        while time.monotonic() < deadline:
            if sum(_upserted(url) for url in sub.urls.values()) >= expected:
                written = store.count(CONTENT)
                if written >= expected:
                    return time.perf_counter()
            time.sleep(0.5)
    raise RuntimeError(f"only {written} of {expected} vectors written within {timeout_s}s")


def _upserted(url: str) -> int:
    try:
        c = httpx.get(url, timeout=5).json()
    except (httpx.HTTPError, ValueError):
        return 0
    return c.get("encoded", 0) + c.get("cache_hit", 0)


def interaction_run(stack: Stack, base, root: Path, n_events: int, n: int, tag: str = "") -> dict:
    d = root / f"interactions-{n}{tag}"
    s = base.model_copy(update={
        "data_dir": d,
        # each configuration its own repartition and changelog topics: a shared changelog would let one
        # configuration's workers restore the state another's wrote (and count its events as applied)
        "topics": base.topics.model_copy(update={"interactions_repartition": f"interactions.repartition-{n}{tag}",
                                                 "changelog": f"interactions.changelog-{n}{tag}"}),
        "worker": base.worker.model_copy(update={"app_prefix": f"scale-int{n}{tag}"}),
    })  # fmt: skip
    from streams.topics import ensure_topics, topic_specs

    ensure_topics(s.broker.bootstrap, topic_specs(s))
    sub = Stack(s, d / "run")
    try:
        t_start = time.perf_counter()
        procs = start_workers(sub, s, "interactions", n)
        watched = {**procs, **broker_procs(stack), "bench": psutil.Process()}
        reader = StateReader(s.state_path, s.topics.interactions)
        first = settled = end = None
        before = busy0 = None
        deadline = time.monotonic() + 3600
        while time.monotonic() < deadline:
            reader.catch_up()
            c = reader.counters()
            done = c["applied"] + c["duplicate"] + c["late_dropped"]
            now = time.perf_counter()
            if done and first is None:
                first = (now, done)
            if settled is None and all(_assigned(sub.log_path(name)) for name in procs):
                settled = (now, done)
                before, busy0 = cpu_s(watched), machine_busy()
            if done >= n_events and settled is not None:
                end = now
                break
            time.sleep(0.2)
        reader.close()
        if end is None:
            raise RuntimeError(f"interactions x{n}: only {done} of {n_events} events applied")
        wall = end - settled[0]
        if n_events - settled[1] < n_events / 2:  # most events applied before every worker held partitions
            raise RuntimeError(f"interactions x{n}: {settled[1]} of {n_events} events were applied before the group "
                               "settled, so the rate would measure the settling: raise --copies")
        out = {"workers": n, "events": n_events, "events_per_s": (n_events - settled[1]) / wall,
               "events_per_s_from_first_event": (n_events - first[1]) / (end - first[0]),
               "applied_before_group_settled": settled[1], "settle_s_from_start": settled[0] - t_start,
               "wall_s": wall, **accounting(watched, before, busy0, wall)}  # fmt: skip
    finally:
        sub.stop_all()
    return out


def _assigned(log: Path) -> bool:
    return log.exists() and "resuming at stored offset" in log.read_text(errors="replace")


# ---- main ----------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=240, help="real Scientific items encoded per configuration")
    ap.add_argument("--copies", type=int, default=4, help="copies of the Scientific interactions (~59k each)")
    ap.add_argument("--encoder", default="smollm2", help="smollm2 | minilm")
    ap.add_argument("--storage", default="memory", choices=["memory", "s3"], help="the broker's storage engine")
    ap.add_argument("--stages", nargs="*", default=["interactions", "encoder"])
    ap.add_argument("--rounds", type=int, default=2, help="1 and 2 workers alternate this many times (median)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--fresh", action="store_true", help="forget the configurations already measured")
    ap.add_argument("--profile", type=Path, default=None,
                    help="py-spy each encoder worker during the timed run (needs py-spy), raw stacks into this folder")
    args = ap.parse_args()
    global PROFILE_DIR
    PROFILE_DIR = args.profile

    results = {} if args.fresh or not args.out.exists() else json.loads(args.out.read_text())
    results.update({"command": "python -m bench.scale_workers " + " ".join(sys.argv[1:]), "cpu_count": psutil.cpu_count()})
    results["notes"] = ("rates: interactions from the moment every worker holds partitions to the last event in "
                        "the state, encoder from the first send (workers warm) to the last vector written; medians "
                        "of the rounds; others_cores_used per run = CPU the rest of the machine took")  # fmt: skip
    results.setdefault("runs", {})
    results.setdefault("load_avg_before", os.getloadavg())
    t_all = time.perf_counter()

    def save() -> None:
        for stage, unit in (("encoder", "items_per_s"), ("interaction", "events_per_s")):
            for n in (1, 2):
                runs = [r for k, r in results["runs"].items() if k.startswith(f"{stage}_{n}_r")]
                if runs:  # the median over rounds (1 and 2 workers alternate, so load drift hits both)
                    results[f"{stage}_workers_{n}_{unit}"] = statistics.median(r[unit] for r in runs)
                    results[f"{stage}_workers_{n}_worker_cpu_s_per_1k"] = statistics.median(
                        1000 * sum(v for k, v in r["cpu_s"].items() if k.startswith(stage)) / r.get("items", r.get("events"))
                        for r in runs)  # fmt: skip
            results[f"{stage}_workers_2_vs_1"] = ratio(results, stage, unit)
        results["load_avg_after"] = os.getloadavg()
        results["load_avg"] = {"before": results["load_avg_before"], "after": results["load_avg_after"]}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))

    root = Path(tempfile.mkdtemp(prefix="h11-scale-workers-"))
    (root / "models").mkdir()
    base = load_settings(data_dir=root / "stack", broker={"storage": args.storage, "port": free_port(),
                                                          "s3_port": free_port(), "bootstrap_servers": ""})  # fmt: skip
    ds = read_unisrec(base.shared_data_dir)
    try:
        with Stack(base, root / "run") as stack:
            stack.start_broker()
            stack.create_topics()
            rounds = range(args.rounds)
            if "interactions" in args.stages and not all(f"interaction_{n}_r{k}" in results["runs"] for n in (1, 2) for k in rounds):
                payloads = interaction_payloads(ds.sequences, args.copies, time.time() - 86400)
                producer = make_producer(base, linger_ms=20)
                for key, value in payloads:
                    producer.send(base.topics.interactions, key=key, value=value)
                producer.flush()
                producer.close()
                for k in rounds:
                    for n in (1, 2):
                        if f"interaction_{n}_r{k}" not in results["runs"]:
                            r = interaction_run(stack, base, root, len(payloads), n, tag=f"r{k}")
                            results["runs"][f"interaction_{n}_r{k}"] = r
                            print(f"[interactions x{n} round {k}] {json.dumps(r)}", flush=True)
                            save()
            if "encoder" in args.stages:
                catalogue = sorted(item_records(ds, time.time()), key=lambda r: r.item_id)
                items, warm = catalogue[: args.items], catalogue[args.items : args.items + 16]
                for k in rounds:
                    for n in (1, 2):
                        if f"encoder_{n}_r{k}" not in results["runs"]:
                            r = encoder_run(stack, base, root, items, warm, n, args.encoder, tag=f"r{k}")
                            r["model"] = args.encoder
                            results["runs"][f"encoder_{n}_r{k}"] = r
                            print(f"[encoder x{n} round {k}] {json.dumps(r)}", flush=True)
                            save()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    results["wall_s"] = results.get("wall_s", 0.0) + time.perf_counter() - t_all
    save()
    print(json.dumps({k: v for k, v in results.items() if k != "runs"}, indent=2))


if __name__ == "__main__":
    main()
