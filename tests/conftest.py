"""Shared fixtures: a real broker per test run (random free ports), torn down at the end.

The broker is the embedded default, Tansu on its durable S3 storage (a localbucket server under the
run's temporary directory); `LEARN_BROKER__STORAGE=memory` runs the suite on Tansu's memory engine and
`LEARN_BROKER__BOOTSTRAP_SERVERS=host:port` on an external broker (then nothing is started).
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from config import Settings, load_settings
from deploy.broker import free_port, start_broker, stop_process

SHARED_DATA = load_settings().shared_data_dir


def needs_shared_data() -> pytest.MarkDecorator:
    return pytest.mark.skipif(not (SHARED_DATA / "amazon-scientific-unisrec").is_dir(),
                              reason=f"real data not found at {SHARED_DATA}")  # fmt: skip


@pytest.fixture(scope="session")
def broker(tmp_path_factory) -> dict:
    """The broker settings of the whole test run (a Tansu on 127.0.0.1 unless the broker is external)."""
    root = tmp_path_factory.mktemp("broker")
    s = load_settings(data_dir=root)
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
