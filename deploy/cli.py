"""The `learn` command line: one entry point for running, inspecting and benchmarking the system.

Settings come from `LEARN_*` environment variables and the TOML file named by `LEARN_CONFIG`
(config/settings.py); options here override them for one command.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from config import Settings, load_settings

app = typer.Typer(help="learn-stream: LEARN as a streaming recommender.", no_args_is_help=True)
console = Console()


def _settings(data_dir: Optional[Path] = None, port: Optional[int] = None) -> Settings:
    s = load_settings()
    if data_dir is not None:
        s = s.model_copy(update={"data_dir": data_dir.resolve()})
    if port is not None:
        s = s.model_copy(update={"broker": s.broker.model_copy(update={"port": port})})
    return s


DataDir = typer.Option(None, help="Where state, vectors and models live (default: settings.data_dir).")
Port = typer.Option(None, help="Broker port on 127.0.0.1 (default: settings.broker.port).")


@app.command()
def up(data_dir: Optional[Path] = DataDir, port: Optional[int] = Port) -> None:
    """Start the whole stack in the background under supervisord (S3 server + broker, topics, encoder
    workers, interaction workers, trainer, API replicas: `processes.*` says how many), each restarted if
    it dies; a second `up` starts nothing twice."""
    from deploy.broker import BrokerError
    from deploy.supervisor import SupervisorError, health
    from deploy.supervisor import up as stack_up

    s = _settings(data_dir, port)
    run_dir = s.data_dir / "run"
    try:
        r = stack_up(s, run_dir)
    except (BrokerError, SupervisorError) as e:
        console.print(f"[red]{e}[/]")
        raise typer.Exit(1)
    sup = "started" if r.supervisord_started else "already running"
    console.print(f"supervisord (pid {r.supervisord_pid}) {sup}; broker {s.broker.bootstrap}; "
                  f"topics created: {', '.join(r.topics_created) or 'none (existed)'}")  # fmt: skip
    console.print(f"started: {', '.join(r.started) or 'nothing'}; already running: {', '.join(r.already_running) or 'nothing'}")
    _print_health(health(run_dir), run_dir)


@app.command()
def down(data_dir: Optional[Path] = DataDir) -> None:
    """Stop everything `learn up` started (workers first, the broker and its S3 server last)."""
    from deploy.supervisor import down as stack_down

    s = _settings(data_dir)
    stopped = stack_down(s.data_dir / "run")
    console.print(f"stopped: {', '.join(f'{n} (pid {p})' for n, p in stopped) or 'nothing was running'}")


def _print_health(rows, run_dir: Path) -> None:
    from rich.table import Table

    if not rows:
        console.print(f"no stack running (no supervisord answers in {run_dir})")
        return
    table = Table("process", "state", "pid", "restarts", "up for", "log")
    for h in rows:
        table.add_row(h.name, h.state, str(h.pid or "-"), str(h.restarts),
                      "-" if h.uptime_s is None else f"{h.uptime_s:.0f} s", str(run_dir / f"{h.name}.log"))  # fmt: skip
    console.print(table)


@app.command()
def status(data_dir: Optional[Path] = DataDir) -> None:
    """Each process of `learn up` (state, pid, restarts), then what the state store holds."""
    from deploy.supervisor import health
    from store.state import StateReader

    s = _settings(data_dir)
    _print_health(health(s.data_dir / "run"), s.data_dir / "run")
    if not s.state_path.is_dir():
        console.print(f"state store: none yet at {s.state_path}")
        return
    reader = StateReader(s.state_path, s.topics.interactions)
    console.print(f"users: {sum(1 for _ in reader.users())}")
    console.print(f"counters: {dict(reader.counters())}")
    console.print(f"next offsets: {reader.next_offsets()}")
    reader.close()


DataOption = typer.Option(None, "--data", help="A dataset folder (plain, lcrec or atomic files: README, 'Bring your own data') "
                          "or a dataset name from the settings (\\[datasets.<name>]; default: the UniSRec Scientific split).")  # fmt: skip
FormatOption = typer.Option("auto", "--format", help="auto | plain | lcrec | atomic (auto: detected from the files).")
PrefixOption = typer.Option("", "--prefix", help="File-name prefix of lcrec/atomic files (default: the one present).")


def _fail(message: str) -> None:
    """A short error on stderr and exit status 2: no traceback for bad input."""
    Console(stderr=True, soft_wrap=True).print(f"error: {message}", style="red", markup=False, highlight=False)
    raise typer.Exit(2)


@app.command()
def demo(
    data: Optional[str] = DataOption,
    data_format: str = FormatOption,
    prefix: str = PrefixOption,
    users: Optional[int] = typer.Option(None, help="Replay only this many users (default: all)."),
    events_per_s: float = typer.Option(100.0, help="Event-time rate the replay assigns to interactions."),
    speedup: Optional[float] = typer.Option(None, help="Data with timestamps: data seconds per second of event "
                                            "time (default: the one that fits --events-per-s)."),  # fmt: skip
    window_s: float = typer.Option(60.0, help="The trainer's window, in seconds of event time."),
    data_dir: Optional[Path] = DataDir,
    port: Optional[int] = Port,
    run_dir: Optional[Path] = typer.Option(None, help="Where logs and the report go (default: runs/<time>)."),
    progress: bool = typer.Option(True, help="Show progress bars."),
) -> None:
    """The main job: the whole pipeline live on a dataset (default: the real Scientific data), with a report."""
    from deploy.broker import free_port, port_open
    from deploy.demo import run_demo
    from streams.datasets import DatasetError, resolve

    base = _settings(data_dir, port)
    try:
        src = resolve(data or "amazon-scientific-unisrec", base.datasets, base.shared_data_dir, data_format, prefix)
    except DatasetError as e:
        _fail(str(e))
    run_dir = (run_dir or Path("runs") / time.strftime("demo-%Y%m%d-%H%M%S")).resolve()
    s = _settings(data_dir or run_dir / "data", port)
    if port is None and port_open(s.broker.host, s.broker.port):  # another stack runs: don't collide
        s = _settings(data_dir or run_dir / "data", free_port(s.broker.host))
        console.print(f"port {load_settings().broker.port} is busy: this demo's broker uses {s.broker.port}")
    if s.broker.storage == "s3" and not s.broker.external:  # only this demo's broker talks to its S3 server:
        # a free port, never the default another stack's broker would write its topics to
        s = s.model_copy(update={"broker": s.broker.model_copy(update={"s3_port": free_port(s.broker.host)})})
    report = run_demo(s, run_dir, dataset=src, users=users, events_per_s=events_per_s, window_s=window_s,
                      progress=progress, console=console, speedup=speedup)  # fmt: skip
    raise typer.Exit(0 if report.ok else 1)


@app.command()
def replay(
    data: Optional[str] = DataOption,
    data_format: str = FormatOption,
    prefix: str = PrefixOption,
    users: Optional[int] = typer.Option(None, help="Replay only this many users (default: all)."),
    events_per_s: float = typer.Option(100.0, help="Interactions per second (data without timestamps), or the "
                                       "average rate the default speed-up aims at."),  # fmt: skip
    speedup: Optional[float] = typer.Option(None, help="Data with timestamps: data seconds per second of replay "
                                            "(1: real time)."),  # fmt: skip
    realtime: bool = typer.Option(True, "--realtime/--fast", help="Send each event when its time comes (event "
                                  "times start now), or all at once (event times end now)."),  # fmt: skip
    items: bool = typer.Option(True, "--items/--no-items", help="Send the catalogue's item texts first."),
    interactions: bool = typer.Option(True, "--interactions/--no-interactions", help="Send the interactions."),
    data_dir: Optional[Path] = DataDir,
    port: Optional[int] = Port,
    progress: bool = typer.Option(True, help="Show progress bars."),
) -> None:
    """Produce a dataset's items and interactions into the running stack (`learn up`), with kafka-python as a
    catalogue service and product producers would; the broker is the settings' one."""
    from deploy.broker import port_open
    from streams.datasets import DatasetError, read_source, resolve, subsample
    from streams.producer import EventProducer
    from streams.replay import replay_dataset

    s = _settings(data_dir, port)
    try:
        ds = subsample(read_source(resolve(data or "amazon-scientific-unisrec", s.datasets, s.shared_data_dir,
                                           data_format, prefix)), users)  # fmt: skip
    except DatasetError as e:
        _fail(str(e))
    if not port_open(s.broker.host, s.broker.port):
        _fail(f"no broker answers at {s.broker.bootstrap}: start the stack with `learn up` (or set LEARN_BROKER__PORT)")
    producer = EventProducer(s)
    try:
        out = replay_dataset(producer, ds, events_per_s=events_per_s, speedup=speedup, realtime=realtime,
                             items=items, interactions=interactions, progress=progress)  # fmt: skip
    finally:
        producer.close()
    pace = f"timestamps compressed {out['speedup']:.3g}x" if out["speedup"] else f"{events_per_s:g} events/s"
    console.print(f"{ds.name}: {out['items']} items and {out['interactions']} interactions sent to {s.broker.bootstrap} "
                  f"({pace}; {out['span_s']:.0f} s of event time; {out['skipped']} refused by the schema)")  # fmt: skip


