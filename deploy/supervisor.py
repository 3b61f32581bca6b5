"""`learn up` / `learn down` / `learn status`: the whole stack in the background under supervisord.

Programs, in start order: the S3 server and Tansu (the embedded broker, none if it is external), the
Milvus server if `processes.milvus_server`, the encoder workers, the interaction workers, the
incremental trainer and the query API replicas. `processes.{encoder,interaction}_workers` and
`processes.api_replicas` say how many of each (instance 0 is named after its stage, "encoder", the
next "encoder-1", ...; each has its own log, web port and, for an API replica, HTTP port
`serving.port + i`). Workers of a stage share one consumer group, so Kafka spreads the partitions
over them and moves them when one dies or joins; `up` refuses more workers than partitions. supervisord
(PyPI `supervisor`) restarts any of them that exits, whatever the signal: one that dies right after
starting is retried with a growing delay (1 s, 2 s, ...), one that ran at least `processes.start_secs` is
restarted at once. A harness may therefore SIGKILL any program's pid and wait for its new one.

Everything lives in the run directory (`<data_dir>/run`): the generated `supervisord.conf`, the control
socket (a unix socket: no TCP port), supervisord's log and pid file, and one log per program. The
settings reach every program as today's `LEARN_*` variables (`settings_env`), set on supervisord and
inherited; per-program differences (web ports) are command-line arguments.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import xmlrpc.client
from dataclasses import dataclass
from pathlib import Path

import httpx

from config import Settings
from deploy.broker import BrokerError, Program, broker_programs, for_storage, port_open, prepare_storage
from deploy.stack import WORKERS, poll_until, settings_env, worker_command
from store.process import pid_alive
from streams.topics import ensure_topics, partition_counts, topic_specs

START_RETRIES = 1000  # quick deaths in a row before supervisord gives up on a program (state FATAL)
STOP_WAIT_S = 20  # SIGTERM, then SIGKILL of the program's whole process group after this long
NOT_RUNNING = 70  # supervisor.xmlrpc.Faults.NOT_RUNNING


class SupervisorError(RuntimeError):
    """supervisord did not start, or a program did not become ready."""


# ---- what runs (pure) ----------------------------------------------------------------------------
def instance_name(stage: str, i: int) -> str:
    """Instance i of a stage: the first keeps the stage's name ("encoder"), the next are "encoder-1", ..."""
    return stage if i == 0 else f"{stage}-{i}"


def stage_of(name: str) -> str:
    """The stage of an instance name ("encoder-1" -> "encoder"; "s3" -> "s3")."""
    base, _, n = name.rpartition("-")
    return base if base and n.isdigit() else name


def instance_counts(settings: Settings) -> dict[str, int]:
    """Processes per scaled stage (settings.processes)."""
    p = settings.processes
    return {"encoder": p.encoder_workers, "interactions": p.interaction_workers, "api": p.api_replicas}


def worker_ports(settings: Settings) -> dict[str, int]:
    """Each faust worker instance's web port: interaction worker i on `worker.web_port + 2i`, encoder
    worker i on `worker.web_port + 2i + 1` (one of each: web_port and the next, as before)."""
    base, n = settings.worker.web_port, instance_counts(settings)
    ports = {instance_name("interactions", i): base + 2 * i for i in range(n["interactions"])}
    ports |= {instance_name("encoder", i): base + 2 * i + 1 for i in range(n["encoder"])}
    return ports


def api_ports(settings: Settings) -> dict[str, int]:
    """API replica i listens on `serving.port + i`."""
    return {instance_name("api", i): settings.serving.port + i for i in range(settings.processes.api_replicas)}


def milvus_uri(settings: Settings) -> str:
    return f"http://127.0.0.1:{settings.processes.milvus_port}"


def runs_milvus(settings: Settings) -> bool:
    """`learn up` runs the Milvus server: asked for, and no other vector store named by URI."""
    return settings.processes.milvus_server and settings.vectors.uri in ("", milvus_uri(settings))


def stack_settings(settings: Settings) -> Settings:
    """The settings every program gets: the fetch wait the broker's storage needs (`for_storage`), the
    API re-exporting every worker's /metrics page, and vectors.uri on the Milvus server `learn up` runs."""
    settings = for_storage(settings)
    if runs_milvus(settings):
        settings = settings.model_copy(update={"vectors": settings.vectors.model_copy(update={"uri": milvus_uri(settings)})})
    if settings.serving.metrics_urls:
        return settings
    w = settings.worker
    urls = [f"http://{w.web_host}:{p}/metrics" for p in worker_ports(settings).values()]
    return settings.model_copy(update={"serving": settings.serving.model_copy(update={"metrics_urls": urls})})


