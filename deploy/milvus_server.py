"""A real Milvus server on this machine, reachable on loopback only.

PyPI `milvus==2.3.5` (this project's `milvus-server` extra) ships Milvus 2.3.5 standalone with embedded
etcd and local storage behind a small Python wrapper. The server binds ALL interfaces on a dozen fixed
ports (19530 gRPC, 9091 health, 2379 etcd, ...), so it is never started in this machine's network:

1. the wrapper runs in a private network namespace that has only loopback (`unshare -n`, then
   `ip link set lo up`): nothing outside the namespace reaches any of its ports, and its fixed ports
   collide with nobody;
2. a forwarder process relays one loopback port of this machine's network to the server's gRPC port.
   It is started by `nsenter --net=<the server's namespace>` and inherits a listening socket that
   was bound to 127.0.0.1:<free port> in the machine's namespace before entering: a socket keeps the
   namespace it was created in, so the forwarder accepts on this machine's loopback and connects
   inside the private one. Clients (tests, benchmarks, workers) use `http://127.0.0.1:<that port>`
   as `vectors.uri` like any Milvus server address.

The wrapper ignores SIGTERM for a long time; `stop()` sends it SIGINT (its handler terminates the
server binary, killing it after 1 s; the data written so far survived that in the tests), and kills
the process group only if that did not end it. Data lives under the given
directory and survives a restart; after a restart collections are released until loaded
(store/vectors.py loads them). Needs root (or CAP_SYS_ADMIN) for the namespace: `start()` raises
`MilvusServerError` with the reason when it cannot, and callers (the test fixture) skip on it.

`python -m deploy.milvus_server run DIR [--port P]` starts one and prints its URI until Ctrl-C (SIGINT;
`learn up` runs it so with `processes.milvus_server`);
`python -m deploy.milvus_server forward ...` is the forwarder (started by `start()`).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tenacity import Retrying, retry_if_not_exception_type, retry_if_result, stop_after_delay, wait_fixed

from store.process import pid_alive

GRPC_PORT = 19530  # the server's port inside its namespace (the wrapper's default)


class MilvusServerError(RuntimeError):
    """The server cannot be installed, isolated or started here."""


@dataclass
class MilvusServer:
    """A running server: `uri` is what clients use."""

    uri: str
    data_dir: Path
    wrapper: subprocess.Popen
    forwarder: subprocess.Popen

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def port(self) -> int:
        return int(self.uri.rsplit(":", 1)[1])

    def restart(self, timeout_s: float = 240.0) -> None:
        """Stop and start again on the same data and the same loopback port (clients keep their URI)."""
        self.stop()
        again = start(self.data_dir, timeout_s=timeout_s, port=self.port)
        self.wrapper, self.forwarder = again.wrapper, again.forwarder

    def alive(self) -> bool:
        return self.wrapper.poll() is None and self.forwarder.poll() is None

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGINT to the wrapper (see module doc), then the forwarder; SIGKILL what is left."""
        _stop_group(self.wrapper, signal.SIGINT, timeout_s)
        _stop_group(self.forwarder, signal.SIGTERM, 5.0)

    def __enter__(self) -> "MilvusServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _stop_group(proc: subprocess.Popen, sig: int, timeout_s: float) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            pass
    try:  # the server binary is the wrapper's child, in the wrapper's process group
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def unavailable_reason() -> str:
    """Why a server cannot be started here, or "" if it can (checked without starting one)."""
    if importlib.util.find_spec("milvus") is None:
        return "PyPI `milvus` (Milvus standalone) is not installed: run `make install`"
    missing = [tool for tool in ("unshare", "nsenter", "ip") if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} not found (util-linux / iproute2)"
    probe = subprocess.run(["unshare", "-n", "--", "ip", "link", "set", "lo", "up"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"cannot create a private network namespace (needs root): {probe.stderr.strip()}"
    return ""


def wrapper_command(data_dir: Path) -> list[str]:
    """The wrapper in a fresh network namespace whose loopback is up."""
    return [
        "unshare", "-n", "--", "sh", "-c", 'ip link set lo up && exec "$@"', "milvus",
        sys.executable, "-c", "import milvus; milvus.main()", "--data", str(data_dir),
    ]  # fmt: skip


def loopback_listener(port: int = 0) -> socket.socket:
    """A listening socket on 127.0.0.1:<port> (0: a free one) in this process's network namespace."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(128)
    return sock


def start(data_dir: Path, timeout_s: float = 240.0, port: int = 0) -> MilvusServer:
    """Start a server on `data_dir` (created; an existing one is reused with its data), reachable on
    127.0.0.1:`port` (0: a free port), wait until it answers through the forwarder, return it. The
    first start on a directory unpacks the binaries (~24 s idle). The server gets SIGINT if the
    calling thread dies first (no orphan server after a killed test run)."""
    reason = unavailable_reason()
    if reason:
        raise MilvusServerError(reason)
    data_dir = Path(data_dir).resolve()
    (data_dir / "logs").mkdir(parents=True, exist_ok=True)
    listener = loopback_listener(port)  # first: a taken port fails before anything starts
    port = listener.getsockname()[1]
    with listener, open(data_dir / "logs" / "wrapper.log", "ab") as out:  # the children keep copies
        wrapper = subprocess.Popen(wrapper_command(data_dir), stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True,
                                   preexec_fn=_signal_on_parent_death(signal.SIGINT))  # fmt: skip
        try:
            forwarder = subprocess.Popen(
                ["nsenter", f"--net={_wait_netns(wrapper)}", "--", sys.executable, "-m", "deploy.milvus_server",
                 "forward", "--fd", str(listener.fileno()), "--watch-pid", str(wrapper.pid)],
                pass_fds=[listener.fileno()], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, cwd=Path(__file__).resolve().parent.parent,
            )  # fmt: skip
        except BaseException:
            _stop_group(wrapper, signal.SIGINT, 10.0)
            raise
    server = MilvusServer(f"http://127.0.0.1:{port}", data_dir, wrapper, forwarder)
    try:
        wait_ready(server, timeout_s)
    except BaseException:
        server.stop()
        raise
    return server


def _signal_on_parent_death(sig: int):
    """A preexec_fn: the child gets `sig` when the thread that started it dies (Linux prctl)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1

    def preexec() -> None:
        libc.prctl(pr_set_pdeathsig, sig)

    return preexec


def _wait_netns(wrapper: subprocess.Popen, timeout_s: float = 10.0) -> str:
    """The wrapper's network namespace once `unshare` has made it (a path for nsenter); tried every 20 ms."""
    mine = os.readlink("/proc/self/ns/net")
    path = f"/proc/{wrapper.pid}/ns/net"

    def entered() -> bool:
        if wrapper.poll() is not None:
            raise MilvusServerError(f"the server wrapper exited with {wrapper.returncode}")
        try:
            return os.readlink(path) != mine
        except FileNotFoundError:
            return False

    waiting = Retrying(retry=retry_if_result(lambda ok: not ok), wait=wait_fixed(0.02),
                       stop=stop_after_delay(timeout_s), retry_error_callback=lambda state: False)  # fmt: skip
    if not waiting(entered):
        raise MilvusServerError("the server wrapper did not enter its own network namespace")
    return path


def wait_ready(server: MilvusServer, timeout_s: float) -> None:
    """Until a client through the forwarder lists collections (the server is serving requests);
    tried every 0.5 s."""
    from pymilvus import MilvusClient

    def answers() -> None:
        if not server.alive():
            raise MilvusServerError(f"the Milvus server exited during start; see {server.log_dir}")
        client = MilvusClient(uri=server.uri, timeout=5.0)
        try:
            client.list_collections()
        finally:
            client.close()

    waiting = Retrying(retry=retry_if_not_exception_type(MilvusServerError), wait=wait_fixed(0.5),
                       stop=stop_after_delay(timeout_s), reraise=True)  # fmt: skip
    try:
        waiting(answers)
    except MilvusServerError:
        raise
    except Exception as e:  # noqa: BLE001 - not up within the wait
        raise MilvusServerError(f"Milvus did not answer within {timeout_s}s (last error: {e}); "
                                f"see {server.log_dir}") from e  # fmt: skip


# ---- the forwarder (runs inside the server's namespace) -------------------------------------------
async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def _forward(listen_fd: int, target_port: int, watch_pid: int) -> None:
    async def relay(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", target_port)
        except OSError:
            client_w.close()
            return
        await asyncio.gather(_pipe(client_r, server_w), _pipe(server_r, client_w))

    sock = socket.socket(fileno=listen_fd)
    server = await asyncio.start_server(relay, sock=sock)
    async with server:
        while pid_alive(watch_pid):  # the namespace's server went away: so does its door
            await asyncio.sleep(0.5)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m deploy.milvus_server")
    sub = parser.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="start a server on DIR and print its URI until Ctrl-C")
    run.add_argument("data_dir", type=Path)
    run.add_argument("--port", type=int, default=0, help="the loopback port clients use (0: a free one)")
    fwd = sub.add_parser("forward", help="(internal) relay an inherited listening socket to the server")
    fwd.add_argument("--fd", type=int, required=True)
    fwd.add_argument("--target-port", type=int, default=GRPC_PORT)
    fwd.add_argument("--watch-pid", type=int, required=True)
    args = parser.parse_args(argv)
    if args.cmd == "forward":
        asyncio.run(_forward(args.fd, args.target_port, args.watch_pid))
        return
    with start(args.data_dir, port=args.port) as server:
        print(f"Milvus {server.uri} (data {server.data_dir}); Ctrl-C stops it", flush=True)
        try:
            server.wrapper.wait()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
