"""Time the main job (issue 7): `learn demo` cold (empty embedding cache, LLM not yet converted), then warm.

    .venv/bin/python -m bench.demo [--users N]

Both runs are the real command in a subprocess; the cold run gets a fresh cache directory, the warm
run the same one again. Writes `demo_seconds` and `demo_seconds_warm` (and each run's report checks)
into bench/results/serving.json, keeping the serving figures already there.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "serving.json"


def run_once(cache_dir: Path, run_dir: Path, users: int | None) -> dict:
    cmd = [sys.executable, "-m", "deploy.cli", "demo", "--no-progress", "--run-dir", str(run_dir)]
    if users:
        cmd += ["--users", str(users)]
    env = {**os.environ, "LEARN_CACHE_DIR": str(cache_dir)}
    t = time.monotonic()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.monotonic() - t
    report = json.loads((run_dir / "report.json").read_text()) if (run_dir / "report.json").exists() else {}
    print(done.stdout[-2500:], flush=True)
    return {"seconds": seconds, "returncode": done.returncode, "ok": report.get("ok"),
            "checks": report.get("checks"), "report": str(run_dir / "report.md")}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=0)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-demo-"))
    cold = run_once(root / "cache", root / "cold", args.users)
    warm = run_once(root / "cache", root / "warm", args.users)
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results.update({
        "demo_seconds": cold["seconds"],
        "demo_seconds_warm": warm["seconds"],
        "demo_runs": {"cold": cold, "warm": warm, "users": args.users or "all",
                      "command": "python -m bench.demo " + " ".join(sys.argv[1:]),
                      "load_average_1m_at_end": os.getloadavg()[0]},
    })  # fmt: skip
    RESULTS.write_text(json.dumps(results, indent=2))
    print(json.dumps({"demo_seconds": cold["seconds"], "demo_seconds_warm": warm["seconds"],
                      "cold_ok": cold["ok"], "warm_ok": warm["ok"]}))  # fmt: skip


if __name__ == "__main__":
    main()
