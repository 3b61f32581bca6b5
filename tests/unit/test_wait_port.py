"""deploy/broker.wait_port: returns once the port accepts, fails early when the process exits, and
fails with the program's name and log after the timeout."""

import socket
import subprocess
import sys

import pytest

from deploy.broker import BrokerError, free_port, wait_port


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
