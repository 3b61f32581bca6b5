"""Shared fixtures: a real broker per test run (random free ports), torn down at the end.

The shared broker is Tansu on its memory engine: measured on this loaded 2-core machine, three of the
six worker integration tests (exactly-once under kills, foreign partitioners, a memory broker
restarting) fail on the durable S3 engine, whose event -> state latency is ~100x the memory engine's
(bench/results/broker.json). The tests of durability itself (test_broker_durability, test_learn_up,
test_chaos) start S3-engine brokers of their own. `LEARN_BROKER__STORAGE=s3` runs the whole suite on
the S3 engine; `LEARN_BROKER__BOOTSTRAP_SERVERS=host:port` on an external broker (nothing started).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from config import Settings, load_settings
from deploy.broker import free_port, start_broker, stop_process
from tests.milvus_server import milvus_server  # noqa: F401 - a fixture
from tests.s3_server import s3_bucket, s3_server  # noqa: F401 - fixtures

SHARED_DATA = load_settings().shared_data_dir


def needs_shared_data() -> pytest.MarkDecorator:
    return pytest.mark.skipif(not (SHARED_DATA / "amazon-scientific-unisrec").is_dir(),
                              reason=f"real data not found at {SHARED_DATA}")  # fmt: skip


# Consumer-group timings of the test run, half the defaults (config/settings.py): Tansu holds a group's
# first join for half the session timeout, and a killed member's partitions move on after the session
# (or the rebalance) timeout, so every worker start and every kill waited the longer defaults out. No
# test depends on the values themselves (test_encoder_worker's eviction test pauses past whichever it is).
GROUP_TIMINGS = {"session_timeout_ms": 3000, "heartbeat_interval_ms": 1000}
REBALANCE_TIMEOUT_MS = 5000
# `learn up` starts each program once the one before is RUNNING (alive start_secs, 3 s by default):
# 1 s here, as a worker or the API answers its ready URL after about that long anyway.
START_SECS = 1


def group_timing_env() -> dict[str, str]:
    """The same group timings as LEARN_* variables, for tests whose programs build their own settings
    (`learn demo`, bench/multi_machine): load_settings merges them into what those programs set."""
    return {"LEARN_BROKER__SESSION_TIMEOUT_MS": str(GROUP_TIMINGS["session_timeout_ms"]),
            "LEARN_BROKER__HEARTBEAT_INTERVAL_MS": str(GROUP_TIMINGS["heartbeat_interval_ms"]),
            "LEARN_WORKER__REBALANCE_TIMEOUT_MS": str(REBALANCE_TIMEOUT_MS)}  # fmt: skip


@pytest.fixture(scope="session")
def broker(tmp_path_factory) -> dict:
    """The broker settings of the whole test run (a Tansu on 127.0.0.1 unless the broker is external)."""
    root = tmp_path_factory.mktemp("broker")
    s = load_settings(data_dir=root, broker={"storage": os.environ.get("LEARN_BROKER__STORAGE", "memory"), **GROUP_TIMINGS})
    if not s.broker.external:
        s = s.model_copy(update={"broker": s.broker.model_copy(update={"port": free_port(), "s3_port": free_port()})})
    procs = start_broker(s, root)
    yield s.broker.model_dump()
    for proc in reversed(procs.values()):
        stop_process(proc)


@pytest.fixture
def settings(broker, tmp_path: Path) -> Settings:
    """Settings for one test: its own data dir and its own topic names on the shared broker."""
    suffix = uuid.uuid4().hex[:8]
    return load_settings(
        data_dir=tmp_path / "data",
        broker=broker,
        worker={"app_prefix": f"learn-{suffix}",  # own consumer groups: tests share the broker
                "rebalance_timeout_ms": REBALANCE_TIMEOUT_MS},
        processes={"start_secs": START_SECS},
        topics={"items": f"items-{suffix}", "interactions": f"interactions-{suffix}",
                "items_dlq": f"items-{suffix}.dlq", "interactions_dlq": f"interactions-{suffix}.dlq"},
    )  # fmt: skip