def partition_errors(settings: Settings, counts: dict[str, int] | None = None) -> list[str]:
    """Why the topics cannot feed the workers: a stage with more workers than its input topic has
    partitions (`counts`: the broker's partition counts; None: the configured `topics.partitions`).
    Partitions are never added here: the interaction state is placed by user id modulo the count."""
    t, p = settings.topics, settings.processes
    need = {t.items: ("encoder_workers", p.encoder_workers), t.interactions: ("interaction_workers", p.interaction_workers)}
    errors = []
    for topic, (field, workers) in need.items():
        have = t.partitions if counts is None else counts.get(topic, t.partitions)
        if workers > have:
            errors.append(f"processes.{field} = {workers} but topic {topic!r} has {have} partitions: "
                          f"at most one worker per partition (raise topics.partitions before the topics are created)")  # fmt: skip
    return errors


def milvus_program(settings: Settings) -> Program:
    """The Milvus server (deploy/milvus_server.py `run`) on <data_dir>/milvus, forwarded to milvus_port."""
    command = [sys.executable, "-m", "deploy.milvus_server", "run", str(settings.data_dir / "milvus"),
               "--port", str(settings.processes.milvus_port)]  # fmt: skip
    return Program("milvus", command, {}, "127.0.0.1", settings.processes.milvus_port)


def stack_programs(settings: Settings) -> list[Program]:
    """Every long-running process of `learn up`, in start order (N instances of a scaled stage)."""
    host, ports = settings.worker.web_host, worker_ports(settings)
    n = instance_counts(settings)
    workers = [Program(name, worker_command(WORKERS[stage], host, ports[name]), {}, host, ports[name],
                       f"http://{host}:{ports[name]}/counts")
               for stage in ("encoder", "interactions") for name in map(lambda i: instance_name(stage, i), range(n[stage]))]  # fmt: skip
    sv = settings.serving
    apis = [Program(name, [sys.executable, "-m", "serving.api"], _serving_env(settings, port), sv.host, port,
                    f"http://{sv.host}:{port}/ready") for name, port in api_ports(settings).items()]  # fmt: skip
    return [
        *broker_programs(settings),
        *([milvus_program(settings)] if runs_milvus(settings) else []),
        *workers,
        Program("trainer", [sys.executable, "-m", "deploy.cli", "trainer"]),
        *apis,
    ]  # fmt: skip


def _serving_env(settings: Settings, port: int) -> dict[str, str]:
    """An API replica's own port over every program's serving section (pydantic-settings merges a
    nested LEARN_SERVING__PORT into the LEARN_SERVING JSON)."""
    return {} if port == settings.serving.port else {"LEARN_SERVING__PORT": str(port)}


def _quote(value: str) -> str:
    return value.replace("%", "%%")  # supervisord expands %(name)s in its values


# The programs' names in start order with one process per stage (stack_programs); `learn down`
# stops them in reverse, stage by stage (STAGES: also the optional Milvus server).
START_ORDER = ("s3", "broker", "encoder", "interactions", "trainer", "api")
STAGES = ("s3", "broker", "milvus", "encoder", "interactions", "trainer", "api")
STOP_SIGNALS = {"milvus": "INT"}  # the Milvus wrapper ignores SIGTERM (deploy/milvus_server.py)


def stop_rank(name: str) -> int:
    stage = stage_of(name)
    return -STAGES.index(stage) if stage in STAGES else -len(STAGES)


def supervisor_conf(programs: list[Program], run_dir: Path, cwd: Path, start_secs: int = 3) -> str:
    """supervisord's configuration: a unix control socket, logs in run_dir, one [program:x] each.
    Programs are started by `learn up` in order (autostart off) and restarted by supervisord."""
    sock = socket_path(run_dir)
    lines = [
        "[unix_http_server]", f"file={_quote(str(sock))}", "chmod=0700", "",
        "[supervisord]", f"logfile={_quote(str(run_dir / 'supervisord.log'))}", "logfile_maxbytes=10MB",
        f"pidfile={_quote(str(run_dir / 'supervisord.pid'))}", f"childlogdir={_quote(str(run_dir))}",
        f"directory={_quote(str(cwd))}", "nodaemon=false", "silent=true", "",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface", "",
        "[supervisorctl]", f"serverurl=unix://{_quote(str(sock))}", "",
    ]  # fmt: skip
    for i, p in enumerate(programs):
        env = ",".join(f'{k}="{_quote(v)}"' for k, v in p.env.items())
        lines += [
            f"[program:{p.name}]",
            f"command={_quote(shlex.join(p.command))}",
            f"priority={10 * (i + 1)}",  # stopped in reverse: workers first, the broker, the S3 server last
            "autostart=false", "autorestart=true",
            f"startsecs={start_secs}", f"startretries={START_RETRIES}",
            f"stopsignal={STOP_SIGNALS.get(p.name, 'TERM')}", f"stopwaitsecs={STOP_WAIT_S}", "stopasgroup=true", "killasgroup=true",
            "redirect_stderr=true", f"stdout_logfile={_quote(str(run_dir / (p.name + '.log')))}",
            "stdout_logfile_maxbytes=20MB", "stdout_logfile_backups=2",
        ]  # fmt: skip
        if env:
            lines.append(f"environment={env}")
        lines.append("")
    return "\n".join(lines)


