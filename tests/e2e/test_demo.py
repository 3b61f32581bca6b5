"""The main job, shortened to a few hundred users, run as a user runs it (`learn demo`)."""

import json
import os
import subprocess
import sys

import pytest

from deploy.broker import free_port
from tests.conftest import needs_shared_data

pytestmark = [pytest.mark.e2e, needs_shared_data()]


def test_demo_processes_every_record(tmp_path):
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "deploy.cli", "demo", "--users", "200", "--no-progress",
           "--run-dir", str(run_dir), "--port", str(free_port())]  # fmt: skip
    env = {**os.environ, "LEARN_ENCODER__MODEL": "minilm"}  # the default SmolLM2 is ~10x slower on CPU
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((run_dir / "report.json").read_text())
    assert report["ok"]
    inter = report["stages"]["interactions"]
    assert inter["processed"] == inter["applied"] > 0
    assert inter["dead_lettered"] == 4 and inter["users_in_state"] == 200
    assert report["stages"]["items"]["in"] == report["stages"]["items"]["processed"] > 0
    assert (run_dir / "report.md").exists() and (run_dir / "broker.log").exists()