@app.command()
def train(
    data: Optional[str] = DataOption,
    dataset: Optional[str] = typer.Option(None, help="Same as --data (kept for old scripts)."),
    data_format: str = FormatOption,
    prefix: str = PrefixOption,
    encoder: Optional[str] = typer.Option(None, help="smollm2 | minilm | a local HF path (default: settings)."),
    item_tower: Optional[str] = typer.Option(None, help="LEARN item tower: a variant in trainer/towers.py ITEM_TOWERS (default: settings)."),
    model: str = typer.Option("learn", help="learn | zero-training | popularity"),
    seed: Optional[int] = typer.Option(None, help="Random seed (default: settings.model.seed)."),
    users: Optional[int] = typer.Option(None, help="Train/evaluate on a random subset of N users."),
    loss: Optional[str] = typer.Option(None, help="full_softmax | dense_all_action | dense_full | in_batch"),
    whiten: Optional[bool] = typer.Option(None, "--whiten/--no-whiten", help="Whiten content embeddings."),
    epochs: Optional[int] = typer.Option(None, help="Maximum epochs (early stopping on valid NDCG@10)."),
    dense_weight: Optional[float] = typer.Option(
        None, help="With the full softmax: weight of the paper's dense all-action loss added to it."
    ),
    threads: Optional[int] = typer.Option(None, help="torch intra-op threads (default: torch's, all cores; "
                                          "with --nproc: cores / N per rank)."),  # fmt: skip
    nproc: int = typer.Option(1, "--nproc", min=1, help="Data-parallel ranks (torchrun + DDP, gloo) on this machine, in a "
                              "private network namespace (README: Distributed training)."),  # fmt: skip
    run_dir: Optional[Path] = typer.Option(None, help="Output dir (default: runs/train-<model>-<time>)."),
    data_dir: Optional[Path] = DataDir,
    progress: bool = typer.Option(True, help="Show progress bars."),
) -> None:
    """Offline LEARN on a dataset (default: the UniSRec Scientific split): encode items (cached), train the
    twin towers, evaluate (results.json, curve.png)."""
    from pydantic import ValidationError

    from streams.datasets import DatasetError
    from trainer.offline import train_cli
    from trainer.towers import UnknownItemTower

    if model not in ("learn", "zero-training", "popularity"):
        _fail(f"unknown model {model!r}: choose learn, zero-training or popularity")
    if nproc > 1:
        if model != "learn":
            _fail(f"--nproc trains LEARN in parallel; {model} has nothing to train")
        from deploy.torchrun import TorchrunError, launch, train_args
        from trainer.distributed import threads_per_rank

        run_dir = (run_dir or Path("runs") / time.strftime(f"train-learn-{item_tower or _settings(data_dir).model.item_tower}-%Y%m%d-%H%M%S")).resolve()
        args = train_args({"--data": data, "--dataset": dataset, "--format": data_format, "--prefix": prefix or None,
                           "--encoder": encoder, "--item-tower": item_tower, "--model": model, "--seed": seed,
                           "--users": users, "--loss": loss, "--whiten": whiten, "--epochs": epochs,
                           "--dense-weight": dense_weight, "--run-dir": run_dir,
                           "--data-dir": data_dir.resolve() if data_dir else None, "--progress": progress})  # fmt: skip
        try:
            rc = launch(nproc, args, threads or threads_per_rank(nproc))
        except TorchrunError as e:
            _fail(str(e))
        raise typer.Exit(rc)
    try:
        train_cli(_settings(data_dir), data or dataset or "amazon-scientific-unisrec", encoder, item_tower, model,
                  seed, users, loss, whiten, epochs, run_dir, progress, threads=threads, dense_weight=dense_weight,
                  data_format=data_format, prefix=prefix)  # fmt: skip
    except (DatasetError, ValidationError, UnknownItemTower) as e:
        _fail(str(e))


