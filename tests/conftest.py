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


@pytest.fixture(scope="session")
def broker(tmp_path_factory) -> dict:
    """The broker settings of the whole test run (a Tansu on 127.0.0.1 unless the broker is external)."""
    root = tmp_path_factory.mktemp("broker")
    s = load_settings(data_dir=root, broker={"storage": os.environ.get("LEARN_BROKER__STORAGE", "memory")})
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
        worker={"app_prefix": f"learn-{suffix}"},  # own consumer groups: tests share the broker
        topics={"items": f"items-{suffix}", "interactions": f"interactions-{suffix}",
                "items_dlq": f"items-{suffix}.dlq", "interactions_dlq": f"interactions-{suffix}.dlq"},
    )  # fmt: skip
