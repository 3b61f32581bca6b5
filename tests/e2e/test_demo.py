"""The main job, shortened to a few hundred users, run as a user runs it (`learn demo`).

It asserts on the report the demo writes: every stage processed all its records, the API answered,
and the final model beats a popularity ranking tested on the same events. MiniLM keeps it fast.
"""

import json
import os
import subprocess
import sys

import pytest

from deploy.broker import free_port
from tests.conftest import needs_shared_data

pytestmark = [pytest.mark.e2e, needs_shared_data()]


def test_demo_runs_the_whole_pipeline(tmp_path):
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "deploy.cli", "demo", "--users", "200", "--events-per-s", "10", "--window-s", "30",
           "--no-progress", "--run-dir", str(run_dir), "--port", str(free_port())]  # fmt: skip
    env = {**os.environ, "LEARN_ENCODER__MODEL": "minilm"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((run_dir / "report.json").read_text())
    assert report["ok"] and all(report["checks"].values())
    stages = report["stages"]
    assert stages["items"]["processed"] == stages["items"]["in"] > 0
    assert stages["interactions"]["dead_lettered"] == 4 and stages["interactions"]["users_in_state"] == 200
    assert len(report["windows"]) >= 3 and all(w["version"] for w in report["windows"])
    assert stages["trainer"]["mean_prequential_ndcg10"] > stages["trainer"]["popularity"]
    assert len(report["recommendations"]) == 3 and all(len(r["items"]) == 10 for r in report["recommendations"])
    for name in ("report.md", "prequential.png", "freshness.png", "throughput.png", "api.log", "trainer.log"):
        assert (run_dir / name).exists(), name