model_app = typer.Typer(help="Published model versions (the registry).", no_args_is_help=True)
app.add_typer(model_app, name="model")


@app.command()
def trainer(
    data_dir: Optional[Path] = DataDir,
    max_windows: Optional[int] = typer.Option(None, help="Stop after this many windows (default: run forever)."),
    idle_exit_s: Optional[float] = typer.Option(None, help="Stop after this long with no closed window."),
) -> None:
    """The incremental trainer: refresh the towers on each closed window and publish versions."""
    import logging

    from store.vectors import open_store
    from trainer.incremental import IncrementalTrainer
    from trainer.towers import UnknownItemTower, item_tower_class

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    s = _settings(data_dir)
    try:
        item_tower_class(s.model.item_tower)
    except UnknownItemTower as e:
        _fail(str(e))
    with open_store(s) as vectors:
        t = IncrementalTrainer(s, vectors)
        for r in t.run(poll_s=s.trainer.poll_s, max_windows=max_windows, idle_exit_s=idle_exit_s):
            pq = r.prequential
            console.print(
                f"window {r.window} [{r.start:.0f}, {r.end:.0f}): {r.events} events, {r.users} users; "
                f"prequential NDCG@10 {pq.get('ndcg@10', float('nan')):.4f} Recall@10 {pq.get('recall@10', float('nan')):.4f}; "
                f"train {r.train_s:.1f}s publish {r.publish_s:.1f}s -> {r.version}{'' if r.promoted else ' (not promoted)'}"
            )


