"""`learn up` runs the whole stack under supervisord: a second `up` starts nothing twice, a process
killed with SIGKILL is started again, `learn status` shows each one's health and `learn down` leaves
nothing running (checked by pid)."""

import os
import signal
import subprocess
import sys

import psutil
import pytest

from deploy.broker import free_port
from deploy.supervisor import START_ORDER, health, stack_programs, stack_settings
from deploy.supervisor import down as stack_down
from deploy.supervisor import up as stack_up
from tests.integration.helpers import wait_for

pytestmark = pytest.mark.integration


def free_pair() -> int:
    """A port p with p + 1 free too (the interaction and the encoder worker's web ports)."""
    while True:
        p = free_port()
        if p < 65535 and not _in_use(p + 1):
            return p


def _in_use(port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def stack_settings_for_test(settings):
    u = {
        "broker": settings.broker.model_copy(update={"storage": "s3", "port": free_port(), "s3_port": free_port(),
                                                     "bootstrap_servers": ""}),
        "worker": settings.worker.model_copy(update={"web_port": free_pair()}),
        "serving": settings.serving.model_copy(update={"port": free_port()}),
        "encoder": settings.encoder.model_copy(update={"model": "minilm"}),
    }  # fmt: skip
    return settings.model_copy(update=u)


def copies_running(command: list[str]) -> int:
    n = 0
    for proc in psutil.process_iter(["cmdline", "status"]):
        if proc.info["cmdline"] == command and proc.info["status"] != psutil.STATUS_ZOMBIE:
            n += 1
    return n


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def running_pids(run_dir) -> dict[str, int]:
    return {h.name: h.pid for h in health(run_dir) if h.state == "RUNNING"}


def test_up_is_idempotent_restarts_killed_processes_and_down_stops_everything(settings):
    s = stack_settings_for_test(settings)
    run_dir = s.data_dir / "run"
    seen_pids: set[int] = set()
    try:
        first = stack_up(s, run_dir)
        assert first.supervisord_started and first.started == list(START_ORDER)
        assert set(first.topics_created) == {s.topics.items, s.topics.interactions, s.topics.items_dlq,
                                             s.topics.interactions_dlq}  # fmt: skip
        pids = running_pids(run_dir)
        assert set(pids) == set(START_ORDER)
        seen_pids |= set(pids.values()) | {first.supervisord_pid}

        again = stack_up(s, run_dir)
        assert not again.supervisord_started and again.supervisord_pid == first.supervisord_pid
        assert again.started == [] and again.already_running == list(START_ORDER)
        assert running_pids(run_dir) == pids
        for program in stack_programs(stack_settings(s)):
            assert copies_running(program.command) == 1, program.name

        for name in ("interactions", "broker"):
            os.kill(pids[name], signal.SIGKILL)
            back = wait_for(lambda: running_pids(run_dir).get(name) not in (None, pids[name]) and running_pids(run_dir),
                            timeout_s=120)  # fmt: skip
            seen_pids.add(back[name])
            assert {h.name: h.restarts for h in health(run_dir)}[name] == 1
        # the restarted worker is serving again
        wait_for(lambda: _answers(f"http://127.0.0.1:{s.worker.web_port}/counts"), timeout_s=120)

        env = {**os.environ, "LEARN_DATA_DIR": str(s.data_dir)}
        out = subprocess.run([sys.executable, "-m", "deploy.cli", "status"], env=env, capture_output=True,
                             text=True, timeout=120)  # fmt: skip
        assert out.returncode == 0, out.stderr
        for name in START_ORDER:
            assert name in out.stdout
        assert "RUNNING" in out.stdout and "users: 0" in out.stdout
    finally:
        stopped = stack_down(run_dir)
    assert {name for name, _ in stopped} == set(START_ORDER)
    assert [pid for pid in seen_pids if alive(pid)] == []
    assert health(run_dir) == [] and stack_down(run_dir) == []


def _answers(url: str) -> bool:
    import httpx

    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