def supervisord_env(settings: Settings) -> dict[str, str]:
    """supervisord's (so every program's) environment: this one without its own settings variables,
    then the settings as LEARN_* variables, so `learn up --port` and the like reach every program."""
    own = tuple(f"LEARN_{name.upper()}" for name in Settings.model_fields)
    base = {k: v for k, v in os.environ.items() if not k.startswith(own)}
    return {**base, **settings_env(settings), "PYTHONUNBUFFERED": "1"}


_SPAWNED = re.compile(r"spawned: '([^']+)' with pid (\d+)")
_STARTED = re.compile(r"supervisord started with pid (\d+)")


def spawn_counts(log_text: str) -> dict[str, int]:
    """How often supervisord spawned each program since it last started (from its log)."""
    starts = [m.end() for m in _STARTED.finditer(log_text)]
    counts: dict[str, int] = {}
    for m in _SPAWNED.finditer(log_text, starts[-1] if starts else 0):
        counts[m.group(1)] = counts.get(m.group(1), 0) + 1
    return counts


# ---- supervisord (I/O) ---------------------------------------------------------------------------
def socket_path(run_dir: Path) -> Path:
    return run_dir / "supervisor.sock"


def rpc(run_dir: Path):
    """supervisord's XML-RPC interface over its unix socket."""
    from supervisor.xmlrpc import SupervisorTransport

    transport = SupervisorTransport(None, None, f"unix://{socket_path(run_dir)}")
    return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport).supervisor


def supervisord_pid(run_dir: Path) -> int | None:
    """The pid of the supervisord answering on run_dir's socket, or None when none answers."""
    if not socket_path(run_dir).exists():
        return None
    try:
        return int(rpc(run_dir).getPID())
    except (OSError, xmlrpc.client.Fault, xmlrpc.client.ProtocolError):
        return None


def start_supervisord(settings: Settings, run_dir: Path, programs: list[Program], timeout_s: float = 30.0) -> int:
    """Write the configuration and start supervisord (it daemonises); return its pid."""
    run_dir.mkdir(parents=True, exist_ok=True)
    conf = run_dir / "supervisord.conf"
    conf.write_text(supervisor_conf(programs, run_dir, Path.cwd(), settings.processes.start_secs))
    socket_path(run_dir).unlink(missing_ok=True)  # left by a supervisord that was killed
    out = subprocess.run([sys.executable, "-m", "supervisor.supervisord", "-c", str(conf)],
                         env=supervisord_env(settings), capture_output=True, text=True, timeout=timeout_s)  # fmt: skip
    if out.returncode != 0:
        raise SupervisorError(f"supervisord did not start: {out.stderr.strip() or out.stdout.strip()}")
    pid = poll_until(lambda: supervisord_pid(run_dir), timeout_s, every_s=0.1)
    if not pid:
        raise SupervisorError(f"supervisord did not answer on {socket_path(run_dir)}; see {run_dir / 'supervisord.log'}")
    return pid


def wait_ready(program: Program, run_dir: Path, timeout_s: float) -> None:
    """Wait until supervisord counts the program started (RUNNING: alive for `processes.start_secs`),
    its port accepts connections and its ready URL answers 200 (looked at every 0.2 s)."""
    sup = rpc(run_dir)

    def ready() -> bool:
        info = sup.getProcessInfo(program.name)
        if info["statename"] == "FATAL":
            raise SupervisorError(f"{program.name} keeps exiting; see {run_dir / (program.name + '.log')}")
        if info["statename"] != "RUNNING" or (program.port is not None and not port_open(program.host, program.port)):
            return False
        return _answers(program)

    if not poll_until(ready, timeout_s, every_s=0.2):
        raise SupervisorError(f"{program.name} was not ready within {timeout_s:.0f}s; see {run_dir / (program.name + '.log')}")