@model_app.command("list")
def model_list(data_dir: Optional[Path] = DataDir) -> None:
    """The published versions, newest last; * marks the one serving uses."""
    from rich.table import Table

    from store.registry import RegistryUnavailable, open_registry

    s = _settings(data_dir)
    table = Table("", "version", "window end", "items", "prequential NDCG@10", "holdout NDCG@10", "complete")
    try:
        reg = open_registry(s)
        current = reg.current()
        for v in reg.versions():
            try:
                c = v.config
            except KeyError:  # an S3 version still uploading: no config.json yet
                c = {}
            m = c.get("metrics", {})
            end = f"{c['window']['end']:.0f}" if "window" in c else c.get("source", "-")  # offline: no window
            table.add_row("*" if current and current.name == v.name else "", v.name, end,
                          str(c.get("items")), f"{m.get('prequential', {}).get('ndcg@10', float('nan')):.4f}",
                          f"{m.get('holdout_candidate', {}).get('ndcg@10', float('nan')):.4f}", str(v.published))  # fmt: skip
    except (RegistryUnavailable, ValueError) as e:
        console.print(f"[red]{e}[/]")
        raise typer.Exit(1)
    console.print(table)


@model_app.command("rollback")
def model_rollback(version: str, data_dir: Optional[Path] = DataDir) -> None:
    """Point serving at an earlier complete VERSION (atomic)."""
    from store.registry import RegistryUnavailable, open_registry

    s = _settings(data_dir)
    try:
        v = open_registry(s).promote(version)
    except (KeyError, ValueError, RegistryUnavailable) as e:
        console.print(f"[red]{e}[/]")
        raise typer.Exit(1)
    console.print(f"serving now uses {v.name} (collection {v.collection})")


@model_app.command("publish")
def model_publish(
    run_dir: Path = typer.Argument(..., help="A `learn train` run directory (or its checkpoint/)."),
    promote: bool = typer.Option(True, "--promote/--no-promote", help="Switch serving to it once complete."),
    data_dir: Optional[Path] = DataDir,
) -> None:
    """Publish a model trained offline as the next version, over the live catalogue's content vectors."""
    from store.registry import RegistryUnavailable, open_registry
    from store.vectors import VectorStore
    from trainer.publish import publish_run

    s = _settings(data_dir)
    try:
        with VectorStore(s.vector_uri, s.vectors.token) as store:
            v = publish_run(run_dir, open_registry(s), store, promote, s.trainer.keep_versions)
    except (FileNotFoundError, RuntimeError, ValueError, RegistryUnavailable) as e:
        console.print(f"[red]{e}[/]")
        raise typer.Exit(1)
    state = "serving now uses it" if promote else "not promoted (learn model rollback to serve it)"
    console.print(f"published {run_dir} as {v.name} ({v.config['items']} items, collection {v.collection}); {state}")


ApiPort = typer.Option(None, "--api-port", help="The query API's port (default: settings.serving.port).")


def _api_settings(data_dir: Optional[Path], host: Optional[str], api_port: Optional[int]) -> Settings:
    s = _settings(data_dir)
    update = {k: v for k, v in (("host", host), ("port", api_port)) if v is not None}
    return s.model_copy(update={"serving": s.serving.model_copy(update=update)}) if update else s


@app.command()
def serve(
    data_dir: Optional[Path] = DataDir,
    host: Optional[str] = typer.Option(None, help="Bind address (default: settings.serving.host, 127.0.0.1)."),
    api_port: Optional[int] = ApiPort,
) -> None:
    """Run the query API (HTTP, OpenAPI at /docs) until Ctrl-C."""
    from serving.api import run

    run(_api_settings(data_dir, host, api_port))


@app.command()
def recommend(
    user: str,
    k: int = typer.Option(10, help="How many items."),
    popular: bool = typer.Option(False, "--popular", help="Popular items for an unknown user."),
    data_dir: Optional[Path] = DataDir,
    api_port: Optional[int] = ApiPort,
) -> None:
    """USER's recommendations with titles, from the running query API (`learn serve`)."""
    from serving.client import ApiError, base_url, fetch_recommendations, recommendations_table

    s = _api_settings(data_dir, None, api_port)
    try:
        rec = fetch_recommendations(base_url(s), user, k, "popular" if popular else "none", s.serving.token)
    except ApiError as e:
        console.print(f"[red]{e}[/]")
        raise typer.Exit(1)
    console.print(recommendations_table(rec))


if __name__ == "__main__":
    app()
