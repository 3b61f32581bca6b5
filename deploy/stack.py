"""The embedded stack on one machine, in the foreground: the broker, its topics and the worker processes.

Every process gets the same settings (passed as `LEARN_*` environment variables) and its own log file
under the run directory. `Stack` is a context manager: leaving it, normally or on Ctrl-C, stops every
process it started, workers first, the broker next, its S3 server last. (`learn up` runs the same
programs in the background under supervisord instead: deploy/supervisor.py.)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from tenacity import Retrying, retry_if_result, stop_after_delay, wait_fixed

from config import Settings
from deploy.broker import BrokerError, for_storage, port_open, start_broker, stop_process
from streams.topics import ensure_topics, topic_specs

# name -> faust app module (each is its own consumer group and process)
WORKERS = {
    "interactions": "streams.interaction_worker",
    "encoder": "encoder.worker",
}


def settings_env(settings: Settings) -> dict[str, str]:
    """The settings as LEARN_* environment variables (one JSON value per section)."""
    env = {}
    for name, value in settings.model_dump(mode="json").items():
        if value is None:
            continue  # unset optional: the default applies (json "null" would be read as a path)
        env[f"LEARN_{name.upper()}"] = value if isinstance(value, str) else json.dumps(value)
    return env


def poll_until(check, timeout_s: float, every_s: float):
    """`check()` every `every_s` seconds (tenacity) until it returns a truthy value, which is returned;
    None once `timeout_s` passed. An exception `check` raises ends the wait at once (it propagates)."""
    waiting = Retrying(retry=retry_if_result(lambda value: not value), wait=wait_fixed(every_s),
                       stop=stop_after_delay(timeout_s), retry_error_callback=lambda state: None)  # fmt: skip
    return waiting(check)


def worker_command(module: str, web_host: str, web_port: int) -> list[str]:
    """The argv of a faust worker process (its web port given here overrides the settings' one)."""
    return [sys.executable, "-m", "faust", "-A", module, "worker", "-l", "info",
            "--web-port", str(web_port), "--web-host", web_host]  # fmt: skip


@dataclass
class Stack:
    settings: Settings
    run_dir: Path
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)

    def log_path(self, name: str) -> Path:
        return self.run_dir / f"{name}.log"

    # ---- processes ----
    def start_broker(self, names: tuple[str, ...] | None = None) -> None:
        """The embedded broker per `broker.storage` ("s3": its S3 server, then Tansu); none if external.
        `names` starts only those of its processes again (after `kill`)."""
        self.procs.update(start_broker(self.settings, self.run_dir, names))

    def create_topics(self) -> list[str]:
        return ensure_topics(self.settings.broker.bootstrap, topic_specs(self.settings))

    def start_worker(self, name: str, web_port: int, module: str | None = None) -> None:
        """Start a faust worker process and wait until its web server answers."""
        module = module or WORKERS[name]
        s = for_storage(self.settings)
        s = s.model_copy(update={"worker": s.worker.model_copy(update={"web_port": web_port})})
        env = {**os.environ, **settings_env(s), "PYTHONUNBUFFERED": "1"}
        self.start_process(name, worker_command(module, s.worker.web_host, web_port), env)
        self.wait_http(name, f"http://{s.worker.web_host}:{web_port}/counts")

    def start_process(self, name: str, cmd: list[str], env: dict[str, str] | None = None) -> None:
        log = open(self.log_path(name), "ab")
        self.procs[name] = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )

    def wait_http(self, name: str, url: str, timeout_s: float = 90.0) -> None:
        """Wait until `url` answers 200 (tried every 0.2 s); fail at once if the process exits."""

        def answers() -> bool:
            proc = self.procs[name]
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}; see {self.log_path(name)}")
            try:
                return httpx.get(url, timeout=1.0).status_code == 200
            except httpx.HTTPError:
                return False

        if not poll_until(answers, timeout_s, every_s=0.2):
            raise RuntimeError(f"{name} did not answer {url} within {timeout_s}s; see {self.log_path(name)}")

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Send a signal to one process (tests use SIGKILL to prove crash safety)."""
        proc = self.procs[name]
        os.killpg(proc.pid, sig)
        proc.wait()

    def pause(self, name: str, seconds: float) -> None:
        """Freeze one process (SIGSTOP) for `seconds`, then let it go on (SIGCONT): a long stall."""
        pgid = self.procs[name].pid
        os.killpg(pgid, signal.SIGSTOP)
        try:
            time.sleep(seconds)
        finally:
            os.killpg(pgid, signal.SIGCONT)

    def stop(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is not None:
            stop_process(proc)

    def stop_all(self) -> None:
        """Stop every process: the workers all at once (SIGTERM to each, then a wait for each: their
        shutdowns, leaving their consumer groups, overlap), then the broker, its S3 server last."""
        last = [n for n in ("broker", "s3") if n in self.procs]
        stop_together([self.procs.pop(n) for n in list(self.procs) if n not in last])
        for name in last:
            self.stop(name)

    def __enter__(self) -> "Stack":
        # SIGTERM (a supervisor, `kill`) unwinds like Ctrl-C, so the processes are stopped, not orphaned.
        self._old_sigterm = None
        if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
            self._old_sigterm = signal.signal(signal.SIGTERM, _exit_on_sigterm)
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.stop_all()
        finally:
            if self._old_sigterm is not None:
                signal.signal(signal.SIGTERM, self._old_sigterm)


def stop_together(procs: list[subprocess.Popen], timeout_s: float = 10.0) -> None:
    """SIGTERM to every process still running, then wait for each; SIGKILL one still there after
    `timeout_s` (deploy/broker.stop_process, for several processes whose shutdowns overlap)."""
    running = [p for p in procs if p.poll() is None]
    for proc in running:
        proc.terminate()
    deadline = time.monotonic() + timeout_s
    for proc in running:
        try:
            proc.wait(max(deadline - time.monotonic(), 0.01))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _exit_on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signum)


__all__ = ["Stack", "WORKERS", "poll_until", "settings_env", "worker_command", "BrokerError", "port_open"]