def _answers(program: Program) -> bool:
    """The program serves: its ready URL answers 200; the Milvus server lists its collections (its
    forwarder accepts connections before the server behind it is up)."""
    if program.name == "milvus":
        from pymilvus import MilvusClient

        try:
            client = MilvusClient(uri=f"http://{program.host}:{program.port}", timeout=5.0)
            try:
                client.list_collections()
                return True
            finally:
                client.close()
        except Exception:  # noqa: BLE001 - not up yet
            return False
    if program.ready_url is None:
        return True
    try:
        return httpx.get(program.ready_url, timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def check_can_run(settings: Settings) -> None:
    """Refuse, with the reason, a configuration that cannot run here (before anything starts)."""
    errors = partition_errors(settings)
    if runs_milvus(settings):
        from deploy.milvus_server import unavailable_reason

        reason = unavailable_reason()
        if reason:
            errors.append(f"processes.milvus_server is on but the Milvus server cannot run here: {reason}")
    if errors:
        raise SupervisorError("; ".join(errors))


@dataclass
class UpReport:
    supervisord_pid: int
    supervisord_started: bool  # False: one was running already
    started: list[str]  # programs this call started
    already_running: list[str]
    topics_created: list[str]


def up(settings: Settings, run_dir: Path, ready_timeout_s: float = 300.0) -> UpReport:
    """Start what is not running yet, in order, each ready before the next; idempotent."""
    s = stack_settings(settings)
    check_can_run(s)
    programs = stack_programs(s)
    pid = supervisord_pid(run_dir)
    fresh = pid is None
    if fresh:
        for p in programs:
            if p.port is not None and port_open(p.host, p.port):
                raise BrokerError(f"port {p.host}:{p.port} ({p.name}) is already in use: "
                                  "stop the other stack or pick another port")  # fmt: skip
        prepare_storage(s)
        pid = start_supervisord(s, run_dir, programs)
    sup = rpc(run_dir)
    started, running, topics = [], [], None
    for p in programs:
        if stage_of(p.name) in WORKERS and topics is None:  # the broker is ready: topics before any worker
            topics = ensure_topics(s.broker.bootstrap, topic_specs(s))
            errors = partition_errors(s, partition_counts(s.broker, [s.topics.items, s.topics.interactions]))
            if errors:  # topics that existed with fewer partitions
                raise SupervisorError("; ".join(errors))
        state = sup.getProcessInfo(p.name)["statename"]
        if state in ("RUNNING", "STARTING", "BACKOFF"):
            running.append(p.name)
        else:
            sup.startProcess(p.name, False)
            started.append(p.name)
        wait_ready(p, run_dir, ready_timeout_s)
    return UpReport(pid, fresh, started, running, topics or [])


@dataclass
class Health:
    name: str
    state: str  # RUNNING, STARTING, BACKOFF, EXITED, FATAL, STOPPED
    pid: int | None
    restarts: int  # spawns since supervisord started, less the first
    uptime_s: float | None


def health(run_dir: Path) -> list[Health]:
    """Each program's state, pid and restart count; [] when no supervisord answers."""
    if supervisord_pid(run_dir) is None:
        return []
    log = run_dir / "supervisord.log"
    spawns = spawn_counts(log.read_text(errors="replace") if log.exists() else "")
    out = []
    for info in rpc(run_dir).getAllProcessInfo():
        running = info["statename"] == "RUNNING"
        out.append(Health(info["name"], info["statename"], info["pid"] or None,
                          max(spawns.get(info["name"], 0) - 1, 0),
                          float(info["now"] - info["start"]) if running else None))  # fmt: skip
    return out


def down(run_dir: Path, timeout_s: float = 120.0) -> list[tuple[str, int]]:
    """Stop every program (workers first, the S3 server last) and supervisord; return (name, pid) stopped."""
    pid = supervisord_pid(run_dir)
    if pid is None:
        return []
    sup = rpc(run_dir)
    infos = sorted(sup.getAllProcessInfo(), key=lambda i: stop_rank(i["name"]))
    stopped = [(i["name"], i["pid"]) for i in infos if i["pid"]]
    for info in infos:  # one at a time: a worker shuts down cleanly only while the broker still runs
        if info["statename"] in ("RUNNING", "STARTING", "BACKOFF"):
            try:
                sup.stopProcess(info["name"], True)
            except xmlrpc.client.Fault as e:
                if e.faultCode != NOT_RUNNING:  # it exited meanwhile
                    raise
    sup.shutdown()
    if not poll_until(lambda: not _alive(pid), timeout_s, every_s=0.1):
        raise SupervisorError(f"supervisord (pid {pid}) did not exit within {timeout_s:.0f}s")
    return stopped


def _alive(pid: int) -> bool:
    return pid_alive(pid)  # a zombie is gone for our purpose
