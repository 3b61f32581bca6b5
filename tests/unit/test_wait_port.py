"""deploy/broker.wait_port and deploy/stack.poll_until: return once ready, fail early when the process
exits, and fail with the program's name and log after the timeout."""

import socket
import subprocess
import sys

import pytest

from config import load_settings
from deploy.broker import BrokerError, free_port, wait_port
from deploy.stack import Stack, poll_until


def test_wait_port_returns_fails_early_and_times_out(tmp_path):
    log = tmp_path / "prog.log"
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        wait_port("127.0.0.1", listening.getsockname()[1], None, "prog", log, timeout_s=30)
    exited = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    exited.wait()
    with pytest.raises(BrokerError, match=r"prog exited with 3; see .*prog.log"):
        wait_port("127.0.0.1", free_port(), exited, "prog", log, timeout_s=30)
    with pytest.raises(BrokerError, match=r"prog did not open 127.0.0.1:\d+ within 0.3s"):
        wait_port("127.0.0.1", free_port(), None, "prog", log, timeout_s=0.3)


def test_poll_until_returns_the_value_fails_early_and_times_out(tmp_path):
    """deploy/stack.poll_until (the readiness waits of Stack and `learn up`) and Stack.wait_http."""
    calls = iter([0, None, "", "ready"])
    assert poll_until(lambda: next(calls), timeout_s=30, every_s=0.01) == "ready"
    assert poll_until(lambda: False, timeout_s=0.2, every_s=0.05) is None

    def broken():
        raise RuntimeError("gone")

    with pytest.raises(RuntimeError, match="gone"):
        poll_until(broken, timeout_s=30, every_s=0.01)
    stack = Stack(load_settings(data_dir=tmp_path / "data"), tmp_path / "run")
    stack.start_process("prog", [sys.executable, "-c", "raise SystemExit(3)"])
    stack.procs["prog"].wait()
    with pytest.raises(RuntimeError, match=r"prog exited with 3; see .*prog.log"):
        stack.wait_http("prog", f"http://127.0.0.1:{free_port()}/counts", timeout_s=30)
    stack.start_process("idle", [sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        with pytest.raises(RuntimeError, match=r"idle did not answer .* within 0.5s"):
            stack.wait_http("idle", f"http://127.0.0.1:{free_port()}/counts", timeout_s=0.5)
    finally:
        stack.stop_all()
