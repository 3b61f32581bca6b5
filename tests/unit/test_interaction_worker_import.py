"""Importing the interaction worker opens no state database and talks to no broker."""

import os
import subprocess
import sys

from config import REPO_ROOT


def test_importing_the_worker_opens_no_state(tmp_path):
    code = ("import streams.interaction_worker as w, pathlib, sys; "
            "print(sorted(p.name for p in pathlib.Path(sys.argv[1]).iterdir()))")  # fmt: skip
    env = {**os.environ, "LEARN_DATA_DIR": str(tmp_path), "LEARN_BROKER__PORT": "1"}  # nothing listens on 1
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], env=env, cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "state" not in out.stdout  # no partition database was opened or created
