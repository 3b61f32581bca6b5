"""`learn demo --data PATH` on a small generated dataset in the plain format (with timestamps): the
whole pipeline runs on a user's own files with no code change, replayed in the data's time order."""

import json
import os
import subprocess
import sys

import pytest

from deploy.broker import free_port
from tests.gen_data import write_plain

pytestmark = [pytest.mark.e2e]


def test_demo_runs_on_a_plain_dataset(tmp_path):
    data = write_plain(tmp_path / "shop", n_items=60, n_users=80)
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "deploy.cli", "demo", "--data", str(data), "--events-per-s", "5", "--window-s", "30",
           "--no-progress", "--run-dir", str(run_dir), "--port", str(free_port())]  # fmt: skip
    env = {**os.environ, "LEARN_ENCODER__MODEL": "minilm"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    report = json.loads((run_dir / "report.json").read_text())
    assert report["dataset"]["format"] == "plain" and report["dataset"]["speedup"] > 1, report["dataset"]
    assert done.returncode == 0 and report["ok"], (report["checks"], done.stdout[-3000:] + done.stderr[-3000:])
    stages = report["stages"]
    assert stages["items"]["processed"] == 60 and stages["interactions"]["users_in_state"] == 80
    assert stages["interactions"]["processed"] == 80 * 7 and len(report["windows"]) >= 3
    assert all(len(r["items"]) == 10 for r in report["recommendations"])
